//! Classifying gix errors into gitfleet's stable codes.

use gitfleet_proto::{ErrorCode, TaskError};

use crate::meter::OverLimit;

/// Errors of the engine are task errors: a stable code and a redacted message.
pub type GitError = TaskError;

/// Maps an error chain to a code by what it is (typed causes first), then by what it says.
pub(crate) fn classify(err: &(dyn std::error::Error + 'static)) -> ErrorCode {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io_kind = None;
    while let Some(e) = current {
        let over_limit = e.is::<OverLimit>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<OverLimit>());
        if over_limit {
            return ErrorCode::LimitExceeded;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        text.push_str(&e.to_string().to_ascii_lowercase());
        text.push('\n');
        current = e.source();
    }
    classify_text(&text, io_kind)
}

pub(crate) fn classify_text(text: &str, io_kind: Option<std::io::ErrorKind>) -> ErrorCode {
    use std::io::ErrorKind as K;
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["http status 429"]) {
        return ErrorCode::RateLimited;
    }
    if has(&[
        "authentication required",
        "authentication failed",
        "http status 401",
        "http status 403",
        "credentials",
    ]) {
        return ErrorCode::AuthFailed;
    }
    // gix keeps no type for its allocation limit, and its error type hides our `OverLimit`
    // from a chain walk when it wraps one: the words are the only handle.
    if has(&[
        "too large to fit in memory",
        "the server lists more than",
        "the server lists a ref name longer than",
        "the server sent more than",
    ]) {
        return ErrorCode::LimitExceeded;
    }
    if has(&[
        "http status 404",
        "repository not found",
        "not exported",
        "does not appear to be a git repository",
        "no such repository",
        "not a git repository",
    ]) {
        return ErrorCode::NotFound;
    }
    if has(&[
        "http status 5",
        "service unavailable",
        "internal server error",
        "bad gateway",
    ]) {
        return ErrorCode::ServerError;
    }
    if has(&[
        "no space left",
        "disk quota",
        "storage full",
        "read-only file system",
    ]) {
        return ErrorCode::Storage;
    }
    match io_kind {
        Some(K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem) => {
            return ErrorCode::Storage;
        }
        Some(
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::UnexpectedEof
            | K::BrokenPipe
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable,
        ) => return ErrorCode::Network,
        _ => {}
    }
    if has(&[
        "connection refused",
        "connection reset",
        "could not resolve",
        "failed to lookup",
        "dns error",
        "name or service not known",
        "timed out",
        "broken pipe",
        "unexpected end of file",
        "early eof",
        "error sending request",
        "tls",
        "certificate",
    ]) {
        return ErrorCode::Network;
    }
    if has(&[
        "pack",
        "checksum",
        "corrupt",
        "protocol",
        "packet line",
        "invalid",
    ]) {
        return ErrorCode::Protocol;
    }
    if io_kind.is_some() {
        return ErrorCode::Network;
    }
    ErrorCode::Protocol
}

/// The whole error chain as one line (secrets are removed where the error leaves the engine).
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_failures_get_stable_codes() {
        assert_eq!(
            classify_text("received http status 404", None),
            ErrorCode::NotFound
        );
        assert_eq!(
            classify_text("received http status 503", None),
            ErrorCode::ServerError
        );
        assert_eq!(
            classify_text("authentication required", None),
            ErrorCode::AuthFailed
        );
        assert_eq!(
            classify_text("access denied or repository not exported: /x.git", None),
            ErrorCode::NotFound
        );
        assert_eq!(
            classify_text("whatever", Some(std::io::ErrorKind::ConnectionRefused)),
            ErrorCode::Network
        );
        assert_eq!(
            classify_text("x", Some(std::io::ErrorKind::StorageFull)),
            ErrorCode::Storage
        );
    }
}
