"""The official Python `kubernetes` client against kedge: create, read, patch, scale,
watch, list and delete, and the errors it raises. Run by tests/python_client.rs with the
kubeconfig path as the only argument; prints one line per step and exits non-zero on the
first failure."""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def step(name):
    print(name, flush=True)


def expect_status(call, status, reason):
    try:
        call()
    except ApiException as e:
        assert e.status == status, (e.status, e.body)
        assert e.reason and reason in e.body, e.body
        return
    raise AssertionError(f"expected {status} {reason}")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    ns = "py"

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    step("namespace created")

    cm = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}),
        data={"color": "blue"},
    )
    created = core.create_namespaced_config_map(ns, cm)
    assert created.metadata.uid and created.metadata.resource_version
    expect_status(lambda: core.create_namespaced_config_map(ns, cm), 409, "AlreadyExists")
    expect_status(lambda: core.read_namespaced_config_map("nope", ns), 404, "NotFound")
    step("configmap created")

    events = []
    started = threading.Event()

    def watch_changes():
        w = watch.Watch()
        started.set()
        for event in w.stream(
            core.list_namespaced_config_map,
            ns,
            # Only ours: the namespace also gets kube-root-ca.crt meanwhile.
            field_selector="metadata.name=settings",
            resource_version=created.metadata.resource_version,
            timeout_seconds=20,
        ):
            events.append((event["type"], event["object"].data))
            if event["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=watch_changes)
    watcher.start()
    started.wait()

    patched = core.patch_namespaced_config_map("settings", ns, {"data": {"size": "xl"}})
    assert patched.data == {"color": "blue", "size": "xl"}, patched.data
    patched = core.patch_namespaced_config_map(
        "settings", ns, [{"op": "replace", "path": "/data/color", "value": "red"}]
    )
    assert patched.data["color"] == "red", patched.data
    step("configmap patched")

    listed = core.list_namespaced_config_map(ns, label_selector="app=py")
    assert [i.metadata.name for i in listed.items] == ["settings"], listed.items
    assert listed.metadata.resource_version
    step("configmaps listed")

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="web", image="busybox:1.36")]
                ),
            ),
        ),
    )
    apps.create_namespaced_deployment(ns, deployment)
    scale = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
    assert scale.spec.replicas == 3, scale
    read = apps.read_namespaced_deployment("web", ns)
    assert read.spec.replicas == 3 and read.spec.strategy.type == "RollingUpdate", read.spec
    step("deployment scaled")

    service = core.create_namespaced_service(
        ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80)]
            ),
        ),
    )
    assert service.spec.cluster_ip.startswith("10.43."), service.spec
    assert service.spec.ports[0].target_port == 80, service.spec.ports
    step("service got " + service.spec.cluster_ip)

    expect_status(
        lambda: core.create_namespaced_pod(
            ns,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="bad"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="Bad", image="x")]),
            ),
        ),
        422,
        "Invalid",
    )
    step("invalid pod refused")

    core.delete_namespaced_config_map("settings", ns)
    watcher.join(timeout=30)
    kinds = [kind for kind, _ in events]
    assert kinds == ["MODIFIED", "MODIFIED", "DELETED"], events
    assert events[1][1]["color"] == "red", events
    step("watch saw " + ",".join(kinds))

    core.delete_namespace(ns)
    step("namespace deleted")
    print("OK")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # noqa: BLE001 - report any failure and exit non-zero
        print(f"FAILED: {error!r}", flush=True)
        sys.exit(1)
