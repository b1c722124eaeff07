//! Kind-specific validation of new and changed objects, with upstream's field paths and
//! messages: pod specs (in pods and every workload template), Services, and the
//! selector/template agreement of workloads.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::dns1123_label;
use crate::api::error::FieldError;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

/// The problems of `object` of `group`/`kind`, beyond its metadata.
pub fn validate(group: &str, kind: &str, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = object.get("spec") {
                pod_spec(spec, "spec", &mut errors);
            } else {
                errors.push(FieldError::required("spec.containers", ""));
            }
        }
        ("", "Service") => service(object, &mut errors),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(object, true, &mut errors)
        }
        ("", "ReplicationController") => workload(object, false, &mut errors),
        ("", "ConfigMap") => {
            config_keys(object, "data", &mut errors);
            config_keys(object, "binaryData", &mut errors);
        }
        ("", "Secret") => config_keys(object, "data", &mut errors),
        ("", "PersistentVolumeClaim") => claim_spec(object.get("spec"), "spec", &mut errors),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            for (i, rule) in object
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if rule
                    .get("verbs")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    errors.push(FieldError::required(
                        &format!("rules[{i}].verbs"),
                        "verbs must contain at least one value",
                    ));
                }
            }
        }
        ("networking.k8s.io", "Ingress") => {
            for (i, rule) in object
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                for (j, path) in rule
                    .pointer("/http/paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let field = format!("spec.rules[{i}].http.paths[{j}].pathType");
                    match path.get("pathType") {
                        None | Some(Value::Null) => {
                            errors.push(FieldError::required(&field, "pathType must be specified"))
                        }
                        kind => one_of(
                            kind,
                            &field,
                            &["Exact", "Prefix", "ImplementationSpecific"],
                            &mut errors,
                        ),
                    }
                }
            }
        }
        ("batch", "Job") => job_template(
            object.pointer("/spec/template"),
            "spec.template",
            &mut errors,
        ),
        ("batch", "CronJob") => {
            cron_job(object, &mut errors);
            job_template(
                object.pointer("/spec/jobTemplate/spec/template"),
                "spec.jobTemplate.spec.template",
                &mut errors,
            )
        }
        _ => {}
    }
    errors
}

fn port_range(value: Option<&Value>, field: &str, required: bool, errors: &mut Vec<FieldError>) {
    match value.and_then(Value::as_i64) {
        None | Some(0) if required => errors.push(FieldError::required(field, "")),
        None => {}
        Some(port) if !(1..=65535).contains(&port) => errors.push(FieldError::invalid_raw(
            field,
            &port.to_string(),
            "must be between 1 and 65535, inclusive",
        )),
        Some(_) => {}
    }
}

fn one_of(value: Option<&Value>, field: &str, allowed: &[&str], errors: &mut Vec<FieldError>) {
    if let Some(value) = value.and_then(Value::as_str) {
        if !allowed.contains(&value) {
            errors.push(FieldError::unsupported(field, value, allowed));
        }
    }
}

/// The keys of a ConfigMap's or Secret's `field` map: `[-._a-zA-Z0-9]+`, not `.` or `..`.
fn config_keys(object: &Value, field: &str, errors: &mut Vec<FieldError>) {
    for key in object
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        let well_formed = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            && key != "."
            && key != "..";
        if !well_formed {
            errors.push(FieldError::invalid(
                &format!("{field}[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

/// A claim asks for at least one access mode and some storage.
fn claim_spec(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let spec = spec.cloned().unwrap_or_default();
    if spec
        .get("accessModes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        errors.push(FieldError::required(
            &format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    if spec.pointer("/resources/requests/storage").is_none() {
        errors.push(FieldError::required(
            &format!("{path}.resources[storage]"),
            "",
        ));
    }
}

/// A pod spec at `path` (`spec`, `spec.template.spec`, ...).
fn pod_spec(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errors.push(FieldError::required(&format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            container(c, &format!("{path}.{list}[{i}]"), &mut names, errors);
        }
    }
    one_of(
        spec.get("restartPolicy"),
        &format!("{path}.restartPolicy"),
        RESTART_POLICIES,
        errors,
    );
    one_of(
        spec.get("dnsPolicy"),
        &format!("{path}.dnsPolicy"),
        DNS_POLICIES,
        errors,
    );
    if let Some(grace) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if grace < 0 {
            errors.push(FieldError::invalid_raw(
                &format!("{path}.terminationGracePeriodSeconds"),
                &grace.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let mut volume_names = HashSet::new();
    for (i, volume) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.volumes[{i}].name");
        match volume
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "" => errors.push(FieldError::required(&field, "")),
            name if !volume_names.insert(name.to_string()) => {
                errors.push(FieldError::duplicate(&field, name))
            }
            name => errors.extend(
                dns1123_label(name)
                    .into_iter()
                    .map(|p| FieldError::invalid(&field, name, &p)),
            ),
        }
    }
}

fn container(c: &Value, path: &str, names: &mut HashSet<String>, errors: &mut Vec<FieldError>) {
    let name_field = format!("{path}.name");
    match c.get("name").and_then(Value::as_str).unwrap_or_default() {
        "" => errors.push(FieldError::required(&name_field, "")),
        name => {
            let problems = dns1123_label(name);
            if !problems.is_empty() {
                errors.extend(
                    problems
                        .iter()
                        .map(|p| FieldError::invalid(&name_field, name, p)),
                );
            } else if !names.insert(name.to_string()) {
                errors.push(FieldError::duplicate(&name_field, name));
            }
        }
    }
    if c.get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        errors.push(FieldError::required(&format!("{path}.image"), ""));
    }
    one_of(
        c.get("imagePullPolicy"),
        &format!("{path}.imagePullPolicy"),
        PULL_POLICIES,
        errors,
    );
    let mut port_names = HashSet::new();
    for (i, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{path}.ports[{i}]");
        port_range(
            port.get("containerPort"),
            &format!("{at}.containerPort"),
            true,
            errors,
        );
        port_range(
            port.get("hostPort"),
            &format!("{at}.hostPort"),
            false,
            errors,
        );
        one_of(
            port.get("protocol"),
            &format!("{at}.protocol"),
            PROTOCOLS,
            errors,
        );
        if let Some(name) = port
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            if !port_names.insert(name.to_string()) {
                errors.push(FieldError::duplicate(&format!("{at}.name"), name));
            }
        }
    }
    for (i, env) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if env
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            errors.push(FieldError::required(&format!("{path}.env[{i}].name"), ""));
        }
    }
}

fn service(object: &Value, errors: &mut Vec<FieldError>) {
    let Some(spec) = object.get("spec") else {
        errors.push(FieldError::required("spec.ports", ""));
        return;
    };
    one_of(spec.get("type"), "spec.type", SERVICE_TYPES, errors);
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if kind == "ExternalName" {
        let name = spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.is_empty() {
            errors.push(FieldError::required("spec.externalName", ""));
        }
    } else if ports.is_none_or(Vec::is_empty) && !headless {
        errors.push(FieldError::required("spec.ports", ""));
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut names = HashSet::new();
    let mut node_ports = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        if let Some(number) = port.get("port").and_then(Value::as_i64) {
            if !numbers.insert((number, protocol.to_string())) {
                errors.push(FieldError {
                    reason: "FieldValueDuplicate",
                    field: at.clone(),
                    message: format!("Duplicate value: {number}/{protocol}"),
                });
            }
        }
        if let Some(node_port) = port
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|p| *p > 0)
        {
            if !node_ports.insert((node_port, protocol.to_string())) {
                errors.push(FieldError {
                    reason: "FieldValueDuplicate",
                    field: format!("{at}.nodePort"),
                    message: format!("Duplicate value: {node_port}"),
                });
            }
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errors.push(FieldError::required(&format!("{at}.name"), ""));
        } else if !name.is_empty() {
            let problems = dns1123_label(name);
            errors.extend(
                problems
                    .iter()
                    .map(|p| FieldError::invalid(&format!("{at}.name"), name, p)),
            );
            if problems.is_empty() && !names.insert(name.to_string()) {
                errors.push(FieldError::duplicate(&format!("{at}.name"), name));
            }
        }
        port_range(port.get("port"), &format!("{at}.port"), true, errors);
        one_of(
            port.get("protocol"),
            &format!("{at}.protocol"),
            PROTOCOLS,
            errors,
        );
        if let Some(target) = port.get("targetPort").and_then(Value::as_i64) {
            port_range(
                Some(&Value::from(target)),
                &format!("{at}.targetPort"),
                false,
                errors,
            );
        }
    }
}

/// `map[string]string{"a":"b", "c":"d"}`, as upstream prints label maps in errors.
pub(super) fn go_string_map(map: &Map<String, Value>) -> String {
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

/// Whether a LabelSelector (`matchLabels`, `matchExpressions`) selects `labels`.
pub fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    crate::api::selector::LabelSelector::from_object(selector)
        .is_ok_and(|selector| selector.matches(Some(labels)))
}

/// A workload: a selector (`label_selector`: a LabelSelector, else a plain map as in
/// ReplicationControllers) that selects its template's labels, a valid template.
fn workload(object: &Value, label_selector: bool, errors: &mut Vec<FieldError>) {
    let Some(spec) = object.get("spec") else {
        return;
    };
    if let Some(replicas) = spec.get("replicas").and_then(Value::as_i64) {
        if replicas < 0 {
            errors.push(FieldError::invalid_raw(
                "spec.replicas",
                &replicas.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = spec.get("selector").filter(|s| !s.is_null());
    let selector = match (selector, label_selector) {
        (Some(s), true) => Some(s.clone()),
        (Some(s), false) => Some(serde_json::json!({"matchLabels": s})),
        (None, _) => None,
    };
    let empty_selector = selector.as_ref().is_none_or(|s| {
        s.get("matchLabels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
            && s.get("matchExpressions")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    });
    if empty_selector && label_selector {
        errors.push(FieldError::required("spec.selector", ""));
    }
    let Some(template) = spec.get("template") else {
        errors.push(FieldError::required("spec.template", ""));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(selector) = selector.filter(|_| !empty_selector) {
        if !selector_matches(&selector, &labels) {
            errors.push(FieldError::invalid_raw(
                "spec.template.metadata.labels",
                &go_string_map(&labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    match template.get("spec") {
        Some(pod) => pod_spec(pod, "spec.template.spec", errors),
        None => errors.push(FieldError::required("spec.template.spec.containers", "")),
    }
}

/// A CronJob's name leaves room for the Job names made of it (`<name>-<minutes>`, at most
/// 63 characters), its `schedule` parses (5 fields or a descriptor) and names its time zone
/// only in `timeZone`, and `timeZone` is a known IANA zone, as upstream validates.
fn cron_job(object: &Value, errors: &mut Vec<FieldError>) {
    use crate::controllers::cron_job::schedule;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.len() > 52 {
        errors.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let time_zone = object.pointer("/spec/timeZone").and_then(Value::as_str);
    match object.pointer("/spec/schedule").and_then(Value::as_str) {
        None | Some("") => errors.push(FieldError::required("spec.schedule", "")),
        Some(text) => {
            let (_, expression) = schedule::split_zone_prefix(text);
            if let Err(error) = schedule::parse_cron(expression) {
                errors.push(FieldError::invalid("spec.schedule", text, &error));
            }
            if text.contains("TZ") {
                let detail = if time_zone.is_some() {
                    "cannot use both timeZone field and TZ or CRON_TZ in schedule"
                } else {
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                };
                errors.push(FieldError::invalid("spec.schedule", text, detail));
            }
        }
    }
    let Some(zone) = time_zone else { return };
    let field = "spec.timeZone";
    let valid_part = |part: &str| {
        part != "."
            && part != ".."
            && !part.starts_with('-')
            && (1..=14).contains(&part.len())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    };
    if zone.is_empty() {
        errors.push(FieldError::invalid(
            field,
            zone,
            "timeZone must be nil or non-empty string",
        ));
    } else if !zone.split('/').all(valid_part) {
        errors.push(FieldError::invalid(
            field,
            zone,
            &format!("unknown time zone {zone}"),
        ));
    } else if zone.eq_ignore_ascii_case("Local") {
        errors.push(FieldError::invalid(
            field,
            zone,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    } else if let Err(error) = schedule::time_zone(zone) {
        errors.push(FieldError::invalid(field, zone, &error));
    }
}

/// A Job's pod template: a valid pod spec that restarts OnFailure or Never.
fn job_template(template: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let Some(spec) = template.and_then(|t| t.get("spec")) else {
        errors.push(FieldError::required(&format!("{path}.spec.containers"), ""));
        return;
    };
    pod_spec(spec, &format!("{path}.spec"), errors);
    let field = format!("{path}.spec.restartPolicy");
    match spec.get("restartPolicy").and_then(Value::as_str) {
        Some("OnFailure" | "Never") => {}
        Some(other) => errors.push(FieldError::unsupported(
            &field,
            other,
            &["OnFailure", "Never"],
        )),
        None => errors.push(FieldError::required(&field, "")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn pods_need_named_containers_with_images() {
        let pod = json!({"spec": {"restartPolicy": "Sometimes", "containers": [
            {"name": "Web", "image": "x"}, {"name": "a"}, {"name": "a", "image": "y",
             "ports": [{"containerPort": 70000}]},
        ]}});
        let errors = messages(&validate("", "Pod", &pod));
        assert!(
            errors.iter().any(|e| e.starts_with(
                "spec.containers[0].name: Invalid value: \"Web\": a lowercase RFC 1123 label"
            )),
            "{errors:?}"
        );
        assert!(errors.contains(&"spec.containers[1].image: Required value".to_string()));
        assert!(errors.contains(&"spec.containers[2].name: Duplicate value: \"a\"".to_string()));
        assert!(errors.contains(&"spec.containers[2].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()));
        assert!(errors.contains(&"spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".to_string()));
        assert_eq!(
            messages(&validate("", "Pod", &json!({"spec": {}}))),
            vec!["spec.containers: Required value"]
        );
    }

    #[test]
    fn workload_selectors_must_select_the_template() {
        let deployment = json!({"spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "api", "tier": "x"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        }});
        assert_eq!(
            messages(&validate("apps", "Deployment", &deployment)),
            vec!["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\", \"tier\":\"x\"}: `selector` does not match template `labels`"]
        );
        let ok = json!({"spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]},
            "template": {"metadata": {"labels": {"app": "api"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        }});
        assert!(validate("apps", "Deployment", &ok).is_empty());
        let job = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(
            messages(&validate("batch", "Job", &job)),
            vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]
        );
    }

    #[test]
    fn cron_jobs_need_a_parsable_schedule_and_a_known_time_zone() {
        let cron_job = |schedule: &str, zone: Option<&str>| {
            let template = json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i"}]}}}});
            let cron_job =
                json!({"spec": {"schedule": schedule, "timeZone": zone, "jobTemplate": template}});
            messages(&validate("batch", "CronJob", &cron_job))
        };
        assert!(cron_job("*/5 * * * *", Some("Europe/Berlin")).is_empty());
        let long = json!({"metadata": {"name": "x".repeat(53)}, "spec": {"schedule": "@daily",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i"}]}}}}}});
        assert_eq!(
            messages(&validate("batch", "CronJob", &long)),
            [format!(
                "metadata.name: Invalid value: \"{}\": must be no more than 52 characters",
                "x".repeat(53)
            )]
        );
        assert!(cron_job("@daily", None).is_empty());
        let bad = cron_job("* * *", None);
        assert!(
            bad[0]
                .starts_with("spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields"),
            "{bad:?}"
        );
        assert_eq!(
            cron_job("* * * * *", Some("Mars/Olympus")),
            ["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"]
        );
        assert_eq!(
            cron_job("CRON_TZ=UTC * * * * *", None),
            ["spec.schedule: Invalid value: \"CRON_TZ=UTC * * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"]
        );
    }

    #[test]
    fn config_keys_claims_rules_and_ingress_paths() {
        let cm = json!({"data": {"ok.key": "1", "a b": "2"}});
        let errors = messages(&validate("", "ConfigMap", &cm));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("data[a b]: Invalid value: \"a b\": a valid config key"));
        let claim = json!({"spec": {}});
        assert_eq!(
            messages(&validate("", "PersistentVolumeClaim", &claim)),
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value"
            ]
        );
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]});
        assert_eq!(
            messages(&validate("rbac.authorization.k8s.io", "Role", &role)),
            vec!["rules[0].verbs: Required value: verbs must contain at least one value"]
        );
        let ingress = json!({"spec": {"rules": [{"http": {"paths": [{"path": "/"}]}}]}});
        assert_eq!(
            messages(&validate("networking.k8s.io", "Ingress", &ingress)),
            vec![
                "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"
            ]
        );
    }

    #[test]
    fn services_need_ports_with_names() {
        let service = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 0, "name": "b"}]}});
        assert_eq!(
            messages(&validate("", "Service", &service)),
            vec![
                "spec.ports[0].name: Required value",
                "spec.ports[1].port: Required value"
            ]
        );
        let twice = json!({"spec": {"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30090}, {"name": "b", "port": 81, "nodePort": 30090},
            {"name": "c", "port": 80}]}});
        assert_eq!(
            messages(&validate("", "Service", &twice)),
            vec![
                "spec.ports[1].nodePort: Duplicate value: 30090",
                "spec.ports[2]: Duplicate value: 80/TCP"
            ]
        );
        let external = json!({"spec": {"type": "ExternalName"}});
        assert_eq!(
            messages(&validate("", "Service", &external)),
            vec!["spec.externalName: Required value"]
        );
        assert!(validate("", "Service", &json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
