//! One server's Raft node: opens the log and the engine, starts openraft, forms the initial
//! membership, and implements the store's [`Replicator`]: writes go to the leader (forwarded
//! over HTTPS from followers), linearizable reads wait for the leader's read index.
//! Also runs the background checkpoint and history compaction loops.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::watch;

use super::batcher::Batcher;
use super::log::wal::{Wal, WalOptions};
use super::log::LogStore;
use super::network::Network;
use super::state_machine::{CheckpointRequest, StateMachine};
use super::types::{Node, NodeId, Raft};
use super::wire::{self, Proposed, RemoteError};
use crate::client::{ClientError, HttpsClient};
use crate::store::{Command, CommandOutcome, Engine, Replicator, StoreError};

/// How a server's Raft node is set up.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub node_id: NodeId,
    /// Base URL peers reach this server at (`https://host:port`).
    pub advertise_url: String,
    /// The initial members (including this node) used when the log is empty.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Directory of the log, engine and snapshots.
    pub db_dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    pub checkpoint_interval: Duration,
    /// Keep at least this much history for watchers and paged lists ...
    pub history_window: Duration,
    /// ... but never more than this many revisions.
    pub history_revisions: u64,
    /// Page cache of the engine.
    pub engine_cache_bytes: usize,
}

impl RaftConfig {
    /// Defaults for a server with id `node_id` reachable at `advertise_url`, alone.
    pub fn single(node_id: NodeId, advertise_url: &str, db_dir: &Path) -> RaftConfig {
        RaftConfig {
            node_id,
            advertise_url: advertise_url.to_string(),
            initial_members: BTreeMap::from([(node_id, advertise_url.to_string())]),
            db_dir: db_dir.to_path_buf(),
            heartbeat: Duration::from_millis(150),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: 10_000,
            checkpoint_interval: Duration::from_secs(30),
            history_window: Duration::from_secs(300),
            history_revisions: 10_000,
            engine_cache_bytes: 16 << 20,
        }
    }
}

/// Failures to start a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("opening the store engine: {0}")]
    Engine(#[from] crate::store::EngineError),
    #[error("opening the Raft log: {0}")]
    Log(#[from] super::log::wal::WalError),
    #[error("Raft storage: {0}")]
    Storage(String),
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// A running Raft node. Share it as `Arc<RaftNode>`.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    engine: Arc<Engine>,
    log: LogStore,
    batcher: Batcher,
    client: HttpsClient,
    stop: watch::Sender<bool>,
}

/// How long a write or read barrier waits for a leader or for the leader's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding the leader for one request (leadership may move meanwhile).
const FORWARD_ATTEMPTS: usize = 5;

fn check_node_id(db_dir: &Path, node_id: NodeId) -> Result<(), NodeError> {
    let path = db_dir.join("node-id");
    let err = |reason: String| NodeError::DataDir {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(stored) => {
            let stored: NodeId = stored
                .trim()
                .parse()
                .map_err(|_| err(format!("not a node id: {stored:?}")))?;
            if stored != node_id {
                return Err(err(format!(
                    "this data dir belongs to Raft node {stored}, not {node_id}; use --raft-id {stored} or another --data-dir"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{node_id}\n")).map_err(|e| err(e.to_string()))?;
            std::fs::File::open(db_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| err(e.to_string()))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl RaftNode {
    /// Opens the node's storage and starts Raft. On an empty log, forms the cluster from
    /// `initial_members`.
    pub async fn start(
        config: RaftConfig,
        client: HttpsClient,
    ) -> Result<Arc<RaftNode>, NodeError> {
        let dir = &config.db_dir;
        std::fs::create_dir_all(dir).map_err(|e| NodeError::DataDir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        check_node_id(dir, config.node_id)?;
        let engine = Arc::new(Engine::open(
            &dir.join("state.redb"),
            config.engine_cache_bytes,
        )?);
        let (wal, recovered) = Wal::open(&dir.join("log"), WalOptions::default())?;
        if recovered.truncated_bytes > 0 {
            tracing::warn!(bytes = recovered.truncated_bytes, "the Raft log had a torn tail (an unacknowledged write cut short by a crash); it was cut off");
        }
        let log =
            LogStore::new(wal, &recovered.meta).map_err(|e| NodeError::Storage(e.to_string()))?;
        let checkpoints = CheckpointRequest::default();
        let state_machine = StateMachine::new(engine.clone(), checkpoints.clone())
            .map_err(|e| NodeError::Storage(e.to_string()))?;

        let raft_config = Config {
            cluster_name: "kedge".to_string(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // Followers a little behind catch up from the log rather than a whole snapshot.
            max_in_snapshot_log_to_keep: (config.snapshot_every / 2).min(1000),
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network::new(client.clone()),
            log.clone(),
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        if !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            let members: BTreeMap<NodeId, Node> = config
                .initial_members
                .iter()
                .map(|(id, url)| (*id, BasicNode::new(url)))
                .collect();
            tracing::info!(members = ?config.initial_members, "forming a new Raft cluster");
            match raft.initialize(members).await {
                Ok(()) => {}
                // Another member initialized first; its log will reach us.
                Err(RaftError::APIError(e)) => {
                    tracing::info!(reason = %e, "cluster already initialized")
                }
                Err(e) => return Err(NodeError::Raft(e.to_string())),
            }
        }
        let (stop, _) = watch::channel(false);
        let node = Arc::new(RaftNode {
            id: config.node_id,
            batcher: Batcher::start(raft.clone(), config.node_id),
            raft,
            engine,
            log,
            client,
            stop,
        });
        if config.initial_members.len() == 1 && config.initial_members.contains_key(&config.node_id)
        {
            // Alone: no reason to wait an election timeout before serving.
            let _ = node.raft.trigger().elect().await;
        }
        node.spawn_checkpoints(config.checkpoint_interval, checkpoints);
        node.spawn_compaction(config.history_window, config.history_revisions);
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn wal_stats(&self) -> super::log::wal::WalStats {
        self.log.wal_stats()
    }

    /// The leader as this node knows it: id and URL.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())?;
        Some((leader, addr))
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> wire::Status {
        let metrics = self.raft.metrics().borrow().clone();
        let wal = self.log.wal_stats();
        wire::Status {
            id: self.id,
            state: format!("{:?}", metrics.state),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            revision: self.engine.revision(),
            compact_revision: self.engine.compact_revision(),
            members: metrics.membership_config.membership().voter_ids().collect(),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            log_syncs: wal.syncs,
            log_bytes: wal.bytes_written,
            apply_batches: self.engine.batches_applied(),
        }
    }

    /// Waits until some node is known to lead.
    async fn wait_for_leader(&self) -> Result<(NodeId, String), StoreError> {
        if let Some(leader) = self.leader() {
            return Ok(leader);
        }
        self.raft
            .wait(Some(REQUEST_TIMEOUT))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "no Raft leader elected within {REQUEST_TIMEOUT:?}"
                ))
            })?;
        self.leader().ok_or_else(|| {
            StoreError::Unavailable("the elected leader is not a member".to_string())
        })
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        self.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "forwarded write applied locally")
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Timeout(format!("waiting to apply log index {index}: {e}")))
    }

    /// Proposes on this node if it leads. `Err(NotLeader)` tells the caller where to go.
    pub async fn propose_local(&self, command: Command) -> Result<Proposed, RemoteError> {
        self.batcher.propose(command).await
    }

    /// The leader's read index, if this node leads.
    pub async fn read_index_local(&self) -> Result<u64, RemoteError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(RemoteError::NotLeader {
                    contacted: self.id,
                    leader: forward.leader_id.zip(forward.leader_node.map(|n| n.addr)),
                })
            }
            Err(e) => {
                Err(StoreError::Unavailable(format!("confirming leadership failed: {e}")).into())
            }
        }
    }

    /// Runs `request` on the leader: locally if this node leads, else forwarded over HTTPS,
    /// following leadership as it moves. Returns the answer and whether it came from afar.
    async fn on_leader<R: LeaderRequest>(
        &self,
        request: &R,
    ) -> Result<(R::Answer, bool), StoreError> {
        for _ in 0..FORWARD_ATTEMPTS {
            let leader = match request.run_locally(self).await {
                Ok(answer) => return Ok((answer, false)),
                Err(RemoteError::Store(e)) => return Err(e),
                Err(RemoteError::NotLeader { leader, .. }) => leader,
            };
            let leader = match leader {
                Some(leader) if leader.0 != self.id => leader,
                _ => {
                    // An election is under way (or just ended here): wait for its result.
                    self.wait_for_leader().await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let url = format!("{}{}", leader.1.trim_end_matches('/'), R::PATH);
            let response = match self
                .client
                .post(&url, wire::CONTENT_TYPE, request.encode(), REQUEST_TIMEOUT)
                .await
            {
                Ok(response) => response,
                // Never received: the leader is gone; wait for the next one and retry.
                Err(ClientError::Connect { .. }) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "forwarding to the leader (node {}): {e}",
                        leader.0
                    )))
                }
            };
            if !response.status.is_success() {
                return Err(StoreError::Unavailable(format!(
                    "the leader (node {}) answered {}: {}",
                    leader.0,
                    response.status,
                    String::from_utf8_lossy(&response.body)
                )));
            }
            let answer: Result<R::Answer, RemoteError> =
                wire::decode(&response.body).map_err(|e| {
                    StoreError::Internal(format!("undecodable answer from the leader: {e}"))
                })?;
            match answer {
                Ok(answer) => return Ok((answer, true)),
                Err(RemoteError::Store(e)) => return Err(e),
                Err(RemoteError::NotLeader { .. }) => continue,
            }
        }
        Err(StoreError::Unavailable(
            "leadership kept moving; gave up".to_string(),
        ))
    }

    async fn propose_anywhere(&self, command: Command) -> Result<CommandOutcome, StoreError> {
        let (proposed, remote) = self.on_leader(&ProposeRequest(command)).await?;
        if remote {
            self.wait_applied(proposed.index).await?;
        }
        Ok(proposed.outcome)
    }

    async fn barrier(&self) -> Result<(), StoreError> {
        let (index, _) = self.on_leader(&ReadIndexRequest).await?;
        self.wait_applied(index).await
    }

    /// Checkpoints every `interval`, and when the state machine asks (its memtable is full).
    fn spawn_checkpoints(self: &Arc<Self>, interval: Duration, requests: CheckpointRequest) {
        let node = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = requests.requested() => {}
                    _ = stop.changed() => return,
                }
                let Some(node) = node.upgrade() else { return };
                let engine = node.engine.clone();
                match tokio::task::spawn_blocking(move || engine.checkpoint()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "store checkpoint failed"),
                    Err(e) => tracing::error!(error = %e, "store checkpoint task failed"),
                }
            }
        });
    }

    /// On the leader, compacts history older than `window` or beyond `max_revisions`. Checks
    /// every second, and compacts in steps of a tenth of `max_revisions`, so history stays
    /// bounded under heavy write load as well.
    fn spawn_compaction(self: &Arc<Self>, window: Duration, max_revisions: u64) {
        let node = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let step = (max_revisions / 10).max(1);
        tokio::spawn(async move {
            // (when, revision) samples, oldest first, one per second at most.
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => return,
                }
                let Some(node) = node.upgrade() else { return };
                let now = Instant::now();
                let revision = node.engine.revision();
                if samples.back().is_none_or(|(_, last)| *last != revision) {
                    samples.push_back((now, revision));
                }
                // The newest sample at least `window` old is the revision history must reach.
                let mut expired = 0;
                while let Some((when, rev)) = samples.front().copied() {
                    if now.duration_since(when) < window {
                        break;
                    }
                    expired = rev;
                    samples.pop_front();
                }
                if expired > 0 {
                    samples.push_front((now - window, expired));
                }
                let target = expired.max(revision.saturating_sub(max_revisions));
                let compacted = node.engine.compact_revision();
                let leading = node.raft.metrics().borrow().current_leader == Some(node.id);
                let due = target > compacted && (target - compacted >= step || expired >= target);
                if !leading || !due {
                    continue;
                }
                match node
                    .propose_local(Command::Compact { revision: target })
                    .await
                {
                    Ok(Proposed {
                        outcome: CommandOutcome::Compacted { revision },
                        ..
                    }) => tracing::debug!(revision, "compacted store history"),
                    Ok(other) => {
                        tracing::debug!(outcome = ?other.outcome, "compaction not applied")
                    }
                    Err(e) => tracing::warn!(error = %e, "compacting store history failed"),
                }
            }
        });
    }

    /// Stops Raft, makes the engine durable and closes the log.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
        let engine = self.engine.clone();
        let log = self.log.clone();
        let result = tokio::task::spawn_blocking(move || {
            engine.checkpoint().map_err(|e| e.to_string())?;
            log.close().map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!("store closed cleanly"),
            Ok(Err(e)) => tracing::error!(error = %e, "closing the store failed"),
            Err(e) => tracing::error!(error = %e, "closing the store failed"),
        }
    }
}

/// Something only the leader can answer.
trait LeaderRequest: Sync {
    type Answer: serde::de::DeserializeOwned + Send;
    const PATH: &'static str;
    fn run_locally<'a>(
        &'a self,
        node: &'a RaftNode,
    ) -> BoxFuture<'a, Result<Self::Answer, RemoteError>>;
    fn encode(&self) -> bytes::Bytes;
}

struct ProposeRequest(Command);

impl LeaderRequest for ProposeRequest {
    type Answer = Proposed;
    const PATH: &'static str = wire::PROPOSE;
    fn run_locally<'a>(
        &'a self,
        node: &'a RaftNode,
    ) -> BoxFuture<'a, Result<Proposed, RemoteError>> {
        Box::pin(node.propose_local(self.0.clone()))
    }
    fn encode(&self) -> bytes::Bytes {
        wire::encode(&self.0)
    }
}

struct ReadIndexRequest;

impl LeaderRequest for ReadIndexRequest {
    type Answer = u64;
    const PATH: &'static str = wire::READ_INDEX;
    fn run_locally<'a>(&'a self, node: &'a RaftNode) -> BoxFuture<'a, Result<u64, RemoteError>> {
        Box::pin(node.read_index_local())
    }
    fn encode(&self) -> bytes::Bytes {
        wire::encode(&())
    }
}

impl Replicator for RaftNode {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<CommandOutcome, StoreError>> {
        Box::pin(self.propose_anywhere(command))
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.barrier())
    }
}
