//! The service account controller: every namespace has a `default` ServiceAccount, created
//! when the namespace is and again whenever it is deleted, as upstream's
//! serviceaccounts-controller keeps it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};

use super::ControllerError;

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

struct Context {
    client: Client,
}

pub async fn run(client: Client) {
    let results = super::per_namespace::<ServiceAccount>(&client, DEFAULT).run(
        reconcile,
        super::retry_later,
        Arc::new(Context { client }),
    );
    super::drive("serviceaccount", results).await;
}

async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    if super::terminating(&namespace) {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let accounts: Api<ServiceAccount> = Api::namespaced(context.client.clone(), &name);
    let failed = || format!("creating the {DEFAULT} ServiceAccount in namespace {name}");
    if accounts
        .get_opt(DEFAULT)
        .await
        .map_err(ControllerError::new(failed()))?
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.to_string()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => tracing::info!(namespace = %name, "created the default ServiceAccount"),
        // Created meanwhile, or the namespace went: nothing to do either way.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
        Err(e) => return Err(ControllerError::new(failed())(e)),
    }
    Ok(Action::await_change())
}
