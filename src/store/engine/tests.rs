use bytes::Bytes;

use super::*;
use crate::store::types::{EventKind, ListOptions, StoreError};

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(&dir.path().join("state.redb"), 4 << 20).unwrap()
}

fn put(key: &str, value: &str) -> Option<Command> {
    Some(Command::Create {
        key: key.into(),
        value: Bytes::from(value.to_string()),
    })
}

fn update(key: &str, value: &str, expected: Option<u64>) -> Option<Command> {
    Some(Command::Update {
        key: key.into(),
        value: Bytes::from(value.to_string()),
        expected_mod_revision: expected,
    })
}

fn delete(key: &str) -> Option<Command> {
    Some(Command::Delete {
        key: key.into(),
        expected_mod_revision: None,
    })
}

thread_local! {
    /// Whether `apply` checkpoints after every batch, so that reads find data in redb
    /// rather than in the memtable.
    static CHECKPOINT_EACH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a test with writes left in the memtable, then with every batch checkpointed.
fn in_both_layers(body: fn()) {
    for checkpoint_each in [false, true] {
        CHECKPOINT_EACH.with(|c| c.set(checkpoint_each));
        body();
    }
}

fn apply(engine: &Engine, commands: Vec<Option<Command>>) -> Vec<Option<CommandOutcome>> {
    let marker = engine.revision().to_le_bytes();
    let outcomes = engine.apply_batch(&commands, &marker).unwrap();
    if CHECKPOINT_EACH.with(|c| c.get()) {
        engine.checkpoint().unwrap();
    }
    outcomes
}

fn keys(page: &crate::store::ListPage) -> Vec<&str> {
    page.items.iter().map(|kv| kv.key.as_str()).collect()
}

#[test]
fn writes_consume_one_revision_each_and_failures_none() {
    in_both_layers(writes_consume_one_revision_each_and_failures_none_body);
}

fn writes_consume_one_revision_each_and_failures_none_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let out = apply(
        &engine,
        vec![
            put("/r/a", "1"),
            put("/r/a", "dup"),
            update("/r/a", "2", Some(1)),
            update("/r/a", "3", Some(1)),
            update("/r/missing", "x", None),
            None,
            delete("/r/a"),
        ],
    );
    assert!(
        matches!(&out[0], Some(CommandOutcome::Created(kv)) if kv.mod_revision == 1 && kv.version == 1)
    );
    assert!(
        matches!(&out[1], Some(CommandOutcome::AlreadyExists { current }) if current.value == "1")
    );
    assert!(
        matches!(&out[2], Some(CommandOutcome::Updated { kv, prev }) if kv.mod_revision == 2 && kv.create_revision == 1 && kv.version == 2 && prev.value == "1")
    );
    assert!(
        matches!(&out[3], Some(CommandOutcome::Conflict { current }) if current.mod_revision == 2)
    );
    assert_eq!(out[4], Some(CommandOutcome::NotFound));
    assert_eq!(out[5], None);
    assert!(
        matches!(&out[6], Some(CommandOutcome::Deleted { prev, revision: 3 }) if prev.value == "2")
    );
    assert_eq!(engine.revision(), 3);
    assert_eq!(engine.get("/r/a").unwrap(), None);
}

#[test]
fn invalid_keys_are_rejected_without_consuming_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let out = apply(&engine, vec![put("bad\0key", "x"), put("", "x")]);
    assert!(out
        .iter()
        .all(|o| matches!(o, Some(CommandOutcome::Rejected { .. }))));
    assert_eq!(engine.revision(), 0);
}

#[test]
fn list_pages_stay_at_the_first_pages_revision() {
    in_both_layers(list_pages_stay_at_the_first_pages_revision_body);
}

fn list_pages_stay_at_the_first_pages_revision_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        (0..5).map(|i| put(&format!("/r/k{i}"), "v1")).collect(),
    );
    apply(&engine, vec![put("/other/x", "no")]);
    let first = engine
        .list(
            "/r/",
            &ListOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&first), vec!["/r/k0", "/r/k1"]);
    assert_eq!(first.revision, 6);
    // Changes after the first page must not show in later pages.
    apply(
        &engine,
        vec![
            delete("/r/k2"),
            update("/r/k3", "v2", None),
            put("/r/k10", "new"),
        ],
    );
    let second = engine
        .list(
            "/r/",
            &ListOptions {
                limit: 2,
                continue_token: first.continue_token.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&second), vec!["/r/k2", "/r/k3"]);
    assert_eq!(second.items[1].value, "v1");
    assert_eq!(second.revision, 6);
    let third = engine
        .list(
            "/r/",
            &ListOptions {
                limit: 2,
                continue_token: second.continue_token.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&third), vec!["/r/k4"]);
    assert_eq!(third.continue_token, None);
    // The latest state reflects every change.
    let latest = engine.list("/r/", &ListOptions::default()).unwrap();
    assert_eq!(
        keys(&latest),
        vec!["/r/k0", "/r/k1", "/r/k10", "/r/k3", "/r/k4"]
    );
    assert_eq!(latest.revision, 9);
}

#[test]
fn listing_an_exact_page_size_ends_without_a_token() {
    in_both_layers(listing_an_exact_page_size_ends_without_a_token_body);
}

fn listing_an_exact_page_size_ends_without_a_token_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        (0..4).map(|i| put(&format!("/r/k{i}"), "v")).collect(),
    );
    let page = engine
        .list(
            "/r/",
            &ListOptions {
                limit: 4,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.continue_token, None);
    let at = engine
        .list(
            "/r/",
            &ListOptions {
                limit: 2,
                revision: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&at), vec!["/r/k0", "/r/k1"]);
    assert_eq!(at.continue_token, None);
}

#[test]
fn get_at_reads_past_versions() {
    in_both_layers(get_at_reads_past_versions_body);
}

fn get_at_reads_past_versions_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        vec![
            put("/r/a", "1"),
            update("/r/a", "2", None),
            delete("/r/a"),
            put("/r/a", "4"),
        ],
    );
    let value_at = |rev| engine.get_at("/r/a", rev).unwrap().map(|kv| kv.value);
    assert_eq!(value_at(1), Some(Bytes::from("1")));
    assert_eq!(value_at(2), Some(Bytes::from("2")));
    assert_eq!(value_at(3), None);
    let recreated = engine.get_at("/r/a", 4).unwrap().unwrap();
    assert_eq!((recreated.create_revision, recreated.version), (4, 1));
    assert!(matches!(
        engine.get_at("/r/a", 5),
        Err(StoreError::FutureRevision { .. })
    ));
}

#[test]
fn history_replays_in_order_with_previous_values() {
    in_both_layers(history_replays_in_order_with_previous_values_body);
}

fn history_replays_in_order_with_previous_values_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        vec![
            put("/r/a", "1"),
            put("/x/b", "1"),
            update("/r/a", "2", None),
            delete("/r/a"),
        ],
    );
    let (events, scanned) = engine.changes_after("/r/", 0, 100).unwrap();
    assert_eq!(scanned, 4);
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.revision(),
                e.prev.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, 1, None),
            (EventKind::Put, 3, Some(Bytes::from("1"))),
            (EventKind::Delete, 4, Some(Bytes::from("2"))),
        ]
    );
    let (partial, scanned) = engine.changes_after("/r/", 0, 1).unwrap();
    assert_eq!((partial.len(), scanned), (1, 1));
}

#[test]
fn compaction_keeps_exactly_what_later_revisions_need() {
    in_both_layers(compaction_keeps_exactly_what_later_revisions_need_body);
}

fn compaction_keeps_exactly_what_later_revisions_need_body() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        vec![
            put("/r/a", "1"),          // 1
            update("/r/a", "2", None), // 2
            put("/r/gone", "x"),       // 3
            delete("/r/gone"),         // 4
            update("/r/a", "3", None), // 5
        ],
    );
    let out = apply(&engine, vec![Some(Command::Compact { revision: 4 })]);
    assert_eq!(out[0], Some(CommandOutcome::Compacted { revision: 4 }));
    assert_eq!(
        engine.revision(),
        5,
        "compaction does not consume a revision"
    );
    // Physically at the next checkpoint: version 2 of /r/a (newest at or below 4) stays,
    // version 1 and the deleted key go.
    engine.checkpoint().unwrap();
    assert_eq!(engine.stats().unwrap().revisions, 2);
    assert!(matches!(
        engine.changes_after("/r/", 3, 10),
        Err(StoreError::Compacted { .. })
    ));
    let (events, _) = engine.changes_after("/r/", 4, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].prev.as_ref().unwrap().value, "2");
    let at4 = engine
        .list(
            "/r/",
            &ListOptions {
                revision: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(keys(&at4), vec!["/r/a"]);
    assert_eq!(at4.items[0].value, "2");
    assert!(matches!(
        engine.list(
            "/r/",
            &ListOptions {
                revision: Some(3),
                ..Default::default()
            }
        ),
        Err(StoreError::Compacted { .. })
    ));
    let refused = apply(
        &engine,
        vec![
            Some(Command::Compact { revision: 4 }),
            Some(Command::Compact { revision: 9 }),
        ],
    );
    assert!(refused
        .iter()
        .all(|o| matches!(o, Some(CommandOutcome::CompactionRefused { .. }))));
}

#[test]
fn reopening_without_checkpoint_returns_to_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(&dir);
        engine.apply_batch(&[put("/r/a", "1")], b"m1").unwrap();
        engine.checkpoint().unwrap();
        assert_eq!(engine.durable_marker(), b"m1");
        engine.apply_batch(&[put("/r/b", "2")], b"m2").unwrap();
        assert_eq!(engine.applied_marker(), b"m2");
        // Simulate a crash: forget the handle without a durable commit.
        std::mem::forget(engine);
    }
    // redb holds a file lock per process; a crashed process releases it, a forgotten handle
    // does not, so reopen through a fresh copy of the file.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("state.redb"),
        copy.path().join("state.redb"),
    )
    .unwrap();
    let engine = open(&copy);
    assert_eq!(engine.applied_marker(), b"m1");
    assert_eq!(engine.revision(), 1);
    assert!(engine.get("/r/b").unwrap().is_none());
}

#[test]
fn snapshots_round_trip_and_reject_damage() {
    in_both_layers(snapshots_round_trip_and_reject_damage_body);
}

fn snapshots_round_trip_and_reject_damage_body() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir);
    apply(
        &source,
        (0..50)
            .map(|i| put(&format!("/r/k{i:02}"), &"v".repeat(i)))
            .collect(),
    );
    apply(
        &source,
        vec![delete("/r/k07"), update("/r/k08", "changed", None)],
    );
    let mut image = Vec::new();
    let header = source.export(&mut image).unwrap();
    assert_eq!((header.revision, header.live_keys), (52, 49));

    let other = tempfile::tempdir().unwrap();
    let target = open(&other);
    apply(&target, vec![put("/r/stale", "x")]);
    let mut damaged = image.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    assert!(target.import(damaged.as_slice()).is_err());
    assert!(target.import(&image[..image.len() - 3]).is_err());
    assert!(
        target.get("/r/stale").unwrap().is_some(),
        "a failed import changes nothing"
    );

    target.import(image.as_slice()).unwrap();
    assert_eq!(target.revision(), 52);
    assert_eq!(target.compact_revision(), 52);
    assert!(target.get("/r/stale").unwrap().is_none());
    let all = |e: &Engine| e.list("/r/", &ListOptions::default()).unwrap().items;
    assert_eq!(all(&source), all(&target));
    assert_eq!(target.applied_marker(), source.applied_marker());
}

#[test]
fn memtable_writes_shadow_redb_until_and_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    apply(
        &engine,
        (0..6).map(|i| put(&format!("/r/k{i}"), "old")).collect(),
    );
    engine.checkpoint().unwrap();
    apply(
        &engine,
        vec![
            delete("/r/k1"),
            update("/r/k2", "new", None),
            put("/r/k6", "new"),
            delete("/r/k6"),
        ],
    );
    let expect = |engine: &Engine| {
        let page = engine.list("/r/", &ListOptions::default()).unwrap();
        assert_eq!(
            keys(&page),
            vec!["/r/k0", "/r/k2", "/r/k3", "/r/k4", "/r/k5"]
        );
        assert_eq!(page.items[1].value, "new");
        assert_eq!(engine.get("/r/k1").unwrap(), None);
        assert_eq!(engine.get("/r/k6").unwrap(), None);
        let at6 = engine
            .list(
                "/r/",
                &ListOptions {
                    revision: Some(6),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(at6.items.len(), 6);
        let (events, _) = engine.changes_after("/r/", 5, 100).unwrap();
        let revisions: Vec<u64> = events.iter().map(|e| e.revision()).collect();
        assert_eq!(revisions, vec![6, 7, 8, 9, 10]);
        assert_eq!(events[2].prev.as_ref().unwrap().value, "old");
    };
    expect(&engine);
    engine.checkpoint().unwrap();
    expect(&engine);
    assert_eq!(engine.stats().unwrap().live_keys, 5);
}

#[test]
fn unflushed_bytes_grow_with_writes_and_drop_at_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    assert_eq!(engine.unflushed_bytes(), 0);
    apply(&engine, vec![put("/r/a", &"x".repeat(1000))]);
    assert!(engine.unflushed_bytes() > 1000);
    engine.checkpoint().unwrap();
    assert_eq!(engine.unflushed_bytes(), 0);
    assert_eq!(engine.durable_marker(), 0u64.to_le_bytes());
}
