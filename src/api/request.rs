//! What a request path asks for, the way kube-apiserver's RequestInfoFactory reads it:
//! discovery, or a verb on a resource (optionally namespaced, named, with a subresource).

use http::Method;

/// A parsed API path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiPath {
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every named group.
    Groups,
    /// `/apis/<group>`: one group's versions.
    Group { group: String },
    /// `/api/v1` or `/apis/<group>/<version>`: the resources of a group version.
    Resources { group: String, version: String },
    /// A resource request.
    Resource(ResourcePath),
}

/// `/api/v1/[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]` and the `/apis` form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

/// Why a path is not an API path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAnApiPath(pub String);

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Parses an API path (without the query string).
pub fn parse(path: &str) -> Result<ApiPath, NotAnApiPath> {
    let parts = segments(path);
    let not_api = || NotAnApiPath(path.to_string());
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Ok(ApiPath::CoreVersions),
        ["apis"] => return Ok(ApiPath::Groups),
        ["apis", group] => {
            return Ok(ApiPath::Group {
                group: group.to_string(),
            })
        }
        ["api", version, rest @ ..] => (String::new(), version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (group.to_string(), version.to_string(), rest),
        _ => return Err(not_api()),
    };
    if rest.is_empty() {
        return Ok(ApiPath::Resources { group, version });
    }
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    // `namespaces/<ns>/<resource>...` is namespaced, except `namespaces/<name>` and
    // `namespaces/<name>/<subresource>` (status, finalize) which are the namespace itself.
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, resource, rest @ ..] if !is_namespace_subresource(resource, rest) => {
            let mut tail = vec![*resource];
            tail.extend_from_slice(rest);
            return finish(
                group,
                version,
                Some(ns.to_string()),
                &tail,
                watch_prefix,
                path,
            );
        }
        rest => (None, rest),
    };
    finish(group, version, namespace, rest, watch_prefix, path)
}

/// `namespaces/<name>/status` and `namespaces/<name>/finalize` address the namespace.
fn is_namespace_subresource(segment: &str, rest: &[&str]) -> bool {
    rest.is_empty() && (segment == "status" || segment == "finalize")
}

fn finish(
    group: String,
    version: String,
    namespace: Option<String>,
    rest: &[&str],
    watch_prefix: bool,
    path: &str,
) -> Result<ApiPath, NotAnApiPath> {
    let (resource, name, subresource) = match rest {
        [resource] => (resource, None, None),
        [resource, name] => (resource, Some(name.to_string()), None),
        [resource, name, subresource] => (
            resource,
            Some(name.to_string()),
            Some(subresource.to_string()),
        ),
        // `pods/<name>/proxy/<path...>` and the like: keep the subresource, the rest is its path.
        [resource, name, subresource, ..] => (
            resource,
            Some(name.to_string()),
            Some(subresource.to_string()),
        ),
        [] => return Err(NotAnApiPath(path.to_string())),
    };
    Ok(ApiPath::Resource(ResourcePath {
        group,
        version,
        namespace,
        resource: resource.to_string(),
        name,
        subresource,
        watch_prefix,
    }))
}

/// The Kubernetes verb of a resource request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The verb of `method` on `path`; `watch` is the `watch` query parameter.
    pub fn of(method: &Method, path: &ResourcePath, watch: bool) -> Option<Verb> {
        let named = path.name.is_some();
        Some(match *method {
            Method::GET | Method::HEAD if path.watch_prefix || watch => Verb::Watch,
            Method::GET | Method::HEAD if named => Verb::Get,
            Method::GET | Method::HEAD => Verb::List,
            // Creating is POST to the collection (or to a subresource such as pods/x/binding).
            Method::POST if named && path.subresource.is_none() => return None,
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE if named => Verb::Delete,
            Method::DELETE => Verb::DeleteCollection,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourcePath {
        match parse(path).unwrap() {
            ApiPath::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(parse("/api").unwrap(), ApiPath::CoreVersions);
        assert_eq!(parse("/apis/").unwrap(), ApiPath::Groups);
        assert_eq!(
            parse("/apis/apps").unwrap(),
            ApiPath::Group {
                group: "apps".into()
            }
        );
        assert_eq!(
            parse("/api/v1").unwrap(),
            ApiPath::Resources {
                group: "".into(),
                version: "v1".into()
            }
        );
        assert_eq!(
            parse("/apis/apps/v1").unwrap(),
            ApiPath::Resources {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert!(parse("/version").is_err());
        assert!(parse("/").is_err());
    }

    #[test]
    fn resource_paths() {
        let pods = resource("/api/v1/namespaces/default/pods");
        assert_eq!(
            (pods.namespace.as_deref(), pods.resource.as_str(), pods.name),
            (Some("default"), "pods", None)
        );
        let log = resource("/api/v1/namespaces/ns1/pods/web-0/log");
        assert_eq!(
            (log.name.as_deref(), log.subresource.as_deref()),
            (Some("web-0"), Some("log"))
        );
        let all_pods = resource("/api/v1/pods");
        assert_eq!(
            (all_pods.namespace, all_pods.resource.as_str()),
            (None, "pods")
        );
        let ns = resource("/api/v1/namespaces/kube-system");
        assert_eq!(
            (ns.namespace, ns.resource.as_str(), ns.name.as_deref()),
            (None, "namespaces", Some("kube-system"))
        );
        let finalize = resource("/api/v1/namespaces/gone/finalize");
        assert_eq!(
            (
                finalize.resource.as_str(),
                finalize.name.as_deref(),
                finalize.subresource.as_deref()
            ),
            ("namespaces", Some("gone"), Some("finalize"))
        );
        let deploy = resource("/apis/apps/v1/namespaces/default/deployments/web/scale");
        assert_eq!(
            (
                deploy.group.as_str(),
                deploy.resource.as_str(),
                deploy.subresource.as_deref()
            ),
            ("apps", "deployments", Some("scale"))
        );
        let node = resource("/api/v1/nodes/n1/status");
        assert_eq!(
            (node.namespace, node.subresource.as_deref()),
            (None, Some("status"))
        );
        let watch = resource("/api/v1/watch/namespaces/default/pods");
        assert!(watch.watch_prefix);
        assert_eq!(watch.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn verbs_follow_method_and_name() {
        let list = resource("/api/v1/namespaces/default/pods");
        let one = resource("/api/v1/namespaces/default/pods/a");
        assert_eq!(Verb::of(&Method::GET, &list, false), Some(Verb::List));
        assert_eq!(Verb::of(&Method::GET, &list, true), Some(Verb::Watch));
        assert_eq!(Verb::of(&Method::GET, &one, false), Some(Verb::Get));
        assert_eq!(
            Verb::of(&Method::DELETE, &list, false),
            Some(Verb::DeleteCollection)
        );
        assert_eq!(Verb::of(&Method::DELETE, &one, false), Some(Verb::Delete));
        assert_eq!(Verb::of(&Method::PATCH, &one, false), Some(Verb::Patch));
        assert_eq!(Verb::of(&Method::OPTIONS, &one, false), None);
        assert_eq!(Verb::of(&Method::POST, &one, false), None);
        assert_eq!(Verb::of(&Method::POST, &list, false), Some(Verb::Create));
        let eviction = resource("/api/v1/namespaces/default/pods/a/eviction");
        assert_eq!(
            Verb::of(&Method::POST, &eviction, false),
            Some(Verb::Create)
        );
    }
}
