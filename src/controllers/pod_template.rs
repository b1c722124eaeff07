//! Pods from a workload's pod template, as upstream's `GetPodFromTemplate`: the template's
//! labels, annotations, finalizers and spec, `generateName` `<owner>-`, and the owner's
//! controller reference.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// A pod for `template` owned by `owner` (named `owner_name`); the API names it from
/// `generateName` unless the caller sets `metadata.name`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner_name: &str,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{owner_name}-")),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}
