//! get and list.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::http::Body;
use crate::api::object;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::table::{self, IncludeObject};
use crate::store::{Consistency, ListOptions, StoreError};

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// `resourceVersion=0` reads may be served from this replica without a quorum round.
fn consistency(call: &Call<'_>) -> Consistency {
    match call.query("resourceVersion") {
        Some("0") => Consistency::Local,
        _ => Consistency::Linearizable,
    }
}

fn include_object(call: &Call<'_>) -> IncludeObject {
    IncludeObject::parse(call.query("includeObject"))
}

pub(super) async fn get(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    let kv = call.load(name, consistency(call)).await?;
    let object = call.decode(&kv)?;
    if table::wants_table(call.accept.as_deref()) {
        let meta = json!({"resourceVersion": kv.mod_revision.to_string()});
        return Ok(call.ok(
            StatusCode::OK,
            &crate::api::crd::table(&call.resource, &[object], meta, include_object(call)),
        ));
    }
    Ok(call.ok(StatusCode::OK, &object))
}

/// The selectors of a list or watch.
pub(super) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(call: &Call<'_>) -> Result<Selectors, ApiError> {
        let labels = LabelSelector::parse(call.query("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(
            call.query("fieldSelector").unwrap_or_default(),
            &call.resource.kind,
        )
        .map_err(ApiError::BadRequest)?;
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object::labels(object)) && self.fields.matches(object)
    }
}

/// One list result: matching objects, its revision and the token for the rest.
pub(super) struct Listing {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

/// Lists what `call` selects, `limit` objects at most (0: all), from `continue_token`.
pub(super) async fn collect(
    call: &Call<'_>,
    selectors: &Selectors,
    limit: usize,
) -> Result<Listing, ApiError> {
    let prefix = call.resource.namespace_prefix(call.namespace());
    let mut continue_token = call
        .query("continue")
        .map(str::to_string)
        .filter(|t| !t.is_empty());
    let exact_revision = match (
        call.query("resourceVersionMatch"),
        call.query("resourceVersion"),
    ) {
        (Some("Exact"), Some(rv)) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
        _ => None,
    };
    let had_token = continue_token.is_some();
    let mut items = Vec::new();
    loop {
        // Asking for just what is still missing keeps the page's continue token exact.
        let wanted = if limit == 0 { 0 } else { limit - items.len() };
        let options = ListOptions {
            limit: wanted,
            continue_token: continue_token.clone(),
            revision: exact_revision,
        };
        let page = call
            .api
            .store
            .list(&prefix, options, consistency(call))
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if had_token => {
                    ApiError::Expired(CONTINUE_EXPIRED.to_string())
                }
                StoreError::InvalidContinue(_) => {
                    ApiError::BadRequest("invalid continue token".to_string())
                }
                other => ApiError::from_store(other, call.target("")),
            })?;
        for kv in &page.items {
            let object = call.decode(kv)?;
            if selectors.matches(&object) {
                items.push(object);
            }
        }
        continue_token = page.continue_token;
        if continue_token.is_none() || (limit > 0 && items.len() >= limit) {
            return Ok(Listing {
                items,
                revision: page.revision,
                continue_token,
            });
        }
    }
}

pub(super) async fn list(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let selectors = Selectors::parse(call)?;
    let limit = match call.query("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?
            .max(0) as usize,
    };
    let listing = collect(call, &selectors, limit).await?;
    let mut meta = json!({"resourceVersion": listing.revision.to_string()});
    if let Some(token) = &listing.continue_token {
        meta["continue"] = json!(token);
    }
    if table::wants_table(call.accept.as_deref()) {
        return Ok(call.ok(
            StatusCode::OK,
            &crate::api::crd::table(&call.resource, &listing.items, meta, include_object(call)),
        ));
    }
    let list = json!({
        "kind": call.resource.list_kind,
        "apiVersion": call.resource.api_version(),
        "metadata": meta,
        "items": listing.items,
    });
    Ok(call.ok(StatusCode::OK, &list))
}
