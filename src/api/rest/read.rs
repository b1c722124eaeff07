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

/// Objects read from the store per round trip: a list of everything is read in chunks
/// (pinned to one revision) so the raw page and the decoded objects never all sit in memory.
const CHUNK: usize = 500;

/// Lists what `call` selects, `limit` objects at most (0: all), from `continue_token`.
pub(super) async fn collect(
    call: &Call<'_>,
    selectors: &Selectors,
    limit: usize,
) -> Result<Listing, ApiError> {
    let mut items = Vec::new();
    let (revision, continue_token) = visit(call, selectors, limit, |object| {
        items.push(object);
        Ok(())
    })
    .await?;
    Ok(Listing {
        items,
        revision,
        continue_token,
    })
}

/// Hands each object `call` selects to `each`, `limit` at most (0: all), from the request's
/// continue token; returns the listing's revision and the token for the rest.
async fn visit(
    call: &Call<'_>,
    selectors: &Selectors,
    limit: usize,
    mut each: impl FnMut(Value) -> Result<(), ApiError>,
) -> Result<(u64, Option<String>), ApiError> {
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
    let mut found = 0;
    loop {
        // Asking for just what is still missing keeps the page's continue token exact.
        let wanted = if limit == 0 {
            CHUNK
        } else {
            (limit - found).min(CHUNK)
        };
        let options = ListOptions {
            limit: wanted,
            continue_token: continue_token.clone(),
            revision: exact_revision,
        };
        // Later chunks carry the first one's revision in their token.
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
                found += 1;
                each(object)?;
            }
        }
        continue_token = page.continue_token;
        if continue_token.is_none() || (limit > 0 && found >= limit) {
            return Ok((page.revision, continue_token));
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
    let list_meta = |revision: u64, token: &Option<String>| {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if let Some(token) = token {
            meta["continue"] = json!(token);
        }
        meta
    };
    if table::wants_table(call.accept.as_deref()) {
        let listing = collect(call, &selectors, limit).await?;
        let meta = list_meta(listing.revision, &listing.continue_token);
        return Ok(call.ok(
            StatusCode::OK,
            &crate::api::crd::table(&call.resource, &listing.items, meta, include_object(call)),
        ));
    }
    // Each object is encoded as soon as it is read, so a large list holds its bytes, not
    // every object decoded at once. Metadata goes last: only then is the token known.
    let mut body = format!(
        r#"{{"kind":{},"apiVersion":{},"items":["#,
        json!(call.resource.list_kind),
        json!(call.resource.api_version())
    )
    .into_bytes();
    let mut first = true;
    let (revision, token) = visit(call, &selectors, limit, |object| {
        if !std::mem::take(&mut first) {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &object)
            .map_err(|e| ApiError::Internal(format!("encoding a list: {e}")))
    })
    .await?;
    body.extend_from_slice(br#"],"metadata":"#);
    serde_json::to_writer(&mut body, &list_meta(revision, &token))
        .map_err(|e| ApiError::Internal(format!("encoding a list: {e}")))?;
    body.push(b'}');
    Ok(call.ok_bytes(StatusCode::OK, body.into()))
}
