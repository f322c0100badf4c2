//! What a command line says to `gitfleet serve` running on the same root, over its Unix socket
//! (`<root>/.gitfleet/serve.sock`): one request line, then reply lines until `done`. JSON, one
//! value per line.

use serde::{Deserialize, Serialize};

use crate::{Operation, TaskError, TaskUpdate};

/// Work for the process on a root: the inputs as a user gave them (URL lists already read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkRequest {
    /// Clone (mirror, bare or checkout) these repositories.
    Clone {
        inputs: Vec<String>,
        operation: Operation,
    },
    /// Create these repositories (`owner/name`), with a working tree or not.
    Init {
        names: Vec<String>,
        #[serde(default)]
        worktree: bool,
    },
    /// Sync these repositories; none: every repository of the root.
    Sync {
        #[serde(default)]
        inputs: Vec<String>,
    },
}

/// A line of the reply to a [`WorkRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkReply {
    /// An input refused before it became a task.
    Rejected { input: String, error: TaskError },
    /// The tasks the request became; their updates follow.
    Tracking { ids: Vec<String> },
    /// An update of one of them.
    Update { update: TaskUpdate },
    /// Every tracked task is final (their last updates came before).
    Done,
    /// The request could not be taken at all.
    Refused { message: String },
}
