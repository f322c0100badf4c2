//! The writer thread and its group commit: a round appends the records of the round with one
//! write to the log (kept open for appending), fsyncs it once, then resolves the round's puts.
//! Several states of one task waiting together are one record (the last one wins).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::journal::{Entry, last_record_end, push_entry, sync_dir};
use super::{COMPACTING, LINGER, LOG};

/// The writer thread of a store and its clones; dropping the last handle lets it write what is
/// waiting and waits for it.
pub(super) struct WriterHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("state_dir", &self.shared.state_dir)
            .finish()
    }
}

pub(super) struct Shared {
    pub(super) state_dir: PathBuf,
    /// [`COMPACT_SLACK`], lowered by tests.
    pub(super) compact_slack: u64,
    pub(super) queue: Mutex<Queue>,
    pub(super) wake: Condvar,
}

#[derive(Default)]
pub(super) struct Queue {
    /// The latest unwritten state of tasks, by id.
    pub(super) pending: HashMap<String, Pending>,
    /// Ids to write in the next round (final states, `put_sync`).
    pub(super) urgent: Vec<String>,
    /// Ids of intermediate states, by when they were queued (an id whose record was written
    /// and queued again meanwhile is here twice; `Pending::since` tells which is current).
    pub(super) aging: VecDeque<(Instant, String)>,
    /// Resolved after the next round, which writes everything pending.
    pub(super) flushes: Vec<Waiter>,
    pub(super) closed: bool,
}

pub(super) struct Pending {
    /// The latest state of the task, or its removal.
    pub(super) entry: Entry,
    /// When the oldest unwritten state of the task was queued.
    pub(super) since: Instant,
    pub(super) urgent: bool,
    pub(super) waiters: Vec<Waiter>,
}

pub(super) enum Waiter {
    Async(oneshot::Sender<std::io::Result<()>>),
    Blocking(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

pub(super) fn copy_result(result: &std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

impl Waiter {
    pub(super) fn resolve(self, result: &std::io::Result<()>) {
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

pub(super) fn writer_gone() -> std::io::Error {
    std::io::Error::other("the task store's writer stopped")
}

impl Queue {
    /// The records due now, taken out of `pending`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Pending> {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (it only inserts/takes).
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn run(&self) {
        let mut writer = Writer {
            state_dir: self.state_dir.clone(),
            compact_slack: self.compact_slack,
            log: None,
        };
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
            let result = writer.commit(batch);
            for flush in flushes {
                flush.resolve(&result);
            }
            queue = self.lock();
        }
    }
}

/// The writer thread's side of the log.
pub(super) struct Writer {
    pub(super) state_dir: PathBuf,
    pub(super) compact_slack: u64,
    /// Opened on the first round, and again after an error.
    pub(super) log: Option<Log>,
}

/// The log, opened for appending.
pub(super) struct Log {
    pub(super) file: File,
    /// Its length, as this thread wrote it.
    pub(super) len: u64,
    /// Its length after the last compaction, or when it was opened.
    pub(super) base: u64,
}

impl Writer {
    /// Appends every record of `batch`, fsyncs the log and resolves their waiters (with the
    /// error, if any); then compacts the log if it is due.
    pub(super) fn commit(&mut self, batch: Vec<Pending>) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(batch.len() * 512);
        for pending in &batch {
            push_entry(&mut records, &pending.entry);
        }
        let result = self.append(&records);
        if let Err(e) = &result {
            tracing::error!(
                records = batch.len(),
                first = %batch[0].entry.id(),
                error = %e,
                "cannot write task records"
            );
            // The append may have left a part of a record: the next round opens the log again,
            // which cuts it.
            self.log = None;
        }
        for pending in batch {
            for waiter in pending.waiters {
                waiter.resolve(&result);
            }
        }
        if result.is_ok() {
            self.compact_if_due();
        }
        result
    }

    fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        let log = self.log()?;
        log.file.write_all(records)?;
        log.file.sync_data()?;
        log.len += records.len() as u64;
        Ok(())
    }

    fn log(&mut self) -> std::io::Result<&mut Log> {
        let log = match self.log.take() {
            Some(log) => log,
            None => {
                self.log = Some(self.open()?);
                self.compact_if_due();
                self.log.take().map_or_else(|| self.open(), Ok)?
            }
        };
        Ok(self.log.insert(log))
    }

    /// Opens the log for appending: cuts a torn tail, moves the records of the former layout
    /// into it.
    pub(super) fn open(&self) -> std::io::Result<Log> {
        std::fs::create_dir_all(&self.state_dir)?;
        let path = self.state_dir.join(LOG);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        let whole = last_record_end(&file, len)?;
        if whole < len {
            tracing::warn!(
                path = %path.display(),
                bytes = len - whole,
                "cutting the torn end of the task log"
            );
            file.set_len(whole)?;
            file.sync_data()?;
        }
        match std::fs::remove_file(self.state_dir.join(COMPACTING)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot remove an unfinished compaction of the task log");
            }
            _ => {}
        }
        let mut log = Log {
            file,
            len: whole,
            base: whole,
        };
        self.migrate(&mut log)?;
        // The log's name is durable once the directory is.
        sync_dir(&self.state_dir)?;
        // Short runs each append a little and never grow the log much within one process:
        // measure what is live now (base 0 makes the check due).
        log.base = 0;
        Ok(log)
    }
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
