//! gitfleet's actors, in one process: a Supervisor, a bounded pool of CloneWorkers and a
//! Registry, wired together by [`Fleet`]. The cluster runs the same actors with other stores
//! and event sinks.

mod compact;
mod hosts;
mod job;
mod lock;
mod metrics;
mod planning;
mod registry;
mod root;
mod schedule;
mod scheduler;
mod store;
mod supervisor;
mod transitions;
mod view;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use gitfleet_git::{Layout, Policy, Target};
use gitfleet_proto::{CloneTask, ErrorCode, Operation, StatusType, TaskError, TaskUpdate};
use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;

pub use hosts::{
    DEFAULT_HOST_LIMIT, HostLimit, HostLimits, MAX_PAUSES_PER_REQUEST,
    parse_rule as parse_host_rule,
};
pub use job::{Executor, FleetConfig, GitExecutor, Job, RetryPolicy};
pub use lock::{Requests, RootLock};
pub use metrics::{Census, Connection, FleetMetrics};
pub use planning::{Planned, find_task, plan_work};
pub use registry::{Registry, RegistryArgs, RegistryMsg};
pub use root::{OpenRoot, RootError, claim, hostname, open_layout};
pub use schedule::SchedulePolicy;
pub use scheduler::{DueTimes, keep_fresh, spread, spread_if_overdue};
pub use store::{FileStore, Put, StoreFuture, TaskStore};
pub use supervisor::{HostPaused, Submitted, Supervisor, SupervisorArgs, SupervisorMsg};
pub use transitions::{Change, Transitions};
pub use view::{FleetView, MAX_PAGE, TaskPage, TaskQuery};
pub use worker::{CloneWorker, WorkerArgs, WorkerMsg};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot start the actors: {0}")]
    Spawn(String),
    #[error("the {0} actor is gone")]
    Gone(&'static str),
    #[error("cannot read the task store: {0}")]
    Store(#[from] std::io::Error),
}

/// An archived repository is kept as it is: every way to sync it (a request, the schedule, a
/// webhook, the dashboard) ends here.
pub fn refuse_archived(task: &CloneTask) -> Result<(), TaskError> {
    if task.archived {
        return Err(TaskError::new(
            ErrorCode::Conflict,
            format!(
                "{} is archived: it is kept as it is and not synced until `gitfleet unarchive`",
                task.url
            ),
        ));
    }
    Ok(())
}

/// Turns a URL as typed by a user into a job: parsed, checked against `policy`, placed.
pub fn plan(
    layout: &Layout,
    policy: &Policy,
    input: &str,
    operation: Operation,
) -> Result<Job, TaskError> {
    let target = Target::for_url(input, operation, policy)?;
    Ok(Job::new(layout, &target, operation))
}

/// A job that creates an empty repository named `owner/name`.
pub fn plan_init(layout: &Layout, name: &str, worktree: bool) -> Result<Job, TaskError> {
    let target = Target::for_init(name, worktree)?;
    Ok(Job::new(layout, &target, Operation::Init))
}

/// The job that continues or refreshes a stored task: sync when the repository is in place,
/// otherwise the task's own operation (a clone that never finished). Its id and path are derived
/// again from the task's URL (a record that does not match them is refused), and its URL must
/// still pass `policy`.
pub fn plan_from_task(
    layout: &Layout,
    policy: &Policy,
    task: &CloneTask,
) -> Result<Job, TaskError> {
    refuse_archived(task)?;
    let target = Target::of_task(task)?;
    if let Some(url) = target.url() {
        policy
            .check(url)
            .map_err(|e| TaskError::new(e.code, e.message))?;
    }
    let exists = layout.path_of(&target).exists();
    let operation = match task.operation {
        Operation::Init => Operation::Init,
        // The repository disappeared: clone it again, as what its path says it was.
        Operation::Sync if !exists && target.is_bare() => Operation::Mirror,
        Operation::Sync if !exists => Operation::Checkout,
        _ if exists && task.status.status_type == StatusType::Completed => Operation::Sync,
        op => op,
    };
    Ok(Job::new(layout, &target, operation))
}

/// Where other processes leave their requests for the process working on a root.
#[derive(Debug, Clone)]
pub struct RequestDirs {
    pub cancels: Requests,
    pub resumes: Requests,
    pub intervals: Requests,
    pub archives: Requests,
    pub removes: Requests,
}

impl RequestDirs {
    pub fn open(state_dir: &std::path::Path) -> std::io::Result<RequestDirs> {
        Ok(RequestDirs {
            cancels: Requests::cancels(state_dir)?,
            resumes: Requests::resumes(state_dir)?,
            intervals: Requests::intervals(state_dir)?,
            archives: Requests::archives(state_dir)?,
            removes: Requests::removes(state_dir)?,
        })
    }
}

/// The actors of one process and the channel their updates come out of.
pub struct Fleet {
    supervisor: ActorRef<SupervisorMsg>,
    registry: ActorRef<RegistryMsg>,
    updates: broadcast::Sender<TaskUpdate>,
    pauses: broadcast::Sender<HostPaused>,
    layout: Layout,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("root", &self.layout.root())
            .finish()
    }
}

impl Fleet {
    pub async fn start(
        config: FleetConfig,
        store: Arc<dyn TaskStore>,
    ) -> Result<Fleet, FleetError> {
        let (updates, _) = broadcast::channel(4096);
        let (pauses, _) = broadcast::channel(64);
        let layout = config.layout.clone();
        let (registry, _) = Actor::spawn(
            None,
            Registry,
            RegistryArgs {
                store,
                updates: updates.clone(),
                schedule: config.schedule,
            },
        )
        .await
        .map_err(|e| FleetError::Spawn(e.to_string()))?;
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                config,
                registry: registry.clone(),
                pauses: pauses.clone(),
            },
        )
        .await
        .map_err(|e| FleetError::Spawn(e.to_string()))?;
        Ok(Fleet {
            supervisor,
            registry,
            updates,
            pauses,
            layout,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every state transition and progress sample from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskUpdate> {
        self.updates.subscribe()
    }

    /// Every host this process pauses from now on because a server asked it to.
    pub fn host_pauses(&self) -> broadcast::Receiver<HostPaused> {
        self.pauses.subscribe()
    }

    /// Sends nothing to `host` for `pause` (at most [`gitfleet_git::MAX_PAUSE`]): another node
    /// was asked to slow down.
    pub fn pause_host(&self, host: &str, pause: Duration) -> Result<(), FleetError> {
        self.supervisor
            .cast(SupervisorMsg::PauseHost {
                host: host.to_string(),
                pause,
            })
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    /// Takes the queued (not running) jobs of `host` back out of this fleet and returns their
    /// task ids; their records stay as they are (`queued`). A node hands them back to the jobs
    /// stream while the host is paused.
    pub async fn withdraw_queued(&self, host: &str) -> Result<Vec<String>, FleetError> {
        ractor::call!(self.supervisor, SupervisorMsg::Withdraw, host.to_string())
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    /// How much longer `host` is paused here, if it is.
    pub async fn host_paused_for(&self, host: &str) -> Result<Option<Duration>, FleetError> {
        ractor::call!(
            self.supervisor,
            SupervisorMsg::HostPausedFor,
            host.to_string()
        )
        .map_err(|_| FleetError::Gone("supervisor"))
    }

    /// `nodes` share the hosts' limits from now on (each takes its part).
    pub fn share_host_limits(&self, nodes: usize) -> Result<(), FleetError> {
        self.supervisor
            .cast(SupervisorMsg::ShareHostLimits(nodes))
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    pub async fn submit(&self, jobs: Vec<Job>) -> Result<Vec<Submitted>, FleetError> {
        ractor::call!(self.supervisor, SupervisorMsg::Submit, jobs)
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    /// Waits until nothing is queued, running or waiting for a retry.
    pub async fn wait_idle(&self) -> Result<(), FleetError> {
        ractor::call!(self.supervisor, SupervisorMsg::WhenIdle)
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    pub async fn cancel(&self, task_id: &str) -> Result<bool, FleetError> {
        ractor::call!(self.supervisor, SupervisorMsg::Cancel, task_id.to_string())
            .map_err(|_| FleetError::Gone("supervisor"))
    }

    /// The Registry, for what watches it (metrics).
    pub(crate) fn registry_ref(&self) -> ActorRef<RegistryMsg> {
        self.registry.clone()
    }

    /// A handle for readers (the dashboard) that does not keep the fleet alive.
    pub fn view(&self) -> FleetView {
        FleetView::new(self.registry.clone(), &self.updates)
    }

    pub async fn tasks(&self) -> Result<Vec<CloneTask>, FleetError> {
        ractor::call!(self.registry, RegistryMsg::List).map_err(|_| FleetError::Gone("registry"))
    }

    pub async fn get(&self, task_id: &str) -> Result<Option<CloneTask>, FleetError> {
        ractor::call!(self.registry, RegistryMsg::Get, task_id.to_string())
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Re-submits tasks that were queued or running when an earlier process died.
    pub async fn resume_unfinished(&self, policy: &Policy) -> Result<Vec<CloneTask>, FleetError> {
        let unfinished: Vec<CloneTask> = self
            .tasks()
            .await?
            .into_iter()
            .filter(|t| !t.status.status_type.is_final())
            .collect();
        let mut jobs = Vec::new();
        for task in &unfinished {
            match plan_from_task(&self.layout, policy, task) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(task = %task.id, error = %e, "cannot resume task"),
            }
        }
        self.submit(jobs).await?;
        Ok(unfinished)
    }

    /// Polls `requests` (cancels, resumes, intervals) written by other processes until the
    /// fleet stops.
    pub fn watch_requests(&self, requests: RequestDirs) -> tokio::task::JoinHandle<()> {
        let supervisor = self.supervisor.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                for id in requests.cancels.take() {
                    if ractor::call!(supervisor, SupervisorMsg::Cancel, id).is_err() {
                        return;
                    }
                }
                for id in requests.resumes.take() {
                    if registry.cast(RegistryMsg::Resume(id)).is_err() {
                        return;
                    }
                }
                for id in requests.removes.take() {
                    match ractor::call!(registry, RegistryMsg::Remove, id.clone()) {
                        Ok(Ok(_)) => {}
                        Ok(Err(why)) => tracing::warn!(task = %id, why = %why, "not removed"),
                        Err(_) => return,
                    }
                }
                for (id, value) in requests.archives.take_with_values() {
                    let archived = match value.as_str() {
                        "archive" => true,
                        "unarchive" => false,
                        _ => {
                            tracing::warn!(task = %id, value = %value, "ignoring an unreadable archive request");
                            continue;
                        }
                    };
                    if registry
                        .cast(RegistryMsg::Archive { id, archived })
                        .is_err()
                    {
                        return;
                    }
                }
                for (id, value) in requests.intervals.take_with_values() {
                    let every = value.parse::<u64>().ok().map(Duration::from_secs);
                    if every.is_none() && value != "adaptive" {
                        tracing::warn!(task = %id, value = %value, "ignoring an unreadable interval request");
                        continue;
                    }
                    if registry
                        .cast(RegistryMsg::SetInterval { id, every })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    }

    /// Sets how often task `task_id` is synced (`None`: the adaptive interval).
    pub async fn set_interval(
        &self,
        task_id: &str,
        every: Option<Duration>,
    ) -> Result<(), FleetError> {
        self.registry
            .cast(RegistryMsg::SetInterval {
                id: task_id.to_string(),
                every,
            })
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Forgets a finished task, in the Registry and the store (its repository is being
    /// removed): `Ok(false)` for an unknown task, an error for a queued or running one.
    pub async fn forget(&self, task_id: &str) -> Result<Result<bool, String>, FleetError> {
        ractor::call!(self.registry, RegistryMsg::Remove, task_id.to_string())
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Archives a task (`true`: never synced, out of the schedule) or brings it back, due now.
    pub async fn set_archived(&self, task_id: &str, archived: bool) -> Result<(), FleetError> {
        self.registry
            .cast(RegistryMsg::Archive {
                id: task_id.to_string(),
                archived,
            })
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Takes task `task_id` out of quarantine and makes it due now.
    pub async fn resume(&self, task_id: &str) -> Result<(), FleetError> {
        self.registry
            .cast(RegistryMsg::Resume(task_id.to_string()))
            .map_err(|_| FleetError::Gone("registry"))
    }

    pub async fn shutdown(self) {
        self.supervisor.stop(None);
        self.registry.stop(None);
    }
}
