//! CloneTask state in a JetStream key-value bucket (key: task id), written with
//! compare-and-set on the entry's revision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use gitfleet_actors::{Put, StoreFuture, TaskStore};
use gitfleet_proto::{CloneTask, StatusType};

/// Task records in the bucket. Clones share one cache of the records this process last read
/// (for an update) or wrote, with their revisions, so that a state transition is one
/// compare-and-set instead of a read and a compare-and-set (two NATS round trips saved per
/// transition). A stale cache costs one failed write and a read; it is never trusted over the
/// bucket.
///
/// As the embedded `FileStore` does, an intermediate state (queued, cloning) is written
/// [`LINGER`] after its `put` resolved, unless a later state of the task replaced it by then: a
/// clone shorter than that costs its final state alone (two messages less per repository). An
/// intermediate state is re-derivable (the job is redelivered); the status events announce it
/// at once either way. A reader of the bucket may see `queued` for up to [`LINGER`] while the
/// task is running.
#[derive(Debug, Clone)]
pub struct KvStore {
    kv: kv::Store,
    known: Arc<Mutex<HashMap<String, (CloneTask, u64)>>>,
    /// The latest `put` of each task with a write still to do, by a number that grows with
    /// every `put`: a deferred write goes ahead only while it is still the latest.
    latest: Arc<Mutex<HashMap<String, u64>>>,
    puts: Arc<AtomicU64>,
    /// Tasks whose latest final state could not be stored: their jobs must not be
    /// acknowledged.
    unstored: Arc<Mutex<std::collections::HashSet<String>>>,
    /// How long a write is retried before it is given up ([`PERSIST_TIMEOUT`]).
    persist_timeout: std::time::Duration,
}

/// Records a full scan reads per page.
const SCAN_PAGE: usize = 1_000;

/// A page of the bucket's records ([`KvStore::scan`]).
#[derive(Debug)]
pub struct Scanned {
    /// The task records among the messages examined, with their revisions.
    pub records: Vec<(CloneTask, u64)>,
    /// The revision of the last message examined (the cursor for the next page); the `after`
    /// asked for when there were none.
    pub last: u64,
    /// Whether the bucket had messages after `last` when it was read.
    pub more: bool,
}

/// How long an intermediate state waits before it is written.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Task ids are 16 lowercase hex digits; anything else is not a key of the bucket.
pub fn is_task_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl KvStore {
    pub fn new(kv: kv::Store) -> Self {
        KvStore {
            kv,
            known: Arc::default(),
            latest: Arc::default(),
            puts: Arc::default(),
            unstored: Arc::default(),
            persist_timeout: PERSIST_TIMEOUT,
        }
    }

    /// Retries a failed write for `timeout` instead of [`PERSIST_TIMEOUT`].
    pub fn with_persist_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.persist_timeout = timeout;
        self
    }

    /// Remembers `task` at `revision` as the base of this process's next write of it (only
    /// unfinished tasks: a finished one is not written again by a node).
    pub fn remember(&self, task: &CloneTask, revision: u64) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if task.status.status_type.is_final() {
            known.remove(&task.id);
        } else {
            known.insert(task.id.clone(), (task.clone(), revision));
        }
    }

    fn forget(&self, id: &str) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    fn known(&self, id: &str) -> Option<(CloneTask, u64)> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub async fn get(&self, id: &str) -> std::io::Result<Option<(CloneTask, u64)>> {
        if !is_task_id(id) {
            return Ok(None);
        }
        let Some(entry) = self.kv.entry(id).await.map_err(io)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        match gitfleet_proto::from_json::<CloneTask>(&entry.value) {
            Ok(task) => Ok(Some((task, entry.revision))),
            Err(e) => {
                tracing::warn!(task = id, error = %e, "unreadable task record");
                Ok(None)
            }
        }
    }

    /// Writes `task` if the stored revision is still `revision` (0: the key must not exist).
    pub async fn compare_and_set(&self, task: &CloneTask, revision: u64) -> std::io::Result<bool> {
        Ok(self.write(task, revision).await?.is_some())
    }

    /// [`Self::compare_and_set`], returning the new revision on success: unique for the life of
    /// the bucket, even for a key that was purged and created again.
    pub async fn write(&self, task: &CloneTask, revision: u64) -> std::io::Result<Option<u64>> {
        let bytes = bytes::Bytes::from(gitfleet_proto::to_json(task));
        // A revision that moved on (or a key created meanwhile) is an answer, not a failure.
        let result = if revision == 0 {
            match self.kv.create(&task.id, bytes).await {
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
                other => other.map_err(io),
            }
        } else {
            match self.kv.update(&task.id, bytes, revision).await {
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
                other => other.map_err(io),
            }
        };
        result.map(Some)
    }

    /// The records written after revision `after`, in the order they were last written, up to
    /// `max` messages of the bucket examined: one consumer and one fetch, whatever the
    /// bucket's size. The bucket keeps one revision of each key, so its stream holds each
    /// record once; a record written while a caller pages through it moves to the end and is
    /// met again there, with its newer state.
    pub async fn scan(&self, after: u64, max: usize) -> std::io::Result<Scanned> {
        self.scan_matching(after, max, max, |_| true).await
    }

    /// [`Self::scan`], keeping only the records `matches` accepts, and stopping once it kept
    /// `keep_at_most` (`last` is then the last one kept): a filtered page holds what it returns,
    /// not every record it looked at.
    pub async fn scan_matching(
        &self,
        after: u64,
        max: usize,
        keep_at_most: usize,
        matches: impl Fn(&CloneTask) -> bool,
    ) -> std::io::Result<Scanned> {
        use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
        let consumer = self
            .kv
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                filter_subject: format!("{}>", self.kv.prefix),
                ack_policy: AckPolicy::None,
                memory_storage: true,
                inactive_threshold: std::time::Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(io)?;
        let name = consumer.cached_info().name.clone();
        let result = self
            .fetch_page(&consumer, after, max.max(1), keep_at_most.max(1), matches)
            .await;
        // Ephemeral, and gone by itself after its inactive threshold; deleted now so that a
        // long listing leaves no trail of consumers on the bucket.
        if let Err(e) = self.kv.stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "cannot delete a scan's consumer");
        }
        result
    }

    async fn fetch_page(
        &self,
        consumer: &async_nats::jetstream::consumer::PullConsumer,
        after: u64,
        max: usize,
        keep_at_most: usize,
        matches: impl Fn(&CloneTask) -> bool,
    ) -> std::io::Result<Scanned> {
        let mut page = Scanned {
            records: Vec::new(),
            last: after,
            more: false,
        };
        let mut messages = consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(io)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(io)?;
            let info = message.info().map_err(io)?;
            page.last = info.stream_sequence;
            page.more = info.pending > 0;
            let is_put = message
                .headers
                .as_ref()
                .is_none_or(|h| h.get("KV-Operation").is_none());
            let Some(id) = message.subject.strip_prefix(self.kv.prefix.as_str()) else {
                continue;
            };
            if !is_put || !is_task_id(id) {
                continue;
            }
            match gitfleet_proto::from_json::<CloneTask>(&message.payload) {
                Ok(task) if matches(&task) => {
                    page.records.push((task, info.stream_sequence));
                    if page.records.len() == keep_at_most {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(task = id, error = %e, "unreadable task record"),
            }
        }
        Ok(page)
    }

    /// Calls `visit` with every record, a page at a time (one page in memory at once).
    pub async fn scan_all(&self, mut visit: impl FnMut(CloneTask, u64)) -> std::io::Result<()> {
        let mut after = 0;
        loop {
            let page = self.scan(after, SCAN_PAGE).await?;
            for (task, revision) in page.records {
                visit(task, revision);
            }
            if !page.more || page.last == after {
                return Ok(());
            }
            after = page.last;
        }
    }

    /// The bucket's latest revision: a record written from now on has a greater one.
    pub async fn last_revision(&self) -> std::io::Result<u64> {
        Ok(self.stream_state().await?.last_sequence)
    }

    /// The bytes the bucket stores (its records, their headers and deletion markers).
    pub async fn stored_bytes(&self) -> std::io::Result<u64> {
        Ok(self.stream_state().await?.bytes)
    }

    async fn stream_state(&self) -> std::io::Result<async_nats::jetstream::stream::State> {
        Ok(self.kv.stream.get_info().await.map_err(io)?.state)
    }

    pub async fn ids(&self) -> std::io::Result<Vec<String>> {
        let keys = self.kv.keys().await.map_err(io)?;
        let mut ids: Vec<String> = keys.try_collect().await.map_err(io)?;
        ids.sort();
        Ok(ids)
    }
}

impl KvStore {
    /// Whether the latest final state of `id` failed to be stored.
    pub fn is_unstored(&self, id: &str) -> bool {
        self.unstored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// Registers a `put` of `task` in call order and, for an intermediate state, schedules its
    /// deferred write; for a final state, returns the write to run.
    fn start_put(
        &self,
        task: &CloneTask,
    ) -> Option<impl Future<Output = std::io::Result<()>> + 'static> {
        let put = self.puts.fetch_add(1, Ordering::Relaxed) + 1;
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(task.id.clone(), put);
        let store = self.clone();
        let task = task.clone();
        if !task.status.status_type.is_final() {
            tokio::spawn(async move {
                tokio::time::sleep(LINGER).await;
                if store.is_latest(&task.id, put) {
                    if let Err(e) = store.write_persistently(&task, put).await {
                        tracing::warn!(task = %task.id, error = %e, "cannot store an intermediate task state");
                    }
                    store.done(&task.id, put);
                }
            });
            return None;
        }
        Some(async move {
            let result = store.write_persistently(&task, put).await;
            store.done(&task.id, put);
            let mut unstored = store
                .unstored
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if result.is_err() {
                unstored.insert(task.id.clone());
            } else {
                unstored.remove(&task.id);
            }
            result
        })
    }
}

impl TaskStore for KvStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        // A node's Registry tracks only the tasks placed on it, as their jobs arrive; unfinished
        // work comes back by redelivery, not from here. Reading the whole bucket at every node
        // start would cost a round trip per task.
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// The Registry goes on while a final state is written (a NATS outage is retried for
    /// minutes: awaiting it in the actor would stall every other task); it broadcasts the
    /// state once the write is done, in order.
    fn put(&self, task: &CloneTask) -> Put {
        match self.start_put(task) {
            Some(write) => {
                let handle = tokio::spawn(write);
                Put::Pending(Box::pin(async move { handle.await.map_err(io)? }))
            }
            None => Put::Accepted,
        }
    }

    /// A node forgets what it knew of the task (a write of it still waiting is dropped); the
    /// record itself was purged by the API ([`KvStore::purge_at`]), and a node never purges:
    /// a new request of the task may have created it again since.
    fn remove(&self, id: &str) -> Put {
        self.forget(id);
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Put::Accepted
    }
}

impl KvStore {
    /// Purges the record of task `id` (the API's `remove`) if it is still at `revision`:
    /// whether it was.
    pub async fn purge_at(&self, id: &str, revision: u64) -> std::io::Result<bool> {
        self.forget(id);
        match self.kv.purge_expect_revision(id, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(io(e)),
        }
    }
}

/// How long a state write is retried before the Registry gives up on it.
pub const PERSIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl KvStore {
    fn is_latest(&self, id: &str, put: u64) -> bool {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            == Some(&put)
    }

    fn done(&self, id: &str, put: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.get(id) == Some(&put) {
            latest.remove(id);
        }
    }

    /// Writes `task` (the `put` numbered `put`), retrying across NATS restarts: the job is
    /// acknowledged once its final state is stored, so keep trying (the actors wait; nothing
    /// can progress without NATS anyway). An intermediate state stops trying once a later
    /// `put` of its task replaced it.
    async fn write_persistently(&self, task: &CloneTask, put: u64) -> std::io::Result<()> {
        let mut delay = std::time::Duration::from_millis(100);
        let deadline = std::time::Instant::now() + self.persist_timeout;
        loop {
            match self.put_once(task).await {
                Ok(()) => return Ok(()),
                Err(_) if !task.status.status_type.is_final() && !self.is_latest(&task.id, put) => {
                    return Ok(());
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    self.forget(&task.id);
                    tracing::warn!(task = %task.id, error = %e, "cannot store task state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    self.forget(&task.id);
                    return Err(e);
                }
            }
        }
    }

    async fn put_once(&self, task: &CloneTask) -> std::io::Result<()> {
        // Compare-and-set on the revision, fenced by attempt: a result from an attempt that was
        // taken over (a node presumed dead) never overwrites the newer attempt's state.
        // The first try writes from what this process knows: the revision it last read or
        // wrote, or, knowing nothing, that the task is new (a create). Only a conflict costs a
        // read.
        let mut base = Some(self.known(&task.id));
        for _ in 0..16 {
            let (current, revision) = match base.take() {
                Some(Some((current, revision))) => (Some(current), revision),
                Some(None) => (None, 0),
                None => match self.get(&task.id).await? {
                    Some((current, revision)) => (Some(current), revision),
                    None => (None, 0),
                },
            };
            // A later request or a takeover moved the task to a newer generation: what an
            // older one still writes (a node that was only slow) is dropped.
            if let Some(current) = &current
                && current.generation > task.generation
            {
                tracing::info!(task = %task.id, "dropping a late update of a superseded generation");
                return Ok(());
            }
            // An intermediate state never replaces the final state of its attempt or a later
            // one (a deferred `cloning` that lost the race to its `completed`, or a task
            // cancelled meanwhile).
            if let Some(current) = &current
                && current.status.status_type.is_final()
                && !task.status.status_type.is_final()
                && current.generation == task.generation
                && current.attempts >= task.attempts
            {
                tracing::debug!(task = %task.id, "dropping an intermediate state older than the stored final one");
                return Ok(());
            }
            // The API owns what the request said (its idempotency key, when the task was first
            // created) and whether it is archived; a node's record of the same task keeps them.
            let mut merged = task.clone();
            if let Some(current) = &current {
                merged.idempotency_key = merged
                    .idempotency_key
                    .or_else(|| current.idempotency_key.clone());
                merged.created_at = merged.created_at.min(current.created_at);
                if merged.last_sync.is_none() {
                    merged.last_sync = current.last_sync.clone();
                }
                // Runs another writer recorded meanwhile (a takeover's) are kept too.
                merged.merge_history(current);
                merged.inherit_schedule(current);
                // Archiving is the API's (an operator's): a node's copy of the record, read
                // before an archive or unarchive, never undoes it.
                if merged.archived != current.archived {
                    if current.archived {
                        merged.archive();
                    } else {
                        merged.archived = false;
                    }
                }
            }
            if let Some(current) = &current
                && (same_but_for_time(current, &merged) || still_queued(current, &merged))
            {
                // Nothing a reader needs: the node's `queued` after the API's says the same.
                return Ok(());
            }
            if let Some(revision) = self.write(&merged, revision).await? {
                self.remember(&merged, revision);
                return Ok(());
            }
            // Someone else wrote it since: read it and decide again.
        }
        Err(io(format!(
            "task {} is being updated concurrently",
            task.id
        )))
    }
}

/// A `queued` record over a `queued` one of the same attempt and error: what changes (the node's
/// absolute path, the time) is written with the next transition anyway.
fn still_queued(current: &CloneTask, new: &CloneTask) -> bool {
    current.status.status_type == StatusType::Queued
        && new.status.status_type == StatusType::Queued
        && current.attempts == new.attempts
        && current.error_code == new.error_code
        && current.operation == new.operation
        // A node's Registry learns the node at `Started`; the API wrote the owner already.
        && (new.node.is_none() || current.node == new.node)
}

/// Whether two records of a task differ at most in when they were last written.
fn same_but_for_time(a: &CloneTask, b: &CloneTask) -> bool {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    *a == b
}
