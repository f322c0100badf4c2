//! What a code host says when it wants gitfleet to slow down: HTTP 429, a 503 with
//! `Retry-After`, GitHub's rate-limit 403 (`x-ratelimit-remaining: 0`, or a "secondary rate
//! limit" message). The http transport (http.rs) records it as it reads the response, since
//! gix's errors keep the status but not the headers; the engine then gives the attempt's error
//! the code `rate_limited` and the pause, and the actors pause the whole host that long.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::HeaderMap;

/// The pause for a refusal that names no time (a 429 or rate-limit 403 without `Retry-After`).
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(60);

/// The longest pause a server can ask for: a lying or broken `Retry-After` cannot stop a host
/// for longer than this at a time.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// How much of a refused response's body is read to tell a rate-limit 403 from a refusal of
/// the credentials.
pub(crate) const SNIFFED_BODY_BYTES: u64 = 4096;

/// A server's request to slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    /// A rate limit (429, GitHub's 403), not an outage (503).
    pub rate_limited: bool,
    /// How long to leave the host alone, within 1 s..=[`MAX_PAUSE`].
    pub pause: Duration,
}

/// The refusal an attempt's transport met, if any (the last one wins).
#[derive(Debug, Default)]
pub(crate) struct Pushback(Mutex<Option<Refusal>>);

impl Pushback {
    pub(crate) fn record(&self, refusal: Refusal) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
    }

    pub(crate) fn take(&self) -> Option<Refusal> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Whether a response with `status` asks gitfleet to slow down, and for how long; `body` is
/// the start of the response body (only a 403 needs it), `now` seconds since the epoch.
pub(crate) fn refusal(status: u16, headers: &HeaderMap, body: &[u8], now: u64) -> Option<Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let retry_after = header("retry-after").and_then(|v| parse_retry_after(v, now));
    let reset = || {
        header("x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|at| Duration::from_secs(at.saturating_sub(now)))
    };
    let (rate_limited, pause) = match status {
        429 => (true, retry_after.or_else(reset)),
        403 => {
            let exhausted = header("x-ratelimit-remaining") == Some("0");
            let body = String::from_utf8_lossy(body).to_ascii_lowercase();
            // GitHub's words for its primary and secondary limits.
            let says_so = body.contains("rate limit exceeded")
                || body.contains("exceeded a secondary rate limit");
            if !exhausted && !says_so {
                return None;
            }
            (true, retry_after.or_else(reset))
        }
        503 => (false, Some(retry_after?)),
        _ => return None,
    };
    Some(Refusal {
        status,
        rate_limited,
        pause: pause
            .unwrap_or(DEFAULT_PAUSE)
            .clamp(Duration::from_secs(1), MAX_PAUSE),
    })
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 10.2.3).
fn parse_retry_after(value: &str, now: u64) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value)
        .ok()?
        .timestamp()
        .as_second();
    let at = u64::try_from(at).ok()?;
    Some(Duration::from_secs(at.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_is_the_pause() {
        let r = refusal(429, &headers(&[("Retry-After", "30")]), b"", NOW).expect("429");
        assert_eq!((r.rate_limited, r.pause), (true, Duration::from_secs(30)));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        let date = "Tue, 14 Nov 2023 22:15:20 GMT";
        let r = refusal(503, &headers(&[("retry-after", date)]), b"", NOW).expect("503");
        assert_eq!((r.rate_limited, r.pause), (false, Duration::from_secs(120)));
    }

    #[test]
    fn a_pause_is_bounded_and_never_zero() {
        let huge = refusal(429, &headers(&[("Retry-After", "99999999999")]), b"", NOW);
        assert_eq!(huge.expect("429").pause, MAX_PAUSE);
        let past = refusal(429, &headers(&[("Retry-After", "0")]), b"", NOW);
        assert_eq!(past.expect("429").pause, Duration::from_secs(1));
        let nonsense = refusal(429, &headers(&[("Retry-After", "soon")]), b"", NOW);
        assert_eq!(nonsense.expect("429").pause, DEFAULT_PAUSE);
    }

    #[test]
    fn a_503_without_retry_after_is_an_outage_not_a_pause() {
        assert_eq!(refusal(503, &HeaderMap::new(), b"", NOW), None);
        assert_eq!(
            refusal(500, &headers(&[("Retry-After", "5")]), b"", NOW),
            None
        );
    }

    #[test]
    fn githubs_rate_limit_403_is_a_pause_and_a_plain_403_is_not() {
        let exhausted = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW + 90).to_string()),
        ]);
        let r = refusal(403, &exhausted, b"", NOW).expect("exhausted");
        assert_eq!((r.rate_limited, r.pause), (true, Duration::from_secs(90)));
        let secondary = b"You have exceeded a secondary rate limit. Please wait a few minutes";
        let r = refusal(403, &HeaderMap::new(), secondary, NOW).expect("secondary");
        assert_eq!(r.pause, DEFAULT_PAUSE);
        assert_eq!(
            refusal(403, &HeaderMap::new(), b"Permission denied", NOW),
            None
        );
        let left = headers(&[("x-ratelimit-remaining", "12")]);
        assert_eq!(refusal(403, &left, b"", NOW), None);
    }
}
