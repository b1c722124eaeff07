//! Group commit at the proposal level. openraft 0.9 waits for each log append to be flushed
//! before it appends the next, so one Raft entry per write would mean one fsync per write.
//! The batcher puts every write that arrives while the previous batch is being committed
//! into one entry: under load a whole batch costs one fsync (and one replication round
//! trip), and a lone write waits for nothing.

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::types::{NodeId, Raft};
use super::wire::{Proposed, RemoteError};
use crate::store::{Command, StoreError};

/// Most writes in one entry ...
const MAX_COMMANDS: usize = 512;
/// ... and most value bytes (an entry is replicated and fsynced as one).
const MAX_BYTES: usize = 4 << 20;
/// Writes waiting for a batch before callers are made to wait for room.
const QUEUE: usize = 4096;

/// What one Raft entry carries: store commands, applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub commands: Vec<Command>,
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Proposed, RemoteError>>,
}

fn size(command: &Command) -> usize {
    let value = match command {
        Command::Create { value, .. } | Command::Update { value, .. } => value.len(),
        _ => 0,
    };
    command.key().map_or(0, str::len) + value
}

/// Hands proposals to Raft in batches.
pub struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batching task for this node's Raft.
    pub fn start(raft: Raft, id: NodeId) -> Batcher {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, id, receiver));
        Batcher { queue }
    }

    /// Proposes `command` on this node; `NotLeader` when it does not lead.
    pub async fn propose(&self, command: Command) -> Result<Proposed, RemoteError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            RemoteError::Store(StoreError::Unavailable(
                "the Raft node is shutting down".into(),
            ))
        };
        self.queue
            .send(Pending { command, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(raft: Raft, id: NodeId, mut receiver: mpsc::Receiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut bytes = size(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += size(&next.command);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match raft.client_write(Proposal { commands }).await {
            Ok(response) => {
                let index = response.log_id.index;
                if response.data.len() != replies.len() {
                    let error = StoreError::Internal(format!(
                        "a batch of {} writes produced {} outcomes",
                        replies.len(),
                        response.data.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone().into()));
                    }
                    continue;
                }
                for (reply, outcome) in replies.into_iter().zip(response.data) {
                    let _ = reply.send(Ok(Proposed { outcome, index }));
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let leader = forward.leader_id.zip(forward.leader_node.map(|n| n.addr));
                for reply in replies {
                    let _ = reply.send(Err(RemoteError::NotLeader {
                        contacted: id,
                        leader: leader.clone(),
                    }));
                }
            }
            Err(e) => {
                let error = StoreError::Unavailable(format!("Raft write failed: {e}"));
                for reply in replies {
                    let _ = reply.send(Err(error.clone().into()));
                }
            }
        }
    }
}
