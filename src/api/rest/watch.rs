//! watch: a stream of newline-separated JSON events (ADDED, MODIFIED, DELETED, BOOKMARK,
//! ERROR), from a resourceVersion in the history window or from the current state, filtered
//! by selectors the way upstream does (an object that stops matching is DELETED for the
//! watcher, one that starts matching is ADDED).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::read::{collect, Selectors};
use super::{ApiError, Call};
use crate::api::error::Target;
use crate::api::http::Body;
use crate::api::object;
use crate::api::registry::ResourceType;
use crate::api::table::{self, IncludeObject};
use crate::store::{Event, EventKind, StoreError, Watcher};

/// A watch without timeoutSeconds ends after this, like kube-apiserver's request timeout, so
/// clients re-list now and then.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// How events are rendered for one watcher.
struct Renderer {
    resource: Arc<ResourceType>,
    selectors: Selectors,
    table: bool,
    include: IncludeObject,
}

impl Renderer {
    fn event(&self, kind: &str, object: Value) -> Bytes {
        let object = if self.table && kind != "ERROR" && kind != "BOOKMARK" {
            crate::api::crd::table(&self.resource, &[object], json!({}), self.include)
        } else {
            object
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).expect("events serialize");
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The event a watcher sees for a store event, if any.
    fn translate(&self, event: &Event) -> Result<Option<Bytes>, ApiError> {
        let prev = match &event.prev {
            Some(kv) => Some(super::served(&self.resource, kv)?),
            None => None,
        };
        let prev_matches = prev.as_ref().is_some_and(|p| self.selectors.matches(p));
        Ok(match event.kind {
            EventKind::Put => {
                let current = super::served(&self.resource, &event.kv)?;
                match (self.selectors.matches(&current), prev_matches) {
                    (true, true) => Some(self.event("MODIFIED", current)),
                    (true, false) => Some(self.event("ADDED", current)),
                    (false, true) => Some(self.event("DELETED", current)),
                    (false, false) => None,
                }
            }
            EventKind::Delete => match prev {
                Some(mut gone) if prev_matches => {
                    object::set_resource_version(&mut gone, event.kv.mod_revision);
                    Some(self.event("DELETED", gone))
                }
                _ => None,
            },
        })
    }

    fn bookmark(&self, revision: u64) -> Bytes {
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        });
        self.event("BOOKMARK", object)
    }

    /// The ERROR event of a store failure (410 Expired when history was compacted).
    fn store_error(&self, error: StoreError) -> Bytes {
        self.error(&ApiError::from_store(
            error,
            Target::new(&self.resource, ""),
        ))
    }

    fn error(&self, error: &ApiError) -> Bytes {
        self.event("ERROR", crate::api::status::to_value(&error.status()))
    }
}

fn streaming(receiver: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(chunk)),
            receiver,
        ))
    });
    StreamBody::new(stream)
        .map_err(|never| match never {})
        .boxed()
}

pub(super) async fn watch(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let selectors = Selectors::parse(call)?;
    let timeout = match call.query("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let bookmarks = super::query_bool(call.query("allowWatchBookmarks"));
    let requested = match call.query("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let renderer = Renderer {
        resource: call.resource.clone(),
        selectors,
        table: table::wants_table(call.accept.as_deref()),
        include: IncludeObject::parse(call.query("includeObject")),
    };
    // Without a resourceVersion: the current state as ADDED events, then changes after it.
    let (initial, start) = match requested {
        Some(rv) => (Vec::new(), rv),
        None => {
            let listing = collect(call, &renderer.selectors, 0).await?;
            (listing.items, listing.revision)
        }
    };
    let prefix = call.resource.namespace_prefix(call.namespace());
    let watcher = call.api.store.watch(&prefix, start);
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        for object in initial {
            if sender.send(renderer.event("ADDED", object)).await.is_err() {
                return;
            }
        }
        match watcher {
            Ok(watcher) => follow(watcher, &renderer, &sender, timeout, bookmarks).await,
            Err(e) => {
                let _ = sender.send(renderer.store_error(e)).await;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(streaming(receiver))
        .expect("static response parts are valid"))
}

async fn follow(
    mut watcher: Watcher,
    renderer: &Renderer,
    sender: &mpsc::Sender<Bytes>,
    timeout: Duration,
    bookmarks: bool,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        let chunk = tokio::select! {
            _ = &mut deadline => return,
            _ = sender.closed() => return,
            _ = ticker.tick(), if bookmarks => Some(renderer.bookmark(watcher.revision())),
            next = watcher.next() => match next {
                None => return,
                Some(Ok(event)) => match renderer.translate(&event) {
                    Ok(chunk) => chunk,
                    Err(e) => Some(renderer.error(&e)),
                },
                Some(Err(e)) => {
                    let _ = sender.send(renderer.store_error(e)).await;
                    return;
                }
            },
        };
        if let Some(chunk) = chunk {
            if sender.send(chunk).await.is_err() {
                return;
            }
        }
    }
}
