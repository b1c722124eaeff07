use std::sync::mpsc;

use super::*;

fn options(segment_bytes: u64, cache_bytes: usize) -> WalOptions {
    WalOptions {
        segment_bytes,
        cache_bytes,
    }
}

fn payload(index: u64) -> Bytes {
    Bytes::from(format!(
        "entry-{index}-{}",
        "x".repeat((index % 50) as usize)
    ))
}

/// Appends `range` one entry per call and waits until all are durable.
fn append_all(wal: &Wal, range: Range<u64>) {
    let (tx, rx) = mpsc::channel();
    let count = range.end - range.start;
    for index in range {
        let tx = tx.clone();
        wal.append(
            vec![(index, payload(index))],
            Box::new(move |r| tx.send(r).unwrap()),
        )
        .unwrap();
    }
    for _ in 0..count {
        rx.recv().unwrap().unwrap();
    }
}

fn assert_entries(wal: &Wal, range: Range<u64>) {
    let read = wal.read(range.clone()).unwrap();
    let expected: Vec<_> = range.map(|i| (i, payload(i))).collect();
    assert_eq!(read, expected);
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

#[test]
fn entries_and_meta_survive_reopen_and_are_read_from_disk_when_evicted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, recovered) = Wal::open(dir.path(), options(1024, 256)).unwrap();
        assert_eq!(recovered.entries, None);
        append_all(&wal, 0..200);
        wal.set_meta(Bytes::from_static(b"vote-3"), None).unwrap();
        // Small segments and cache: most reads now come from several files.
        assert_entries(&wal, 0..200);
        assert!(segments(dir.path()).len() > 3);
        wal.close().unwrap();
    }
    let (wal, recovered) = Wal::open(dir.path(), options(1024, 256)).unwrap();
    assert_eq!(recovered.entries, Some((0, 199)));
    assert_eq!(recovered.meta, "vote-3");
    assert_eq!(recovered.truncated_bytes, 0);
    assert_entries(&wal, 0..200);
    append_all(&wal, 200..210);
    assert_entries(&wal, 190..210);
}

#[test]
fn appends_must_not_leave_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_all(&wal, 5..8);
    let err = wal
        .append(vec![(9, payload(9))], Box::new(|_| {}))
        .unwrap_err();
    assert!(matches!(err, WalError::Inconsistent(_)), "{err}");
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_all(&wal, 0..2000);
    let stats = wal.stats();
    assert!(
        stats.syncs < 2000,
        "2000 queued appends took {} fsyncs; group commit should share them",
        stats.syncs
    );
}

#[test]
fn a_torn_tail_is_cut_off_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_all(&wal, 1..11);
        wal.close().unwrap();
    }
    let last = segments(dir.path()).pop().unwrap();
    let full = fs::read(&last).unwrap();
    // Cut the last record in half, as a crash in the middle of a write would.
    fs::write(&last, &full[..full.len() - 5]).unwrap();
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.entries, Some((1, 9)));
    assert!(recovered.truncated_bytes > 0);
    assert_entries(&wal, 1..10);
    // The next append continues where the valid log ends.
    append_all(&wal, 10..12);
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.entries, Some((1, 11)));
    assert_entries(&wal, 1..12);
}

#[test]
fn a_corrupt_tail_record_is_detected_by_checksum() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_all(&wal, 1..6);
        wal.close().unwrap();
    }
    let last = segments(dir.path()).pop().unwrap();
    let mut data = fs::read(&last).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x40;
    fs::write(&last, &data).unwrap();
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.entries, Some((1, 4)));
    assert_entries(&wal, 1..5);
}

#[test]
fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
        append_all(&wal, 1..100);
        wal.close().unwrap();
    }
    let first = segments(dir.path()).remove(0);
    let mut data = fs::read(&first).unwrap();
    data[40] ^= 0xff;
    fs::write(&first, &data).unwrap();
    let err = Wal::open(dir.path(), options(1024, 1 << 20)).err().unwrap();
    assert!(matches!(err, WalError::Damaged { .. }), "{err}");
}

#[test]
fn truncation_survives_reopen_and_new_entries_replace_old() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), options(2048, 1 << 20)).unwrap();
        append_all(&wal, 1..50);
        wal.truncate(30).unwrap();
        assert_eq!(wal.entries(), Some((1, 29)));
        let (tx, rx) = mpsc::channel();
        wal.append(
            vec![(30, Bytes::from_static(b"new"))],
            Box::new(move |r| tx.send(r).unwrap()),
        )
        .unwrap();
        rx.recv().unwrap().unwrap();
        wal.close().unwrap();
    }
    let (wal, recovered) = Wal::open(dir.path(), options(2048, 1 << 20)).unwrap();
    assert_eq!(recovered.entries, Some((1, 30)));
    assert_eq!(
        wal.read(30..31).unwrap(),
        vec![(30, Bytes::from_static(b"new"))]
    );
}

#[test]
fn purge_deletes_whole_segments_and_keeps_meta() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
        wal.set_meta(Bytes::from_static(b"state-1"), None).unwrap();
        append_all(&wal, 1..300);
        let before = segments(dir.path()).len();
        wal.purge(250).unwrap();
        wal.sync_blocking().unwrap();
        let after = segments(dir.path()).len();
        assert!(
            after < before / 2,
            "{before} segments before purge, {after} after"
        );
        assert_eq!(wal.entries(), Some((251, 299)));
        assert!(wal.read(0..251).unwrap().is_empty());
        wal.close().unwrap();
    }
    let (wal, recovered) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
    assert_eq!(
        recovered.meta, "state-1",
        "meta outlives the segment it was written in"
    );
    assert_eq!(recovered.entries, Some((251, 299)));
    assert_entries(&wal, 251..300);
}

#[test]
fn purging_everything_keeps_the_next_index() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
    append_all(&wal, 1..10);
    wal.purge(20).unwrap();
    assert_eq!(wal.entries(), None);
    append_all(&wal, 21..23);
    assert_eq!(wal.entries(), Some((21, 22)));
}

#[test]
fn a_truncated_segment_is_not_resurrected_by_purging_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
        append_all(&wal, 1..40);
        wal.truncate(20).unwrap();
        append_all(&wal, 20..120);
        wal.purge(60).unwrap();
        wal.close().unwrap();
    }
    let (wal, _) = Wal::open(dir.path(), options(1024, 1 << 20)).unwrap();
    assert_eq!(wal.entries(), Some((61, 119)));
    assert_entries(&wal, 61..120);
}
