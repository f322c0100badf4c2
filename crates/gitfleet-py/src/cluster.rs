//! `ClusterSession`: a gitfleet cluster driven from Python through its request API on NATS (the
//! same client as `gitfleet --nats`). The nodes do the work with their own credentials; nothing
//! secret is sent.

use std::path::PathBuf;
use std::time::Duration;

use gitfleet_cluster::{Client, NatsAuth};
use gitfleet_proto::SubmitRequest;
use pyo3::prelude::*;

use crate::{failed, operation_of, seconds, submitted};

/// How often a wait looks at its tasks again.
const POLL: Duration = Duration::from_millis(100);

#[pyclass(frozen, module = "gitfleet._native")]
pub(crate) struct ClusterSession {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl ClusterSession {
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
        let client = py
            .detach(|| runtime.block_on(Client::connect_with(&url, &prefix, &auth)))
            .map_err(failed)?;
        Ok(ClusterSession { runtime, client })
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
    /// have.
    #[pyo3(signature = (ids, timeout = None))]
    fn wait_final(&self, py: Python<'_>, ids: Vec<String>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = seconds(timeout)?.map(|limit| tokio::time::Instant::now() + limit);
        self.call(py, async move |client| {
            loop {
                let tasks = tasks_of(client, &ids).await?;
                if tasks.iter().all(|t| t.status.status_type.is_final()) {
                    return Ok(true);
                }
                if deadline.is_some_and(|at| tokio::time::Instant::now() + POLL > at) {
                    return Ok(false);
                }
                tokio::time::sleep(POLL).await;
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
