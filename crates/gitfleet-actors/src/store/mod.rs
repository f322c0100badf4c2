//! Durable task state: the [`TaskStore`] contract, and the embedded store, [`FileStore`]
//! (`journal.rs` the format, `writer.rs` the writer thread and group commit, `compaction.rs`,
//! `migration.rs` from the former per-task files).
//!
//! The embedded store is a journal, `<root>/.gitfleet/tasks.log`: one line
//! per stored state of a task, the `CloneTask` as JSON (`gitfleet_proto::to_json`, compact: a
//! record holds no newline) followed by `\n`. The last line of a task wins. A line that does not
//! parse, or the end of the log when it lacks its `\n` (cut by a crash, or being appended right
//! now), is skipped. Opening a store writes nothing: read-only commands (`gitfleet status`) open
//! it while another process writes.
//!
//! Writes go through a writer thread that commits them in groups: a round appends the records
//! of the round with one write to the log (kept open for appending), fsyncs it once, then
//! resolves the round's puts. Several states of one task waiting together are one record (the
//! last one wins). A final state (completed, failed) goes into the next round, and its `put`
//! resolves once it is durable. An intermediate state (queued, cloning) is re-derivable (the
//! task is submitted again or resumed as unfinished): its `put` resolves at once, and it is
//! written [`LINGER`] later unless a later state of the task replaced it by then, or earlier on
//! [`TaskStore::flush`] (the Registry flushes before it answers `Get` or `List`), `put_sync` or
//! when the store is dropped. A crash can lose the intermediate states of the last [`LINGER`],
//! never a final state whose `put` resolved; it may leave a torn last line, which readers skip.
//!
//! The writer thread opens the log on its first round (the process holds the root lock by
//! then). It first cuts the log after its last whole record (appending after a torn tail would
//! glue the next record onto it; a JSON object with an `id` counts as one even if this version
//! cannot read the rest, as compaction keeps it: a newer version may have written it), then
//! moves the records of the former layout (one file per task, `tasks/<id>.json`, which readers
//! still read, the log winning) into the log and removes them. When the log is larger than
//! [`COMPACT_FACTOR`] times its live records (the last one of every task) plus
//! [`COMPACT_SLACK`] — checked when the writer opens it, which also keeps a log grown by many
//! short runs small, and after a round once the log has grown that much since the last check —
//! the writer compacts it: the live records are copied into `tasks.log.tmp`, which is fsynced
//! and renamed over the log, so that a reader reads the old log or the new one, never a mix.
//! Every process start reads the whole log, so it stays within a small factor of what is live.

mod compaction;
mod journal;
mod migration;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gitfleet_proto::CloneTask;
use tokio::sync::oneshot;

use compaction::COMPACT_SLACK;
use journal::{Entry, for_each_line, parse_entry};
use migration::{LEGACY_DIR, legacy_files, read_legacy};
use writer::{Pending, Queue, Shared, Waiter, WriterHandle, writer_gone};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'a>>;

/// A write a store has taken in hand ([`TaskStore::put`], [`TaskStore::flush`]).
pub enum Put {
    /// Nothing to wait for: the state is stored, or is an intermediate one the store writes a
    /// little later (or never, when a later state of its task replaces it first).
    Accepted,
    /// Resolves once the write is done (a final state: durably).
    Pending(StoreFuture<'static, ()>),
}

impl IntoFuture for Put {
    type Output = std::io::Result<()>;
    type IntoFuture = StoreFuture<'static, ()>;

    fn into_future(self) -> Self::IntoFuture {
        match self {
            Put::Accepted => Box::pin(std::future::ready(Ok(()))),
            Put::Pending(write) => write,
        }
    }
}

/// Where task state survives the process. The cluster puts a JetStream key-value bucket here.
pub trait TaskStore: Send + Sync + 'static {
    /// The tasks the Registry starts with (and resumes from).
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>>;
    /// Takes the write of `task` in hand now, without waiting: writes apply in the order of
    /// the calls, and a store never replaces a newer attempt of a task by an older one (a late
    /// result of an attempt that was superseded must not overwrite newer state). The Registry
    /// goes on with its next message while a write is in flight and broadcasts each transition
    /// once its write is done, in order.
    fn put(&self, task: &CloneTask) -> Put;
    /// Done once every write taken in hand before is done: the Registry awaits it before it
    /// answers `Get` and `List`.
    fn flush(&self) -> Put {
        Put::Accepted
    }
    /// A final state that says nothing new of the repository (a sync that found it as it
    /// was): a store may write it a little later, as it writes intermediate states. Lost in a
    /// crash, the task's previous state stands (the same refs, an older check), and the
    /// repository is checked again sooner. Stores that have no cheaper write store it as `put`.
    fn put_quiet(&self, task: &CloneTask) -> Put {
        self.put(task)
    }
    /// Forgets task `id` (its repository is being removed): done once the removal is durable.
    /// Later writes of the task (a late state of it) store it again, so the caller makes sure
    /// none comes.
    fn remove(&self, id: &str) -> Put;
}

#[derive(Debug, Clone)]
pub struct FileStore {
    state_dir: PathBuf,
    writer: Arc<WriterHandle>,
}

/// How long an intermediate state may wait to be written (to be replaced by a later state of
/// its task instead).
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// The task log, in the state directory.
const LOG: &str = "tasks.log";
/// A compacted log while it is written, renamed over [`LOG`] once complete.
const COMPACTING: &str = "tasks.log.tmp";

impl FileStore {
    /// The store in `state_dir`. Writes nothing: the log is opened (and created) by the first
    /// write.
    pub fn open(state_dir: &Path) -> std::io::Result<FileStore> {
        FileStore::open_with(state_dir, COMPACT_SLACK)
    }

    fn open_with(state_dir: &Path, compact_slack: u64) -> std::io::Result<FileStore> {
        let shared = Arc::new(Shared {
            state_dir: state_dir.to_path_buf(),
            compact_slack,
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
            state_dir: state_dir.to_path_buf(),
        })
    }

    /// The stored state of task `id` (reads the whole log).
    pub fn get(&self, id: &str) -> std::io::Result<Option<CloneTask>> {
        let mut found = read_legacy(&self.state_dir.join(LEGACY_DIR).join(format!("{id}.json")))?;
        // The id as it is written in a record, to parse only the lines that may be its.
        let needle = gitfleet_proto::to_json(&id);
        let path = self.state_dir.join(LOG);
        for_each_line(&path, |offset, line| {
            if line.windows(needle.len()).any(|w| w == needle.as_slice()) {
                match parse_entry(&path, offset, line) {
                    Some(Entry::Task(task)) if task.id == id => found = Some(*task),
                    Some(Entry::Removed(removed)) if removed == id => found = None,
                    _ => {}
                }
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Queues `task` for the writer thread: in its next round if it is final or someone waits
    /// for it (`waiter`, told once it is durable), otherwise after [`LINGER`].
    fn enqueue(&self, task: &CloneTask, waiter: Option<Waiter>) {
        let urgent = waiter.is_some() || task.status.status_type.is_final();
        self.enqueue_entry(Entry::Task(Box::new(task.clone())), urgent, waiter);
    }

    /// Queues `entry` (a state or a removal) for the writer thread.
    fn enqueue_entry(&self, entry: Entry, urgent: bool, waiter: Option<Waiter>) {
        let shared = &self.writer.shared;
        let id = entry.id().to_string();
        let mut guard = shared.lock();
        let queue = &mut *guard;
        let (pending, fresh) = match queue.pending.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let pending = e.into_mut();
                pending.entry = entry;
                (pending, false)
            }
            std::collections::hash_map::Entry::Vacant(e) => (
                e.insert(Pending {
                    entry,
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
                queue.urgent.push(id.clone());
            }
            true
        } else if fresh {
            queue.aging.push_back((pending.since, id));
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
}

impl TaskStore for FileStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        Box::pin(std::future::ready(self.load_all_sync()))
    }

    /// One process per root (the root lock): no other writer to fence against.
    fn put(&self, task: &CloneTask) -> Put {
        if !task.status.status_type.is_final() {
            self.enqueue(task, None);
            return Put::Accepted;
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(task, Some(Waiter::Async(tx)));
        Put::Pending(Box::pin(
            async move { rx.await.map_err(|_| writer_gone())? },
        ))
    }

    /// Queued as an intermediate state is: written within [`LINGER`] with whatever else is
    /// due, one fsync for all of them, instead of a round of its own. A check of an unchanged
    /// repository costs no fsync of its own.
    fn put_quiet(&self, task: &CloneTask) -> Put {
        self.enqueue_entry(Entry::Task(Box::new(task.clone())), false, None);
        Put::Accepted
    }

    fn remove(&self, id: &str) -> Put {
        self.remove_legacy(id);
        let (tx, rx) = oneshot::channel();
        self.enqueue_entry(
            Entry::Removed(id.to_string()),
            true,
            Some(Waiter::Async(tx)),
        );
        Put::Pending(Box::pin(
            async move { rx.await.map_err(|_| writer_gone())? },
        ))
    }

    fn flush(&self) -> Put {
        let (tx, rx) = oneshot::channel();
        let shared = &self.writer.shared;
        shared.lock().flushes.push(Waiter::Async(tx));
        shared.wake.notify_one();
        Put::Pending(Box::pin(
            async move { rx.await.map_err(|_| writer_gone())? },
        ))
    }
}

impl FileStore {
    /// Every readable record, oldest first.
    pub fn load_all_sync(&self) -> std::io::Result<Vec<CloneTask>> {
        let mut tasks: HashMap<String, CloneTask> = HashMap::new();
        // The former layout first: a record moved into the log meanwhile is in the log, read
        // next.
        for path in legacy_files(&self.state_dir.join(LEGACY_DIR))?.unwrap_or_default() {
            if let Some(task) = read_legacy(&path)? {
                tasks.insert(task.id.clone(), task);
            }
        }
        let path = self.state_dir.join(LOG);
        for_each_line(&path, |offset, line| {
            match parse_entry(&path, offset, line) {
                Some(Entry::Task(task)) => {
                    tasks.insert(task.id.clone(), *task);
                }
                Some(Entry::Removed(id)) => {
                    tasks.remove(&id);
                }
                None => {}
            }
            Ok(())
        })?;
        let mut tasks: Vec<CloneTask> = tasks.into_values().collect();
        tasks.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(tasks)
    }

    /// Forgets task `id` and returns once that is durable (blocking the calling thread).
    pub fn remove_sync(&self, id: &str) -> std::io::Result<()> {
        self.remove_legacy(id);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue_entry(
            Entry::Removed(id.to_string()),
            true,
            Some(Waiter::Blocking(tx)),
        );
        rx.recv().map_err(|_| writer_gone())?
    }

    /// A record of the former layout of a removed task goes too (the log's tombstone hides it
    /// only until a compaction drops the tombstone).
    fn remove_legacy(&self, id: &str) {
        let path = self.state_dir.join(LEGACY_DIR).join(format!("{id}.json"));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a former record");
        }
    }

    /// Stores `task`, whatever its state, and returns once it is durable (blocking the calling
    /// thread).
    pub fn put_sync(&self, task: &CloneTask) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(task, Some(Waiter::Blocking(tx)));
        rx.recv().map_err(|_| writer_gone())?
    }
}
