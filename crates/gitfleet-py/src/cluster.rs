//! `ClusterSession`: a gitfleet cluster driven from Python through its request API on NATS (the
//! same client as `gitfleet --nats`). The nodes do the work with their own credentials; nothing
//! secret is sent.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use gitfleet_cluster::follow::SharedFollow;
use gitfleet_cluster::{Client, NatsAuth};
use gitfleet_proto::SubmitRequest;
use pyo3::prelude::*;

use crate::{failed, log_request, operation_of, seconds, submitted};

#[pyclass(frozen, module = "gitfleet._native")]
pub(crate) struct ClusterSession {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// The tasks waited for, told by the cluster's status events and by sparse reads of the
    /// bucket (`SharedFollow`: at most one round of reads a second, however many waits).
    follow: Arc<SharedFollow>,
    /// The task that feeds `follow` the status events: stopped by `close`.
    feeding: tokio::task::AbortHandle,
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
        let (client, events) = py
            .detach(|| {
                runtime.block_on(async {
                    let client = Client::connect_with(&url, &prefix, &auth).await?;
                    let events = client.watch().await?;
                    Ok::<_, gitfleet_cluster::ClientError>((client, events))
                })
            })
            .map_err(failed)?;
        let follow = Arc::new(SharedFollow::default());
        let feeding = runtime
            .spawn(feed(events, Arc::clone(&follow)))
            .abort_handle();
        Ok(ClusterSession {
            runtime,
            client,
            follow,
            feeding,
        })
    }

    /// As `Session.submit`: one answer per input, in order.
    fn submit(&self, py: Python<'_>, inputs: Vec<String>, operation: &str) -> PyResult<String> {
        let operation = operation_of(operation)?;
        self.call(py, async move |client| {
            let request = SubmitRequest {
                repositories: inputs,
                operation,
                worktree: false,
                idempotency_key: None,
            };
            let reply = self
                .follow
                .submit(client.submit(&request))
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

    /// As `Session.log`, read by the node that holds the repository.
    #[pyo3(signature = (id, since = None, max_count = 20))]
    fn log(
        &self,
        py: Python<'_>,
        id: String,
        since: Option<String>,
        max_count: usize,
    ) -> PyResult<String> {
        let request = log_request(id, since, max_count)?;
        self.call(py, async move |client| {
            let reply = client.log(&request).await.map_err(failed)?;
            serde_json::to_string(&reply.commits).map_err(failed)
        })
    }

    /// Waits until every task of `ids` has ended, or `timeout` seconds pass. True when they
    /// have. Events tell most; the bucket is read for the others, sparingly (a wait for
    /// thousands of tasks must not become a storm of reads competing with the work).
    #[pyo3(signature = (ids, timeout = None))]
    fn wait_final(&self, py: Python<'_>, ids: Vec<String>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = seconds(timeout)?.map(|limit| tokio::time::Instant::now() + limit);
        self.call(py, async move |client| {
            self.follow
                .wait(client, &ids, deadline)
                .await
                .map_err(failed)
        })
    }

    /// Cancels the tasks `ids`; answers how many were cancelled.
    fn cancel(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        self.call(py, async move |client| {
            let reply = client.cancel(ids).await.map_err(failed)?;
            Ok(reply.cancelled.len())
        })
    }

    /// Stops listening to the cluster's events; the cluster goes on.
    fn close(&self) {
        self.feeding.abort();
    }
}

/// Hands the cluster's status events to `follow` (each named by its subject,
/// `<prefix>.status.<task id>`, so that most are passed by unparsed).
async fn feed(mut events: async_nats::Subscriber, follow: Arc<SharedFollow>) {
    while let Some(message) = events.next().await {
        let id = message.subject.rsplit('.').next().unwrap_or_default();
        follow.event(id, &message.payload);
    }
}

/// The records of `ids` the cluster knows.
async fn tasks_of(client: &Client, ids: &[String]) -> PyResult<Vec<gitfleet_proto::CloneTask>> {
    let mut tasks = Vec::with_capacity(ids.len());
    for (_, answer) in client.get_many(ids.to_vec()).await {
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
