//! `gitfleet._native`: the engine and the actors behind the Python package, on a root of their
//! own. The Python layer (`python/gitfleet`) shapes what users see; this module only starts the
//! actors, hands them work and answers with task records as JSON (the same records `gitfleet
//! status --json` prints), so that the two never disagree on what a task is.
//!
//! Every call that waits lets go of the interpreter (`Python::detach`): other Python threads and
//! the asyncio loop's executor threads run meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitfleet_actors::{
    FleetConfig, GitExecutor, OpenRoot, RequestDirs, RetryPolicy, SchedulePolicy, Submitted,
    plan_work,
};
use gitfleet_git::{Credentials, CredentialsConfig, Limits, Policy, Secret, Target};
use gitfleet_proto::{Operation, WorkRequest};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    GitfleetError,
    PyException,
    "A gitfleet operation failed: the root cannot be used, or the actors are gone."
);

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
struct Session {
    running: Mutex<Option<Arc<Running>>>,
    root: PathBuf,
}

fn failed(e: impl std::fmt::Display) -> PyErr {
    GitfleetError::new_err(e.to_string())
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
        let operation = match operation {
            "mirror" => Operation::Mirror,
            "clone" => Operation::Checkout,
            other => {
                return Err(PyValueError::new_err(format!(
                    "operation must be 'mirror' or 'clone', not {other:?}"
                )));
            }
        };
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
                        answers.push(serde_json::json!({
                            "input": input,
                            "error": {"code": e.code.as_str(), "message": e.message},
                        }));
                        continue;
                    }
                    let submitted = running.fleet.submit(planned.jobs).await.map_err(failed)?;
                    for s in submitted {
                        let (Submitted::Accepted(id) | Submitted::Duplicate(id)) = s;
                        answers.push(serde_json::json!({"input": input, "id": id}));
                    }
                }
                Ok(serde_json::Value::Array(answers).to_string())
            })
        })
    }

    /// Every task of the root as a JSON array of task records.
    fn tasks(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |running| {
            let tasks = running
                .runtime
                .block_on(running.fleet.tasks())
                .map_err(failed)?;
            serde_json::to_string(&tasks).map_err(failed)
        })
    }

    /// Waits until nothing is queued, running or waiting for a retry, or `timeout` seconds
    /// pass (None: no limit). True when idle.
    #[pyo3(signature = (timeout = None))]
    fn wait_idle(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let limit = match timeout {
            Some(t) if !(t.is_finite() && t >= 0.0) => {
                return Err(PyValueError::new_err(
                    "timeout must be a non-negative number of seconds",
                ));
            }
            Some(t) => Some(Duration::from_secs_f64(t.min(1e9))),
            None => None,
        };
        self.with(py, |running| {
            running.runtime.block_on(async {
                let idle = running.fleet.wait_idle();
                match limit {
                    None => idle.await.map(|()| true).map_err(failed),
                    Some(limit) => match tokio::time::timeout(limit, idle).await {
                        Ok(result) => result.map(|()| true).map_err(failed),
                        Err(_) => Ok(false),
                    },
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

/// A cache root (gitfleet-cache) opened by this process. Every method answers JSON:
/// `{"ok": ...}` or `{"error": {"code", "message"}}` (the Python layer returns errors as
/// `Exception` values, as the cache documents say). Operations wait without the interpreter.
#[pyclass(frozen, module = "gitfleet._native")]
struct NativeCache {
    cache: std::sync::RwLock<gitfleet_cache::Cache>,
}

fn answer<T: serde::Serialize>(result: Result<T, gitfleet_cache::CacheError>) -> String {
    match result {
        Ok(value) => serde_json::json!({ "ok": value }).to_string(),
        Err(e) => serde_json::json!({
            "error": {"code": e.code(), "message": e.to_string()}
        })
        .to_string(),
    }
}

impl NativeCache {
    fn with<T: serde::Serialize>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&gitfleet_cache::Cache) -> Result<T, gitfleet_cache::CacheError> + Send,
    ) -> PyResult<String> {
        py.detach(|| {
            let cache = self
                .cache
                .read()
                .map_err(|_| failed("the cache is unusable after a panic"))?;
            Ok(answer(f(&cache)))
        })
    }
}

#[pymethods]
impl NativeCache {
    /// Opens (creating) the cache at `root`: entries are STALE after `timeout_s` seconds, and
    /// above `max_bytes` the least recently used are evicted. `git_config`: `(key, value)`
    /// pairs written into every git entry's repository config.
    #[new]
    #[pyo3(signature = (root, *, timeout_s, max_bytes, git_config = Vec::new()))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        timeout_s: f64,
        max_bytes: u64,
        git_config: Vec<(String, String)>,
    ) -> PyResult<NativeCache> {
        if !(timeout_s.is_finite() && timeout_s >= 0.0) {
            return Err(PyValueError::new_err(
                "the timeout must be a non-negative number",
            ));
        }
        let mut config = gitfleet_cache::CacheConfig::new(root);
        config.timeout = Duration::from_secs_f64(timeout_s.min(1e12));
        config.max_bytes = max_bytes;
        config.git_config = git_config;
        gitfleet_git::init_tls();
        let cache = py
            .detach(|| gitfleet_cache::Cache::open(config))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(NativeCache {
            cache: std::sync::RwLock::new(cache),
        })
    }

    /// Offers `username`/`token` to `host` (an exact name or `*.suffix`) for git sources.
    fn add_credentials(&self, host: &str, username: &str, token: &str) -> PyResult<()> {
        let mut cache = self
            .cache
            .write()
            .map_err(|_| failed("the cache is unusable after a panic"))?;
        cache.add_credentials(host, username, token);
        Ok(())
    }

    #[getter]
    fn root(&self) -> PyResult<PathBuf> {
        let cache = self
            .cache
            .read()
            .map_err(|_| failed("the cache is unusable after a panic"))?;
        Ok(cache.root().to_path_buf())
    }

    #[pyo3(signature = (source, name = None))]
    fn add(&self, py: Python<'_>, source: &str, name: Option<&str>) -> PyResult<String> {
        self.with(py, |c| c.add(source, name))
    }

    fn refresh(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.refresh(name))
    }

    fn get(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.get(name))
    }

    fn list(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.list())
    }

    fn path(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.path(name))
    }

    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        self.with(py, |c| c.remove(name))
    }

    fn clear(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.clear())
    }

    fn stats(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| c.stats())
    }
}

/// `text` with the user information of every http(s) URL in it masked (tokens are sent as user
/// names); an ssh or git user name stays.
#[pyfunction]
fn scrub_userinfo(text: &str) -> String {
    gitfleet_git::scrub_userinfo(text)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Session>()?;
    m.add_class::<NativeCache>()?;
    m.add_function(wrap_pyfunction!(scrub_userinfo, m)?)?;
    m.add("GitfleetError", m.py().get_type::<GitfleetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
