//! The Supervisor actor: takes requests, deduplicates them, hands them to a bounded pool of
//! CloneWorkers within each host's limits (hosts.rs), retries transient failures with backoff,
//! pauses a host that asks for it, and replaces workers that crash.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gitfleet_proto::{CloneTask, ErrorCode, SyncResult, TaskError};
use jiff::Timestamp;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::hosts::{HostQueues, MAX_PAUSES_PER_REQUEST};
use crate::job::{FleetConfig, Job};
use crate::registry::RegistryMsg;
use crate::worker::{CloneWorker, WorkerArgs, WorkerMsg};

/// What became of one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Accepted(String),
    /// The task was already queued or running: the request joined it.
    Duplicate(String),
}

pub enum SupervisorMsg {
    Submit(Vec<Job>, RpcReplyPort<Vec<Submitted>>),
    JobDone {
        worker: ActorId,
        job: Job,
        result: Box<Result<SyncResult, TaskError>>,
    },
    Retry(Job),
    /// Cancel a task; replies whether it was queued, running or waiting for a retry.
    Cancel(String, RpcReplyPort<bool>),
    /// Replies once nothing is queued, running or waiting for a retry.
    WhenIdle(RpcReplyPort<()>),
    /// Send nothing to a host for this long (another node met its refusal).
    PauseHost {
        host: String,
        pause: Duration,
    },
    /// This many nodes share the hosts' limits from now on.
    ShareHostLimits(usize),
    /// How much longer a host is paused, if it is.
    HostPausedFor(String, RpcReplyPort<Option<Duration>>),
    /// Hands back the queued (not running) jobs of a host: the caller keeps them elsewhere
    /// while the host is paused (a node, in the jobs stream). Replies with their task ids.
    Withdraw(String, RpcReplyPort<Vec<String>>),
    /// A host's pause or rate window ended (internal).
    Wake,
}

/// A host this process paused because a server refused it, for whoever shares the hosts' limits
/// (a cluster node sends it to the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaused {
    pub host: String,
    pub pause: Duration,
}

pub struct Supervisor;

pub struct SupervisorArgs {
    pub config: FleetConfig,
    pub registry: ActorRef<RegistryMsg>,
    /// Where the hosts this process pauses are announced.
    pub pauses: tokio::sync::broadcast::Sender<HostPaused>,
}

pub struct SupervisorState {
    config: FleetConfig,
    registry: ActorRef<RegistryMsg>,
    idle: Vec<ActorRef<WorkerMsg>>,
    workers: HashMap<ActorId, ActorRef<WorkerMsg>>,
    running: HashMap<ActorId, Job>,
    queue: HostQueues,
    pauses: tokio::sync::broadcast::Sender<HostPaused>,
    /// When a `Wake` is due, if one is.
    wake_at: Option<Instant>,
    /// Every task queued, running or waiting for a retry, with the generation of its request:
    /// a retry timer of an older request finds another generation and does nothing.
    pending: HashMap<String, u64>,
    next_generation: u64,
    idle_waiters: Vec<RpcReplyPort<()>>,
}

impl Supervisor {
    async fn spawn_worker(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let args = WorkerArgs {
            executor: state.config.executor.clone(),
            registry: state.registry.clone(),
            supervisor: myself.clone(),
            node: state.config.node.clone(),
        };
        let (worker, _) = myself.spawn_linked(None, CloneWorker, args).await?;
        state.workers.insert(worker.get_id(), worker.clone());
        state.idle.push(worker);
        Ok(())
    }

    fn dispatch(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        let now = Instant::now();
        while !state.idle.is_empty() {
            let Some(job) = state.queue.pop_ready(now) else {
                break;
            };
            let worker = state.idle.pop().expect("checked above");
            state.running.insert(worker.get_id(), job.clone());
            if let Err(e) = worker.cast(WorkerMsg::Run(job.clone())) {
                tracing::error!(error = %e, "worker unreachable; requeueing");
                state.running.remove(&worker.get_id());
                state.queue.finished(&job);
                state.queue.push_front(job);
                break;
            }
        }
        // Jobs that wait for a host's pause or rate window: wake up when the first opens.
        if let Some(at) = state.queue.next_opening(now)
            && state.wake_at.is_none_or(|w| w > at || w <= now)
        {
            state.wake_at = Some(at);
            myself.send_after(at.saturating_duration_since(now), || SupervisorMsg::Wake);
        }
        if state.queue.is_empty() && state.running.is_empty() && state.pending.is_empty() {
            for waiter in state.idle_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn finish(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        job: Job,
        result: Result<SyncResult, TaskError>,
    ) {
        if state.pending.get(&job.task_id) != Some(&job.generation) {
            return;
        }
        match result {
            Ok(result) => {
                state.pending.remove(&job.task_id);
                let _ = state.registry.cast(RegistryMsg::Completed {
                    id: job.task_id,
                    attempt: job.attempt,
                    result: Box::new(result),
                });
            }
            Err(error) if Self::pauses_host(&error) && job.paused < MAX_PAUSES_PER_REQUEST => {
                let host = job.host();
                let pause = error.retry_after().unwrap_or(gitfleet_git::DEFAULT_PAUSE);
                tracing::warn!(url = %job.display, host = %host, pause_s = pause.as_secs(), error = %error, "the host asks to slow down; pausing it");
                state.queue.pause(&host, Instant::now() + pause);
                let _ = state.pauses.send(HostPaused { host, pause });
                let _ = state.registry.cast(RegistryMsg::Retrying {
                    id: job.task_id.clone(),
                    attempt: job.attempt,
                    error,
                });
                // Not a retry: the attempt number moves on (fencing), the budget does not.
                state.queue.push_front(Job {
                    attempt: job.attempt + 1,
                    paused: job.paused + 1,
                    ..job
                });
            }
            Err(error)
                if error.is_transient()
                    && job.attempt - job.paused.min(job.attempt)
                        <= state.config.retry.max_retries =>
            {
                // Pauses are not retries: they do not lengthen the backoff either.
                let delay = state
                    .config
                    .retry
                    .delay(job.attempt - job.paused.min(job.attempt));
                tracing::warn!(url = %job.display, attempt = job.attempt, delay_ms = delay.as_millis() as u64, error = %error, "transient failure; retrying");
                let _ = state.registry.cast(RegistryMsg::Retrying {
                    id: job.task_id.clone(),
                    attempt: job.attempt,
                    error,
                });
                let next = Job {
                    attempt: job.attempt + 1,
                    ..job
                };
                myself.send_after(delay, move || SupervisorMsg::Retry(next));
            }
            Err(error) => {
                state.pending.remove(&job.task_id);
                let _ = state.registry.cast(RegistryMsg::Failed {
                    id: job.task_id,
                    attempt: job.attempt,
                    error,
                });
            }
        }
    }
}

impl Supervisor {
    /// A refusal that pauses the whole host: the server said to slow down, or for how long it
    /// is out.
    fn pauses_host(error: &TaskError) -> bool {
        error.code == ErrorCode::RateLimited || error.retry_after_secs.is_some()
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let hosts = args.config.hosts.clone();
        let mut state = SupervisorState {
            config: args.config,
            registry: args.registry,
            idle: Vec::new(),
            workers: HashMap::new(),
            running: HashMap::new(),
            queue: HostQueues::new(hosts),
            pauses: args.pauses,
            wake_at: None,
            pending: HashMap::new(),
            next_generation: 1,
            idle_waiters: Vec::new(),
        };
        for _ in 0..state.config.concurrency.max(1) {
            Self::spawn_worker(&myself, &mut state).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Submit(jobs, reply) => {
                let mut outcomes = Vec::with_capacity(jobs.len());
                for mut job in jobs {
                    if state.pending.contains_key(&job.task_id) {
                        outcomes.push(Submitted::Duplicate(job.task_id));
                        continue;
                    }
                    job.generation = state.next_generation;
                    job.attempt = 1;
                    job.paused = 0;
                    state.next_generation += 1;
                    state.pending.insert(job.task_id.clone(), job.generation);
                    let mut task = CloneTask::new(
                        job.task_id.clone(),
                        job.display.clone(),
                        job.operation,
                        job.dest.to_string_lossy().into_owned(),
                        Timestamp::now(),
                    );
                    task.generation = job.fence;
                    if let Some(mut stored) = job.history.take() {
                        task.inherit_schedule(&stored);
                        task.history = std::mem::take(&mut stored.history);
                    }
                    let _ = state.registry.cast(RegistryMsg::Queued(Box::new(task)));
                    outcomes.push(Submitted::Accepted(job.task_id.clone()));
                    state.queue.push_back(job);
                }
                let _ = reply.send(outcomes);
            }
            SupervisorMsg::JobDone {
                worker,
                job,
                result,
            } => {
                if state.running.remove(&worker).is_some() {
                    state.queue.finished(&job);
                }
                if let Some(w) = state.workers.get(&worker) {
                    state.idle.push(w.clone());
                }
                Self::finish(&myself, state, job, *result);
            }
            SupervisorMsg::Retry(job) => {
                if state.pending.get(&job.task_id) == Some(&job.generation) {
                    state.queue.push_back(job);
                }
            }
            SupervisorMsg::Cancel(task_id, reply) => {
                let running = state
                    .running
                    .iter()
                    .find(|(_, job)| job.task_id == task_id)
                    .map(|(id, _)| *id);
                let known = if let Some(worker) = running.and_then(|id| state.workers.get(&id)) {
                    // The worker's result decides: `cancelled` if the interrupt lands in time,
                    // `completed` if the repository was already in place.
                    let _ = worker.cast(WorkerMsg::Cancel(task_id.clone()));
                    true
                } else if state.pending.remove(&task_id).is_some() {
                    let attempt = state.queue.remove(&task_id).map_or(0, |j| j.attempt);
                    let error = TaskError::new(ErrorCode::Cancelled, "cancelled on request");
                    let _ = state.registry.cast(RegistryMsg::Failed {
                        id: task_id,
                        attempt,
                        error,
                    });
                    true
                } else {
                    false
                };
                let _ = reply.send(known);
            }
            SupervisorMsg::WhenIdle(reply) => state.idle_waiters.push(reply),
            SupervisorMsg::PauseHost { host, pause } => {
                let pause = pause.min(gitfleet_git::MAX_PAUSE);
                state
                    .queue
                    .pause(&host.to_ascii_lowercase(), Instant::now() + pause);
            }
            SupervisorMsg::ShareHostLimits(nodes) => state.queue.share(nodes),
            SupervisorMsg::Withdraw(host, reply) => {
                let jobs = state.queue.take_host(&host);
                let ids = jobs
                    .into_iter()
                    .map(|job| {
                        state.pending.remove(&job.task_id);
                        job.task_id
                    })
                    .collect();
                let _ = reply.send(ids);
            }
            SupervisorMsg::HostPausedFor(host, reply) => {
                let _ = reply.send(state.queue.paused_for(&host, Instant::now()));
            }
            SupervisorMsg::Wake => state.wake_at = None,
        }
        Self::dispatch(&myself, state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "worker stopped".into()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if state.workers.remove(&id).is_none() {
            return Ok(());
        }
        state.idle.retain(|w| w.get_id() != id);
        tracing::error!(worker = %id, reason = %why, "clone worker failed; replacing it");
        if let Some(job) = state.running.remove(&id) {
            state.queue.finished(&job);
            let error = TaskError::new(ErrorCode::Internal, format!("worker crashed: {why}"));
            Self::finish(&myself, state, job, Err(error));
        }
        Self::spawn_worker(&myself, state).await?;
        Self::dispatch(&myself, state);
        Ok(())
    }
}
