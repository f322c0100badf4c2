//! The embedded store against a real directory: what survives, what is skipped, what is cut.
use std::fs::{File, OpenOptions};
use std::io::Write;

use super::compaction::{COMPACT_FACTOR, compact};
use super::journal::last_record_end;
use super::*;
use gitfleet_proto::{CloneStatus, Operation, StatusType, SyncResult};
use std::time::Duration;

fn task(n: usize) -> CloneTask {
    CloneTask::new(
        format!("{n:016x}"),
        format!("git://h/o/r{n}"),
        Operation::Mirror,
        format!("/x/r{n}.git"),
        jiff::Timestamp::UNIX_EPOCH,
    )
}

fn completed(n: usize) -> CloneTask {
    let mut t = task(n);
    t.status = CloneStatus::completed();
    t.attempts = 1;
    t.node = Some("n".into());
    t.last_sync = Some(SyncResult {
        total_commits: n as u64,
        ..SyncResult::default()
    });
    t
}

/// The line the log holds for `task`.
fn line(task: &CloneTask) -> Vec<u8> {
    let mut line = gitfleet_proto::to_json(task);
    line.push(b'\n');
    line
}

fn append_by_hand(dir: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(LOG))
        .and_then(|mut f| f.write_all(bytes))
        .expect("appending to the log");
}

fn log_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(LOG)).expect("reading the log")
}

/// The whole lines of the log.
fn log_lines(dir: &Path) -> Vec<Vec<u8>> {
    log_bytes(dir)
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| l[..l.len() - 1].to_vec())
        .collect()
}

fn sorted(mut tasks: Vec<CloneTask>) -> Vec<CloneTask> {
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    tasks
}

/// What is in the state directory besides the log (temporary files, former records).
fn strays(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("listing")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_none_or(|n| n != LOG))
        .collect()
}

#[test]
fn records_survive_and_garbage_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    let task = CloneTask::new(
        "00000000000000ab".into(),
        "git://h/o/r".into(),
        Operation::Mirror,
        "/x".into(),
        jiff::Timestamp::UNIX_EPOCH,
    );
    store.put_sync(&task).expect("put");
    append_by_hand(
        dir.path(),
        b"{\"id\":\nnot json\n\n{\"id\":\"00000000000000ab\"}\n",
    );
    store.put_sync(&completed(2)).expect("put after garbage");
    let want = vec![completed(2), task.clone()];
    assert_eq!(store.load_all_sync().expect("load"), want);
    assert_eq!(store.get(&task.id).expect("get"), Some(task.clone()));
    drop(store);
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(store.load_all_sync().expect("load"), want);
    assert_eq!(store.get(&task.id).expect("get"), Some(task));
    assert_eq!(store.get("0000000000000009").expect("get"), None);
}

#[test]
fn a_torn_tail_is_skipped_then_cut_by_the_next_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    store.put_sync(&completed(1)).expect("put");
    drop(store);
    // A crash in the middle of an append: a line that is not a record, blocks that were
    // allocated but never written, half a record.
    let record = gitfleet_proto::to_json(&completed(2));
    let mut torn = b"{\"not\":\"a record\"}\n".to_vec();
    torn.extend(std::iter::repeat_n(0u8, 200_000));
    torn.extend(&record[..record.len() / 2]);
    append_by_hand(dir.path(), &torn);
    let len = log_bytes(dir.path()).len();

    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(store.load_all_sync().expect("load"), vec![completed(1)]);
    assert_eq!(store.get(&completed(2).id).expect("get"), None);
    assert_eq!(log_bytes(dir.path()).len(), len, "readers write nothing");
    store
        .put_sync(&completed(3))
        .expect("put after the torn tail");
    drop(store);

    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.load_all_sync().expect("load"),
        vec![completed(1), completed(3)]
    );
    assert_eq!(
        log_bytes(dir.path()),
        [line(&completed(1)), line(&completed(3))].concat(),
        "the torn tail is cut"
    );
}

#[test]
fn last_record_end_finds_the_last_whole_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let end_of = |bytes: &[u8]| {
        let path = dir.path().join("log");
        std::fs::write(&path, bytes).expect("write");
        let file = File::open(&path).expect("open");
        last_record_end(&file, bytes.len() as u64).expect("scan")
    };
    let a = line(&task(1));
    let b = line(&completed(2));
    // A record longer than the first window read from the end.
    let mut long = task(3);
    long.url = format!("git://h/{}", "x".repeat(100_000));
    let long = line(&long);
    let n = |bytes: &[u8]| bytes.len() as u64;
    assert_eq!(end_of(b""), 0);
    assert_eq!(end_of(b"{\"id\""), 0);
    assert_eq!(end_of(b"garbage\n"), 0);
    assert_eq!(end_of(&a), n(&a));
    assert_eq!(end_of(&[a.as_slice(), &b].concat()), n(&a) + n(&b));
    assert_eq!(end_of(&[a.as_slice(), &b[..b.len() - 1]].concat()), n(&a));
    assert_eq!(end_of(&[a.as_slice(), b"junk\n", &b[..9]].concat()), n(&a));
    assert_eq!(end_of(&[a.as_slice(), &long].concat()), n(&a) + n(&long));
    // A record this version cannot read (a newer one wrote it) stays.
    let newer = b"{\"id\":\"0000000000000005\",\"new\":1}\n";
    assert_eq!(
        end_of(&[a.as_slice(), newer, b"x"].concat()),
        n(&a) + n(newer)
    );
    let zeros = vec![0u8; 150_000];
    assert_eq!(end_of(&[long.as_slice(), &zeros].concat()), n(&long));
    assert_eq!(
        end_of(&[a.as_slice(), &long[1..], &zeros, b"\n", &b[..9]].concat()),
        n(&a)
    );
}

#[test]
fn legacy_records_are_read_then_moved_into_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = dir.path().join(LEGACY_DIR);
    std::fs::create_dir(&legacy).expect("mkdir");
    let mut four = task(4);
    four.attempts = 3;
    for t in [task(1), completed(2), four.clone()] {
        std::fs::write(
            legacy.join(format!("{}.json", t.id)),
            gitfleet_proto::to_json(&t),
        )
        .expect("write");
    }
    std::fs::write(legacy.join(".tmpAbC123"), b"{\"id\"").expect("write");
    // A migration that stopped before it removed the files: the log holds a later state.
    append_by_hand(dir.path(), &line(&completed(1)));

    let want = vec![completed(1), completed(2), four.clone()];
    let store = FileStore::open(dir.path()).expect("open");
    assert_eq!(store.load_all_sync().expect("load"), want);
    assert_eq!(store.get(&task(1).id).expect("get"), Some(completed(1)));
    assert_eq!(store.get(&four.id).expect("get"), Some(four.clone()));
    drop(store);
    assert_eq!(std::fs::read_dir(&legacy).expect("list").count(), 4);

    let store = FileStore::open(dir.path()).expect("open");
    store.put_sync(&task(3)).expect("put");
    assert!(!legacy.exists(), "the former records are gone");
    assert_eq!(strays(dir.path()), Vec::<PathBuf>::new());
    let want = vec![completed(1), completed(2), task(3), four.clone()];
    assert_eq!(store.load_all_sync().expect("load"), want);
    assert_eq!(
        log_lines(dir.path()).len(),
        4,
        "a record the log has a later state of is not moved"
    );
    drop(store);
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(store.load_all_sync().expect("load"), want);
    assert_eq!(store.get(&task(1).id).expect("get"), Some(completed(1)));
}

#[test]
fn an_unreadable_legacy_record_stays_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = dir.path().join(LEGACY_DIR);
    std::fs::create_dir(&legacy).expect("mkdir");
    let one = legacy.join(format!("{}.json", task(1).id));
    std::fs::write(&one, gitfleet_proto::to_json(&task(1))).expect("write");
    let broken = legacy.join("broken.json");
    std::fs::write(&broken, b"{\"id\":").expect("write");
    let store = FileStore::open(dir.path()).expect("open");
    assert_eq!(store.load_all_sync().expect("load"), vec![task(1)]);
    store.put_sync(&task(2)).expect("put");
    assert!(!one.exists());
    assert!(broken.exists());
    assert_eq!(store.load_all_sync().expect("load"), vec![task(1), task(2)]);
}

#[tokio::test]
async fn opening_and_reading_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let store = FileStore::open(&state).expect("open");
    assert_eq!(store.load_all_sync().expect("load"), vec![]);
    assert_eq!(store.get(&task(1).id).expect("get"), None);
    store.flush().await.expect("flushed");
    drop(store);
    assert!(!state.exists());
}

#[test]
fn compact_keeps_exactly_the_last_record_of_every_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last = |round: u32, n: usize| {
        let mut t = if round.is_multiple_of(3) {
            completed(n)
        } else {
            task(n)
        };
        t.attempts = round;
        t
    };
    append_by_hand(dir.path(), &line(&completed(5)));
    for round in 0..10 {
        for n in 0..5 {
            append_by_hand(dir.path(), &line(&last(round, n)));
        }
        append_by_hand(dir.path(), b"not a record\n");
    }
    // The last record of task 5 is one this version cannot read: kept all the same.
    let newer = b"{\"id\":\"0000000000000005\",\"new\":1}\n";
    append_by_hand(dir.path(), newer);
    let before = log_bytes(dir.path()).len();
    let mut file = compact(dir.path(), 0).expect("compact").expect("compacted");
    let mut want: Vec<Vec<u8>> = (0..5).map(|n| line(&last(9, n))).collect();
    want.push(newer.to_vec());
    assert_eq!(log_bytes(dir.path()), want.concat());
    assert!(log_bytes(dir.path()).len() * 5 < before);
    assert_eq!(strays(dir.path()), Vec::<PathBuf>::new());
    // What it returns appends to the new log.
    file.write_all(&line(&completed(7))).expect("append");
    assert_eq!(log_lines(dir.path()).len(), 7);
    assert!(
        compact(dir.path(), 0).expect("compact").is_none(),
        "nothing to drop"
    );
}

#[tokio::test]
async fn the_writer_compacts_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open_with(dir.path(), 4096).expect("open");
    let state = |round: u32, n: usize| {
        let mut t = if (round as usize + n).is_multiple_of(4) {
            completed(n)
        } else {
            task(n)
        };
        t.attempts = round;
        t
    };
    let mut written = 0;
    for round in 0..40 {
        for n in 0..20 {
            written += line(&state(round, n)).len();
            drop(store.put(&state(round, n)));
        }
        store.flush().await.expect("flushed");
    }
    let want: Vec<CloneTask> = (0..20).map(|n| state(39, n)).collect();
    assert_eq!(sorted(store.load_all_sync().expect("load")), want);
    let lines = log_lines(dir.path());
    assert!(lines.len() <= 6 * 20, "{} lines", lines.len());
    assert!(log_bytes(dir.path()).len() * 5 < written);
    assert_eq!(strays(dir.path()), Vec::<PathBuf>::new());
    drop(store);
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(sorted(store.load_all_sync().expect("load")), want);
}

#[tokio::test]
async fn many_short_runs_keep_the_log_small() {
    // Each run (a store opened, a few rounds, dropped) appends little; the check when a
    // writer opens the log keeps it within a factor of what is live.
    let dir = tempfile::tempdir().expect("tempdir");
    for run in 0..12u32 {
        let store = FileStore::open_with(dir.path(), 0).expect("open");
        for n in 0..10 {
            let mut t = completed(n);
            t.attempts = run;
            store.put(&t).await.expect("stored");
        }
    }
    let lines = log_lines(dir.path());
    assert!(
        lines.len() <= (COMPACT_FACTOR as usize + 1) * 10,
        "{} lines for 10 tasks",
        lines.len()
    );
    let store = FileStore::open(dir.path()).expect("reopen");
    let attempts: Vec<u32> = store
        .load_all_sync()
        .expect("load")
        .iter()
        .map(|t| t.attempts)
        .collect();
    assert_eq!(attempts, vec![11; 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_are_all_durable_after_the_store_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FileStore::open(dir.path()).expect("open"));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        writers.spawn(async move {
            for n in (w * 50)..(w * 50 + 50) {
                let mut t = task(n);
                store.put(&t).await.expect("queued");
                t.status = CloneStatus::cloning(0);
                store.put(&t).await.expect("cloning");
                store.put(&completed(n)).await.expect("completed");
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("a writer");
    }
    // Puts nobody waits for still reach the disk.
    for n in 400..500 {
        drop(store.put(&completed(n)));
    }
    for n in 500..600 {
        drop(store.put(&task(n)));
    }
    drop(store);
    let store = FileStore::open(dir.path()).expect("reopen");
    let all = sorted(store.load_all_sync().expect("load"));
    let want: Vec<CloneTask> = (0..500)
        .map(completed)
        .chain((500..600).map(task))
        .collect();
    assert_eq!(all, want);
    assert_eq!(strays(dir.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn the_last_put_of_a_task_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    // Many states of a few tasks in flight together, resolved in any grouping; every tenth
    // one final.
    let mut pending = Vec::new();
    for round in 0..100u32 {
        for n in 0..5 {
            let mut t = if round % 10 == n as u32 {
                completed(n)
            } else {
                task(n)
            };
            t.attempts = round;
            pending.push(store.put(&t));
        }
        if round % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for p in pending {
        p.await.expect("stored");
    }
    store.flush().await.expect("flushed");
    for n in 0..5 {
        let stored = store.get(&task(n).id).expect("read").expect("stored");
        assert_eq!(stored.attempts, 99);
        assert_eq!(stored.status.status_type, StatusType::Queued);
    }
    // And across the blocking and the async entry points.
    let mut t = completed(0);
    t.attempts = 100;
    let queued = store.put(&t);
    t.attempts = 101;
    store.put_sync(&t).expect("put_sync");
    queued.await.expect("stored");
    assert_eq!(
        store.get(&t.id).expect("read").map(|t| t.attempts),
        Some(101)
    );
    // An intermediate state after a final one replaces it, written when the store is
    // dropped at the latest.
    let mut t = task(7);
    store.put_sync(&completed(7)).expect("put_sync");
    t.attempts = 2;
    drop(store.put(&t));
    drop(store);
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(store.get(&t.id).expect("read"), Some(t));
}

#[tokio::test]
async fn intermediate_states_wait_a_little_or_for_a_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    let started = Instant::now();
    store.put(&task(1)).await.expect("queued");
    assert_eq!(
        store.get(&task(1).id).expect("read"),
        None,
        "written at once"
    );
    // Nobody waits for it, yet it gets written, a little later.
    while store.get(&task(1).id).expect("read").is_none() {
        assert!(started.elapsed() < 20 * LINGER, "never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started.elapsed() >= LINGER, "{:?}", started.elapsed());
    // A flush writes it at once.
    let mut t = task(2);
    t.status = CloneStatus::cloning(3);
    store.put(&t).await.expect("cloning");
    let flushing = Instant::now();
    store.flush().await.expect("flushed");
    assert!(flushing.elapsed() < LINGER, "{:?}", flushing.elapsed());
    assert_eq!(store.get(&t.id).expect("read"), Some(t));
}

#[tokio::test]
async fn a_final_state_is_on_disk_when_put_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    let reader = FileStore::open(dir.path()).expect("a second store on the same directory");
    for n in 0..20 {
        let t = completed(n);
        store.put(&t).await.expect("stored");
        // Another handle (as another process would) reads it back, whole.
        let on_disk = reader.get(&t.id).expect("read");
        assert_eq!(on_disk.as_ref(), Some(&t));
        assert_eq!(
            on_disk.map(|t| t.status.status_type),
            Some(StatusType::Completed)
        );
        // The log's last line is the record.
        let lines = log_lines(dir.path());
        assert_eq!(lines.last(), Some(&gitfleet_proto::to_json(&t)));
    }
}

#[tokio::test]
async fn a_failed_write_is_reported_to_every_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The state directory cannot be made: a file is in the way.
    let state = dir.path().join("state");
    std::fs::write(&state, b"").expect("a file in the way");
    let store = FileStore::open(&state).expect("open");
    let first = store.put(&completed(1));
    let second = store.put(&completed(1));
    assert!(first.await.is_err());
    assert!(second.await.is_err());
    assert!(store.put_sync(&task(2)).is_err());
    store
        .put(&task(3))
        .await
        .expect("an intermediate state is not waited for");
    let flushed = store.flush().await;
    assert!(flushed.is_err(), "the flush reports the failed write");
    // It works again once the directory can be made.
    std::fs::remove_file(&state).expect("rm");
    store.put(&completed(3)).await.expect("stored");
    assert_eq!(store.load_all_sync().expect("load"), vec![completed(3)]);
}

#[test]
fn a_removed_task_stays_removed_across_reads_writes_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = FileStore::open(dir.path()).expect("open");
        for n in 0..3 {
            store.put_sync(&completed(n)).expect("put");
        }
        store.remove_sync(&completed(1).id).expect("remove");
        assert_eq!(
            sorted(store.load_all_sync().expect("load")),
            vec![completed(0), completed(2)]
        );
        assert_eq!(store.get(&completed(1).id).expect("get"), None);
        assert_eq!(
            store.get(&completed(2).id).expect("get"),
            Some(completed(2))
        );
        // Stored again later, it is back.
        store.put_sync(&completed(0)).expect("put");
        store.remove_sync(&completed(0).id).expect("remove");
        store.put_sync(&completed(0)).expect("put again");
    }
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        sorted(store.load_all_sync().expect("load")),
        vec![completed(0), completed(2)]
    );
    // Compaction drops the removed task altogether, tombstone and all.
    drop(store);
    append_by_hand(dir.path(), &line(&completed(2)).repeat(20));
    compact(dir.path(), 0).expect("compact").expect("compacted");
    let lines = log_lines(dir.path());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(!lines.iter().any(|l| l.windows(7).any(|w| w == b"removed")));
    let store = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        sorted(store.load_all_sync().expect("load")),
        vec![completed(0), completed(2)]
    );
}
