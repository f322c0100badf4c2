//! When a repository is synced next. The Registry applies this to every final state, so that a
//! task record always says when it is due (`next_sync_at`) and why (`interval_s`,
//! `consecutive_failures`, `quarantined`); the service (`gitfleet serve`, a node) only runs what
//! is due.
//!
//! After a success the interval is half the time since the repository last changed, within
//! `[min_interval, max_interval]` (as Sourcegraph schedules its mirrors): a repository that
//! changed a minute ago is checked again soon, one untouched for a month rarely. After a failure
//! it doubles from the minimum with every failure in a row (up to the maximum), so a broken
//! repository never holds its place at the front; after `quarantine_after` failures in a row
//! that end in a permanent error (not found, authentication, policy) it is quarantined: no more
//! scheduled syncs until it is resumed. Every interval gets +-10% of jitter, so that a fleet
//! cloned together does not stay in lockstep.

use std::time::Duration;

use gitfleet_proto::{ErrorCode, Operation, Timestamp};

use crate::compact::{Record, Time};

/// How repositories are scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulePolicy {
    /// The shortest time between two scheduled syncs (default 10 minutes).
    pub min_interval: Duration,
    /// The longest (default 8 hours).
    pub max_interval: Duration,
    /// Failures in a row, the last of them permanent, that quarantine a repository (default 5).
    pub quarantine_after: u32,
    /// The share of an interval that is random, either way (default 0.1).
    pub jitter: f64,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        SchedulePolicy {
            min_interval: Duration::from_secs(10 * 60),
            max_interval: Duration::from_secs(8 * 3600),
            quarantine_after: 5,
            jitter: 0.1,
        }
    }
}

/// How an attempt at a repository ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// With whether it changed a ref (a clone always does).
    Succeeded {
        changed: bool,
    },
    Failed(ErrorCode),
}

impl SchedulePolicy {
    fn clamp(&self, interval: Duration) -> Duration {
        interval.clamp(self.min_interval, self.max_interval.max(self.min_interval))
    }

    /// The interval after a success at `now`, for a repository that last changed at
    /// `last_change`.
    pub fn after_success(&self, now: Timestamp, last_change: Option<Timestamp>) -> Duration {
        let since_change = last_change
            .and_then(|at| Duration::try_from(now.duration_since(at)).ok())
            .unwrap_or(Duration::ZERO);
        self.clamp(since_change / 2)
    }

    /// The interval after the `failures`-th failure in a row.
    pub fn after_failure(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.clamp(self.min_interval.saturating_mul(1u32 << doublings.min(31)))
    }

    /// Whether the `failures`-th failure in a row, ending with `code`, quarantines. A
    /// `storage` failure is this host's (a full disk, `--min-free`), not the repository's: it
    /// backs off but never quarantines, so that freeing space brings every repository back.
    pub fn quarantines(&self, failures: u32, code: ErrorCode) -> bool {
        !code.is_transient()
            && code != ErrorCode::Storage
            && failures >= self.quarantine_after.max(1)
    }

    /// `interval`, give or take the jitter.
    pub fn jittered(&self, interval: Duration) -> Duration {
        let share = self.jitter.clamp(0.0, 1.0);
        if share == 0.0 {
            return interval;
        }
        interval.mul_f64(1.0 + rand::random_range(-share..=share))
    }

    /// Sets the schedule of `record` after `outcome` at `now`.
    pub(crate) fn apply(&self, record: &mut Record, outcome: Outcome, now: Timestamp) {
        match outcome {
            Outcome::Succeeded { changed } => {
                record.set_time(Time::LastSuccess, Some(now));
                if changed || record.time(Time::LastChange).is_none() {
                    record.set_time(Time::LastChange, Some(now));
                }
                record.set_consecutive_failures(0);
                record.set_quarantined(false);
                let interval = record
                    .interval_override()
                    .unwrap_or_else(|| self.after_success(now, record.time(Time::LastChange)));
                self.schedule(record, interval, now);
            }
            // A cancel is someone's decision, not the repository's failure.
            Outcome::Failed(ErrorCode::Cancelled) => {
                if record.time(Time::NextSync).is_none() {
                    self.schedule(record, self.min_interval, now);
                }
            }
            Outcome::Failed(code) => {
                let failures = record.consecutive_failures().saturating_add(1);
                record.set_consecutive_failures(failures);
                if self.quarantines(failures, code) {
                    record.set_quarantined(true);
                    record.set_time(Time::NextSync, None);
                    return;
                }
                let backoff = self.after_failure(failures);
                let interval = record
                    .interval_override()
                    .map_or(backoff, |own| own.max(backoff));
                self.schedule(record, interval, now);
            }
        }
    }

    fn schedule(&self, record: &mut Record, interval: Duration, now: Timestamp) {
        // A repository made by init has no upstream to sync from; quarantined and archived
        // ones wait for an operator.
        if record.operation() == Operation::Init || record.quarantined() || record.archived() {
            record.set_time(Time::NextSync, None);
            return;
        }
        record.set_interval(interval);
        let wait = self.jittered(interval);
        let next = jiff::SignedDuration::try_from(wait)
            .ok()
            .and_then(|wait| now.checked_add(wait).ok());
        record.set_time(Time::NextSync, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(600);
    const MAX: Duration = Duration::from_secs(8 * 3600);

    fn policy() -> SchedulePolicy {
        SchedulePolicy {
            jitter: 0.0,
            ..SchedulePolicy::default()
        }
    }

    fn ago(now: Timestamp, secs: i64) -> Option<Timestamp> {
        Some(now - jiff::SignedDuration::from_secs(secs))
    }

    #[test]
    fn a_success_waits_half_the_time_since_the_last_change() {
        let now = Timestamp::now();
        let p = policy();
        assert_eq!(p.after_success(now, ago(now, 0)), MIN, "changed just now");
        assert_eq!(
            p.after_success(now, ago(now, 2 * 3600)),
            Duration::from_secs(3600)
        );
        assert_eq!(p.after_success(now, ago(now, 30 * 86_400)), MAX);
        assert_eq!(p.after_success(now, None), MIN);
    }

    #[test]
    fn failures_back_off_and_permanent_ones_quarantine() {
        let p = policy();
        assert_eq!(p.after_failure(1), MIN);
        assert_eq!(p.after_failure(2), MIN * 2);
        assert_eq!(p.after_failure(3), MIN * 4);
        assert_eq!(p.after_failure(40), MAX);
        assert!(!p.quarantines(4, ErrorCode::NotFound));
        assert!(p.quarantines(5, ErrorCode::NotFound));
        assert!(p.quarantines(9, ErrorCode::AuthFailed));
        assert!(
            !p.quarantines(9, ErrorCode::Network),
            "transient errors never quarantine"
        );
        assert!(
            !p.quarantines(9, ErrorCode::Storage),
            "a full disk is not the repository's fault"
        );
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let p = SchedulePolicy::default();
        for _ in 0..1000 {
            let d = p.jittered(Duration::from_secs(1000));
            assert!((900..=1100).contains(&d.as_secs()), "{d:?}");
        }
    }
}
