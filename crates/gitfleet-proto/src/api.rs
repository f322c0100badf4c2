//! The cluster's request/reply API: bodies of the `<prefix>.api.*` subjects and the events on
//! `<prefix>.status.*`. JSON by default; MessagePack (named) when the request carries the header
//! `Content-Type: application/msgpack`. Every reply is an [`ApiReply`]: a result or an error with
//! a stable code.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CloneTask, CommitInfo, ErrorCode, Operation, StatusType, Timestamp};

/// `<prefix>.api.submit`: clone, mirror or initialise repositories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitRequest {
    /// URLs (or, for `init`, `owner/name`).
    pub repositories: Vec<String>,
    /// `mirror` (default), `bare`, `checkout` or `init`.
    #[serde(default = "default_operation")]
    pub operation: Operation,
    /// For `init`: a repository with a working tree (`owner/name`) instead of a bare one
    /// (`owner/name.git`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worktree: bool,
    /// Requests with the same key while the first is pending are one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn default_operation() -> Operation {
    Operation::Mirror
}

/// What became of one repository of a submit or sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Submitted {
    /// The repository as given in the request.
    pub input: String,
    /// The task, when the input was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// True when the task was already pending and this request joined it.
    #[serde(default)]
    pub duplicate: bool,
    /// The generation of the task's record this request queued or joined: a final state of
    /// an earlier generation (a status event of the run before) is not this request's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Why the input was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitReply {
    pub tasks: Vec<Submitted>,
    /// A sync of everything goes a page at a time: pass this as the next request's `after`
    /// to go on; absent when every repository was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `<prefix>.api.sync`: fetch into stored repositories; an empty list syncs all of them, a page
/// (of at most 1000) per request, following `next`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRequest {
    /// Task ids or URLs.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// With no repositories: the previous page's `next` (an opaque cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `<prefix>.api.get`: one task, by id or URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GetRequest {
    pub task: String,
}

/// `<prefix>.api.list`: tasks, optionally of one status, a page at a time, in the order their
/// records were last written. A record written while a caller pages through the list moves to
/// its end and comes again, with its newer state: keep the last one seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ListRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusType>,
    /// The previous page's `next` (an opaque cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    pub tasks: Vec<CloneTask>,
    /// Pass as `after` for the next page; absent on the last page. A page with a status
    /// filter examines a bounded number of records, so it may hold fewer tasks than `limit`
    /// (even none) and still have a `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `<prefix>.api.log`: the commits a repository holds, newest first (id, author, email, time,
/// subject; from its branches, not tags), read by the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogRequest {
    /// A task id or URL.
    pub task: String,
    /// Only commits made since then (by commit time; a reply's `time` is the author's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub since: Option<Timestamp>,
    /// At most this many (default 20, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogReply {
    pub commits: Vec<CommitInfo>,
    /// The node that read them (the one that holds the repository).
    pub node: String,
}

/// `<prefix>.api.cancel`: cancel tasks by id or URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelRequest {
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelReply {
    /// Ids of the tasks that were pending and are now being cancelled.
    pub cancelled: Vec<String>,
}

/// `<prefix>.api.resume`: take quarantined tasks (ids or URLs) back into the schedule, due now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResumeRequest {
    pub tasks: Vec<String>,
}

/// `<prefix>.api.remove`: delete tasks (ids or URLs), their records and their repositories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveRequest {
    pub tasks: Vec<String>,
}

/// `<prefix>.control.remove`: the node that ran a removed task last (`task.node`), which holds
/// its repository, deletes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemovalNotice {
    /// The record as it was purged: where the repository is follows from its URL and
    /// operation (never from a path a message carries), and a node that runs a newer
    /// generation of the task keeps it.
    pub task: CloneTask,
}

/// `<prefix>.control.pause`: a node was asked by a code host to slow down; every node sends
/// nothing to that host for `pause_secs` (bounded by each node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostPauseNotice {
    /// The host as URLs name it (`github.com`, `127.0.0.1`).
    pub host: String,
    pub pause_secs: u64,
    /// The node that met the refusal (it paused the host already).
    pub node: String,
}

/// `<prefix>.api.archive` and `<prefix>.api.unarchive`: keep tasks (ids or URLs) as they are,
/// never synced, or bring them back (due now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ArchiveRequest {
    pub tasks: Vec<String>,
}

/// `<prefix>.api.schedule`: sync tasks (ids or URLs) every `every_s` seconds instead of the
/// adaptive interval; `every_s` absent or null: adaptively again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleRequest {
    pub tasks: Vec<String>,
    #[serde(default)]
    pub every_s: Option<u64>,
}

/// The reply to `resume` and `schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChangedReply {
    /// Ids of the tasks whose records were changed.
    pub changed: Vec<String>,
}

/// A node of the cluster, as it announces itself (`<prefix>.api.nodes` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    pub node_id: String,
    /// Tasks running now.
    pub running: u32,
    /// Tasks it runs at once at most.
    pub concurrency: u32,
    /// Repositories it owns among the stored tasks (filled in by `nodes`).
    #[serde(default)]
    pub repositories_owned: u64,
    #[schemars(with = "String")]
    pub started_at: Timestamp,
    #[schemars(with = "String")]
    pub last_seen: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodesReply {
    pub nodes: Vec<NodeInfo>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// The body could not be decoded or is missing fields.
    BadRequest,
    /// The body is larger than the API accepts.
    TooLarge,
    /// No such API subject.
    UnknownSubject,
    /// No task matches.
    NotFound,
    /// No live node can take the work.
    NoNodes,
    /// The cluster could not store or dispatch the request; try again.
    Unavailable,
    /// A repository was refused (see `task_error`).
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub code: ApiErrorCode,
    pub message: String,
    /// For `rejected`: the task error code (`invalid_url`, `policy_denied`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_error: Option<ErrorCode>,
}

impl ApiError {
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            task_error: None,
        }
    }
}

/// Every reply: `{"ok": ...}` or `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiReply<T> {
    Ok(T),
    Error(ApiError),
}

/// A job on `<prefix>.jobs.<node>`: what the owning node is asked to do. Carries no secret: nodes
/// use their own credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobMessage {
    pub task_id: String,
    /// URL without credentials (for `init`: `owner/name`).
    pub url: String,
    pub operation: Operation,
    /// Where the repository lives below the node's storage root.
    pub path: String,
    /// The task record's generation this job was issued for: a node runs it only while the
    /// record still has it (a later request or a takeover supersedes it).
    #[serde(default)]
    pub generation: u64,
    /// The node that held the repository before placement moved it here: once this job
    /// completes, that node deletes its copy (a [`HandoverNotice`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_node: Option<String>,
}

/// `<prefix>.control.handover`: the new owner completed a repository that placement moved
/// away from node `from`, which deletes its copy (no orphans filling disks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandoverNotice {
    /// The record as the new owner completed it: where the repository is follows from its URL
    /// and operation.
    pub task: CloneTask,
    pub from: String,
}
