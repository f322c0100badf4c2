//! `ClusterSession`: a gitfleet cluster driven from Python through its request API on NATS (the
//! same client as `gitfleet --nats`). The nodes do the work with their own credentials; nothing
//! secret is sent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_cluster::{Client, Follow, NatsAuth};
use gitfleet_proto::{SubmitRequest, TaskUpdate};
use pyo3::prelude::*;

use crate::{failed, operation_of, seconds, submitted};

/// How often a wait looks at what events and reads have told.
const LOOK: Duration = Duration::from_millis(50);
/// How often a wait reads the tasks no event has finished (a bounded number each time).
const ROUND: Duration = Duration::from_secs(1);

#[pyclass(frozen, module = "gitfleet._native")]
pub(crate) struct ClusterSession {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// The tasks waited for, told by the cluster's status events (a task of this session that
    /// ends while nobody waits is known at once) and by sparse reads of the bucket.
    follow: Arc<Mutex<Follow>>,
}

impl ClusterSession {
    fn follow_mut(&self) -> std::sync::MutexGuard<'_, Follow> {
        // A panic while holding it leaves nothing half-written that matters: go on.
        self.follow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the client without the interpreter.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl AsyncFnOnce(&Client) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.runtime.block_on(f(&self.client)))
    }
}

#[pymethods]
impl ClusterSession {
    /// Connects to the cluster at `url` (credentials in the URL, or a `.creds` file) whose
    /// subjects start with `prefix`.
    #[new]
    #[pyo3(signature = (url, *, prefix = "gitfleet".to_string(), creds_file = None))]
    fn new(
        py: Python<'_>,
        url: String,
        prefix: String,
        creds_file: Option<PathBuf>,
    ) -> PyResult<ClusterSession> {
        gitfleet_git::init_tls();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gitfleet-nats")
            .enable_all()
            .build()
            .map_err(failed)?;
        let auth = NatsAuth {
            creds_file,
            ..NatsAuth::default()
        };
        let (client, events) = py
            .detach(|| {
                runtime.block_on(async {
                    let client = Client::connect_with(&url, &prefix, &auth).await?;
                    let events = client.watch().await?;
                    Ok::<_, gitfleet_cluster::ClientError>((client, events))
                })
            })
            .map_err(failed)?;
        let follow = Arc::new(Mutex::new(Follow::default()));
        runtime.spawn(feed(events, Arc::clone(&follow)));
        Ok(ClusterSession {
            runtime,
            client,
            follow,
        })
    }

    /// As `Session.submit`: one answer per input, in order.
    fn submit(&self, py: Python<'_>, inputs: Vec<String>, operation: &str) -> PyResult<String> {
        let operation = operation_of(operation)?;
        self.call(py, async move |client| {
            let reply = client
                .submit(&SubmitRequest {
                    repositories: inputs,
                    operation,
                    worktree: false,
                    idempotency_key: None,
                })
                .await
                .map_err(failed)?;
            let ids = reply.tasks.iter().filter_map(|t| t.task_id.clone());
            self.follow_mut().restart(
                ids,
                tokio::time::Instant::now() + gitfleet_cluster::follow::QUIET,
            );
            let answers: Vec<serde_json::Value> = reply
                .tasks
                .into_iter()
                .map(|t| {
                    let outcome = match (t.task_id, t.error) {
                        (Some(id), None) => Ok(id),
                        (_, Some(e)) => Err((api_code(&e), e.message)),
                        (None, None) => Err(("internal".into(), "no task and no reason".into())),
                    };
                    submitted(&t.input, outcome)
                })
                .collect();
            Ok(serde_json::Value::Array(answers).to_string())
        })
    }

    /// The task records of `ids` (those the cluster knows) as a JSON array.
    fn tasks_of(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<String> {
        self.call(py, async move |client| {
            let tasks = tasks_of(client, &ids).await?;
            serde_json::to_string(&tasks).map_err(failed)
        })
    }

    /// Waits until every task of `ids` has ended, or `timeout` seconds pass. True when they
    /// have. Events tell most; the bucket is read for the others, sparingly (a wait for
    /// thousands of tasks must not become a storm of reads competing with the work).
    #[pyo3(signature = (ids, timeout = None))]
    fn wait_final(&self, py: Python<'_>, ids: Vec<String>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = seconds(timeout)?.map(|limit| tokio::time::Instant::now() + limit);
        // Tasks this session did not submit (or submitted before it listened): read at once.
        self.follow_mut()
            .add(ids.iter().cloned(), tokio::time::Instant::now());
        self.call(py, async move |client| {
            let mut next_round = tokio::time::Instant::now();
            loop {
                if !ids.iter().any(|id| self.follow_mut().is_pending(id)) {
                    return Ok(true);
                }
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|at| now >= at) {
                    return Ok(false);
                }
                if now >= next_round {
                    next_round = now + ROUND;
                    let due = self.follow_mut().due(now);
                    let read = gitfleet_cluster::follow::read(client, due).await;
                    let mut follow = self.follow_mut();
                    for task in &read {
                        follow.read(task);
                    }
                    continue;
                }
                let wake = deadline.map_or(now + LOOK, |at| at.min(now + LOOK));
                tokio::time::sleep_until(wake).await;
            }
        })
    }

    /// Cancels the tasks `ids`; answers how many were cancelled.
    fn cancel(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        self.call(py, async move |client| {
            let reply = client.cancel(ids).await.map_err(failed)?;
            Ok(reply.cancelled.len())
        })
    }

    /// Nothing to stop: the cluster goes on. Present so that both sessions close alike.
    fn close(&self) {}
}

/// Hands the cluster's status events of the tasks waited for to `follow` (the others are told
/// apart by their subject, `<prefix>.status.<task id>`, without parsing them).
async fn feed(mut events: async_nats::Subscriber, follow: Arc<Mutex<Follow>>) {
    while let Some(message) = events.next().await {
        let id = message.subject.rsplit('.').next().unwrap_or_default();
        let lock = || {
            follow
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if !lock().is_pending(id) {
            continue;
        }
        if let Ok(update) = gitfleet_proto::from_json::<TaskUpdate>(&message.payload) {
            lock().event(&update, tokio::time::Instant::now());
        }
    }
}

/// Requests in flight at once when reading many tasks.
const CONCURRENT_GETS: usize = 32;

async fn tasks_of(client: &Client, ids: &[String]) -> PyResult<Vec<gitfleet_proto::CloneTask>> {
    use futures_util::StreamExt;
    let answers: Vec<_> = futures_util::stream::iter(ids)
        .map(|id| client.get(id))
        .buffered(CONCURRENT_GETS)
        .collect()
        .await;
    let mut tasks = Vec::with_capacity(ids.len());
    for answer in answers {
        match answer {
            Ok(task) => tasks.push(task),
            Err(gitfleet_cluster::ClientError::Api(e))
                if e.code == gitfleet_proto::ApiErrorCode::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(tasks)
}

/// The stable code of a refused input: the task error code (`invalid_url`, ...) when there is
/// one, the API's otherwise.
fn api_code(e: &gitfleet_proto::ApiError) -> String {
    match e.task_error {
        Some(code) => code.as_str().to_string(),
        None => serde_json::to_value(e.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "rejected".to_string()),
    }
}
