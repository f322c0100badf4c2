//! The dashboard: `GET /` on the listener of `serve` and `node`, a page of the fleet served by
//! gitfleet itself (no build step, no CDN; `dashboard/`), and the JSON it reads:
//!
//! - `GET /api/summary`: counts by status and freshness, each node's load (in a cluster).
//! - `GET /api/tasks?status=&freshness=&q=&cursor=&limit=`: one page of tasks, paged by
//!   cursor in the Registry (the page never copies the whole list).
//! - `GET /api/events`: Server-Sent Events, `state` (a task's record) and `progress`
//!   (a transfer's sample) as they happen, `resync` when this reader fell behind.
//! - `POST /api/tasks/{id}/{sync|resume|cancel}`: only with `Authorization: Bearer <token>`
//!   when the listener has a token (`GITFLEET_LISTEN_TOKEN`); without one it is read-only.
//!
//! Everything it shows came from someone else (URLs, error messages): the page puts it in the
//! document as text only, and its Content-Security-Policy allows no script but its own, so
//! that a hostile repository name cannot run code in an operator's browser. Actions take the
//! token in a header, never a cookie, so another site cannot make a browser send one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::future::BoxFuture;
use gitfleet_actors::{Census, FleetView, TaskQuery};
use gitfleet_git::Secret;
use gitfleet_proto::{Freshness, NodeInfo, StatusType, TaskUpdate, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only the page's own script and style, and requests to where it came from.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Readers of the live events at once at most: each holds a connection and a broadcast
/// receiver.
const MAX_EVENT_STREAMS: usize = 64;

/// A page of tasks when the request does not say.
const DEFAULT_PAGE: usize = 50;

/// Reads that scan the Registry's table (a page, the counts) at once at most: each is a pass
/// over every task inside the Registry, which meanwhile folds no state change.
const MAX_READS: usize = 4;

/// How long a read waits for its turn before it is answered 503.
const READ_WAIT: Duration = Duration::from_secs(5);

/// How long counts are reused. Shorter than the page's wait after an event before it reads
/// again (0.7 s, dashboard.js): counts the page reads then were taken after that event.
const CENSUS_TTL: Duration = Duration::from_millis(500);

/// The longest URL filter, in bytes.
const MAX_FILTER: usize = 256;

/// What the dashboard can do to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Sync it now (single flight: joins a running sync).
    Sync,
    Resume,
    Cancel,
}

/// Applies a [`Control`] to a task: `Ok(true)` when it did something, `Ok(false)` when there
/// was nothing to do (an `init` repository has nothing to sync, a task not quarantined nothing
/// to resume, a finished one nothing to cancel).
pub type Controls =
    Arc<dyn Fn(Control, String) -> BoxFuture<'static, anyhow::Result<bool>> + Send + Sync>;

/// The nodes of a cluster and their load.
pub type NodeLoads = Arc<dyn Fn() -> BoxFuture<'static, Vec<NodeInfo>> + Send + Sync>;

/// What the dashboard shows and acts on.
pub struct Dashboard {
    /// `serve` or `node`.
    pub mode: &'static str,
    /// The host (serve) or node id.
    pub name: String,
    /// The fleet, once its actors run (a node starts them after the listener).
    pub view: Arc<OnceLock<FleetView>>,
    pub stale_after: Duration,
    pub controls: Controls,
    /// In a cluster: every node's load.
    pub nodes: Option<NodeLoads>,
}

struct Shared {
    dashboard: Dashboard,
    /// The SHA-256 of the token: compared in constant time, whatever the length given.
    token: Option<[u8; 32]>,
    streams: Arc<Semaphore>,
    /// Reads that scan the Registry's table at once at most.
    reads: Semaphore,
    /// The latest counts, and when they were taken: every summary within [`CENSUS_TTL`]
    /// shares one scan.
    census: tokio::sync::Mutex<Option<(Instant, Census)>>,
    /// True once the listener stops: event streams end.
    closing: watch::Receiver<bool>,
}

/// The dashboard's routes; `closing` turns true when the listener stops.
pub fn router(
    dashboard: Dashboard,
    token: Option<Secret>,
    closing: watch::Receiver<bool>,
) -> Router {
    let shared = Arc::new(Shared {
        dashboard,
        token: token.map(|t| digest(t.expose().as_bytes())),
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        reads: Semaphore::new(MAX_READS),
        census: tokio::sync::Mutex::new(None),
        closing,
    });
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/summary", get(summary))
        .route("/api/tasks", get(tasks))
        .route("/api/events", get(events))
        .route("/api/tasks/{id}/{action}", post(act))
        .with_state(shared)
}

/// A static part of the page, with the headers that keep it to itself.
fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn reply(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl Shared {
    /// A turn among [`MAX_READS`], or the answer that there is none.
    async fn read_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Box<Response>> {
        match tokio::time::timeout(READ_WAIT, self.reads.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many readers at once; try again",
            ))),
        }
    }

    /// The counts, taken at most once per [`CENSUS_TTL`].
    async fn census(&self, view: &FleetView) -> Result<Census, Box<Response>> {
        let mut cached = self.census.lock().await;
        if let Some((at, census)) = cached.as_ref()
            && at.elapsed() < CENSUS_TTL
        {
            return Ok(census.clone());
        }
        let _turn = self.read_turn().await?;
        let census = view
            .census(self.dashboard.stale_after)
            .await
            .map_err(|e| Box::new(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())))?;
        *cached = Some((Instant::now(), census.clone()));
        Ok(census)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, &json!({ "error": message.into() }))
}

/// The answer while a node's actors are not running yet.
fn starting() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the fleet is starting; try again in a moment",
    )
}

#[derive(Serialize)]
struct Summary {
    mode: &'static str,
    name: String,
    version: &'static str,
    total: u64,
    by_status: BTreeMap<&'static str, u64>,
    by_freshness: BTreeMap<&'static str, u64>,
    oldest_success_at: Option<Timestamp>,
    /// Bytes on disk of the repositories, as last measured.
    disk_bytes: u64,
    stale_after_s: u64,
    /// Whether actions are possible (the listener has a token).
    actions: bool,
    /// In a cluster: every node's load.
    nodes: Option<Vec<NodeInfo>>,
}

async fn summary(State(shared): State<Arc<Shared>>) -> Response {
    let Some(view) = shared.dashboard.view.get() else {
        return starting();
    };
    let census = match shared.census(view).await {
        Ok(census) => census,
        Err(response) => return *response,
    };
    let nodes = match &shared.dashboard.nodes {
        Some(loads) => Some(loads().await),
        None => None,
    };
    let count = |n: Option<&u64>| n.copied().unwrap_or(0);
    reply(
        StatusCode::OK,
        &Summary {
            mode: shared.dashboard.mode,
            name: shared.dashboard.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            total: census.by_status.values().sum(),
            by_status: StatusType::ALL
                .iter()
                .map(|s| (s.as_str(), count(census.by_status.get(s))))
                .collect(),
            by_freshness: Freshness::ALL
                .iter()
                .map(|f| (f.as_str(), count(census.by_freshness.get(f))))
                .collect(),
            oldest_success_at: census.oldest_success,
            disk_bytes: census.disk_bytes,
            stale_after_s: shared.dashboard.stale_after.as_secs(),
            actions: shared.token.is_some(),
            nodes,
        },
    )
}

/// The query string of `/api/tasks`, all optional.
#[derive(Debug, Deserialize)]
struct TasksParams {
    status: Option<String>,
    freshness: Option<String>,
    q: Option<String>,
    cursor: Option<u64>,
    limit: Option<usize>,
}

/// The value of `all` whose name is `given` (none when nothing or nothing but an empty string
/// is given); an unknown name is an error naming it.
fn named<T: Copy, const N: usize>(
    given: Option<String>,
    all: [T; N],
    name: fn(T) -> &'static str,
    what: &str,
) -> Result<Option<T>, String> {
    match given.filter(|g| !g.is_empty()) {
        None => Ok(None),
        Some(given) => all
            .into_iter()
            .find(|v| name(*v) == given)
            .map(Some)
            .ok_or_else(|| format!("unknown {what} {given:?}")),
    }
}

impl TasksParams {
    fn query(self) -> Result<TaskQuery, String> {
        let status = named(self.status, StatusType::ALL, StatusType::as_str, "status")?;
        let freshness = named(
            self.freshness,
            Freshness::ALL,
            Freshness::as_str,
            "freshness",
        )?;
        if self.q.as_ref().is_some_and(|q| q.len() > MAX_FILTER) {
            return Err(format!("the URL filter is longer than {MAX_FILTER} bytes"));
        }
        Ok(TaskQuery {
            status,
            freshness,
            text: self.q,
            after: self.cursor,
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
        })
    }
}

async fn tasks(
    State(shared): State<Arc<Shared>>,
    params: Result<Query<TasksParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match params.map_err(|e| e.body_text()).map(|p| p.0.query()) {
        Ok(Ok(query)) => query,
        Ok(Err(why)) | Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(view) = shared.dashboard.view.get() else {
        return starting();
    };
    let _turn = match shared.read_turn().await {
        Ok(turn) => turn,
        Err(response) => return *response,
    };
    match view.page(query, shared.dashboard.stale_after).await {
        Ok(page) => reply(StatusCode::OK, &page),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn events(State(shared): State<Arc<Shared>>) -> Response {
    let Some(view) = shared.dashboard.view.get() else {
        return starting();
    };
    let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} readers of the events already"),
        );
    };
    let Some(updates) = view.subscribe() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the fleet has stopped");
    };
    let stream = EventStream {
        updates,
        closing: shared.closing.clone(),
        stale_after: shared.dashboard.stale_after,
        _permit: permit,
    };
    Sse::new(futures_util::stream::unfold(stream, EventStream::next))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One reader's events, holding its place among [`MAX_EVENT_STREAMS`] until dropped.
struct EventStream {
    updates: broadcast::Receiver<TaskUpdate>,
    closing: watch::Receiver<bool>,
    stale_after: Duration,
    _permit: OwnedSemaphorePermit,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, EventStream)> {
        let update = tokio::select! {
            update = self.updates.recv() => update,
            _ = self.closing.wait_for(|closing| *closing) => return None,
        };
        let event = match update {
            Ok(TaskUpdate::State { mut task }) => {
                let freshness = task.freshness_at(Timestamp::now(), self.stale_after, true);
                task.freshness = Some(freshness);
                Event::default().event("state").data(json_text(&*task))
            }
            Ok(TaskUpdate::Progress(progress)) => Event::default()
                .event("progress")
                .data(json_text(&progress)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Event::default().event("resync").data(missed.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), self))
    }
}

fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Whether the request carries the listener's token (compared by digest, so that neither
/// its bytes nor its length show in the time an answer takes).
fn authorized(token: &[u8; 32], headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(digest(given.as_bytes()).ct_eq(token))
}

async fn act(
    State(shared): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = &shared.token else {
        return error(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only: start the listener with GITFLEET_LISTEN_TOKEN",
        );
    };
    if !authorized(token, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let Some(view) = shared.dashboard.view.get() else {
        return starting();
    };
    let task = match view.get(&id).await {
        Ok(Some(task)) => task,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such task"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let control = match action.as_str() {
        "sync" => Control::Sync,
        "resume" => Control::Resume,
        "cancel" => Control::Cancel,
        _ => return error(StatusCode::NOT_FOUND, "no such action"),
    };
    let done = (shared.dashboard.controls)(control, task.id.clone()).await;
    let result: Value = match done {
        Ok(true) => json!({ "task": task.id, "action": action, "status": "accepted" }),
        Ok(false) => json!({ "task": task.id, "action": action, "status": "nothing to do" }),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    reply(StatusCode::ACCEPTED, &result)
}
