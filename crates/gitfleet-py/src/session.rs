//! `Session`: the embedded actors on a root of their own, driven from Python.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitfleet_actors::{
    FleetConfig, GitExecutor, OpenRoot, RequestDirs, RetryPolicy, SchedulePolicy, Submitted,
    plan_work,
};
use gitfleet_git::{Credentials, CredentialsConfig, Limits, Policy, Secret, Target};
use gitfleet_proto::{Operation, TaskUpdate, WorkRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use crate::{failed, log_request, operation_of, seconds, submitted};

/// How long closing waits for other threads' calls to end, and then for the runtime to stop.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What a stopped session answers.
const CLOSED: &str = "this gitfleet session is closed";

/// The actors running on one root, with the runtime that drives them.
struct Running {
    runtime: tokio::runtime::Runtime,
    fleet: gitfleet_actors::Fleet,
    open: OpenRoot,
    policy: Policy,
}

/// A root opened for work in this process: the actors, their runtime and the root's lock.
#[pyclass(frozen, module = "gitfleet._native")]
pub(crate) struct Session {
    running: Mutex<Option<Arc<Running>>>,
    root: PathBuf,
}

impl Session {
    /// Runs `f` on the running session, without the interpreter. The lock is held only to take a
    /// handle: a long wait in one thread does not hold up calls from others.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Running) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let running = self
                .running
                .lock()
                .map_err(|_| failed(CLOSED))?
                .clone()
                .ok_or_else(|| failed(CLOSED))?;
            f(&running)
        })
    }
}

#[pymethods]
impl Session {
    /// Opens `root` (created if missing) and starts the actors: `concurrency` transfers at once,
    /// `retries` attempts again after a transient failure. `token` (with `username`) is offered
    /// only to the hosts of `token_urls`, never to a host a later URL names.
    #[new]
    #[pyo3(signature = (root, *, concurrency = 8, retries = 3, username = None, token = None, token_urls = Vec::new()))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        concurrency: usize,
        retries: u32,
        username: Option<String>,
        token: Option<String>,
        token_urls: Vec<String>,
    ) -> PyResult<Session> {
        if concurrency == 0 {
            return Err(PyValueError::new_err("concurrency must be at least 1"));
        }
        let policy = Policy::permissive();
        let credentials = credentials_for(&policy, username, token, &token_urls);
        let running = py.detach(|| start(&root, concurrency, retries, policy, credentials))?;
        Ok(Session {
            root: running.open.layout.root().to_path_buf(),
            running: Mutex::new(Some(Arc::new(running))),
        })
    }

    /// The storage root.
    #[getter]
    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Submits `inputs` (URLs or local paths) as `mirror` or `clone` (a working tree). Answers
    /// JSON: one entry per input, in order, `{"input", "id"}` or `{"input", "error": {"code",
    /// "message"}}`. A repository already queued or running is not submitted twice.
    fn submit(&self, py: Python<'_>, inputs: Vec<String>, operation: &str) -> PyResult<String> {
        let operation = operation_of(operation)?;
        self.with(py, |running| {
            running.runtime.block_on(async {
                let known = running.fleet.tasks().await.map_err(failed)?;
                let mut answers = Vec::with_capacity(inputs.len());
                for input in inputs {
                    let work = WorkRequest::Clone {
                        inputs: vec![input.clone()],
                        operation,
                    };
                    let mut planned =
                        plan_work(&running.open.layout, &running.policy, &known, &work);
                    if let Some((_, e)) = planned.rejected.pop() {
                        answers.push(submitted(
                            &input,
                            Err((e.code.as_str().to_string(), e.message)),
                        ));
                        continue;
                    }
                    let accepted = running.fleet.submit(planned.jobs).await.map_err(failed)?;
                    for s in accepted {
                        let (Submitted::Accepted(id) | Submitted::Duplicate(id)) = s;
                        answers.push(submitted(&input, Ok(id)));
                    }
                }
                Ok(serde_json::Value::Array(answers).to_string())
            })
        })
    }

    /// The task records of `ids` (those that exist) as a JSON array.
    fn tasks_of(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<String> {
        self.with(py, |running| {
            running.runtime.block_on(async {
                let mut tasks = Vec::with_capacity(ids.len());
                for id in &ids {
                    if let Some(task) = running.fleet.get(id).await.map_err(failed)? {
                        tasks.push(task);
                    }
                }
                serde_json::to_string(&tasks).map_err(failed)
            })
        })
    }

    /// JSON: the commits of task `id`'s repository, newest first (what `gitfleet log` shows).
    #[pyo3(signature = (id, since = None, max_count = 20))]
    fn log(
        &self,
        py: Python<'_>,
        id: String,
        since: Option<String>,
        max_count: usize,
    ) -> PyResult<String> {
        let request = log_request(id, since, max_count)?;
        self.with(py, |running| {
            let task = running
                .runtime
                .block_on(running.fleet.get(&request.task))
                .map_err(failed)?
                .ok_or_else(|| failed(format!("no task {}", request.task)))?;
            let commits = gitfleet_git::recent_commits(
                &running.open.layout,
                std::path::Path::new(&task.path),
                request.since,
                max_count,
            )
            .map_err(|e| failed(e.message))?;
            serde_json::to_string(&commits).map_err(failed)
        })
    }

    /// Waits until every task of `ids` has ended (completed or failed: retries included), or
    /// `timeout` seconds pass (None: no limit). True when they have.
    #[pyo3(signature = (ids, timeout = None))]
    fn wait_final(&self, py: Python<'_>, ids: Vec<String>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = seconds(timeout)?.map(|limit| tokio::time::Instant::now() + limit);
        self.with(py, |running| {
            running.runtime.block_on(async {
                // Subscribed before looking: a change between the look and the wait is seen.
                let mut updates = running.fleet.subscribe();
                loop {
                    let mut unfinished = false;
                    for id in &ids {
                        let task = running.fleet.get(id).await.map_err(failed)?;
                        if task.is_some_and(|t| !t.status.status_type.is_final()) {
                            unfinished = true;
                            break;
                        }
                    }
                    if !unfinished {
                        return Ok(true);
                    }
                    let next_state = async {
                        loop {
                            match updates.recv().await {
                                Ok(TaskUpdate::Progress(_)) => {}
                                Ok(TaskUpdate::State { .. }) | Err(RecvError::Lagged(_)) => {
                                    break true;
                                }
                                Err(RecvError::Closed) => break false,
                            }
                        }
                    };
                    let open = match deadline {
                        None => next_state.await,
                        Some(at) => match tokio::time::timeout_at(at, next_state).await {
                            Ok(open) => open,
                            Err(_) => return Ok(false),
                        },
                    };
                    if !open {
                        return Err(failed(CLOSED));
                    }
                }
            })
        })
    }

    /// Cancels the tasks `ids` (queued or running); answers how many were cancelled.
    fn cancel(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        self.with(py, |running| {
            running.runtime.block_on(async {
                let mut cancelled = 0;
                for id in &ids {
                    if running.fleet.cancel(id).await.map_err(failed)? {
                        cancelled += 1;
                    }
                }
                Ok(cancelled)
            })
        })
    }

    /// Cancels what is queued or running, stops the actors and lets go of the root. Closing
    /// twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let Some(mut running) = self.running.lock().map_err(|_| failed(CLOSED))?.take() else {
                return Ok(());
            };
            running.runtime.block_on(cancel_unfinished(&running.fleet));
            // Calls in other threads end once nothing is unfinished (a wait returns at idle).
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            let running = loop {
                match Arc::try_unwrap(running) {
                    Ok(running) => break running,
                    Err(shared) if std::time::Instant::now() < deadline => {
                        running = shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => {
                        return Err(failed(
                            "cannot close: another thread is still waiting on this session",
                        ));
                    }
                }
            };
            let Running {
                runtime,
                fleet,
                open,
                ..
            } = running;
            runtime.block_on(fleet.shutdown());
            runtime.shutdown_timeout(CLOSE_WAIT);
            drop(open);
            Ok(())
        })
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> bool {
        self.running.lock().map(|r| r.is_none()).unwrap_or(true)
    }
}

/// Cancels every task still queued or running.
async fn cancel_unfinished(fleet: &gitfleet_actors::Fleet) {
    if let Ok(tasks) = fleet.tasks().await {
        for task in tasks.iter().filter(|t| !t.status.status_type.is_final()) {
            let _ = fleet.cancel(&task.id).await;
        }
    }
}

/// `token` for the hosts of `urls` only.
fn credentials_for(
    policy: &Policy,
    username: Option<String>,
    token: Option<String>,
    urls: &[String],
) -> CredentialsConfig {
    let mut config = CredentialsConfig::default();
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return config;
    };
    let credentials = Credentials {
        username: username
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "git".to_string()),
        token: Secret::new(token),
    };
    let mut hosts: Vec<String> = urls
        .iter()
        .filter_map(|u| Target::for_url(u, Operation::Mirror, policy).ok())
        .filter_map(|t| {
            t.url()
                .and_then(|u| u.credential_host().map(str::to_string))
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    config
        .per_host
        .extend(hosts.into_iter().map(|h| (h, credentials.clone())));
    config
}

fn start(
    root: &std::path::Path,
    concurrency: usize,
    retries: u32,
    policy: Policy,
    credentials: CredentialsConfig,
) -> PyResult<Running> {
    gitfleet_git::init_tls();
    let open = OpenRoot::open(
        root,
        "close the other RepoManager or gitfleet process using it, or choose another root",
    )
    .map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gitfleet")
        .enable_all()
        .build()
        .map_err(failed)?;
    let config = FleetConfig {
        layout: open.layout.clone(),
        concurrency,
        retry: RetryPolicy {
            max_retries: retries,
            ..RetryPolicy::default()
        },
        node: gitfleet_actors::hostname(),
        executor: std::sync::Arc::new(GitExecutor {
            layout: open.layout.clone(),
            policy: policy.clone(),
            credentials,
            limits: Limits::default(),
        }),
        schedule: SchedulePolicy::default(),
        hosts: gitfleet_actors::HostLimits::default(),
    };
    let fleet = runtime.block_on(async {
        let fleet = gitfleet_actors::Fleet::start(config, open.store.clone())
            .await
            .map_err(failed)?;
        // `gitfleet cancel` from another process reaches these tasks too; stops with the fleet.
        let requests = RequestDirs::open(&open.layout.state_dir()).map_err(failed)?;
        drop(fleet.watch_requests(requests));
        fleet.resume_unfinished(&policy).await.map_err(failed)?;
        Ok::<_, PyErr>(fleet)
    })?;
    Ok(Running {
        runtime,
        fleet,
        open,
        policy,
    })
}
