//! Store semantics through the public handle. Writes are applied by a replicator that
//! applies directly to the local engine, standing in for a one-replica log; the real Raft
//! path is covered by the integration tests.

use bytes::Bytes;

use super::*;

fn store(dir: &tempfile::TempDir) -> Store {
    super::testing::direct_store(dir.path())
}

fn value(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[tokio::test]
async fn errors_carry_what_the_caller_needs() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let created = store.create("/registry/cm/ns/a", value("1")).await.unwrap();
    assert!(matches!(
        store.create("/registry/cm/ns/a", value("2")).await,
        Err(StoreError::AlreadyExists { current, .. }) if current.value == "1"
    ));
    assert!(matches!(
        store.update("/registry/cm/ns/a", value("2"), Some(created.mod_revision + 7)).await,
        Err(StoreError::Conflict { current, .. }) if current.mod_revision == created.mod_revision
    ));
    assert!(matches!(
        store.delete("/registry/cm/ns/none", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.create("", value("x")).await,
        Err(StoreError::InvalidKey { .. })
    ));
    assert_eq!(store.revision(), 1, "failed writes consume no revision");
}

/// One key under the watched prefix and one outside it.
async fn create_pair(store: &Store, i: usize) {
    for resource in ["cm", "other"] {
        store
            .create(&format!("/registry/{resource}/ns/k{i}"), value("v"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    for i in 0..10 {
        create_pair(&store, i).await;
    }
    let mut watcher = store.watch("/registry/cm/", 4).unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 10..600 {
                create_pair(&store, i).await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut revisions = Vec::new();
    while revisions.len() < 600 - 2 {
        let event = watcher.next().await.unwrap().unwrap();
        assert!(event.kv.key.starts_with("/registry/cm/"));
        revisions.push(event.revision());
    }
    writer.await.unwrap();
    // cm keys have odd revisions; after revision 4 the first is 5.
    let expected: Vec<u64> = (2..600).map(|i| 2 * i + 1).collect();
    assert_eq!(revisions, expected);
}

#[tokio::test]
async fn a_watcher_that_falls_far_behind_still_sees_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let mut watcher = store.watch("/registry/", 0).unwrap();
    // Many more batches than the live channel holds, none consumed meanwhile.
    for i in 0..(watch::CHANNEL_CAPACITY * 3) {
        store
            .create(&format!("/registry/k{i:05}"), value("v"))
            .await
            .unwrap();
    }
    for expected in 1..=(watch::CHANNEL_CAPACITY * 3) as u64 {
        let event = watcher.next().await.unwrap().unwrap();
        assert_eq!(event.revision(), expected);
    }
}

#[tokio::test]
async fn watching_compacted_history_fails_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    for i in 0..5 {
        store
            .create(&format!("/registry/k{i}"), value("v"))
            .await
            .unwrap();
    }
    store.compact(3).await.unwrap();
    assert!(matches!(
        store.watch("/registry/", 2),
        Err(StoreError::Compacted { .. })
    ));
    let mut watcher = store.watch("/registry/", 3).unwrap();
    assert_eq!(watcher.next().await.unwrap().unwrap().revision(), 4);
}

#[tokio::test]
async fn deletes_are_watched_with_the_deleted_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let kv = store.create("/registry/a", value("last")).await.unwrap();
    let mut watcher = store.watch("/registry/", kv.mod_revision).unwrap();
    let (prev, revision) = store
        .delete("/registry/a", Some(kv.mod_revision))
        .await
        .unwrap();
    assert_eq!(prev.value, "last");
    let event = watcher.next().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.revision(), revision);
    assert_eq!(event.prev.unwrap().value, "last");
}
