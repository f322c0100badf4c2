//! The request/reply API, served by every node in one queue group (any node answers), as a
//! NATS service (`$SRV.*`: discovery and per-operation stats).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use gitfleet_git::{Policy, Target, scrub_userinfo};
use gitfleet_proto::{
    ApiError, ApiErrorCode, ApiReply, ArchiveRequest, CancelReply, CancelRequest, ChangedReply,
    CloneStatus, CloneTask, Encoding, GetRequest, JobMessage, ListReply, ListRequest, LogReply,
    LogRequest, NodeInfo, NodesReply, Operation, RemovalNotice, RemoveRequest, ResumeRequest,
    ScheduleRequest, StatusType, SubmitReply, SubmitRequest, Submitted, SyncRequest, TaskError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::infra::{ClusterError, Nats};
use crate::kv_store::KvStore;
use crate::placement;
use crate::subjects::API_OPERATIONS;

/// Requests larger than this get `too_large` (below NATS' default 1 MiB payload limit, so that
/// the error reaches the client instead of the connection failing).
pub const MAX_REQUEST_BYTES: usize = 512 << 10;
/// Repositories per submit or sync request.
pub const MAX_REPOSITORIES: usize = 2_000;
/// Tasks per `list` page at most; pages also stop before their reply would pass this many bytes.
pub const MAX_PAGE: usize = 200;
/// The largest reply the API builds (half NATS' default payload limit).
pub(crate) const MAX_REPLY_BYTES: usize = 512 << 10;
/// The longest idempotency key, in bytes (it is stored in every record of the request).
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
pub const MSGPACK: &str = "application/msgpack";
const QUEUE_GROUP: &str = "gitfleet-api";
/// Tasks of one request enqueued at once: each is a few round trips (create, publish, their
/// acknowledgements), which one after the other made a 200-repository submit take most of a
/// second on a busy node while its workers waited for jobs.
const CONCURRENT_ENQUEUES: usize = 64;

#[derive(Debug, Clone)]
pub struct ApiContext {
    pub nats: Nats,
    pub store: KvStore,
    pub nodes: kv::Store,
    /// URLs come from other people: strict by default.
    pub policy: Policy,
}

pub fn encoding_of(headers: Option<&HeaderMap>) -> Encoding {
    let is_msgpack = headers
        .and_then(|h| h.get("Content-Type"))
        .is_some_and(|v| v.as_str().eq_ignore_ascii_case(MSGPACK));
    if is_msgpack {
        Encoding::MsgPack
    } else {
        Encoding::Json
    }
}

/// The API's name as a NATS service (`$SRV.PING.gitfleet`, `nats micro ls`).
pub const SERVICE_NAME: &str = "gitfleet";
/// Requests for operations no endpoint has are answered by a subscription of this group.
const UNKNOWN_QUEUE_GROUP: &str = "gitfleet-api-unknown";

/// Serves the API until the service stops: one NATS service endpoint per operation (so that
/// `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` list this node, its version and each operation's
/// requests, latency and error replies), in one queue group across the nodes, and a
/// subscription that answers requests for unknown operations.
pub async fn serve(ctx: ApiContext, node_id: &str) -> Result<(), ClusterError> {
    use async_nats::service::ServiceExt;
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let service = ctx
        .nats
        .client
        .service_builder()
        .description("gitfleet's request API: mirror, clone and keep fresh git repositories")
        .metadata(HashMap::from([
            ("node".to_string(), node_id.to_string()),
            ("prefix".to_string(), ctx.nats.subjects.prefix().to_string()),
        ]))
        .queue_group(QUEUE_GROUP)
        .stats_handler({
            let errors = errors.clone();
            move |endpoint, _| {
                let n = errors
                    .lock()
                    .map(|e| e.get(&endpoint).copied().unwrap_or(0))
                    .unwrap_or(0);
                serde_json::json!({ "error_replies": n })
            }
        })
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ClusterError::request("starting the API service", e))?;
    let mut endpoints = Vec::new();
    for operation in API_OPERATIONS {
        let endpoint = service
            .endpoint_builder()
            .name(operation)
            .add(ctx.nats.subjects.api(operation))
            .await
            .map_err(|e| ClusterError::request("adding an API endpoint", e))?;
        endpoints.push(endpoint.map(move |request| (operation, request)).boxed());
    }
    let mut requests = futures_util::stream::select_all(endpoints);
    let mut unknown = ctx
        .nats
        .client
        .queue_subscribe(ctx.nats.subjects.api_all(), UNKNOWN_QUEUE_GROUP.to_string())
        .await
        .map_err(|e| ClusterError::request("API subscription", e))?;
    loop {
        tokio::select! {
            Some((operation, request)) = requests.next() => {
                let (ctx, errors) = (ctx.clone(), errors.clone());
                tokio::spawn(async move {
                    let message = &request.message;
                    let encoding = encoding_of(message.headers.as_ref());
                    let answer = handle(&ctx, operation, &message.payload, encoding).await;
                    if answer.error
                        && let Ok(mut errors) = errors.lock()
                    {
                        *errors.entry(operation.to_string()).or_default() += 1;
                    }
                    let mut headers = HeaderMap::new();
                    if encoding == Encoding::MsgPack {
                        headers.insert("Content-Type", MSGPACK);
                    }
                    if let Err(e) = request
                        .respond_with_headers(Ok(answer.body.into()), headers)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot send an API reply");
                    }
                });
            }
            Some(message) = unknown.next() => {
                let operation = ctx
                    .nats
                    .subjects
                    .api_operation(&message.subject)
                    .unwrap_or("")
                    .to_string();
                // A known operation is its endpoint's.
                if API_OPERATIONS.contains(&operation.as_str()) {
                    continue;
                }
                let Some(reply_to) = message.reply.clone() else { continue };
                let encoding = encoding_of(message.headers.as_ref());
                let answer = handle(&ctx, &operation, &message.payload, encoding).await;
                if let Err(e) = ctx.nats.client.publish(reply_to, answer.body.into()).await {
                    tracing::warn!(error = %e, "cannot send an API reply");
                }
            }
            else => break,
        }
    }
    Ok(())
}

/// The answer to one request: its body, and whether it is an error reply (counted per
/// endpoint in the service's stats).
#[derive(Debug)]
pub struct Answer {
    pub body: Vec<u8>,
    pub error: bool,
}

fn reply<T: Serialize>(result: Result<T, ApiError>, encoding: Encoding) -> Answer {
    let error = result.is_err();
    let reply = match result {
        Ok(v) => ApiReply::Ok(v),
        Err(e) => ApiReply::Error(e),
    };
    match gitfleet_proto::encode(&reply, encoding) {
        Ok(body) => Answer { body, error },
        Err(e) => Answer {
            body: gitfleet_proto::to_json(&ApiReply::<()>::Error(ApiError::new(
                ApiErrorCode::Unavailable,
                e.to_string(),
            ))),
            error: true,
        },
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8], encoding: Encoding) -> Result<T, ApiError> {
    gitfleet_proto::decode(payload, encoding)
        .map_err(|e| ApiError::new(ApiErrorCode::BadRequest, e.to_string()))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ApiErrorCode::Unavailable, e.to_string())
}

/// Answers one request; never panics on input.
pub async fn handle(
    ctx: &ApiContext,
    operation: &str,
    payload: &[u8],
    encoding: Encoding,
) -> Answer {
    if payload.len() > MAX_REQUEST_BYTES {
        let e = ApiError::new(
            ApiErrorCode::TooLarge,
            format!(
                "request of {} bytes; the limit is {MAX_REQUEST_BYTES}",
                payload.len()
            ),
        );
        return reply::<()>(Err(e), encoding);
    }
    macro_rules! route {
        ($handler:ident) => {
            match decode(payload, encoding) {
                Ok(request) => reply($handler(ctx, request).await, encoding),
                Err(e) => reply::<()>(Err(e), encoding),
            }
        };
    }
    match operation {
        "submit" => route!(submit),
        "sync" => route!(sync),
        "get" => route!(get),
        "log" => route!(log),
        "list" => route!(list),
        "cancel" => route!(cancel),
        "resume" => route!(resume),
        "archive" => route!(archive),
        "unarchive" => route!(unarchive),
        "remove" => route!(remove),
        "schedule" => route!(schedule),
        "nodes" => reply(nodes(ctx).await, encoding),
        other => reply::<()>(
            Err(ApiError::new(
                ApiErrorCode::UnknownSubject,
                format!("unknown API operation '{}'", other.escape_debug()),
            )),
            encoding,
        ),
    }
}

/// Node ids with a live heartbeat, sorted.
pub async fn live_nodes(nodes: &kv::Store) -> Result<Vec<String>, ApiError> {
    let keys = nodes.keys().await.map_err(unavailable)?;
    let mut ids: Vec<String> = keys.try_collect().await.map_err(unavailable)?;
    ids.sort();
    Ok(ids)
}

/// The repository an input names, or why it is refused.
fn target(
    input: &str,
    operation: Operation,
    worktree: bool,
    policy: &Policy,
) -> Result<Target, ApiError> {
    let target = if operation == Operation::Init {
        Target::for_init(input, worktree)
    } else {
        Target::for_url(input, operation, policy)
    };
    target.map_err(rejected)
}

/// An input refused for the reason `error` gives.
fn rejected(error: TaskError) -> ApiError {
    ApiError {
        code: ApiErrorCode::Rejected,
        message: error.message,
        task_error: Some(error.code),
    }
}

pub(crate) async fn enqueue(
    ctx: &ApiContext,
    input: &str,
    target: Target,
    operation: Operation,
    nodes: &[String],
    idempotency_key: Option<&str>,
    known: Option<(CloneTask, u64)>,
) -> Submitted {
    let mut out = Submitted {
        input: scrub_userinfo(input),
        task_id: Some(target.id().to_string()),
        duplicate: false,
        generation: None,
        error: None,
    };
    let Some(owner) = placement::owner(target.id(), nodes) else {
        out.error = Some(ApiError::new(
            ApiErrorCode::NoNodes,
            "no live gitfleet node",
        ));
        return out;
    };
    let mut revision = None;
    let mut generation = 0;
    let mut previous_node = None;
    // The first try starts from what the caller read (`None`: a new task, one create and no
    // read); only a conflict costs a read.
    let mut first = Some(known);
    for _ in 0..8 {
        let current = if let Some(known) = first.take() {
            known
        } else {
            match ctx.store.get(target.id()).await {
                Ok(c) => c,
                Err(e) => {
                    out.error = Some(unavailable(e));
                    return out;
                }
            }
        };
        if let Some((stored, _)) = &current
            && let Err(e) = target
                .check_stored(stored)
                .and_then(|()| gitfleet_actors::refuse_archived(stored))
        {
            out.error = Some(rejected(e));
            return out;
        }
        let (mut task, rev) = match current {
            Some((task, _))
                if !task.status.status_type.is_final()
                    || (idempotency_key.is_some()
                        && task.idempotency_key.as_deref() == idempotency_key) =>
            {
                out.duplicate = true;
                out.generation = Some(task.generation);
                return out;
            }
            Some((task, rev)) => (task, rev),
            None => {
                let path = target.relative().to_string_lossy().into_owned();
                (
                    CloneTask::new(
                        target.id().to_string(),
                        target.display(),
                        operation,
                        path,
                        jiff::Timestamp::now(),
                    ),
                    0,
                )
            }
        };
        task.operation = operation;
        task.status = CloneStatus::queued();
        task.error_code = None;
        task.phase = None;
        task.attempts = 0;
        // Placement moved it: the node that held it deletes its copy once this job completes.
        previous_node = task.node.clone().filter(|held| held != owner && rev != 0);
        task.node = Some(owner.clone());
        task.started_at = None;
        task.finished_at = None;
        task.updated_at = jiff::Timestamp::now();
        task.idempotency_key = idempotency_key.map(str::to_string);
        // A new request is a new generation: late writes of the one before never replace it.
        task.generation += 1;
        match ctx.store.write(&task, rev).await {
            Ok(Some(written)) => {
                revision = Some(written);
                generation = task.generation;
                out.generation = Some(generation);
                publish_state(&ctx.nats, &task).await;
                break;
            }
            // Someone else queued it at the same moment: one task.
            Ok(None) => continue,
            Err(e) => {
                out.error = Some(unavailable(e));
                return out;
            }
        }
    }
    let Some(revision) = revision else {
        out.duplicate = true;
        return out;
    };
    let job = JobMessage {
        task_id: target.id().to_string(),
        url: target.display(),
        operation,
        path: target.relative().to_string_lossy().into_owned(),
        generation,
        previous_node,
    };
    let mut headers = HeaderMap::new();
    // One enqueue, one job, even if this publish is retried: named by the record's new revision,
    // which no other write of the bucket ever has (a task removed and requested again within
    // the stream's duplicate window is a new job).
    headers.insert(
        "Nats-Msg-Id",
        format!("{}:{revision}", target.id()).as_str(),
    );
    let subject = ctx.nats.subjects.jobs(owner);
    let published = ctx
        .nats
        .jetstream
        .publish_with_headers(subject, headers, gitfleet_proto::to_json(&job).into())
        .await;
    let acked = match published {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = acked {
        out.error = Some(unavailable(format!("cannot dispatch the job: {e}")));
    }
    out
}

async fn submit(ctx: &ApiContext, request: SubmitRequest) -> Result<SubmitReply, ApiError> {
    if request.repositories.len() > MAX_REPOSITORIES {
        return Err(ApiError::new(
            ApiErrorCode::TooLarge,
            format!("more than {MAX_REPOSITORIES} repositories"),
        ));
    }
    if request.operation == Operation::Sync {
        return Err(ApiError::new(
            ApiErrorCode::BadRequest,
            "use the sync subject to sync",
        ));
    }
    if request
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(ApiError::new(
            ApiErrorCode::BadRequest,
            format!("idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} bytes"),
        ));
    }
    let nodes = live_nodes(&ctx.nodes).await?;
    let nodes = &nodes;
    let request = &request;
    // In the order of the request; the same repository twice is one task either way (the
    // second create fails, reads, and finds the first).
    let tasks = futures_util::stream::iter(request.repositories.iter().cloned())
        .map(|input| async move {
            match target(&input, request.operation, request.worktree, &ctx.policy) {
                Ok(t) => {
                    enqueue(
                        ctx,
                        &input,
                        t,
                        request.operation,
                        nodes,
                        request.idempotency_key.as_deref(),
                        None,
                    )
                    .await
                }
                Err(e) => not_enqueued(input, e),
            }
        })
        .buffered(CONCURRENT_ENQUEUES)
        .collect::<Vec<_>>()
        .await;
    Ok(SubmitReply { tasks, next: None })
}

/// The stored task `input` (an id or what a request would name) refers to.
async fn find(ctx: &ApiContext, input: &str) -> Result<Option<(CloneTask, u64)>, ApiError> {
    // By the node's own policy: a local path is only looked at where local paths are allowed.
    for id in Target::lookup_ids(input, &ctx.policy) {
        if let Some(found) = ctx.store.get(&id).await.map_err(unavailable)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Syncs the tasks the request names (ids or URLs) on the nodes that own them; with none, a
/// page of every task ([`sync_page`]).
pub async fn sync(ctx: &ApiContext, request: SyncRequest) -> Result<SubmitReply, ApiError> {
    if request.repositories.len() > MAX_REPOSITORIES {
        return Err(ApiError::new(
            ApiErrorCode::TooLarge,
            format!("more than {MAX_REPOSITORIES} repositories"),
        ));
    }
    let nodes = live_nodes(&ctx.nodes).await?;
    if request.repositories.is_empty() {
        if nodes.is_empty() {
            return Err(ApiError::new(
                ApiErrorCode::NoNodes,
                "no live gitfleet node",
            ));
        }
        return sync_page(ctx, request.after.as_deref(), &nodes).await;
    }
    let found: Vec<_> = futures_util::stream::iter(request.repositories.iter().cloned())
        .map(|input| async move { find(ctx, &input).await })
        .buffered(CONCURRENT_ENQUEUES)
        .collect()
        .await;
    let mut known = Vec::new();
    for (input, found) in request.repositories.iter().zip(found) {
        known.push((input.clone(), found?));
    }
    let tasks = enqueue_syncs(ctx, known, &nodes).await;
    Ok(SubmitReply { tasks, next: None })
}

/// Records a sync of everything requests per page: its reply (about 70 bytes a task) stays far
/// below the payload limit.
pub const SYNC_PAGE: usize = 1_000;

/// One page of a sync of everything: the records after the cursor, in the order they were last
/// written, up to the bucket's last revision when the first page was asked for (the cursor
/// carries it). A record written since then was written by a sync, a request or a change made
/// meanwhile, not one this sync has to ask for; and the records this sync itself re-queues
/// are not met again. Archived repositories are not "everything": skipped, not refused.
async fn sync_page(
    ctx: &ApiContext,
    after: Option<&str>,
    nodes: &[String],
) -> Result<SubmitReply, ApiError> {
    let cursor = match Cursor::parse(after)? {
        // A sync's cursor carries where it ends (a list's does not: without an end, a sync
        // would meet again the records it queued itself).
        Some(Cursor { until: None, .. }) => {
            return Err(Cursor::refused(after.unwrap_or_default()));
        }
        Some(cursor) => cursor,
        None => Cursor {
            after: 0,
            until: Some(ctx.store.last_revision().await.map_err(unavailable)?),
        },
    };
    let until = cursor.until.unwrap_or(u64::MAX);
    let page = ctx
        .store
        .scan(cursor.after, SYNC_PAGE)
        .await
        .map_err(unavailable)?;
    let known: Vec<_> = page
        .records
        .into_iter()
        .filter(|(task, revision)| *revision <= until && !task.archived)
        .map(|(task, revision)| (task.id.clone(), Some((task, revision))))
        .collect();
    let next = (page.more && page.last < until).then(|| {
        Cursor {
            after: page.last,
            until: cursor.until,
        }
        .to_string()
    });
    let tasks = enqueue_syncs(ctx, known, nodes).await;
    Ok(SubmitReply { tasks, next })
}

/// Enqueues the syncs of `known` (each input with the record it names), in their order.
async fn enqueue_syncs(
    ctx: &ApiContext,
    known: Vec<(String, Option<(CloneTask, u64)>)>,
    nodes: &[String],
) -> Vec<Submitted> {
    futures_util::stream::iter(known)
        .map(|(input, found)| async move {
            match sync_target(&input, found) {
                Ok((target, operation, known)) => {
                    enqueue(ctx, &input, target, operation, nodes, None, Some(known)).await
                }
                Err(e) => not_enqueued(input, e),
            }
        })
        .buffered(CONCURRENT_ENQUEUES)
        .collect::<Vec<_>>()
        .await
}

/// Where a paged request goes on: after revision `after` of the task bucket and, for a sync of
/// everything, up to revision `until`. Written `after` or `after-until`; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    after: u64,
    until: Option<u64>,
}

impl Cursor {
    fn parse(text: Option<&str>) -> Result<Option<Cursor>, ApiError> {
        let Some(text) = text else { return Ok(None) };
        let bad = || Cursor::refused(text);
        let (after, until) = match text.split_once('-') {
            Some((after, until)) => (after, Some(until.parse().map_err(|_| bad())?)),
            None => (text, None),
        };
        Ok(Some(Cursor {
            after: after.parse().map_err(|_| bad())?,
            until,
        }))
    }
}

impl Cursor {
    /// A cursor this API did not give, named (its start only: it is someone else's text).
    fn refused(text: &str) -> ApiError {
        let start: String = text.chars().take(64).collect();
        ApiError::new(
            ApiErrorCode::BadRequest,
            format!(
                "after '{}' is not a cursor this API gave: pass the previous page's next",
                start.escape_debug()
            ),
        )
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.until {
            Some(until) => write!(f, "{}-{until}", self.after),
            None => write!(f, "{}", self.after),
        }
    }
}

/// Enqueues a sync, as a `sync` request would, of every tracked task that one of `urls` names
/// (a webhook: it never adds a repository). The ids whose sync is queued or already running.
pub async fn sync_tracked(ctx: &ApiContext, urls: &[String]) -> Vec<String> {
    let live = live_nodes(&ctx.nodes).await.unwrap_or_default();
    let ids: std::collections::BTreeSet<String> = urls
        .iter()
        .flat_map(|url| Target::lookup_ids(url, &ctx.policy))
        .collect();
    let mut syncing = Vec::new();
    for id in ids {
        let Ok(Some(found)) = ctx.store.get(&id).await else {
            continue;
        };
        let url = found.0.url.clone();
        let Ok((target, operation, found)) = sync_target(&url, Some(found)) else {
            continue;
        };
        let submitted = enqueue(ctx, &url, target, operation, &live, None, Some(found)).await;
        match submitted.error {
            None => syncing.push(id),
            Some(e) => {
                tracing::warn!(task = %id, error = %e.message, "cannot enqueue a webhook's sync")
            }
        }
    }
    syncing
}

/// What a sync of `input` enqueues, from its stored record `found`.
fn sync_target(
    input: &str,
    found: Option<(CloneTask, u64)>,
) -> Result<(Target, Operation, (CloneTask, u64)), ApiError> {
    let Some((task, revision)) = found else {
        return Err(ApiError::new(
            ApiErrorCode::NotFound,
            format!("{} is not a known repository", scrub_userinfo(input)),
        ));
    };
    gitfleet_actors::refuse_archived(&task).map_err(rejected)?;
    let operation = if task.status.status_type == StatusType::Completed {
        Operation::Sync
    } else {
        task.operation
    };
    let target = Target::of_task(&task).map_err(rejected)?;
    Ok((target, operation, (task, revision)))
}

/// The answer for an input that names no task to enqueue.
fn not_enqueued(input: String, error: ApiError) -> Submitted {
    Submitted {
        input: scrub_userinfo(&input),
        task_id: None,
        duplicate: false,
        generation: None,
        error: Some(error),
    }
}

async fn get(ctx: &ApiContext, request: GetRequest) -> Result<CloneTask, ApiError> {
    find(ctx, &request.task)
        .await?
        .map(|(t, _)| t)
        .ok_or_else(|| {
            ApiError::new(
                ApiErrorCode::NotFound,
                format!("no task {}", scrub_userinfo(&request.task)),
            )
        })
}

/// Records a `list` page with a status filter examines at most: a rare status costs pages
/// with few tasks, never a page that reads the whole bucket.
const LIST_SCAN: usize = 2_000;

/// Commits a `log` request lists at most.
pub const MAX_LOG: usize = 1_000;
/// Commits a `log` request lists when it does not say.
const DEFAULT_LOG: usize = 20;

/// The commits of a repository, read by the node that holds it: the request goes on to that
/// node's own subject, naming the task by id (the node finds the repository from its record).
async fn log(ctx: &ApiContext, request: LogRequest) -> Result<LogReply, ApiError> {
    let shown = scrub_userinfo(&request.task);
    let Some((task, _)) = find(ctx, &request.task).await? else {
        return Err(ApiError::new(
            ApiErrorCode::NotFound,
            format!("no task {shown}"),
        ));
    };
    let holder = task.node.clone().ok_or_else(|| {
        ApiError::new(
            ApiErrorCode::NotFound,
            format!("{} is not cloned (yet)", task.url),
        )
    })?;
    // A record names its node; a subject is built only from a valid node id.
    crate::subjects::validate_node_id(&holder).map_err(unavailable)?;
    let forwarded = LogRequest {
        task: task.id.clone(),
        since: request.since,
        max_count: Some(request.max_count.unwrap_or(DEFAULT_LOG).min(MAX_LOG)),
    };
    let answer = ctx
        .nats
        .client
        .request(
            ctx.nats.subjects.node_log(&holder),
            gitfleet_proto::to_json(&forwarded).into(),
        )
        .await
        .map_err(|e| {
            unavailable(format!(
                "node {holder}, which holds {}, did not answer: {e}",
                task.url
            ))
        })?;
    match gitfleet_proto::from_json::<ApiReply<LogReply>>(&answer.payload) {
        Ok(ApiReply::Ok(reply)) => Ok(reply),
        Ok(ApiReply::Error(e)) => Err(e),
        Err(e) => Err(unavailable(format!("node {holder} answered: {e}"))),
    }
}

async fn list(ctx: &ApiContext, request: ListRequest) -> Result<ListReply, ApiError> {
    let limit = request.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = Cursor::parse(request.after.as_deref())?.map_or(0, |c| c.after);
    // Without a filter every record is listed: one more than a page tells whether it ends.
    let examine = match request.status {
        Some(_) => LIST_SCAN,
        None => limit + 1,
    };
    // The matching records only, one more than a page at most (it tells whether more follow).
    let page = ctx
        .store
        .scan_matching(after, examine, limit + 1, |task| {
            request.status.is_none_or(|s| s == task.status.status_type)
        })
        .await
        .map_err(unavailable)?;
    let mut bytes = 0usize;
    let mut tasks = Vec::new();
    // The revision of the last record this page has dealt with.
    let mut last = after;
    let mut full = false;
    for (task, revision) in page.records {
        // Listed without their history (`get` has it): a page of records stays a page.
        let mut task = task;
        task.history = Vec::new();
        let mut size = gitfleet_proto::to_json(&task).len();
        if size > MAX_REPLY_BYTES / 2 {
            // A record this large (written before records were bounded, or by someone else)
            // must not end the listing: it is listed without its last result and with its
            // error cut (`get` has it whole).
            task.last_sync = None;
            if let Some(error) = &mut task.status.error {
                *error = error.chars().take(1024).collect();
            }
            size = gitfleet_proto::to_json(&task).len();
        }
        if size > MAX_REPLY_BYTES / 2 {
            // Still too large to list: passed by, so that the listing goes on.
            tracing::warn!(task = %task.id, size, "a task record too large to list");
            last = revision;
            continue;
        }
        if tasks.len() == limit || bytes + size > MAX_REPLY_BYTES {
            full = true;
            break;
        }
        bytes += size;
        tasks.push(task);
        last = revision;
    }
    if !full {
        // Every message examined was dealt with (deletions and unreadable ones included).
        last = last.max(page.last);
    }
    let next = (full || page.more).then(|| {
        Cursor {
            after: last,
            until: None,
        }
        .to_string()
    });
    Ok(ListReply { tasks, next })
}

/// Cancels the tasks the request names (ids or URLs) wherever they run.
pub async fn cancel(ctx: &ApiContext, request: CancelRequest) -> Result<CancelReply, ApiError> {
    let mut cancelled = Vec::new();
    for input in &request.tasks {
        let Some((mut task, revision)) = find(ctx, input).await? else {
            continue;
        };
        if task.status.status_type.is_final() {
            continue;
        }
        if task.status.status_type == StatusType::Queued {
            // Not started: the owner skips a job whose task is already final.
            task.cancel_unstarted(jiff::Timestamp::now());
            if ctx
                .store
                .compare_and_set(&task, revision)
                .await
                .unwrap_or(false)
            {
                publish_state(&ctx.nats, &task).await;
            }
        }
        ctx.nats
            .client
            .publish(ctx.nats.subjects.cancel(), task.id.clone().into())
            .await
            .map_err(unavailable)?;
        cancelled.push(task.id);
    }
    Ok(CancelReply { cancelled })
}

/// Takes the tasks the request names out of quarantine, due now.
pub async fn resume(ctx: &ApiContext, request: ResumeRequest) -> Result<ChangedReply, ApiError> {
    change_records(ctx, &request.tasks, |task| {
        task.resume(jiff::Timestamp::now())
    })
    .await
}

/// Removes the finished tasks the request names: their records are purged from the bucket, and
/// the node that holds each repository is told to delete it. A queued or running task is left
/// alone (cancel it first); the reply lists the removed ones.
pub async fn remove(ctx: &ApiContext, request: RemoveRequest) -> Result<ChangedReply, ApiError> {
    let mut changed = Vec::new();
    for input in &request.tasks {
        let Some((task, revision)) = find(ctx, input).await? else {
            continue;
        };
        if !task.status.status_type.is_final() {
            continue;
        }
        // Only the record that was read: a request queued since then keeps its task.
        if !ctx
            .store
            .purge_at(&task.id, revision)
            .await
            .map_err(unavailable)?
        {
            continue;
        }
        let id = task.id.clone();
        let notice = RemovalNotice { task };
        ctx.nats
            .client
            .publish(
                ctx.nats.subjects.removals(),
                gitfleet_proto::to_json(&notice).into(),
            )
            .await
            .map_err(unavailable)?;
        changed.push(id);
    }
    Ok(ChangedReply { changed })
}

/// Archives the tasks the request names: kept as they are, never synced.
pub async fn archive(ctx: &ApiContext, request: ArchiveRequest) -> Result<ChangedReply, ApiError> {
    // A queued or running job would still run: only finished tasks are archived.
    let mut finished = Vec::new();
    for input in &request.tasks {
        if let Some((task, _)) = find(ctx, input).await?
            && task.status.status_type.is_final()
        {
            finished.push(task.id);
        }
    }
    change_records(ctx, &finished, CloneTask::archive).await
}

/// Brings archived tasks back into the schedule, due now.
pub async fn unarchive(
    ctx: &ApiContext,
    request: ArchiveRequest,
) -> Result<ChangedReply, ApiError> {
    change_records(ctx, &request.tasks, |task| {
        task.unarchive(jiff::Timestamp::now())
    })
    .await
}

async fn schedule(ctx: &ApiContext, request: ScheduleRequest) -> Result<ChangedReply, ApiError> {
    let every = request.every_s.map(std::time::Duration::from_secs);
    change_records(ctx, &request.tasks, |task| {
        task.set_interval(every, jiff::Timestamp::now());
    })
    .await
}

/// Applies `change` to the records of the tasks `inputs` name (compare-and-set, read again on a
/// conflict) and tells the nodes, whose owner reads the record again (`freshness.rs`).
async fn change_records(
    ctx: &ApiContext,
    inputs: &[String],
    change: impl Fn(&mut CloneTask),
) -> Result<ChangedReply, ApiError> {
    let mut changed = Vec::new();
    for input in inputs {
        for _ in 0..8 {
            let Some((mut task, revision)) = find(ctx, input).await? else {
                break;
            };
            change(&mut task);
            task.updated_at = jiff::Timestamp::now();
            if ctx
                .store
                .compare_and_set(&task, revision)
                .await
                .map_err(unavailable)?
            {
                publish_state(&ctx.nats, &task).await;
                ctx.nats
                    .client
                    .publish(ctx.nats.subjects.rescheduled(), task.id.clone().into())
                    .await
                    .map_err(unavailable)?;
                changed.push(task.id);
                break;
            }
        }
    }
    Ok(ChangedReply { changed })
}

/// A state transition on the task's status subject (best effort: the bucket is the truth),
/// without the record's history, as every state event.
pub async fn publish_state(nats: &Nats, task: &CloneTask) {
    let subject = nats.subjects.status(&task.id);
    let mut task = task.clone();
    task.history = Vec::new();
    let update = gitfleet_proto::TaskUpdate::State {
        task: Box::new(task),
    };
    let _ = nats
        .client
        .publish(subject, gitfleet_proto::to_json(&update).into())
        .await;
}

/// The live nodes as they last announced themselves (their load), without counting what
/// each owns (which reads every task's key).
pub async fn node_loads(nodes: &kv::Store) -> Result<Vec<NodeInfo>, ApiError> {
    let mut loads = Vec::new();
    for id in &live_nodes(nodes).await? {
        if let Some(bytes) = nodes.get(id).await.map_err(unavailable)?
            && let Ok(info) = gitfleet_proto::from_json::<NodeInfo>(&bytes)
        {
            loads.push(info);
        }
    }
    Ok(loads)
}

async fn nodes(ctx: &ApiContext) -> Result<NodesReply, ApiError> {
    let mut nodes = node_loads(&ctx.nodes).await?;
    let ids: Vec<String> = nodes.iter().map(|n| n.node_id.clone()).collect();
    for task_id in ctx.store.ids().await.map_err(unavailable)? {
        if let Some(owner) = placement::owner(&task_id, &ids)
            && let Some(node) = nodes.iter_mut().find(|n| &n.node_id == owner)
        {
            node.repositories_owned += 1;
        }
    }
    Ok(NodesReply { nodes })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use gitfleet_proto::ErrorCode;

    use super::*;

    /// What the API accepts under a node's default (strict) policy, and where it would be
    /// stored: nothing from the wire reaches the node's file system or its private network.
    #[test]
    fn the_api_stores_requests_below_their_host_or_rejects_them() {
        use ErrorCode::{InvalidUrl, PolicyDenied};
        let strict = Policy::strict();
        let table: &[(&str, Operation, bool, Result<&str, ErrorCode>)] = &[
            (
                "https://h.example/o/r",
                Operation::Mirror,
                false,
                Ok("h.example/o/r.git"),
            ),
            (
                "https://h.example/o/r",
                Operation::Checkout,
                false,
                Ok("h.example/o/r"),
            ),
            ("team/tools", Operation::Init, true, Ok("_local/team/tools")),
            (
                "team/tools",
                Operation::Init,
                false,
                Ok("_local/team/tools.git"),
            ),
            ("/etc", Operation::Mirror, false, Err(PolicyDenied)),
            ("file:///etc", Operation::Mirror, false, Err(PolicyDenied)),
            ("../../etc", Operation::Mirror, false, Err(PolicyDenied)),
            (
                "git://127.0.0.1/o/r",
                Operation::Mirror,
                false,
                Err(PolicyDenied),
            ),
            (
                "https://[::1]/o/r",
                Operation::Mirror,
                false,
                Err(PolicyDenied),
            ),
            (
                "https://10.0.0.1/o/r",
                Operation::Mirror,
                false,
                Err(PolicyDenied),
            ),
            (
                "https://h.example/../x",
                Operation::Mirror,
                false,
                Err(PolicyDenied),
            ),
            ("ext::sh -c id", Operation::Mirror, false, Err(PolicyDenied)),
            ("../x", Operation::Init, false, Err(PolicyDenied)),
            (
                "https://h.example/o.git/r",
                Operation::Mirror,
                false,
                Err(InvalidUrl),
            ),
            ("not a url", Operation::Mirror, false, Err(PolicyDenied)),
        ];
        for (input, operation, worktree, want) in table {
            let got = target(input, *operation, *worktree, &strict);
            match (got, want) {
                (Ok(target), Ok(path)) => assert_eq!(target.relative(), Path::new(path), "{input}"),
                (Err(err), Err(code)) => {
                    assert_eq!(err.code, ApiErrorCode::Rejected, "{input}");
                    assert_eq!(err.task_error, Some(*code), "{input}: {}", err.message);
                }
                (got, want) => panic!("{input}: got {:?}, want {want:?}", got.map(|t| t.display())),
            }
        }
    }
}
