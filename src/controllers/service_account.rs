//! The service account controller: every namespace has a `default` ServiceAccount, created
//! when the namespace is and again whenever it is deleted, as upstream's
//! serviceaccounts-controller keeps it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client};

use super::ControllerError;

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

struct Context {
    client: Client,
}

pub async fn run(client: Client) {
    let context = Context {
        client: client.clone(),
    };
    super::run_per_namespace::<ServiceAccount, _, _, _>(
        "serviceaccount",
        &client,
        DEFAULT,
        reconcile,
        context,
    )
    .await;
}

async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let Some(name) = super::to_fill(&namespace) else {
        return Ok(Action::await_change());
    };
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
