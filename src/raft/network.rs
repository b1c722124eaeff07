//! openraft's network: Raft RPCs to peers as HTTPS POSTs of postcard messages, over the
//! shared [`HttpsClient`] (HTTP/2, one connection per peer, mutual TLS).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Node, NodeId, TypeConfig};
use super::wire;
use crate::client::{ClientError, HttpsClient};

/// Creates a connection handle per peer.
#[derive(Clone)]
pub struct Network {
    client: HttpsClient,
}

impl Network {
    pub fn new(client: HttpsClient) -> Network {
        Network { client }
    }
}

/// The RPC path to one peer.
pub struct Peer {
    client: HttpsClient,
    target: NodeId,
    base: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            client: self.client.clone(),
            target,
            base: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{}", self.base, path);
        let response = self
            .client
            .post(&url, wire::CONTENT_TYPE, wire::encode(request), timeout)
            .await
            .map_err(|e| match e {
                ClientError::Timeout { .. }
                | ClientError::Transport { .. }
                | ClientError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        if !response.status.is_success() {
            let reason = PeerError(format!(
                "{url} answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&reason)));
        }
        let answer: Result<Resp, RaftError<NodeId, E>> =
            wire::decode(&response.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(wire::APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(wire::SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(wire::VOTE, &rpc, option.hard_ttl()).await
    }
}
