//! A typed client of one server's server-to-server endpoints, for tools, benchmarks and
//! tests that talk to a store directly (with a server certificate).

use std::time::Duration;

use super::wire::{self, Proposed, RangeRequest, RemoteError, Status};
use crate::client::{ClientError, HttpsClient};
use crate::store::{Command, ListPage};

#[derive(Debug, thiserror::Error)]
pub enum RemoteCallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("undecodable answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// One server, reached at `base` (`https://host:port`).
#[derive(Clone)]
pub struct RemoteServer {
    client: HttpsClient,
    base: String,
    timeout: Duration,
}

impl RemoteServer {
    pub fn new(client: HttpsClient, base: &str) -> RemoteServer {
        RemoteServer {
            client,
            base: base.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<T, RemoteCallError> {
        let url = format!("{}{}", self.base, path);
        let response = self
            .client
            .post(&url, wire::CONTENT_TYPE, body, self.timeout)
            .await?;
        if !response.status.is_success() {
            return Err(RemoteCallError::Status {
                url,
                status: response.status,
                body: String::from_utf8_lossy(&response.body).into_owned(),
            });
        }
        let answer: Result<T, RemoteError> =
            wire::decode(&response.body).map_err(|e| RemoteCallError::Decode {
                url,
                reason: e.to_string(),
            })?;
        Ok(answer?)
    }

    /// Proposes a write on this server, which must be the leader (`NotLeader` otherwise).
    pub async fn propose(&self, command: &Command) -> Result<Proposed, RemoteCallError> {
        self.call(wire::PROPOSE, wire::encode(command)).await
    }

    /// Lists keys under a prefix: linearizable, or this server's applied state with `local`.
    pub async fn range(&self, request: &RangeRequest) -> Result<ListPage, RemoteCallError> {
        self.call(wire::RANGE, wire::encode(request)).await
    }

    /// Every key under `prefix`, following continue tokens.
    pub async fn range_all(&self, prefix: &str, local: bool) -> Result<ListPage, RemoteCallError> {
        let mut request = RangeRequest {
            prefix: prefix.to_string(),
            local,
            limit: 1000,
            continue_token: None,
        };
        let mut all = self.range(&request).await?;
        while let Some(token) = all.continue_token.take() {
            request.continue_token = Some(token);
            let page = self.range(&request).await?;
            all.items.extend(page.items);
            all.continue_token = page.continue_token;
        }
        Ok(all)
    }

    /// This server's view of the cluster.
    pub async fn status(&self) -> Result<Status, RemoteCallError> {
        let url = format!("{}{}", self.base, wire::STATUS);
        let response = self.client.get(&url, self.timeout).await?;
        if !response.status.is_success() {
            return Err(RemoteCallError::Status {
                url,
                status: response.status,
                body: String::from_utf8_lossy(&response.body).into_owned(),
            });
        }
        serde_json::from_slice(&response.body).map_err(|e| RemoteCallError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}
