use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. The string forms (`snake_case`) are part of the wire
/// contract: clients match on them, so a code is never renamed, only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The URL could not be parsed or names an unusable location.
    InvalidUrl,
    /// The URL is well-formed but the configured policy refuses it (scheme, host, local path,
    /// private address, command transport).
    PolicyDenied,
    /// The remote says the repository does not exist (or is not exported).
    NotFound,
    /// The remote refused the credentials, or asked for credentials none were configured for.
    AuthFailed,
    /// Connecting to or talking with the remote failed (refused, reset, DNS, TLS).
    Network,
    /// The per-task time limit ran out.
    Timeout,
    /// No bytes arrived for longer than the stall limit.
    Stalled,
    /// The remote answered with a server-side error (HTTP 5xx and the like).
    ServerError,
    /// Cancelled on request.
    Cancelled,
    /// Writing to local storage failed (disk full, permissions, I/O).
    Storage,
    /// The destination exists but is not what gitfleet would have put there.
    Conflict,
    /// The remote sent data gitfleet could not accept (corrupt pack, protocol error).
    Protocol,
    /// A bug or a crash inside gitfleet (for example a panicking worker).
    Internal,
    /// A sync would have deleted every ref, or more than the allowed share of them, because the
    /// remote stopped listing them: the refs were kept (a mirror is a backup).
    PruneRefused,
    /// The remote sent more than a limit allows (bytes, object size, refs, ref name length), or
    /// too slowly.
    LimitExceeded,
    /// The code host asked gitfleet to slow down (HTTP 429, or GitHub's rate-limit 403): the
    /// host is paused for the time it gave, and the task waits without using up a retry.
    RateLimited,
}

impl ErrorCode {
    /// Whether an attempt that failed with this code may succeed when tried again later.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Network
                | ErrorCode::Timeout
                | ErrorCode::Stalled
                | ErrorCode::ServerError
                | ErrorCode::Internal
                | ErrorCode::RateLimited
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUrl => "invalid_url",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Network => "network",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Stalled => "stalled",
            ErrorCode::ServerError => "server_error",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Storage => "storage",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Internal => "internal",
            ErrorCode::PruneRefused => "prune_refused",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it is stored and sent: a stable code and a message for people. The message never
/// contains a secret: producers redact before constructing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    /// How long the server asked to be left alone (its `Retry-After`, bounded), in seconds:
    /// the whole host is paused that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl TaskError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// The same error, saying how long the server asked to be left alone.
    pub fn with_retry_after(mut self, retry_after: std::time::Duration) -> Self {
        self.retry_after_secs = Some(retry_after.as_secs().max(1));
        self
    }

    /// The pause the server asked for, if it asked.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_secs.map(std::time::Duration::from_secs)
    }

    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }
}
