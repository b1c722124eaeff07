//! No acknowledged write is lost: a single server killed with SIGKILL mid-burst, and a
//! three-server cluster whose leader is killed mid-burst and comes back (catching up from a
//! snapshot), converge to the same revision and contents with every acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster, eventually, free_port, server_identity_client, LogDump, Server};
use kedge::pki::Ca;
use kedge::raft::remote::{RemoteCallError, RemoteServer};
use kedge::raft::wire::{Proposed, RemoteError};
use kedge::store::{Command, CommandOutcome, ListPage};

const PREFIX: &str = "/registry/test/";

/// What the writers were told (and tried).
#[derive(Default)]
struct Ledger {
    /// Keys whose creation was acknowledged, with their values.
    acked: BTreeMap<String, String>,
    /// Per writer: counter updates acknowledged, and attempted.
    counter_acked: BTreeMap<usize, u64>,
    counter_attempted: BTreeMap<usize, u64>,
}

/// Writers that keep creating unique keys (and bumping a counter key each) on whichever
/// server leads, following redirects and retrying across failures.
struct Load {
    servers: Vec<RemoteServer>,
    leader_hint: AtomicUsize,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
}

enum Attempt {
    Done(Proposed),
    Retry,
}

impl Load {
    fn new(servers: Vec<RemoteServer>) -> Arc<Load> {
        Arc::new(Load {
            servers,
            leader_hint: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ledger: Mutex::new(Ledger::default()),
        })
    }

    fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    async fn attempt(&self, command: &Command) -> Attempt {
        let index = self.leader_hint.load(Ordering::Relaxed) % self.servers.len();
        match self.servers[index].propose(command).await {
            Ok(proposed) => Attempt::Done(proposed),
            Err(RemoteCallError::Remote(RemoteError::NotLeader {
                leader: Some((_, url)),
                ..
            })) => {
                if let Some(next) = self.servers.iter().position(|s| s.base() == url) {
                    self.leader_hint.store(next, Ordering::Relaxed);
                }
                Attempt::Retry
            }
            Err(_) => {
                // Down, electing, or the answer was lost: try the next server shortly.
                self.leader_hint.store(index + 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Attempt::Retry
            }
        }
    }

    /// Proposes until an answer comes or the load stops (outcome then unknown).
    async fn propose(&self, command: Command) -> Option<Proposed> {
        loop {
            if let Attempt::Done(proposed) = self.attempt(&command).await {
                return Some(proposed);
            }
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
        }
    }

    async fn writer(self: Arc<Self>, id: usize) {
        let counter = format!("{PREFIX}counter-{id}");
        let created = self
            .propose(Command::Create {
                key: counter.clone(),
                value: Bytes::from("0"),
            })
            .await;
        assert!(
            created.is_some(),
            "writer {id} could not create its counter"
        );
        for seq in 0.. {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let key = format!("{PREFIX}w{id}-{seq:06}");
            let value = format!("writer {id} write {seq}");
            let command = Command::Create {
                key: key.clone(),
                value: Bytes::from(value.clone()),
            };
            match self.propose(command).await.map(|p| p.outcome) {
                Some(CommandOutcome::Created(_)) => {
                    self.ledger.lock().unwrap().acked.insert(key, value);
                }
                // An earlier attempt whose answer was lost had committed it.
                Some(CommandOutcome::AlreadyExists { current }) if current.value == value => {
                    self.ledger.lock().unwrap().acked.insert(key, value);
                }
                None => return,
                other => panic!("unexpected outcome for {key}: {other:?}"),
            }
            if seq % 10 == 0 {
                *self
                    .ledger
                    .lock()
                    .unwrap()
                    .counter_attempted
                    .entry(id)
                    .or_default() += 1;
                let bump = Command::Update {
                    key: counter.clone(),
                    value: Bytes::from(seq.to_string()),
                    expected_mod_revision: None,
                };
                match self.propose(bump).await.map(|p| p.outcome) {
                    Some(CommandOutcome::Updated { .. }) => {
                        *self
                            .ledger
                            .lock()
                            .unwrap()
                            .counter_acked
                            .entry(id)
                            .or_default() += 1;
                    }
                    None => return,
                    other => panic!("unexpected outcome for {counter}: {other:?}"),
                }
            }
        }
    }

    fn spawn(self: &Arc<Self>, writers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..writers)
            .map(|id| tokio::spawn(self.clone().writer(id)))
            .collect()
    }

    async fn wait_for_acked(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} writes acknowledged within {timeout:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(&self, writers: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer task");
        }
    }

    /// Checks one replica's contents against what was acknowledged.
    fn verify(&self, page: &ListPage, who: &str) {
        let ledger = self.ledger.lock().unwrap();
        let stored: BTreeMap<&str, &KeyValueView> =
            page.items.iter().map(|kv| (kv.key.as_str(), kv)).collect();
        for (key, value) in &ledger.acked {
            let Some(kv) = stored.get(key.as_str()) else {
                panic!("{who}: acknowledged write {key} is missing");
            };
            assert_eq!(
                kv.value,
                value.as_bytes(),
                "{who}: {key} has the wrong value"
            );
        }
        for (writer, attempted) in &ledger.counter_attempted {
            let key = format!("{PREFIX}counter-{writer}");
            let version = stored.get(key.as_str()).map_or(0, |kv| kv.version);
            let acked = ledger.counter_acked.get(writer).copied().unwrap_or(0);
            // Version 1 is the creation; each applied update adds exactly one.
            assert!(
                version > acked && version <= attempted + 1,
                "{who}: {key} is at version {version} after {acked} acknowledged and {attempted} attempted updates \
                 (an update applied twice or lost)"
            );
        }
        // Nothing is deleted (the page holds every key, the system namespaces included), so
        // every revision is one version of one live key.
        let versions: u64 = page.items.iter().map(|kv| kv.version).sum();
        assert_eq!(
            versions, page.revision,
            "{who}: revisions do not add up to the writes applied"
        );
    }
}

type KeyValueView = kedge::store::KeyValue;

fn servers_for(ca: &Ca, urls: &[String]) -> Vec<RemoteServer> {
    let client = server_identity_client(ca);
    urls.iter()
        .map(|url| RemoteServer::new(client.clone(), url))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path(), free_port(), &[]);
    let _logs = LogDump(vec![server.log.clone()]);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let ca = Ca::load(&server.tls_dir()).unwrap().unwrap();
    let load = Load::new(servers_for(&ca, &[server.url()]));

    for round in 1..=2 {
        let writers = load.spawn(16);
        load.wait_for_acked(round * 400, Duration::from_secs(120))
            .await;
        server.kill();
        load.finish(writers).await;
        load.stop.store(false, Ordering::Relaxed);

        server.start();
        server.wait_ready(Duration::from_secs(60)).await;
        let page = load.servers[0]
            .range_all("/registry/", false)
            .await
            .unwrap();
        load.verify(&page, &format!("after SIGKILL #{round}"));
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_cluster_survives_losing_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::generate().unwrap();
    // Snapshot often, so the returning server must catch up from one.
    let mut servers = cluster(root.path(), &ca, 3, &["--raft-snapshot-every", "200"]);
    let _logs = LogDump(servers.iter().map(|s| s.log.clone()).collect());
    // Alone, a member of a three-server cluster has no quorum: not ready.
    servers[0].start();
    common::eventually(
        Duration::from_secs(30),
        "the first server to answer",
        || {
            let url = format!("{}/readyz", servers[0].url());
            let exists = servers[0].tls_dir().join("admin.key").exists();
            let client = exists.then(|| servers[0].admin_client());
            async move {
                match client {
                    Some(client) => client
                        .get(&url, Duration::from_secs(5))
                        .await
                        .is_ok_and(|r| r.status == 500),
                    None => false,
                }
            }
        },
    )
    .await;
    for server in &mut servers[1..] {
        server.start();
    }
    for server in &mut servers {
        server.wait_ready(Duration::from_secs(60)).await;
    }
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let load = Load::new(servers_for(&ca, &urls));
    let writers = load.spawn(8);
    load.wait_for_acked(300, Duration::from_secs(120)).await;

    let leader = load.servers[0]
        .status()
        .await
        .unwrap()
        .leader
        .expect("a leader");
    let victim = (leader - 1) as usize;
    let victim_last = load.servers[victim]
        .status()
        .await
        .unwrap()
        .last_log_index
        .unwrap_or(0);
    servers[victim].kill();
    // Enough writes while it is down that the others snapshot and purge their log past it,
    // so it can only catch up from a snapshot.
    let survivors: Vec<RemoteServer> = (1..3)
        .map(|i| load.servers[(victim + i) % 3].clone())
        .collect();
    eventually(
        Duration::from_secs(180),
        "the survivors to purge past the victim's log",
        || {
            let survivors = survivors.clone();
            async move {
                for survivor in &survivors {
                    let purged = survivor.status().await.ok().and_then(|s| s.purged_index);
                    // A margin, for entries the victim appended but had not reported.
                    if purged.is_none_or(|p| p <= victim_last + 50) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let acked = load.acked();
    load.wait_for_acked(acked + 100, Duration::from_secs(60))
        .await;

    servers[victim].start();
    servers[victim].wait_ready(Duration::from_secs(60)).await;
    let acked = load.acked();
    load.wait_for_acked(acked + 300, Duration::from_secs(120))
        .await;
    load.finish(writers).await;

    eventually(
        Duration::from_secs(60),
        "all servers to apply the same log",
        || {
            let servers = load.servers.clone();
            async move {
                let mut seen = Vec::new();
                for server in &servers {
                    match server.status().await {
                        Ok(status) => seen.push((status.applied_index, status.revision)),
                        Err(_) => return false,
                    }
                }
                seen.windows(2).all(|w| w[0] == w[1])
            }
        },
    )
    .await;
    let mut pages = Vec::new();
    for (i, server) in load.servers.iter().enumerate() {
        let page = server.range_all("/registry/", true).await.unwrap();
        load.verify(&page, &format!("server {}", i + 1));
        pages.push(page);
    }
    assert_eq!(pages[0], pages[1], "servers 1 and 2 differ");
    assert_eq!(pages[0], pages[2], "servers 1 and 3 differ");
    let new_leader = load.servers[0].status().await.unwrap().leader;
    assert_ne!(new_leader, None);
    assert!(
        servers[victim]
            .log_text()
            .contains("installed a store snapshot from the leader"),
        "the returning server should have caught up from a snapshot; log:\n{}",
        servers[victim].log_text()
    );
    for server in &mut servers {
        assert!(server.terminate().success());
    }
}
