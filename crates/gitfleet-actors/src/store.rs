//! Durable task state. The embedded store keeps one JSON file per task under
//! `<root>/.gitfleet/tasks/`, replaced atomically (write to a temporary file, fsync, rename), so a
//! reader in another process never sees a half-written record, and a crash leaves every record
//! as it was before or after a write, never a part of one.
//!
//! Writes go through a writer thread that commits them in groups: the records of a round are
//! written and fsynced on several threads at once (the filesystem's journal commits fsyncs that
//! overlap together), then the directory is fsynced once, then the round's puts resolve.
//! Several states of one task waiting together are one write (the last one wins). A final
//! state (completed, failed) goes into the next round, and its `put` resolves once it is
//! durable. An intermediate state (queued, cloning) is re-derivable (the task is submitted again
//! or resumed as unfinished): its `put` resolves at once, and it is written [`LINGER`] later
//! unless a later state of the task replaced it by then, or earlier on [`TaskStore::flush`]
//! (the Registry flushes before it answers `Get` or `List`), `put_sync` or when the store is
//! dropped. A crash can lose the intermediate states of the last [`LINGER`], nothing else.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gitfleet_proto::CloneTask;
use tokio::sync::oneshot;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'a>>;

/// Where task state survives the process. The cluster puts a JetStream key-value bucket here.
pub trait TaskStore: Send + Sync + 'static {
    /// The tasks the Registry starts with (and resumes from).
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>>;
    /// Stores `task`, unless the store holds a newer attempt of it (a late result of an attempt
    /// that was superseded must not overwrite newer state).
    fn put<'a>(&'a self, task: &'a CloneTask) -> StoreFuture<'a, ()>;
    /// `put` for a store that takes the write in hand when this is called: writes are applied
    /// in the order of the calls, and the future (which borrows nothing) resolves once `task`
    /// is stored as the store stores it. The Registry then handles its next message while the
    /// write is in flight, so that the store can commit many writes at once, and still
    /// broadcasts each transition only after its future resolved, in order. `None` (the
    /// default): the Registry awaits `put` before it handles its next message.
    fn put_queued(&self, _task: &CloneTask) -> Option<StoreFuture<'static, ()>> {
        None
    }
    /// For a store whose `put_queued` may resolve before the write is done: resolves once
    /// every write queued before is done. The Registry awaits it before it answers `Get` and
    /// `List`.
    fn flush(&self) -> Option<StoreFuture<'static, ()>> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    writer: Arc<WriterHandle>,
}

/// How long an intermediate state may wait to be written (to be replaced by a later state of
/// its task instead).
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// Records fsynced at once in one round, at most (each on a thread of its own).
const MAX_PARALLEL_SYNCS: usize = 16;

/// The writer thread of a store and its clones; dropping the last handle lets it write what is
/// waiting and waits for it.
struct WriterHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

struct Shared {
    dir: PathBuf,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// The latest unwritten state of tasks, by id.
    pending: HashMap<String, Pending>,
    /// Ids to write in the next round (final states, `put_sync`).
    urgent: Vec<String>,
    /// Ids of intermediate states, by when they were queued (an id whose record was written
    /// and queued again meanwhile is here twice; `Pending::since` tells which is current).
    aging: VecDeque<(Instant, String)>,
    /// Resolved after the next round, which writes everything pending.
    flushes: Vec<Waiter>,
    closed: bool,
}

struct Pending {
    task: CloneTask,
    /// When the oldest unwritten state of the task was queued.
    since: Instant,
    urgent: bool,
    waiters: Vec<Waiter>,
}

enum Waiter {
    Async(oneshot::Sender<std::io::Result<()>>),
    Blocking(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

fn copy_result(result: &std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

impl Waiter {
    fn resolve(self, result: &std::io::Result<()>) {
        let result = copy_result(result);
        match self {
            Waiter::Async(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

fn writer_gone() -> std::io::Error {
    std::io::Error::other("the task store's writer stopped")
}

impl Queue {
    /// The records due now, taken out of `pending`.
    fn take_due(&mut self, now: Instant) -> Vec<Pending> {
        let mut due = Vec::new();
        if self.closed || !self.flushes.is_empty() {
            self.urgent.clear();
            self.aging.clear();
            due.extend(self.pending.drain().map(|(_, p)| p));
            return due;
        }
        for id in std::mem::take(&mut self.urgent) {
            due.extend(self.pending.remove(&id));
        }
        while let Some((since, _)) = self.aging.front()
            && *since + LINGER <= now
        {
            let Some((_, id)) = self.aging.pop_front() else {
                break;
            };
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.since + LINGER <= now)
            {
                due.extend(self.pending.remove(&id));
            }
        }
        due
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (it only inserts/takes).
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run(&self) {
        let mut queue = self.lock();
        loop {
            let now = Instant::now();
            let batch = queue.take_due(now);
            let flushes = std::mem::take(&mut queue.flushes);
            if batch.is_empty() && flushes.is_empty() {
                if queue.closed && queue.pending.is_empty() {
                    return;
                }
                let next = queue.aging.front().map(|(since, _)| *since + LINGER);
                queue = match next {
                    Some(at) => {
                        self.wake
                            .wait_timeout(queue, at.saturating_duration_since(now))
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0
                    }
                    None => self
                        .wake
                        .wait(queue)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                };
                continue;
            }
            drop(queue);
            let result = self.commit(batch);
            for flush in flushes {
                flush.resolve(&result);
            }
            queue = self.lock();
        }
    }

    /// Writes every record of `batch` and resolves their waiters once they are durable; the
    /// first error, if any.
    fn commit(&self, batch: Vec<Pending>) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut results: Vec<std::io::Result<()>> = Vec::with_capacity(batch.len());
        let threads = batch.len().min(MAX_PARALLEL_SYNCS);
        if threads <= 1 {
            results.extend(batch.iter().map(|p| write_record(&self.dir, &p.task)));
        } else {
            // fsync blocks without using a CPU, and the journal commits fsyncs that overlap
            // together: records written on several threads cost about one commit.
            let next = AtomicUsize::new(0);
            let done: Vec<Vec<(usize, std::io::Result<()>)>> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let Some(p) = batch.get(i) else {
                                    return done;
                                };
                                done.push((i, write_record(&self.dir, &p.task)));
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_default())
                    .collect()
            });
            results.extend((0..batch.len()).map(|_| Err(writer_gone())));
            for (i, result) in done.into_iter().flatten() {
                results[i] = result;
            }
        }
        // The renames are durable once the directory is.
        if results.iter().any(Result::is_ok)
            && let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all())
        {
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        let mut first_error = Ok(());
        for (pending, result) in batch.into_iter().zip(&results) {
            if let Err(e) = result {
                tracing::error!(task = %pending.task.id, error = %e, "cannot write task record");
                if first_error.is_ok() {
                    first_error = copy_result(result);
                }
            }
            for waiter in pending.waiters {
                waiter.resolve(result);
            }
        }
        first_error
    }
}

/// Replaces the record of `task` atomically: a temporary file, written and fsynced, renamed over
/// the record. A crash leaves the old record or the new one, never a part of one.
fn write_record(dir: &Path, task: &CloneTask) -> std::io::Result<()> {
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&gitfleet_proto::to_json(task))?;
    file.as_file().sync_data()?;
    file.persist(record_path(dir, &task.id))
        .map_err(|e| e.error)?;
    Ok(())
}

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FileStore {
    pub fn open(state_dir: &Path) -> std::io::Result<FileStore> {
        let dir = state_dir.join("tasks");
        std::fs::create_dir_all(&dir)?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("gitfleet-store".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run()
            })?;
        Ok(FileStore {
            writer: Arc::new(WriterHandle {
                shared,
                thread: Some(thread),
            }),
            dir,
        })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        record_path(&self.dir, id)
    }

    pub fn get(&self, id: &str) -> std::io::Result<Option<CloneTask>> {
        match std::fs::read(self.path_of(id)) {
            Ok(bytes) => Ok(gitfleet_proto::from_json(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Queues `task` for the writer thread: in its next round if it is final or someone waits
    /// for it (`waiter`, told once it is durable), otherwise after [`LINGER`].
    fn enqueue(&self, task: &CloneTask, waiter: Option<Waiter>) {
        let shared = &self.writer.shared;
        let urgent = waiter.is_some() || task.status.status_type.is_final();
        let mut guard = shared.lock();
        let queue = &mut *guard;
        let (pending, fresh) = match queue.pending.entry(task.id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let pending = e.into_mut();
                pending.task.clone_from(task);
                (pending, false)
            }
            std::collections::hash_map::Entry::Vacant(e) => (
                e.insert(Pending {
                    task: task.clone(),
                    since: Instant::now(),
                    urgent: false,
                    waiters: Vec::new(),
                }),
                true,
            ),
        };
        pending.waiters.extend(waiter);
        let wake = if urgent {
            if !pending.urgent {
                pending.urgent = true;
                queue.urgent.push(task.id.clone());
            }
            true
        } else if fresh {
            queue.aging.push_back((pending.since, task.id.clone()));
            // The writer sleeps until the oldest intermediate state is due; with no other one,
            // it sleeps until woken.
            queue.aging.len() == 1
        } else {
            false
        };
        drop(guard);
        if wake {
            shared.wake.notify_one();
        }
    }

    fn put_async(&self, task: &CloneTask) -> StoreFuture<'static, ()> {
        if !task.status.status_type.is_final() {
            self.enqueue(task, None);
            return Box::pin(std::future::ready(Ok(())));
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(task, Some(Waiter::Async(tx)));
        Box::pin(async move { rx.await.map_err(|_| writer_gone())? })
    }

    fn flush_async(&self) -> StoreFuture<'static, ()> {
        let (tx, rx) = oneshot::channel();
        let shared = &self.writer.shared;
        shared.lock().flushes.push(Waiter::Async(tx));
        shared.wake.notify_one();
        Box::pin(async move { rx.await.map_err(|_| writer_gone())? })
    }
}

impl TaskStore for FileStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        Box::pin(std::future::ready(self.load_all_sync()))
    }

    fn put<'a>(&'a self, task: &'a CloneTask) -> StoreFuture<'a, ()> {
        // One process per root (the root lock): no other writer to fence against.
        self.put_async(task)
    }

    fn put_queued(&self, task: &CloneTask) -> Option<StoreFuture<'static, ()>> {
        Some(self.put_async(task))
    }

    fn flush(&self) -> Option<StoreFuture<'static, ()>> {
        Some(self.flush_async())
    }
}

impl FileStore {
    /// Every readable record, oldest first.
    pub fn load_all_sync(&self) -> std::io::Result<Vec<CloneTask>> {
        let mut tasks = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Replaced or removed between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match gitfleet_proto::from_json::<CloneTask>(&bytes) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable task record")
                }
            }
        }
        tasks.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(tasks)
    }

    /// Stores `task`, whatever its state, and returns once it is durable (blocking the calling
    /// thread).
    pub fn put_sync(&self, task: &CloneTask) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(task, Some(Waiter::Blocking(tx)));
        rx.recv().map_err(|_| writer_gone())?
    }
}

#[cfg(test)]
mod tests {
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

    /// What is in the directory besides records (temporary files left behind).
    fn strays(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("tasks"))
            .expect("listing")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_none_or(|e| e != "json"))
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
        std::fs::write(dir.path().join("tasks/broken.json"), b"{\"id\":").expect("write");
        let all = store.load_all_sync().expect("load");
        assert_eq!(all, vec![task.clone()]);
        assert_eq!(store.get(&task.id).expect("get"), Some(task));
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
            drop(store.put_queued(&completed(n)));
        }
        for n in 500..600 {
            drop(store.put_queued(&task(n)));
        }
        drop(store);
        let store = FileStore::open(dir.path()).expect("reopen");
        let mut all = store.load_all_sync().expect("load");
        all.sort_by(|a, b| a.id.cmp(&b.id));
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
                pending.push(store.put_queued(&t).expect("the file store queues"));
            }
            if round % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for p in pending {
            p.await.expect("stored");
        }
        store
            .flush()
            .expect("the file store flushes")
            .await
            .expect("flushed");
        for n in 0..5 {
            let stored = store.get(&task(n).id).expect("read").expect("stored");
            assert_eq!(stored.attempts, 99);
            assert_eq!(stored.status.status_type, StatusType::Queued);
        }
        // And across the blocking and the async entry points.
        let mut t = completed(0);
        t.attempts = 100;
        let queued = store.put_queued(&t).expect("queued");
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
        drop(store.put_queued(&t));
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
        store.flush().expect("flush").await.expect("flushed");
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
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_every_waiter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        std::fs::remove_dir_all(dir.path().join("tasks")).expect("removing the records");
        let first = store.put_queued(&completed(1)).expect("queued");
        let second = store.put_queued(&completed(1)).expect("queued");
        assert!(first.await.is_err());
        assert!(second.await.is_err());
        assert!(store.put_sync(&task(2)).is_err());
        store
            .put(&task(3))
            .await
            .expect("an intermediate state is not waited for");
        let flushed = store.flush().expect("flush").await;
        assert!(flushed.is_err(), "the flush reports the failed write");
        // It works again once the directory is back.
        std::fs::create_dir_all(dir.path().join("tasks")).expect("mkdir");
        store.put(&completed(3)).await.expect("stored");
        assert_eq!(store.load_all_sync().expect("load"), vec![completed(3)]);
    }
}
