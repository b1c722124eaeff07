//! The receiving side of the server-to-server protocol ([`super::wire`]): Raft RPCs from
//! peers, and writes and read-index requests forwarded by followers. The API server routes
//! `wire::PREFIX` here only for callers with a server certificate.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::node::RaftNode;
use super::wire::{self, RangeRequest, RemoteError};
use crate::store::{Command, ListOptions, Replicator, StoreError};

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body)
        .expect("static response parts are valid")
}

fn bad_request(reason: String) -> Response<Bytes> {
    respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::from(reason))
}

fn answer<T: Serialize>(value: &T) -> Response<Bytes> {
    respond(StatusCode::OK, wire::CONTENT_TYPE, wire::encode(value))
}

fn parse<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Response<Bytes>> {
    wire::decode(body).map_err(|e| bad_request(format!("malformed {path} request: {e}")))
}

/// Handles one request under [`wire::PREFIX`].
pub async fn handle(node: &RaftNode, method: &Method, path: &str, body: Bytes) -> Response<Bytes> {
    match (method, path) {
        (&Method::GET, wire::STATUS) => respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(serde_json::to_vec(&node.status()).expect("status serializes")),
        ),
        (&Method::POST, path) => match post(node, path, &body).await {
            Ok(response) | Err(response) => response,
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from(format!("no server endpoint {method} {path}")),
        ),
    }
}

async fn post(
    node: &RaftNode,
    path: &str,
    body: &[u8],
) -> Result<Response<Bytes>, Response<Bytes>> {
    let raft = node.raft();
    Ok(match path {
        wire::APPEND => answer(&raft.append_entries(parse(path, body)?).await),
        wire::VOTE => answer(&raft.vote(parse(path, body)?).await),
        wire::SNAPSHOT => answer(&raft.install_snapshot(parse(path, body)?).await),
        wire::PROPOSE => {
            let command: Command = parse(path, body)?;
            answer(&node.propose_local(command).await)
        }
        wire::READ_INDEX => {
            let () = parse(path, body)?;
            answer(&node.read_index_local().await)
        }
        wire::RANGE => {
            let request: RangeRequest = parse(path, body)?;
            answer(&range(node, request).await)
        }
        other => {
            return Err(respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from(format!("no server endpoint POST {other}")),
            ))
        }
    })
}

async fn range(node: &RaftNode, request: RangeRequest) -> wire::RangeResponse {
    if !request.local {
        node.read_barrier().await?;
    }
    let engine = node.engine().clone();
    let options = ListOptions {
        limit: request.limit,
        continue_token: request.continue_token,
        revision: None,
    };
    tokio::task::spawn_blocking(move || engine.list(&request.prefix, &options))
        .await
        .map_err(|e| RemoteError::Store(StoreError::Internal(format!("range task: {e}"))))?
        .map_err(RemoteError::Store)
}
