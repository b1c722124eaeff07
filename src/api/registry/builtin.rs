//! The built-in kinds of the Kubernetes minor kedge serves, with the discovery details
//! upstream gives them (short names, categories, verbs, subresources).

use k8s_openapi::api::{
    apps, authentication, authorization, autoscaling, batch, certificates, coordination, core,
    discovery, events, networking, policy, rbac, scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

use serde_json::Value;

use super::{ResourceType, SchemaError, ALL_VERBS, CREATE_ONLY};

/// Whether a k8s-openapi scope is namespaced.
trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// Deserializes `value` as `T` and serializes it back, reporting the path of the first
/// field that does not fit.
fn check<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, SchemaError> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| SchemaError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
        causes: Vec::new(),
    })?;
    serde_json::to_value(typed).map_err(|e| SchemaError {
        field: String::new(),
        message: e.to_string(),
        causes: Vec::new(),
    })
}

fn schema<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

struct Spec<'a> {
    short: &'a [&'a str],
    categories: &'a [&'a str],
    verbs: &'a [&'a str],
    subresources: &'a [&'a str],
    stored: bool,
}

const PLAIN: Spec<'static> = Spec {
    short: &[],
    categories: &[],
    verbs: ALL_VERBS,
    subresources: &[],
    stored: true,
};

fn define<T>(spec: Spec<'_>) -> ResourceType
where
    T: Resource + ListableResource + DeserializeOwned + Serialize + JsonSchema + 'static,
    T::Scope: Scope,
{
    ResourceType {
        group: T::GROUP.to_string(),
        version: T::VERSION.to_string(),
        kind: T::KIND.to_string(),
        list_kind: T::LIST_KIND.to_string(),
        plural: T::URL_PATH_SEGMENT.to_string(),
        singular: T::KIND.to_ascii_lowercase(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: strings(spec.short),
        categories: strings(spec.categories),
        verbs: strings(spec.verbs),
        subresources: strings(spec.subresources),
        stored: spec.stored,
        check: Arc::new(check::<T>),
        schema: Arc::new(schema::<T>),
        scale: None,
        crd: None,
        columns: Vec::new(),
    }
}

/// A review kind: create-only, answered and not stored. k8s-openapi does not mark these
/// listable, so they are described by hand.
fn review<T: Resource + DeserializeOwned + Serialize + JsonSchema + 'static>(
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group: T::GROUP.to_string(),
        version: T::VERSION.to_string(),
        kind: T::KIND.to_string(),
        list_kind: format!("{}List", T::KIND),
        plural: T::URL_PATH_SEGMENT.to_string(),
        singular: T::KIND.to_ascii_lowercase(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        verbs: strings(CREATE_ONLY),
        subresources: Vec::new(),
        stored: false,
        check: Arc::new(check::<T>),
        schema: Arc::new(schema::<T>),
        scale: None,
        crd: None,
        columns: Vec::new(),
    }
}

const STATUS: &[&str] = &["status"];
const SCALE_STATUS: &[&str] = &["scale", "status"];

/// Every built-in kind, in the order discovery lists them.
pub fn types() -> Vec<ResourceType> {
    vec![
        // core/v1
        define::<core::v1::ConfigMap>(Spec {
            short: &["cm"],
            ..PLAIN
        }),
        define::<core::v1::Endpoints>(Spec {
            short: &["ep"],
            ..PLAIN
        }),
        define::<core::v1::Event>(Spec {
            short: &["ev"],
            ..PLAIN
        }),
        define::<core::v1::LimitRange>(Spec {
            short: &["limits"],
            ..PLAIN
        }),
        define::<core::v1::Namespace>(Spec {
            short: &["ns"],
            verbs: &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ],
            subresources: &["finalize", "status"],
            ..PLAIN
        }),
        define::<core::v1::Node>(Spec {
            short: &["no"],
            subresources: &["proxy", "status"],
            ..PLAIN
        }),
        define::<core::v1::PersistentVolumeClaim>(Spec {
            short: &["pvc"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<core::v1::PersistentVolume>(Spec {
            short: &["pv"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<core::v1::Pod>(Spec {
            short: &["po"],
            categories: &["all"],
            subresources: &[
                "attach",
                "binding",
                "ephemeralcontainers",
                "eviction",
                "exec",
                "log",
                "portforward",
                "proxy",
                "resize",
                "status",
            ],
            ..PLAIN
        }),
        define::<core::v1::PodTemplate>(PLAIN),
        define::<core::v1::ReplicationController>(Spec {
            short: &["rc"],
            categories: &["all"],
            subresources: SCALE_STATUS,
            ..PLAIN
        }),
        define::<core::v1::ResourceQuota>(Spec {
            short: &["quota"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<core::v1::Secret>(PLAIN),
        define::<core::v1::ServiceAccount>(Spec {
            short: &["sa"],
            subresources: &["token"],
            ..PLAIN
        }),
        define::<core::v1::Service>(Spec {
            short: &["svc"],
            categories: &["all"],
            subresources: &["proxy", "status"],
            ..PLAIN
        }),
        // apps/v1
        define::<apps::v1::ControllerRevision>(PLAIN),
        define::<apps::v1::DaemonSet>(Spec {
            short: &["ds"],
            categories: &["all"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<apps::v1::Deployment>(Spec {
            short: &["deploy"],
            categories: &["all"],
            subresources: SCALE_STATUS,
            ..PLAIN
        }),
        define::<apps::v1::ReplicaSet>(Spec {
            short: &["rs"],
            categories: &["all"],
            subresources: SCALE_STATUS,
            ..PLAIN
        }),
        define::<apps::v1::StatefulSet>(Spec {
            short: &["sts"],
            categories: &["all"],
            subresources: SCALE_STATUS,
            ..PLAIN
        }),
        // authentication.k8s.io/v1, authorization.k8s.io/v1
        review::<authentication::v1::SelfSubjectReview>(false),
        review::<authentication::v1::TokenReview>(false),
        review::<authorization::v1::LocalSubjectAccessReview>(true),
        review::<authorization::v1::SelfSubjectAccessReview>(false),
        review::<authorization::v1::SelfSubjectRulesReview>(false),
        review::<authorization::v1::SubjectAccessReview>(false),
        // autoscaling/v2 (preferred), v1
        define::<autoscaling::v2::HorizontalPodAutoscaler>(Spec {
            short: &["hpa"],
            categories: &["all"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<autoscaling::v1::HorizontalPodAutoscaler>(Spec {
            short: &["hpa"],
            categories: &["all"],
            subresources: STATUS,
            ..PLAIN
        }),
        // batch/v1
        define::<batch::v1::CronJob>(Spec {
            short: &["cj"],
            categories: &["all"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<batch::v1::Job>(Spec {
            categories: &["all"],
            subresources: STATUS,
            ..PLAIN
        }),
        // certificates.k8s.io/v1
        define::<certificates::v1::CertificateSigningRequest>(Spec {
            short: &["csr"],
            subresources: &["approval", "status"],
            ..PLAIN
        }),
        // coordination.k8s.io/v1
        define::<coordination::v1::Lease>(PLAIN),
        // discovery.k8s.io/v1
        define::<discovery::v1::EndpointSlice>(PLAIN),
        // events.k8s.io/v1
        define::<events::v1::Event>(Spec {
            short: &["ev"],
            ..PLAIN
        }),
        // networking.k8s.io/v1
        define::<networking::v1::IngressClass>(PLAIN),
        define::<networking::v1::IPAddress>(PLAIN),
        define::<networking::v1::ServiceCIDR>(Spec {
            subresources: STATUS,
            ..PLAIN
        }),
        define::<networking::v1::Ingress>(Spec {
            short: &["ing"],
            subresources: STATUS,
            ..PLAIN
        }),
        define::<networking::v1::NetworkPolicy>(Spec {
            short: &["netpol"],
            ..PLAIN
        }),
        // policy/v1
        define::<policy::v1::PodDisruptionBudget>(Spec {
            short: &["pdb"],
            subresources: STATUS,
            ..PLAIN
        }),
        // rbac.authorization.k8s.io/v1
        define::<rbac::v1::ClusterRoleBinding>(PLAIN),
        define::<rbac::v1::ClusterRole>(PLAIN),
        define::<rbac::v1::RoleBinding>(PLAIN),
        define::<rbac::v1::Role>(PLAIN),
        // scheduling.k8s.io/v1
        define::<scheduling::v1::PriorityClass>(Spec {
            short: &["pc"],
            ..PLAIN
        }),
        // storage.k8s.io/v1
        define::<storage::v1::CSIDriver>(PLAIN),
        define::<storage::v1::CSINode>(PLAIN),
        define::<storage::v1::CSIStorageCapacity>(PLAIN),
        define::<storage::v1::StorageClass>(Spec {
            short: &["sc"],
            ..PLAIN
        }),
        define::<storage::v1::VolumeAttachment>(Spec {
            subresources: STATUS,
            ..PLAIN
        }),
        // apiextensions.k8s.io/v1
        custom_resource_definition(),
    ]
}

/// CustomResourceDefinitions: decoded like every kind, then held to upstream's rules for a
/// definition (names, versions, schemas), which a decode cannot see.
fn custom_resource_definition() -> ResourceType {
    type Crd = apiextensions::v1::CustomResourceDefinition;
    ResourceType {
        check: Arc::new(|value| {
            let typed = check::<Crd>(value)?;
            crate::api::crd::validation::check(value)?;
            Ok(typed)
        }),
        ..define::<Crd>(Spec {
            short: &["crd", "crds"],
            categories: &["api-extensions"],
            subresources: STATUS,
            ..PLAIN
        })
    }
}
