//! The CloneWorker actor: runs one job at a time on a blocking thread, so its mailbox stays free
//! for `Cancel` while gix works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gitfleet_git::Control;
use gitfleet_proto::{ProgressEvent, SyncResult, TaskError};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::job::{Executor, Job};
use crate::registry::RegistryMsg;
use crate::supervisor::SupervisorMsg;

pub enum WorkerMsg {
    Run(Job),
    /// Cancel the running job if it is this task.
    Cancel(String),
    /// The blocking thread finished (internal).
    Finished(Job, Box<Result<Result<SyncResult, TaskError>, String>>),
}

pub struct CloneWorker;

pub struct WorkerArgs {
    pub executor: Arc<dyn Executor>,
    pub registry: ActorRef<RegistryMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub node: String,
}

pub struct WorkerState {
    args: WorkerArgs,
    running: Option<(String, Control)>,
}

/// Progress samples are sent at most this often per task: the percent changes far more often
/// than anyone can read it.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

impl Actor for CloneWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            args,
            running: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run(job) => {
                let control = Control::new();
                state.running = Some((job.task_id.clone(), control.clone()));
                let _ = state.args.registry.cast(RegistryMsg::Started {
                    id: job.task_id.clone(),
                    attempt: job.attempt,
                    node: state.args.node.clone(),
                });
                let executor = state.args.executor.clone();
                let registry = state.args.registry.clone();
                let blocking = tokio::task::spawn_blocking({
                    let job = job.clone();
                    move || {
                        // Every log line of the transfer names its task (the URL as stored:
                        // no credentials).
                        let _task = tracing::info_span!(
                            "task",
                            id = %job.task_id,
                            url = %job.display,
                            attempt = job.attempt
                        )
                        .entered();
                        let mut last_sent: Option<Instant> = None;
                        let mut on_progress = |p: &gitfleet_git::Progress| {
                            let now = Instant::now();
                            if last_sent.is_some_and(|t| now.duration_since(t) < PROGRESS_INTERVAL)
                            {
                                return;
                            }
                            last_sent = Some(now);
                            let _ = registry.cast(RegistryMsg::Progress(ProgressEvent {
                                task_id: job.task_id.clone(),
                                attempt: job.attempt,
                                phase: p.phase,
                                progress: p.percent,
                                bytes_received: p.bytes_received,
                                bytes_per_sec: p.bytes_per_sec,
                                objects_received: p.objects_received,
                                objects_total: p.objects_total,
                            }));
                        };
                        tracing::debug!(operation = job.operation.as_str(), "transfer started");
                        let result = executor.execute(&job, &control, &mut on_progress);
                        match &result {
                            Ok(done) => tracing::debug!(
                                bytes_received = done.bytes_received,
                                duration_ms = done.duration_ms,
                                "transfer completed"
                            ),
                            Err(e) => tracing::debug!(
                                code = e.code.as_str(),
                                error = %e.message,
                                "transfer failed"
                            ),
                        }
                        result
                    }
                });
                tokio::spawn(async move {
                    let outcome = blocking.await.map_err(|e| match e.try_into_panic() {
                        Ok(panic) => panic_message(&panic),
                        Err(e) => e.to_string(),
                    });
                    let _ = myself.cast(WorkerMsg::Finished(job, Box::new(outcome)));
                });
            }
            WorkerMsg::Cancel(task_id) => {
                if let Some((running, control)) = &state.running
                    && *running == task_id
                {
                    control.cancel();
                }
            }
            WorkerMsg::Finished(job, outcome) => {
                state.running = None;
                match *outcome {
                    Ok(result) => {
                        let _ = state.args.supervisor.cast(SupervisorMsg::JobDone {
                            worker: myself.get_id(),
                            job,
                            result: Box::new(result),
                        });
                    }
                    // The git work panicked: crash this actor so that its supervisor sees the
                    // failure, replaces the worker and retries the job.
                    Err(panic) => {
                        return Err(
                            format!("clone worker crashed on {}: {panic}", job.display).into()
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}
