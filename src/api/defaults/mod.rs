//! Defaulting: what the server fills in when a client leaves it out, per kind, as upstream
//! (`SetDefaults_*` in each API group) does before validation. One file per API group;
//! pod specs are defaulted wherever they appear (pods and every workload's template).
//!
//! Must not touch: anything that needs the store (allocation, admission) — see
//! `crate::api::rest::hooks`.

mod apps;
mod batch;
mod core;
mod other;

use serde_json::Value;

pub use self::core::{pod_qos_class, pod_spec};

/// Applies `kind`'s defaults to `object` in place.
pub fn apply(kind: &str, object: &mut Value) {
    match kind {
        "Secret" => core::secret(object),
        "Namespace" => core::namespace(object),
        "Pod" => core::pod(object),
        "PodTemplate" => core::template_at(object, "/template"),
        "ReplicationController" => core::replication_controller(object),
        "Service" => core::service(object),
        "Endpoints" => core::endpoints(object),
        "PersistentVolume" => core::persistent_volume(object),
        "PersistentVolumeClaim" => core::persistent_volume_claim(object),
        "Deployment" => apps::deployment(object),
        "ReplicaSet" => apps::replica_set(object),
        "StatefulSet" => apps::stateful_set(object),
        "DaemonSet" => apps::daemon_set(object),
        "Job" => batch::job(object),
        "CronJob" => batch::cron_job(object),
        _ => other::apply(kind, object),
    }
}

/// Sets `field` of the object at `value` when it is missing or null.
fn default(value: &mut Value, field: &str, default: Value) {
    if let Some(map) = value.as_object_mut() {
        let slot = map.entry(field).or_insert(Value::Null);
        if slot.is_null() {
            *slot = default;
        }
    }
}

/// The object at `pointer`, created as `{}` along the way when missing.
fn object_at<'a>(value: &'a mut Value, pointer: &str) -> &'a mut Value {
    let mut current = value;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if !current.is_object() {
            *current = Value::Object(Default::default());
        }
        current = current
            .as_object_mut()
            .expect("made an object")
            .entry(part)
            .or_insert_with(|| Value::Object(Default::default()));
        if current.is_null() {
            *current = Value::Object(Default::default());
        }
    }
    current
}

/// Applies `f` to every element of the array at `pointer`, if there is one.
fn each(value: &mut Value, pointer: &str, f: impl Fn(&mut Value)) {
    if let Some(items) = value.pointer_mut(pointer).and_then(Value::as_array_mut) {
        items.iter_mut().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secret_string_data_becomes_data() {
        let mut secret = json!({"kind": "Secret", "stringData": {"password": "s3cret"}, "data": {"user": "YWRtaW4="}});
        apply("Secret", &mut secret);
        assert_eq!(
            secret["data"],
            json!({"user": "YWRtaW4=", "password": "czNjcmV0"})
        );
        assert_eq!(secret["type"], "Opaque");
        assert!(secret.get("stringData").is_none());
    }

    #[test]
    fn pods_get_upstream_defaults() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
             "readinessProbe": {"httpGet": {"port": 80}},
             "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b", "image": "registry.local:5000/app:1.2"},
        ]}});
        apply("Pod", &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        let a = &spec["containers"][0];
        assert_eq!(a["imagePullPolicy"], "Always");
        assert_eq!(a["ports"][0]["protocol"], "TCP");
        assert_eq!(a["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(a["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(a["resources"]["requests"]["memory"], "1Gi");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod_qos_class(spec), "Burstable");
        // Applying twice changes nothing (updates re-apply defaults).
        let once = pod.clone();
        apply("Pod", &mut pod);
        assert_eq!(pod, once);
    }

    #[test]
    fn workloads_default_their_templates() {
        let mut deployment = json!({"apiVersion": "apps/v1", "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "nginx:1.27"}]}}}});
        apply("Deployment", &mut deployment);
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            "25%"
        );
        assert_eq!(
            deployment["spec"]["template"]["spec"]["restartPolicy"],
            "Always"
        );
        assert!(deployment["spec"]["template"]["spec"]
            .get("serviceAccountName")
            .is_none());
        let mut job =
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        apply("Job", &mut job);
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        let mut service = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        apply("Service", &mut service);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(service["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(service["spec"]["sessionAffinity"], "None");
    }
}
