use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{CloneTask, Phase};

/// A progress sample of a running task: frequent and ephemeral (never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressEvent {
    pub task_id: String,
    /// The attempt this sample belongs to; percent never goes backwards within one attempt.
    pub attempt: u32,
    pub phase: Phase,
    /// 0-100 over the whole operation.
    pub progress: u8,
    #[serde(default)]
    pub bytes_received: u64,
    /// Bytes per second over the last sampling interval.
    #[serde(default)]
    pub bytes_per_sec: u64,
    #[serde(default)]
    pub objects_received: u64,
    #[serde(default)]
    pub objects_total: u64,
}

/// What a watcher of tasks receives: a state transition (the whole task but its `history`, which
/// a read of the task has) or a progress sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskUpdate {
    State { task: Box<CloneTask> },
    Progress(ProgressEvent),
}
