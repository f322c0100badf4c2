//! The Registry actor: aggregates worker events into task state, persists transitions, and
//! broadcasts every change to watchers. It keeps its tasks compactly (see `compact.rs`) and
//! builds a `CloneTask` only to store, broadcast or answer one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gitfleet_proto::{
    CloneStatus, CloneTask, ErrorCode, ProgressEvent, RunRecord, StatusType, SyncResult, TaskError,
    TaskUpdate,
};
use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::compact::{Slot, TaskTable, Time};
use crate::schedule::{Outcome, SchedulePolicy};
use crate::store::{Put, TaskStore};

pub enum RegistryMsg {
    /// A new request for a task: queued (replacing any earlier state of the same task).
    Queued(Box<CloneTask>),
    Started {
        id: String,
        attempt: u32,
        node: String,
    },
    Progress(ProgressEvent),
    Completed {
        id: String,
        attempt: u32,
        result: Box<SyncResult>,
    },
    /// A transient failure that will be retried: back to queued.
    Retrying {
        id: String,
        attempt: u32,
        error: TaskError,
    },
    Failed {
        id: String,
        attempt: u32,
        error: TaskError,
    },
    /// Out of quarantine, failures forgotten, due now.
    Resume(String),
    /// Forget a finished task (its repository is being removed): `Ok(false)` if there is no
    /// such task, an error naming why a queued or running one is not forgotten; answered once
    /// the store forgot it too.
    Remove(String, RpcReplyPort<Result<bool, String>>),
    /// Archived (never synced, out of the schedule), or back from the archive and due now.
    Archive {
        id: String,
        archived: bool,
    },
    /// Sync every `every` instead of the adaptive interval (`None`: adaptive again).
    SetInterval {
        id: String,
        every: Option<std::time::Duration>,
    },
    Get(String, RpcReplyPort<Option<CloneTask>>),
    List(RpcReplyPort<Vec<CloneTask>>),
    /// The tasks counted by status and by freshness (a success within the duration is fresh).
    Census(std::time::Duration, RpcReplyPort<crate::Census>),
    /// A page of tasks, their freshness judged against `stale_after`.
    Page {
        query: crate::TaskQuery,
        stale_after: std::time::Duration,
        reply: RpcReplyPort<crate::TaskPage>,
    },
}

pub struct Registry;

pub struct RegistryArgs {
    pub store: Arc<dyn TaskStore>,
    pub updates: broadcast::Sender<TaskUpdate>,
    /// When each repository is synced next, set at every final state.
    pub schedule: SchedulePolicy,
}

pub struct RegistryState {
    tasks: TaskTable,
    store: Arc<dyn TaskStore>,
    updates: broadcast::Sender<TaskUpdate>,
    outbox: Outbox,
    schedule: SchedulePolicy,
}

/// Items in the outbox at most (with a store that takes writes in hand): beyond this the
/// Registry waits for the store, so that memory stays bounded when the disk is slow.
const MAX_IN_FLIGHT: usize = 65_536;

/// What goes out after the writes before it: the store takes writes in hand
/// ([`TaskStore::put`]) and the Registry goes on with its next message while a write is in
/// flight; this keeps what watchers and callers see in order: a transition is broadcast once
/// the store has it (a final state: once it is durable), a progress sample after the
/// transitions before it, a `Get` or `List` answered once everything before it is stored
/// ([`TaskStore::flush`]).
enum Outgoing {
    State {
        stored: Put,
        task: Box<CloneTask>,
    },
    Progress(ProgressEvent),
    Reply {
        after: Put,
        reply: Box<dyn FnOnce() + Send>,
    },
}

struct Outbox {
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
    /// Items sent to the delivering task and not yet delivered.
    in_flight: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            tx: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            drained: Arc::new(Notify::new()),
        }
    }

    /// Whether something sent earlier is not delivered yet.
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Hands `item` to the delivering task (started on first use), which delivers it after
    /// everything sent before.
    async fn send(&mut self, item: Outgoing, updates: &broadcast::Sender<TaskUpdate>) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) < MAX_IN_FLIGHT {
                break;
            }
            drained.await;
        }
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(deliver(
                rx,
                updates.clone(),
                Arc::clone(&self.in_flight),
                Arc::clone(&self.drained),
            ));
            tx
        });
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(item)) = tx.send(item) {
            // The delivering task is gone (it panicked): deliver here rather than lose it.
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            deliver_one(item, updates).await;
        }
    }
}

/// Delivers what the Registry sent, in order, each after its write is done.
async fn deliver(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    updates: broadcast::Sender<TaskUpdate>,
    in_flight: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    while let Some(item) = rx.recv().await {
        deliver_one(item, &updates).await;
        in_flight.fetch_sub(1, Ordering::AcqRel);
        drained.notify_waiters();
    }
}

async fn deliver_one(item: Outgoing, updates: &broadcast::Sender<TaskUpdate>) {
    match item {
        Outgoing::State { stored, task } => {
            if let Err(e) = stored.await {
                tracing::error!(task = %task.id, error = %e, "cannot persist task state");
            }
            let _ = updates.send(TaskUpdate::State { task });
        }
        Outgoing::Progress(event) => {
            let _ = updates.send(TaskUpdate::Progress(event));
        }
        Outgoing::Reply { after, reply } => {
            if let Err(e) = after.await {
                tracing::error!(error = %e, "cannot persist task state");
            }
            reply();
        }
    }
}

impl RegistryState {
    /// Applies `change` to task `id` if `attempt` is still its current attempt: a late event
    /// from an attempt that was superseded must not overwrite newer state.
    async fn transition(
        &mut self,
        id: &str,
        attempt: u32,
        change: impl FnOnce(&mut TaskTable, Slot),
    ) {
        self.transition_as(id, attempt, false, change).await;
    }

    /// A transition; `quiet`: it says nothing new of the repository (a sync that found it as it
    /// was), so the store may write it lazily ([`TaskStore::put_quiet`]).
    async fn transition_as(
        &mut self,
        id: &str,
        attempt: u32,
        quiet: bool,
        change: impl FnOnce(&mut TaskTable, Slot),
    ) {
        let Some(slot) = self.tasks.find(id) else {
            return;
        };
        if attempt != 0 && attempt < self.tasks.record(slot).attempts() {
            return;
        }
        change(&mut self.tasks, slot);
        self.tasks
            .record_mut(slot)
            .set_time(Time::Updated, Some(Timestamp::now()));
        let mut task = self.tasks.task(slot);
        let put = if quiet {
            self.store.put_quiet(&task)
        } else {
            self.store.put(&task)
        };
        // The record is stored with its history; a state event goes without it (`Get` has it).
        task.history = Vec::new();
        match put {
            // Nothing to wait for and nothing before it to deliver: broadcast now.
            Put::Accepted if !self.outbox.busy() => {
                let _ = self.updates.send(TaskUpdate::State {
                    task: Box::new(task),
                });
            }
            stored => {
                let task = Box::new(task);
                self.outbox
                    .send(Outgoing::State { stored, task }, &self.updates)
                    .await;
            }
        }
    }

    /// Answers once everything before is stored and broadcast.
    async fn reply(&mut self, reply: impl FnOnce() + Send + 'static) {
        match self.store.flush() {
            Put::Accepted if !self.outbox.busy() => reply(),
            after => {
                let reply = Box::new(reply);
                self.outbox
                    .send(Outgoing::Reply { after, reply }, &self.updates)
                    .await;
            }
        }
    }
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let mut tasks = TaskTable::default();
        for task in args.store.load_all().await? {
            tasks.insert(task);
        }
        Ok(RegistryState {
            tasks,
            store: args.store,
            updates: args.updates,
            outbox: Outbox::new(),
            schedule: args.schedule,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegistryMsg::Queued(task) => {
                let id = task.id.clone();
                state.tasks.requeue(*task);
                state.transition(&id, 0, |_, _| {}).await;
            }
            RegistryMsg::Started { id, attempt, node } => {
                state
                    .transition(&id, attempt, |tasks, slot| {
                        tasks.set_node(slot, Some(&node));
                        let t = tasks.record_mut(slot);
                        t.set_attempts(attempt);
                        t.set_status(CloneStatus::cloning(0));
                        t.set_phase(None);
                        t.set_error_code(None);
                        t.set_time(Time::Started, Some(Timestamp::now()));
                        t.set_time(Time::Finished, None);
                    })
                    .await
            }
            RegistryMsg::Progress(event) => {
                let Some(slot) = state.tasks.find(&event.task_id) else {
                    return Ok(());
                };
                let task = state.tasks.record_mut(slot);
                if task.status_type() != StatusType::Cloning || event.attempt != task.attempts() {
                    return Ok(());
                }
                let percent = event.progress.max(task.progress().unwrap_or(0));
                task.set_status(CloneStatus::cloning(percent));
                task.set_phase(Some(event.phase));
                let event = ProgressEvent {
                    progress: percent,
                    ..event
                };
                if state.outbox.busy() {
                    state
                        .outbox
                        .send(Outgoing::Progress(event), &state.updates)
                        .await;
                } else {
                    let _ = state.updates.send(TaskUpdate::Progress(event));
                }
            }
            RegistryMsg::Completed {
                id,
                attempt,
                result,
            } => {
                let schedule = state.schedule;
                let quiet = result.bytes_received == 0
                    && result.num_refs_created + result.num_refs_updated + result.num_refs_deleted
                        == 0;
                state
                    .transition_as(&id, attempt, quiet, |tasks, slot| {
                        let t = tasks.record_mut(slot);
                        t.set_status(CloneStatus::completed());
                        t.set_phase(None);
                        t.set_error_code(None);
                        let now = Timestamp::now();
                        t.set_time(Time::Finished, Some(now));
                        let mut result = result;
                        // A sync that found nothing new did not measure: the size stands.
                        if result.disk_bytes.is_none() {
                            result.disk_bytes = t.disk_bytes();
                        }
                        t.set_last_sync(Some(&result));
                        t.record_run(RunRecord::completed(t.operation(), now, &result));
                        let changed = result.num_refs_created
                            + result.num_refs_updated
                            + result.num_refs_deleted
                            > 0;
                        schedule.apply(t, Outcome::Succeeded { changed }, now);
                    })
                    .await
            }
            RegistryMsg::Retrying { id, attempt, error } => {
                state
                    .transition(&id, attempt, |tasks, slot| {
                        let t = tasks.record_mut(slot);
                        tracing::info!(task = %id, url = %t.url(), attempt, error = %error, "will retry");
                        t.set_status(CloneStatus::queued());
                        t.set_phase(None);
                        t.set_error_code(Some(error.code));
                    })
                    .await
            }
            RegistryMsg::Failed { id, attempt, error } => {
                let schedule = state.schedule;
                state
                    .transition(&id, attempt, |tasks, slot| {
                        let t = tasks.record_mut(slot);
                        t.set_status(CloneStatus::failed(error.message.clone()));
                        t.set_phase(None);
                        t.set_error_code(Some(error.code));
                        let now = Timestamp::now();
                        t.set_time(Time::Finished, Some(now));
                        t.record_run(RunRecord::failed(
                            t.operation(),
                            t.time(Time::Started),
                            now,
                            error.code,
                            &error.message,
                        ));
                        if error.code == ErrorCode::Cancelled {
                            t.set_attempts(t.attempts().max(attempt));
                        }
                        schedule.apply(t, Outcome::Failed(error.code), now);
                    })
                    .await
            }
            RegistryMsg::Resume(id) => {
                state
                    .transition(&id, 0, |tasks, slot| {
                        let mut task = tasks.task(slot);
                        task.resume(Timestamp::now());
                        tasks.insert(task);
                    })
                    .await
            }
            RegistryMsg::Remove(id, reply) => {
                let Some(slot) = state.tasks.find(&id) else {
                    let _ = reply.send(Ok(false));
                    return Ok(());
                };
                let record = state.tasks.record(slot);
                if !record.status_type().is_final() {
                    let why = format!(
                        "{} is {}: cancel it (or wait for it) first",
                        record.url(),
                        record.status_type()
                    );
                    let _ = reply.send(Err(why));
                    return Ok(());
                }
                state.tasks.remove(slot);
                let removed = state.store.remove(&id);
                tokio::spawn(async move {
                    let stored = removed.await.map_err(|e| e.to_string());
                    let _ = reply.send(stored.map(|()| true));
                });
            }
            RegistryMsg::Archive { id, archived } => {
                if archived
                    && state
                        .tasks
                        .find(&id)
                        .is_some_and(|slot| !state.tasks.record(slot).status_type().is_final())
                {
                    tracing::warn!(task = %id, "not archived: it is queued or running");
                    return Ok(());
                }
                state
                    .transition(&id, 0, |tasks, slot| {
                        let mut task = tasks.task(slot);
                        if archived {
                            task.archive();
                        } else {
                            task.unarchive(Timestamp::now());
                        }
                        tasks.insert(task);
                    })
                    .await
            }
            RegistryMsg::SetInterval { id, every } => {
                state
                    .transition(&id, 0, |tasks, slot| {
                        let mut task = tasks.task(slot);
                        task.set_interval(every, Timestamp::now());
                        tasks.insert(task);
                    })
                    .await
            }
            RegistryMsg::Get(id, reply) => {
                let task = state.tasks.find(&id).map(|slot| state.tasks.task(slot));
                state
                    .reply(move || {
                        let _ = reply.send(task);
                    })
                    .await;
            }
            RegistryMsg::Page {
                query,
                stale_after,
                reply,
            } => {
                let page = state.tasks.page(
                    &query,
                    gitfleet_proto::FreshnessAt {
                        now: Timestamp::now(),
                        stale_after,
                        present: true,
                    },
                );
                let _ = reply.send(page);
            }
            RegistryMsg::Census(stale_after, reply) => {
                let census = state.tasks.census(gitfleet_proto::FreshnessAt {
                    now: Timestamp::now(),
                    stale_after,
                    present: true,
                });
                let _ = reply.send(census);
            }
            RegistryMsg::List(reply) => {
                let tasks = state.tasks.tasks();
                state
                    .reply(move || {
                        let _ = reply.send(tasks);
                    })
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use gitfleet_proto::{Operation, Phase};

    use super::*;
    use crate::store::StoreFuture;

    async fn spawn(
        store: Arc<dyn TaskStore>,
        updates: broadcast::Sender<TaskUpdate>,
    ) -> (ActorRef<RegistryMsg>, tokio::task::JoinHandle<()>) {
        Actor::spawn(
            None,
            Registry,
            RegistryArgs {
                store,
                updates,
                schedule: SchedulePolicy::default(),
            },
        )
        .await
        .expect("spawning a registry")
    }

    /// Keeps every write; with `delay`, takes writes in hand and finishes each after a while
    /// (later writes sooner), as a store committing in groups may.
    #[derive(Default)]
    struct Recorder {
        delay: Option<Duration>,
        stored: Arc<Mutex<HashMap<String, Vec<CloneTask>>>>,
        calls: AtomicUsize,
    }

    impl Recorder {
        /// Whether `task` (as broadcast: without its history) was stored.
        fn has(&self, task: &CloneTask) -> bool {
            self.stored
                .lock()
                .expect("lock")
                .get(&task.id)
                .is_some_and(|all| {
                    all.iter().any(|stored| {
                        !stored.history.is_empty()
                            && CloneTask {
                                history: Vec::new(),
                                ..stored.clone()
                            } == *task
                            || stored == task
                    })
                })
        }

        fn record(stored: &Mutex<HashMap<String, Vec<CloneTask>>>, task: CloneTask) {
            stored
                .lock()
                .expect("lock")
                .entry(task.id.clone())
                .or_default()
                .push(task);
        }
    }

    impl TaskStore for Recorder {
        fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }

        fn remove(&self, _id: &str) -> Put {
            Put::Accepted
        }

        fn put(&self, task: &CloneTask) -> Put {
            let Some(delay) = self.delay else {
                Recorder::record(&self.stored, task.clone());
                return Put::Accepted;
            };
            let n = self.calls.fetch_add(1, Ordering::Relaxed) as u32;
            let delay = delay.saturating_sub(Duration::from_micros(50) * n);
            let stored = Arc::clone(&self.stored);
            let task = task.clone();
            let done = tokio::time::Instant::now() + delay;
            Put::Pending(Box::pin(async move {
                tokio::time::sleep_until(done).await;
                Recorder::record(&stored, task);
                Ok(())
            }))
        }
    }

    fn queued(n: usize) -> CloneTask {
        CloneTask::new(
            format!("{n:016x}"),
            format!("git://h/o/r{n}"),
            Operation::Mirror,
            format!("/x/r{n}.git"),
            Timestamp::now(),
        )
    }

    fn progress(n: usize, percent: u8) -> ProgressEvent {
        ProgressEvent {
            task_id: format!("{n:016x}"),
            attempt: 2,
            phase: Phase::Receiving,
            progress: percent,
            bytes_received: 0,
            bytes_per_sec: 0,
            objects_received: 0,
            objects_total: 0,
        }
    }

    /// Runs a few tasks through a Registry on `store`; checks what watchers and callers see.
    async fn lifecycle(store: Arc<Recorder>) {
        const TASKS: usize = 20;
        const EVENTS: usize = 500;
        let (updates, mut rx) = broadcast::channel(100_000);
        let (registry, handle) = spawn(store.clone(), updates).await;
        for n in 0..TASKS {
            registry
                .cast(RegistryMsg::Queued(Box::new(queued(n))))
                .expect("cast");
            registry
                .cast(RegistryMsg::Started {
                    id: format!("{n:016x}"),
                    attempt: 2,
                    node: "node".into(),
                })
                .expect("cast");
            for k in 0..EVENTS {
                let percent = (k * 100 / EVENTS) as u8;
                registry
                    .cast(RegistryMsg::Progress(progress(n, percent)))
                    .expect("cast");
            }
            // A late event of an older attempt changes nothing.
            registry
                .cast(RegistryMsg::Failed {
                    id: format!("{n:016x}"),
                    attempt: 1,
                    error: TaskError::new(ErrorCode::Network, "late"),
                })
                .expect("cast");
            registry
                .cast(RegistryMsg::Completed {
                    id: format!("{n:016x}"),
                    attempt: 2,
                    result: Box::new(SyncResult {
                        total_commits: n as u64,
                        ..SyncResult::default()
                    }),
                })
                .expect("cast");
        }
        let listed = ractor::call!(registry, RegistryMsg::List).expect("list");
        // Everything before the answer is stored and broadcast.
        let mut seen: HashMap<String, Vec<TaskUpdate>> = HashMap::new();
        while let Ok(update) = rx.try_recv() {
            let id = match &update {
                TaskUpdate::State { task } => {
                    assert!(store.has(task), "broadcast before it was stored: {task:?}");
                    task.id.clone()
                }
                TaskUpdate::Progress(p) => p.task_id.clone(),
            };
            seen.entry(id).or_default().push(update);
        }
        assert_eq!(listed.len(), TASKS);
        for task in &listed {
            assert_eq!(task.status.status_type, StatusType::Completed, "{task:?}");
            assert_eq!(task.attempts, 2);
            assert_eq!(task.node.as_deref(), Some("node"));
            assert!(task.started_at.is_some() && task.finished_at.is_some());
            assert!(store.has(task), "listed before it was stored: {task:?}");
            let updates = &seen[&task.id];
            let kinds: Vec<&str> = updates
                .iter()
                .map(|u| match u {
                    TaskUpdate::State { task } => task.status.status_type.as_str(),
                    TaskUpdate::Progress(_) => "progress",
                })
                .collect();
            let mut want = vec!["queued", "cloning"];
            want.extend(std::iter::repeat_n("progress", EVENTS));
            want.push("completed");
            assert!(
                kinds == want,
                "{}: {:?}",
                task.id,
                kinds
                    .iter()
                    .filter(|k| **k != "progress")
                    .collect::<Vec<_>>()
            );
            let percents: Vec<u8> = updates
                .iter()
                .filter_map(|u| match u {
                    TaskUpdate::Progress(p) => Some(p.progress),
                    TaskUpdate::State { .. } => None,
                })
                .collect();
            assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
            let Some(TaskUpdate::State { task: last }) = updates.last() else {
                unreachable!("checked above");
            };
            // The last state event is the record without its history, which the record
            // holds: this request's run, completed.
            assert_eq!(
                **last,
                CloneTask {
                    history: Vec::new(),
                    ..task.clone()
                }
            );
            assert_eq!(task.history.len(), 1, "{:?}", task.history);
            assert_eq!(task.history[0].status, StatusType::Completed);
            assert_eq!(Some(task.history[0].finished_at), task.finished_at);
        }
        let got = ractor::call!(registry, RegistryMsg::Get, format!("{:016x}", 3))
            .expect("get")
            .expect("known");
        assert_eq!(got.last_sync.map(|r| r.total_commits), Some(3));
        registry.stop(None);
        handle.await.expect("registry stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_final_state_sets_when_the_repository_is_synced_next() {
        let min = Duration::from_secs(600);
        let schedule = SchedulePolicy {
            min_interval: min,
            jitter: 0.0,
            quarantine_after: 3,
            ..SchedulePolicy::default()
        };
        let (updates, _) = broadcast::channel(64);
        let (registry, handle) = Actor::spawn(
            None,
            Registry,
            RegistryArgs {
                store: Arc::new(Recorder::default()),
                updates,
                schedule,
            },
        )
        .await
        .expect("spawning a registry");
        let id = queued(0).id;
        let get = || async {
            ractor::call!(registry, RegistryMsg::Get, id.clone())
                .expect("get")
                .expect("known")
        };
        let run = |attempt: u32, outcome: Result<u64, ErrorCode>| {
            registry
                .cast(RegistryMsg::Queued(Box::new(queued(0))))
                .expect("cast");
            registry
                .cast(RegistryMsg::Started {
                    id: id.clone(),
                    attempt,
                    node: "node".into(),
                })
                .expect("cast");
            let message = match outcome {
                Ok(created) => RegistryMsg::Completed {
                    id: id.clone(),
                    attempt,
                    result: Box::new(SyncResult {
                        num_refs_created: created,
                        ..SyncResult::default()
                    }),
                },
                Err(code) => RegistryMsg::Failed {
                    id: id.clone(),
                    attempt,
                    error: TaskError::new(code, "it failed"),
                },
            };
            registry.cast(message).expect("cast");
        };

        // A clone: changed now, so the shortest interval.
        // Schedule times are kept to the second.
        let before = Timestamp::now() - jiff::SignedDuration::from_secs(1);
        run(1, Ok(3));
        let task = get().await;
        assert!(task.last_success_at >= Some(before));
        assert_eq!(task.last_change_at, task.last_success_at);
        assert_eq!(task.interval_s, min.as_secs());
        let next = task.next_sync_at.expect("scheduled");
        let wait = task.last_success_at.map(|at| next.duration_since(at));
        assert_eq!(wait, Some(jiff::SignedDuration::from_secs(600)));

        // Two failures back off; a transient one never quarantines.
        run(1, Err(ErrorCode::Network));
        run(1, Err(ErrorCode::NotFound));
        let task = get().await;
        assert_eq!(task.consecutive_failures, 2);
        assert_eq!(task.interval_s, 2 * min.as_secs());
        assert!(!task.quarantined && task.next_sync_at.is_some());
        // The last result and the last success survive a new request.
        assert!(task.last_sync.is_some() && task.last_success_at.is_some());

        // The third in a row, permanent: quarantined, no longer scheduled.
        run(1, Err(ErrorCode::NotFound));
        let task = get().await;
        assert!(task.quarantined, "{task:?}");
        assert_eq!(task.next_sync_at, None);

        // A success (a manual sync) lifts it.
        run(1, Ok(0));
        let task = get().await;
        assert!(!task.quarantined);
        assert_eq!(task.consecutive_failures, 0);
        assert!(task.next_sync_at.is_some());
        registry.stop(None);
        handle.await.expect("registry stopped");
    }

    /// Holds every write of task `held` until released; takes all others at once.
    struct Gated {
        held: String,
        release: Arc<tokio::sync::Semaphore>,
        taken: Mutex<Vec<CloneTask>>,
    }

    impl TaskStore for Gated {
        fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }

        fn remove(&self, _id: &str) -> Put {
            Put::Accepted
        }

        fn put(&self, task: &CloneTask) -> Put {
            self.taken.lock().expect("lock").push(task.clone());
            if task.id != self.held {
                return Put::Accepted;
            }
            let release = Arc::clone(&self.release);
            Put::Pending(Box::pin(async move {
                let _permit = release.acquire().await.map_err(std::io::Error::other)?;
                Ok(())
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_hangs_does_not_stop_the_registry() {
        let store = Arc::new(Gated {
            held: queued(0).id,
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            taken: Mutex::new(Vec::new()),
        });
        let (updates, mut rx) = broadcast::channel(100);
        let (registry, handle) = spawn(store.clone(), updates).await;
        registry
            .cast(RegistryMsg::Queued(Box::new(queued(0))))
            .expect("cast");
        let other = queued(1).id;
        registry
            .cast(RegistryMsg::Queued(Box::new(queued(1))))
            .expect("cast");
        registry
            .cast(RegistryMsg::Started {
                id: other.clone(),
                attempt: 2,
                node: "node".into(),
            })
            .expect("cast");
        registry
            .cast(RegistryMsg::Completed {
                id: other.clone(),
                attempt: 2,
                result: Box::default(),
            })
            .expect("cast");
        // The other task's final state reaches the store while the first write hangs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !store
            .taken
            .lock()
            .expect("lock")
            .iter()
            .any(|t| t.id == other && t.status.status_type == StatusType::Completed)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Registry stopped behind a write"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What watchers see stays in order: nothing goes out before the held write.
        assert!(
            rx.try_recv().is_err(),
            "a state was broadcast before the one held"
        );
        store.release.add_permits(16);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let update = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("delivered once released")
                .expect("the channel is open");
            if let TaskUpdate::State { task } = update {
                seen.push((task.id == other, task.status.status_type));
            }
        }
        assert_eq!(
            seen,
            [
                (false, StatusType::Queued),
                (true, StatusType::Queued),
                (true, StatusType::Cloning),
                (true, StatusType::Completed)
            ]
        );
        registry.stop(None);
        handle.await.expect("registry stopped");
    }

    #[tokio::test]
    async fn a_sync_that_did_not_measure_keeps_the_size_on_disk() {
        let (updates, _rx) = broadcast::channel(1024);
        let (registry, handle) = spawn(Arc::new(Recorder::default()), updates).await;
        let id = format!("{:016x}", 1);
        let run = |attempt: u32, disk_bytes: Option<u64>| {
            registry
                .cast(RegistryMsg::Started {
                    id: id.clone(),
                    attempt,
                    node: "node".into(),
                })
                .expect("cast");
            registry
                .cast(RegistryMsg::Completed {
                    id: id.clone(),
                    attempt,
                    result: Box::new(SyncResult {
                        disk_bytes,
                        ..SyncResult::default()
                    }),
                })
                .expect("cast");
        };
        let size = async || {
            let task = ractor::call!(registry, RegistryMsg::Get, id.clone()).expect("get");
            task.and_then(|t| t.last_sync).and_then(|r| r.disk_bytes)
        };
        registry
            .cast(RegistryMsg::Queued(Box::new(queued(1))))
            .expect("cast");
        run(1, Some(40_960));
        assert_eq!(size().await, Some(40_960));
        run(2, None);
        assert_eq!(size().await, Some(40_960));
        run(3, Some(81_920));
        assert_eq!(size().await, Some(81_920));
        registry.stop(None);
        handle.await.expect("registry stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_awaits_each_write() {
        lifecycle(Arc::new(Recorder::default())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_with_writes_in_flight() {
        // 20 x 500 progress samples behind slow writes: more than MAX_IN_FLIGHT wait at once.
        lifecycle(Arc::new(Recorder {
            delay: Some(Duration::from_millis(200)),
            ..Recorder::default()
        }))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_store_holds_every_state_when_the_registry_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(crate::FileStore::open(dir.path()).expect("open"));
        let (updates, _) = broadcast::channel(16);
        let (registry, handle) = spawn(store.clone(), updates).await;
        for n in 0..300 {
            let id = format!("{n:016x}");
            registry
                .cast(RegistryMsg::Queued(Box::new(queued(n))))
                .expect("cast");
            if n % 10 == 9 {
                // Still waiting: its queued state is on disk after the answer too.
                continue;
            }
            registry
                .cast(RegistryMsg::Started {
                    id: id.clone(),
                    attempt: 1,
                    node: "node".into(),
                })
                .expect("cast");
            let done = if n % 2 == 0 {
                RegistryMsg::Completed {
                    id,
                    attempt: 1,
                    result: Box::default(),
                }
            } else {
                RegistryMsg::Failed {
                    id,
                    attempt: 1,
                    error: TaskError::new(ErrorCode::NotFound, "not found"),
                }
            };
            registry.cast(done).expect("cast");
        }
        let listed = ractor::call!(registry, RegistryMsg::List).expect("list");
        let mut stored = store.load_all_sync().expect("load");
        stored.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        assert_eq!(stored, listed);
        let waiting = stored
            .iter()
            .filter(|t| !t.status.status_type.is_final())
            .count();
        assert_eq!(waiting, 30);
        registry.stop(None);
        handle.await.expect("registry stopped");
    }
}
