//! Watching a running operation from the calling thread: progress samples, cancel, the time,
//! stall, transfer and rate limits, and giving up on a git thread stuck in a read that cannot
//! see the interrupt.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gitfleet_proto::{ErrorCode, Phase, SyncResult, TaskError};

use super::Request;
use crate::meter::Meter;
use crate::progress::{Progress, Tracker};

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;
const STALLED: u8 = 3;
const TOO_MUCH: u8 = 4;
const TOO_SLOW: u8 = 5;

/// Shared between the caller and a running operation: cancel it from any thread.
#[derive(Debug, Clone, Default)]
pub struct Control {
    interrupt: Arc<AtomicBool>,
    reason: Arc<AtomicU8>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the running operation to stop; it fails with `cancelled`.
    pub fn cancel(&self) {
        self.stop(CANCELLED);
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason.load(Ordering::SeqCst) == CANCELLED
    }

    /// The flag gix's loops and gitfleet's transports poll.
    pub(super) fn interrupt(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    fn stop(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(RUNNING, reason, Ordering::SeqCst, Ordering::SeqCst);
        self.interrupt.store(true, Ordering::SeqCst);
    }

    /// Why the operation was stopped, if it was (the URL is named by the caller).
    fn reason_error(&self, req: &Request) -> Option<TaskError> {
        let op = req.operation;
        let limits = &req.limits;
        let (code, message) = match self.reason.load(Ordering::SeqCst) {
            CANCELLED => (ErrorCode::Cancelled, format!("{op} was cancelled")),
            TIMED_OUT => (
                ErrorCode::Timeout,
                format!(
                    "{op} exceeded the time limit of {}s",
                    limits.time_limit.as_secs()
                ),
            ),
            STALLED => (
                ErrorCode::Stalled,
                format!(
                    "{op} stalled: no progress for {}s",
                    limits.stall_limit.as_secs()
                ),
            ),
            TOO_MUCH => (
                ErrorCode::LimitExceeded,
                format!(
                    "{op} received more than the limit of {} bytes",
                    limits.max_bytes
                ),
            ),
            TOO_SLOW => (
                ErrorCode::LimitExceeded,
                format!(
                    "{op} received fewer than {} bytes/s over {}s",
                    limits.min_rate,
                    limits.rate_window.as_secs()
                ),
            ),
            _ => return None,
        };
        Some(TaskError::new(code, message))
    }
}

/// Decides, once, whether the git thread may publish its result (rename into place, prune refs)
/// or the watcher has given up on it.
#[derive(Debug, Default)]
pub(crate) struct Commit(AtomicU8);

impl Commit {
    const OPEN: u8 = 0;
    const COMMITTED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// Claims the right to publish; false if the watcher gave up on this thread.
    pub(crate) fn try_commit(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::COMMITTED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    fn try_abandon(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::ABANDONED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

/// What the git thread tells its watcher.
pub(crate) enum Event {
    Phase(Phase),
    Done(Box<Result<SyncResult, TaskError>>),
}

/// Watches the git thread sending on `events` until it is done or given up on; calls
/// `on_progress` whenever the percent or phase changes. A stopped operation fails with the
/// reason it was stopped for.
pub(super) fn watch(
    req: &Request,
    control: &Control,
    tracker: &mut Tracker,
    events: &mpsc::Receiver<Event>,
    commit: &Commit,
    meter: &Meter,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<SyncResult, TaskError> {
    let started = Instant::now();
    let limits = &req.limits;
    let tick = Duration::from_millis(100);
    let mut last_reported: Option<(Phase, u8)> = None;
    let mut last_activity = (tracker.activity(), Instant::now());
    let mut interrupted_at: Option<Instant> = None;
    // Bytes received at the start of the current rate window.
    let mut window = (Instant::now(), 0u64);
    let outcome = loop {
        match events.recv_timeout(tick) {
            Ok(Event::Phase(phase)) => tracker.enter(phase),
            Ok(Event::Done(result)) => break *result,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(TaskError::new(
                    ErrorCode::Internal,
                    "the git thread ended without a result",
                ));
            }
        }
        let sample = tracker.sample().clone();
        if last_reported != Some((sample.phase, sample.percent)) {
            last_reported = Some((sample.phase, sample.percent));
            on_progress(&sample);
        }
        let now = Instant::now();
        if tracker.activity() != last_activity.0 {
            last_activity = (tracker.activity(), now);
        }
        if interrupted_at.is_none() {
            if control.interrupt.load(Ordering::SeqCst) {
                interrupted_at = Some(now);
            } else if now.duration_since(started) >= limits.time_limit {
                control.stop(TIMED_OUT);
                interrupted_at = Some(now);
            } else if now.duration_since(last_activity.1) >= limits.stall_limit {
                control.stop(STALLED);
                interrupted_at = Some(now);
            } else {
                // On the wire where gitfleet reads it (every transport it opens is metered),
                // else the pack bytes gix counts, which only flow once the pack does: before
                // that, a server still counting objects is judged by the stall limit alone.
                let on_wire = meter.read();
                let received = on_wire.max(sample.bytes_received);
                let measurable = on_wire > 0 || sample.phase >= Phase::Receiving;
                if !measurable {
                    window = (now, received);
                }
                if sample.bytes_received > limits.max_bytes {
                    control.stop(TOO_MUCH);
                    interrupted_at = Some(now);
                } else if now.duration_since(window.0) >= limits.rate_window {
                    let expected = limits.min_rate.saturating_mul(limits.rate_window.as_secs());
                    if received.saturating_sub(window.1) < expected {
                        control.stop(TOO_SLOW);
                        interrupted_at = Some(now);
                    }
                    window = (now, received);
                }
            }
        } else if interrupted_at.is_some_and(|at| now.duration_since(at) >= limits.grace)
            && commit.try_abandon()
        {
            // The transport is stuck in a read that cannot see the interrupt. The thread cleans
            // its staging directory up when the read returns; it can no longer publish.
            tracing::warn!(url = %req.url.display(), "git thread did not stop in time; abandoned");
            break Err(TaskError::new(ErrorCode::Internal, "interrupted"));
        }
    };
    match (outcome, control.reason_error(req)) {
        (Err(_), Some(reason)) => Err(reason),
        (outcome, _) => outcome,
    }
}
