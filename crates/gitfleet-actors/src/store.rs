//! Durable task state. The embedded store is a journal, `<root>/.gitfleet/tasks.log`: one line
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
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
/// The former layout: one `<id>.json` file per task in this directory of the state directory.
const LEGACY_DIR: &str = "tasks";

/// The log is compacted once it is larger than this many times its live records (the last one
/// of every task), plus [`COMPACT_SLACK`].
const COMPACT_FACTOR: u64 = 2;
const COMPACT_SLACK: u64 = 256 << 10;

/// The writer thread of a store and its clones; dropping the last handle lets it write what is
/// waiting and waits for it.
struct WriterHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("state_dir", &self.shared.state_dir)
            .finish()
    }
}

struct Shared {
    state_dir: PathBuf,
    /// [`COMPACT_SLACK`], lowered by tests.
    compact_slack: u64,
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
struct Writer {
    state_dir: PathBuf,
    compact_slack: u64,
    /// Opened on the first round, and again after an error.
    log: Option<Log>,
}

/// The log, opened for appending.
struct Log {
    file: File,
    /// Its length, as this thread wrote it.
    len: u64,
    /// Its length after the last compaction, or when it was opened.
    base: u64,
}

impl Writer {
    /// Appends every record of `batch`, fsyncs the log and resolves their waiters (with the
    /// error, if any); then compacts the log if it is due.
    fn commit(&mut self, batch: Vec<Pending>) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(batch.len() * 512);
        for pending in &batch {
            push_record(&mut records, &pending.task);
        }
        let result = self.append(&records);
        if let Err(e) = &result {
            tracing::error!(
                records = batch.len(),
                first = %batch[0].task.id,
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
    fn open(&self) -> std::io::Result<Log> {
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

    /// Appends the records of the former layout that the log does not hold a record of the
    /// task of (readers let the log win) to the log, then removes them. Unreadable ones stay.
    fn migrate(&self, log: &mut Log) -> std::io::Result<()> {
        let dir = self.state_dir.join(LEGACY_DIR);
        let Some(files) = legacy_files(&dir)? else {
            return Ok(());
        };
        // The tasks the log holds a record of (after a migration that stopped half-way), read
        // when a readable former record is found.
        let mut in_log: Option<HashSet<String>> = None;
        let mut records = Vec::new();
        let mut moved = Vec::new();
        let mut written = 0usize;
        for path in files {
            match read_legacy(&path) {
                Ok(Some(task)) => {
                    let in_log = match &mut in_log {
                        Some(in_log) => in_log,
                        None => in_log.insert(self.ids_in_log(log.len)?),
                    };
                    if !in_log.contains(&task.id) {
                        push_record(&mut records, &task);
                        written += 1;
                    }
                    moved.push(path);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "leaving an unreadable task record in place");
                }
            }
            if records.len() >= 1 << 20 {
                log.file.write_all(&records)?;
                log.len += records.len() as u64;
                records.clear();
            }
        }
        log.file.write_all(&records)?;
        log.len += records.len() as u64;
        // Records found in the log are durable before their files go, too.
        log.file.sync_data()?;
        for path in &moved {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a moved task record");
                }
                _ => {}
            }
        }
        // Temporary files of the former writer, never records.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "leaving the former task record directory in place");
            }
        }
        tracing::info!(
            moved = moved.len(),
            written,
            "moved the task records into the task log"
        );
        Ok(())
    }

    /// The tasks the first `len` bytes of the log hold a record of that this version reads.
    fn ids_in_log(&self, len: u64) -> std::io::Result<HashSet<String>> {
        let mut ids = HashSet::new();
        if len > 0 {
            let path = self.state_dir.join(LOG);
            for_each_line(&path, |offset, line| {
                if offset < len
                    && let Some(task) = parse_line(&path, offset, line)
                {
                    ids.insert(task.id);
                }
                Ok(())
            })?;
        }
        Ok(ids)
    }

    /// Compacts the log if it grew enough since it was last compacted; an error is logged, and
    /// compaction is tried again once the log has grown as much again.
    fn compact_if_due(&mut self) {
        let Some(log) = &mut self.log else {
            return;
        };
        // `base`: the size of the log when it was last measured (0: not yet).
        if log.len
            <= COMPACT_FACTOR
                .saturating_mul(log.base)
                .saturating_add(self.compact_slack)
        {
            return;
        }
        let before = log.len;
        match compact(&self.state_dir, self.compact_slack) {
            Ok(Some(file)) => {
                let len = file.metadata().map(|m| m.len());
                let synced = sync_dir(&self.state_dir);
                match (len, synced) {
                    (Ok(len), Ok(())) => {
                        tracing::info!(before, after = len, "compacted the task log");
                        self.log = Some(Log {
                            file,
                            len,
                            base: len,
                        });
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "cannot compact the task log");
                        // The next round opens the new log (and fsyncs the directory).
                        self.log = None;
                    }
                }
            }
            Ok(None) => log.base = log.len,
            Err(e) => {
                tracing::error!(error = %e, "cannot compact the task log");
                log.base = log.len;
                let _ = std::fs::remove_file(self.state_dir.join(COMPACTING));
            }
        }
    }
}

/// Appends the line of `task` to `records`.
fn push_record(records: &mut Vec<u8>, task: &CloneTask) {
    let start = records.len();
    records.extend(gitfleet_proto::to_json(task));
    debug_assert!(!records[start..].contains(&b'\n'), "a record is one line");
    records.push(b'\n');
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Rewrites the log in `state_dir` with the last record of every task (in their order in the
/// log; lines that are not records are dropped), if the log is larger than [`COMPACT_FACTOR`]
/// times those plus `slack`: written to [`COMPACTING`], fsynced and renamed over the log.
/// Returns the new log, opened for appending, or `None` if it was not worth it (then nothing
/// changed). Memory is proportional to the number of tasks, not to the size of the log.
fn compact(state_dir: &Path, slack: u64) -> std::io::Result<Option<File>> {
    let path = state_dir.join(LOG);
    // The offset and length of the last record of every task.
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut total = 0u64;
    for_each_line(&path, |offset, line| {
        let len = line.len() as u64 + 1;
        total += len;
        if let Some(id) = record_id(line) {
            last.insert(id, (offset, len));
        }
        Ok(())
    })?;
    let live: u64 = last.values().map(|(_, len)| len).sum();
    if total <= COMPACT_FACTOR.saturating_mul(live).saturating_add(slack) {
        return Ok(None);
    }
    let mut keep: Vec<u64> = last.into_values().map(|(offset, _)| offset).collect();
    keep.sort_unstable();
    let tmp = state_dir.join(COMPACTING);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 16, &file);
    let mut next = keep.iter().peekable();
    for_each_line(&path, |offset, line| {
        if next.next_if(|&&at| at == offset).is_some() {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    out.flush()?;
    drop(out);
    if next.next().is_some() {
        return Err(std::io::Error::other(
            "the task log changed while it was compacted",
        ));
    }
    file.sync_data()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(file))
}

/// The id of the record on `line`, if it holds one: a JSON object with a string `id`, whether
/// this version can read the rest of it or not (a newer one may have written it; the writer
/// neither cuts nor compacts such a record away).
fn record_id(line: &[u8]) -> Option<String> {
    // `to_json` writes the id first; task ids are hex. Anything else takes the full parse.
    if let Some(rest) = line.strip_prefix(br#"{"id":""#)
        && let Some(end) = rest.iter().position(|b| *b == b'"')
        && rest[..end].iter().all(u8::is_ascii_alphanumeric)
        && line.ends_with(b"}")
        && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
    {
        return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    match serde_json::from_slice::<serde_json::Value>(line).ok()? {
        serde_json::Value::Object(mut fields) => match fields.remove("id")? {
            serde_json::Value::String(id) => Some(id),
            _ => None,
        },
        _ => None,
    }
}

/// Where the last line of the log (its first `len` bytes) that is whole (ends in `\n`) and holds
/// a record ends; 0 if there is none. Reads the log from its end.
fn last_record_end(file: &File, len: u64) -> std::io::Result<u64> {
    let mut window: u64 = 1 << 16;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; usize::try_from(len - start).map_err(std::io::Error::other)?];
        let mut reader = file;
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut buf)?;
        let Some(mut end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(0);
            }
            window = window.saturating_mul(2);
            continue;
        };
        loop {
            let line_start = match buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None if start == 0 => 0,
                // The line begins before the window.
                None => break,
            };
            if record_id(&buf[line_start..end]).is_some() {
                return Ok(start + end as u64 + 1);
            }
            if line_start == 0 {
                return Ok(0);
            }
            end = line_start - 1;
        }
        window = window.saturating_mul(2);
    }
}

/// Calls `each` with the offset and the bytes (without the `\n`) of every whole line of the log
/// at `path`, in order. A last line without its `\n` (cut by a crash, which the next writer
/// cuts off, or being appended right now) is skipped. A missing log has no lines.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            // Not a warning: a reader in another process sees this whenever it reads during an
            // append. The writer warns when it cuts a torn tail.
            tracing::debug!(path = %path.display(), offset, bytes = n, "skipping the unfinished end of the task log");
            return Ok(());
        }
        each(offset, &line[..n - 1])?;
        offset += n as u64;
    }
}

fn parse_line(path: &Path, offset: u64, line: &[u8]) -> Option<CloneTask> {
    match gitfleet_proto::from_json(line) {
        Ok(task) => Some(task),
        Err(e) => {
            tracing::warn!(path = %path.display(), offset, error = %e, "skipping an unreadable line of the task log");
            None
        }
    }
}

/// The `*.json` files of the former layout, `None` if there is no such directory.
fn legacy_files(dir: &Path) -> std::io::Result<Option<Vec<PathBuf>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(Some(files))
}

/// A record of the former layout; `None` if it is gone (moved into the log meanwhile) or
/// unreadable (with a warning).
fn read_legacy(path: &Path) -> std::io::Result<Option<CloneTask>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match gitfleet_proto::from_json(&bytes) {
        Ok(task) => Ok(Some(task)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping unreadable task record");
            Ok(None)
        }
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
            if line.windows(needle.len()).any(|w| w == needle.as_slice())
                && let Some(task) = parse_line(&path, offset, line)
                && task.id == id
            {
                found = Some(task);
            }
            Ok(())
        })?;
        Ok(found)
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
            if let Some(task) = parse_line(&path, offset, line) {
                tasks.insert(task.id.clone(), task);
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
        store.flush().expect("flush").await.expect("flushed");
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
                drop(store.put_queued(&state(round, n)));
            }
            store.flush().expect("flush").await.expect("flushed");
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
            drop(store.put_queued(&completed(n)));
        }
        for n in 500..600 {
            drop(store.put_queued(&task(n)));
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
        // It works again once the directory can be made.
        std::fs::remove_file(&state).expect("rm");
        store.put(&completed(3)).await.expect("stored");
        assert_eq!(store.load_all_sync().expect("load"), vec![completed(3)]);
    }
}
