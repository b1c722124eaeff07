//! The in-process transport: a kube-rs [`kube::Client`] whose requests go straight to this
//! server's API router — same decoding, defaulting, validation, admission and watch as
//! over HTTPS, without TCP or TLS (DESIGN.md rule 1). Components in the server process
//! (scheduler, controllers, the local kubelet) each get one under their own identity.

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;

use crate::api::Router;
use crate::auth::{UserInfo, AUTHENTICATED_GROUP};

/// A client acting as `user` (in `groups`, and `system:authenticated`), served by `router`.
pub fn in_process(router: Arc<Router>, user: &str, groups: &[&str]) -> kube::Client {
    let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    groups.push(AUTHENTICATED_GROUP.to_string());
    let identity = UserInfo {
        name: user.to_string(),
        groups,
    };
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let router = router.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(router.handle_as(identity, request).await) }
    });
    kube::Client::new(service, "default")
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kube::runtime::{watcher, WatchStreamExt};

    use super::*;
    use crate::api::registry::Registry;
    use crate::api::services::ServiceNetwork;
    use crate::auth::Authenticator;

    fn config_map(name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {"key": value},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn components_use_the_api_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::direct_store(dir.path());
        let api = crate::api::Api::new(store, Registry::builtin(), ServiceNetwork::default());
        let api = Arc::new(api);
        crate::api::bootstrap::ensure_namespaces(&api)
            .await
            .unwrap();
        let router = Arc::new(Router::new(api, Authenticator::default(), None));
        let client = in_process(router, "system:kube-scheduler", &["kedge:components"]);

        // Who the API sees.
        let review: SelfSubjectReview = serde_json::from_value(serde_json::json!({})).unwrap();
        let review = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .unwrap();
        let user = review.status.unwrap().user_info.unwrap();
        assert_eq!(user.username.as_deref(), Some("system:kube-scheduler"));
        assert_eq!(
            user.groups.unwrap(),
            vec!["kedge:components", "system:authenticated"]
        );

        // Writes go through the same defaulting, validation and patching as over HTTPS.
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let created = maps
            .create(&PostParams::default(), &config_map("settings", "1"))
            .await
            .unwrap();
        assert!(created.metadata.uid.is_some());
        let err = maps
            .create(&PostParams::default(), &config_map("Bad_Name", "1"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 422),
            "{err}"
        );
        let patched = maps
            .patch(
                "settings",
                &PatchParams::apply("scheduler"),
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "data": {"key": "2"},
                })),
            )
            .await;
        assert!(
            patched.is_err(),
            "another manager owns data.key: a conflict"
        );
        maps.patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"key": "2"}})),
        )
        .await
        .unwrap();

        // kube-runtime's watcher (list, then watch) sees the state and then changes.
        let mut events = watcher(maps.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        let first = events.try_next().await.unwrap().unwrap();
        assert_eq!(first.data.unwrap()["key"], "2");
        maps.create(&PostParams::default(), &config_map("second", "3"))
            .await
            .unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), events.try_next())
            .await
            .expect("the watch delivers")
            .unwrap()
            .unwrap();
        assert_eq!(next.metadata.name.as_deref(), Some("second"));
    }
}
