# The two entry points of the README: `make run` builds and starts a single-node server,
# `make test` runs every test. Both install what they need first (as root, on Debian).

PREFIX ?= /usr/local
DATA_DIR ?= /var/lib/kedge
KUBECONFIG_PATH ?= /etc/kedge/kedge.yaml
LOG ?= /var/log/kedge.log
PIDFILE ?= /run/kedge.pid
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build install run stop killall test lint bench clean

deps:
	sh packaging/deps.sh

build: deps
	cargo build --release --locked

install: build
	install -D -m 0755 target/release/kedge $(PREFIX)/bin/kedge

# Starts the server in the background (restarting one started here before), waits until it
# is ready and shows `kubectl version` against it. Logs go to $(LOG).
run: install stop
	@echo "starting kedge server (data in $(DATA_DIR), log in $(LOG))"
	@nohup $(PREFIX)/bin/kedge server --data-dir $(DATA_DIR) --write-kubeconfig $(KUBECONFIG_PATH) >>$(LOG) 2>&1 & echo $$! >$(PIDFILE)
	@for i in $$(seq 1 120); do \
		if [ -f $(DATA_DIR)/server/tls/admin.crt ] && curl -sf --cacert $(DATA_DIR)/server/tls/ca.crt \
			--cert $(DATA_DIR)/server/tls/admin.crt --key $(DATA_DIR)/server/tls/admin.key \
			https://127.0.0.1:6443/readyz >/dev/null 2>&1; then break; fi; \
		if ! kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then echo "kedge exited; see $(LOG)"; tail -n 20 $(LOG); exit 1; fi; \
		sleep 0.5; \
	done
	kubectl --kubeconfig $(KUBECONFIG_PATH) version
	@echo "kedge is running (pid $$(cat $(PIDFILE))). Try: kedge kubectl version | stop it with: make stop"

stop:
	@if [ -f $(PIDFILE) ] && kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then \
		echo "stopping kedge (pid $$(cat $(PIDFILE)))"; kill $$(cat $(PIDFILE)); \
		while kill -0 $$(cat $(PIDFILE)) 2>/dev/null; do sleep 0.2; done; \
	fi
	@rm -f $(PIDFILE)

# Stops the server, then every container it started, and removes the node's mounts, pod
# network and service rules (k3s-killall.sh's job); the data dir stays.
killall: stop
	$(PREFIX)/bin/kedge killall --data-dir $(DATA_DIR)

test:
	sh packaging/deps.sh --test
	cargo test --locked

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets --features bench -- -D warnings

bench:
	sh packaging/deps.sh --bench
	cargo bench --locked --features bench --bench store
	cargo bench --locked --bench api
	cargo bench --locked --bench pods
	cargo bench --locked --bench dns
	cargo bench --locked --bench pod_network

clean:
	cargo clean
