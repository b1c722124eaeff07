#!/bin/sh
# Installs what building (and with --test, testing; with --bench, benchmarking) kedge needs
# on a Debian machine, skipping whatever is already there. Run as root.
set -eu

packages="build-essential pkg-config libseccomp-dev nftables busybox-static iproute2 curl ca-certificates git"
if [ "${1:-}" = "--test" ]; then
    # The Python client test runs the official `kubernetes` package from a venv; the image
    # pull test runs a registry on loopback; the UDP Service test builds an image with socat.
    packages="$packages python3 python3-venv docker-registry socat"
fi
if [ "${1:-}" = "--bench" ]; then
    # etcd is the store benchmark's point of comparison; its client crate compiles protobufs.
    # containerd + runc (started by the pods benchmark on its own socket) are the pod
    # benchmark's; the reference CNI plugins the pod network benchmark's; dnsmasq (the binary
    # only, no system service) the cluster DNS benchmark's.
    packages="$packages etcd-server procps protobuf-compiler libprotobuf-dev containerd runc"
    packages="$packages containernetworking-plugins dnsmasq-base"
fi

missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $package"
    fi
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# Debian's cargo is too old for kedge; use rustup's when there is none.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# The tests judge API compatibility with the real kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
    arch=$(dpkg --print-architecture)
    version=v1.33.1
    echo "installing kubectl $version"
    if ! curl -sSfL -o /usr/local/bin/kubectl "https://dl.k8s.io/release/$version/bin/linux/$arch/kubectl"; then
        echo "could not download kubectl; install kubectl $version and run this again" >&2
        exit 1
    fi
    chmod 0755 /usr/local/bin/kubectl
fi

# The official Python client, at the Kubernetes minor kedge serves, for tests/python_client.rs.
if [ "${1:-}" = "--test" ]; then
    venv=/opt/kedge-test/venv
    if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
        echo "installing the Python kubernetes client into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes==33.1.0'
    fi
fi
