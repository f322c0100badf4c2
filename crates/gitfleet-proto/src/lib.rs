//! gitfleet's task model and wire types.
//!
//! This is the only crate in the workspace that derives `Serialize`/`Deserialize`: every byte
//! gitfleet stores or sends is described here, so that a field change is visible in one place and
//! pinned by the golden tests in `tests/golden.rs`.
//!
//! Compatibility rules (rolling upgrades, clients in other languages):
//! - readers ignore unknown fields (no `deny_unknown_fields` anywhere);
//! - every field added after the first release carries `#[serde(default)]`;
//! - MessagePack is always written with field names (`rmp_serde::to_vec_named`), never as
//!   positional arrays.

mod api;
mod codec;
mod error;
mod event;
mod local;
mod task;

pub use api::{
    ApiError, ApiErrorCode, ApiReply, ArchiveRequest, CancelReply, CancelRequest, ChangedReply,
    GetRequest, HandoverNotice, HostPauseNotice, JobMessage, ListReply, ListRequest, LogReply,
    LogRequest, NodeInfo, NodesReply, RemovalNotice, RemoveRequest, ResumeRequest, ScheduleRequest,
    SubmitReply, SubmitRequest, Submitted, SyncRequest,
};
pub use codec::{
    CodecError, Encoding, decode, encode, from_json, from_msgpack, to_json, to_msgpack,
};
pub use error::{ErrorCode, TaskError};
pub use event::{ProgressEvent, TaskUpdate};
pub use local::{WorkReply, WorkRequest};
pub use task::{
    Branch, CloneStatus, CloneTask, CommitInfo, Freshness, FreshnessAt, Operation, Phase,
    RunRecord, StatusType, SyncResult, Timestamp, clone_task_schema,
};
