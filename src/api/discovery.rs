//! API discovery, both forms clients use: the legacy documents (`APIVersions`,
//! `APIGroupList`, `APIGroup`, `APIResourceList`) and aggregated discovery
//! (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`), chosen by the Accept header.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use serde_json::{json, Value};

use super::registry::{GroupVersions, Registry, ResourceType};

/// The content type of aggregated discovery, v2.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated discovery version the Accept header asks for, if any (in its order).
pub fn wants_aggregated(accept: Option<&str>) -> Option<&'static str> {
    let accept = accept?;
    for choice in accept.split(',') {
        let params: Vec<&str> = choice.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if has("as=APIGroupDiscoveryList") && has("g=apidiscovery.k8s.io") {
            if has("v=v2") {
                return Some(AGGREGATED_V2);
            }
            if has("v=v2beta1") {
                return Some(AGGREGATED_V2BETA1);
            }
        }
    }
    None
}

/// What a subresource answers with, and which verbs it takes.
struct SubresourceShape {
    group: &'static str,
    version: &'static str,
    kind: String,
    verbs: &'static [&'static str],
}

fn subresource_shape(parent: &ResourceType, name: &str) -> SubresourceShape {
    let same = |verbs| SubresourceShape {
        group: "",
        version: "",
        kind: parent.kind.clone(),
        verbs,
    };
    let other = |group, version, kind: &str, verbs| SubresourceShape {
        group,
        version,
        kind: kind.to_string(),
        verbs,
    };
    const READ_WRITE: &[&str] = &["get", "patch", "update"];
    const STREAM: &[&str] = &["create", "get"];
    match name {
        "scale" => other("autoscaling", "v1", "Scale", READ_WRITE),
        "log" => same(&["get"]),
        "exec" => other("", "v1", "PodExecOptions", STREAM),
        "attach" => other("", "v1", "PodAttachOptions", STREAM),
        "portforward" => other("", "v1", "PodPortForwardOptions", STREAM),
        "proxy" => other(
            "",
            "v1",
            &format!("{}ProxyOptions", parent.kind),
            &["create", "delete", "get", "patch", "update"],
        ),
        "binding" => other("", "v1", "Binding", &["create"]),
        "eviction" => other("policy", "v1", "Eviction", &["create"]),
        "token" => other("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        "finalize" => same(&["update"]),
        _ => same(READ_WRITE),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn with_kind(mut value: Value, kind: &str, api_version: &str) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), kind.into());
        object.insert("apiVersion".into(), api_version.into());
    }
    value
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    let versions = APIVersions {
        versions: vec!["v1".to_string()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".to_string(),
            server_address: server_address.to_string(),
        }],
    };
    with_kind(
        serde_json::to_value(versions).expect("serializes"),
        "APIVersions",
        "v1",
    )
}

fn api_group(group: &GroupVersions) -> APIGroup {
    let versions: Vec<GroupVersionForDiscovery> = group
        .versions
        .iter()
        .map(|version| GroupVersionForDiscovery {
            group_version: group_version(&group.group, version),
            version: version.clone(),
        })
        .collect();
    APIGroup {
        name: group.group.clone(),
        preferred_version: versions.first().cloned(),
        server_address_by_client_cidrs: None,
        versions,
    }
}

/// `/apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups = registry
        .groups()
        .iter()
        .filter(|g| !g.group.is_empty())
        .map(api_group)
        .collect();
    with_kind(
        serde_json::to_value(APIGroupList { groups }).expect("serializes"),
        "APIGroupList",
        "v1",
    )
}

/// `/apis/<group>`, if the group exists.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let group = registry
        .groups()
        .into_iter()
        .find(|g| g.group == name && !name.is_empty())?;
    Some(with_kind(
        serde_json::to_value(api_group(&group)).expect("serializes"),
        "APIGroup",
        "v1",
    ))
}

/// `/api/v1`, `/apis/<group>/<version>`, if the group version exists.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.resources(group, version);
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in &types {
        resources.push(APIResource {
            name: t.plural.clone(),
            singular_name: t.singular.clone(),
            namespaced: t.namespaced,
            kind: t.kind.clone(),
            verbs: t.verbs.clone(),
            short_names: (!t.short_names.is_empty()).then(|| t.short_names.clone()),
            categories: (!t.categories.is_empty()).then(|| t.categories.clone()),
            ..Default::default()
        });
        for sub in &t.subresources {
            let shape = subresource_shape(t, sub);
            resources.push(APIResource {
                name: format!("{}/{sub}", t.plural),
                singular_name: String::new(),
                namespaced: t.namespaced,
                group: (!shape.group.is_empty()).then(|| shape.group.to_string()),
                version: (!shape.version.is_empty()).then(|| shape.version.to_string()),
                kind: shape.kind,
                verbs: strings(shape.verbs),
                ..Default::default()
            });
        }
    }
    let list = APIResourceList {
        group_version: group_version(group, version),
        resources,
    };
    Some(with_kind(
        serde_json::to_value(list).expect("serializes"),
        "APIResourceList",
        "v1",
    ))
}

fn aggregated_resource(t: &ResourceType) -> Value {
    let subresources: Vec<Value> = t
        .subresources
        .iter()
        .map(|sub| {
            let shape = subresource_shape(t, sub);
            let (group, version) = if shape.version.is_empty() {
                (t.group.as_str(), t.version.as_str())
            } else {
                (shape.group, shape.version)
            };
            json!({
                "subresource": sub,
                "responseKind": {"group": group, "version": version, "kind": shape.kind},
                "verbs": shape.verbs,
            })
        })
        .collect();
    let mut resource = json!({
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs,
    });
    let object = resource.as_object_mut().expect("an object");
    if !t.short_names.is_empty() {
        object.insert("shortNames".into(), json!(t.short_names));
    }
    if !t.categories.is_empty() {
        object.insert("categories".into(), json!(t.categories));
    }
    if !subresources.is_empty() {
        object.insert("subresources".into(), Value::Array(subresources));
    }
    resource
}

/// Aggregated discovery of the core group (`core = true`, for `/api`) or of every named
/// group (for `/apis`), in the `content_type` version asked for.
pub fn aggregated(registry: &Registry, core: bool, content_type: &str) -> Value {
    let version = if content_type == AGGREGATED_V2 {
        "v2"
    } else {
        "v2beta1"
    };
    let items: Vec<Value> = registry
        .groups()
        .iter()
        .filter(|g| g.group.is_empty() == core)
        .map(|g| {
            let versions: Vec<Value> = g
                .versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .resources(&g.group, v)
                        .iter()
                        .map(|t| aggregated_resource(t))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g.group}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_form() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(Some(kubectl)), Some(AGGREGATED_V2));
        assert_eq!(wants_aggregated(Some("application/json")), None);
        assert_eq!(wants_aggregated(None), None);
    }

    #[test]
    fn legacy_and_aggregated_documents_describe_pods() {
        let registry = Registry::builtin();
        let list = resource_list(&registry, "", "v1").unwrap();
        assert_eq!(list["kind"], "APIResourceList");
        assert_eq!(list["groupVersion"], "v1");
        let pods = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        let eviction = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(
            (eviction["group"].as_str(), eviction["kind"].as_str()),
            (Some("policy"), Some("Eviction"))
        );
        assert!(resource_list(&registry, "apps", "v9").is_none());

        let apis = aggregated(&registry, false, AGGREGATED_V2);
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2");
        let apps = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["subresources"][0]["subresource"], "scale");
        assert_eq!(deploy["subresources"][0]["responseKind"]["kind"], "Scale");
        let core = aggregated(&registry, true, AGGREGATED_V2);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(group_list(&registry)["groups"][0]["name"], "apps");
        assert!(group(&registry, "batch").is_some());
        assert!(group(&registry, "nope").is_none());
    }
}
