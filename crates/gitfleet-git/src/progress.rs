//! Turns gix's progress tree into one 0-100 percent per task, plus the phase.

use std::sync::Arc;
use std::time::Instant;

use gitfleet_proto::Phase;
use gix::progress::tree::Root;

/// A progress sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub percent: u8,
    pub bytes_received: u64,
    pub bytes_per_sec: u64,
    pub objects_received: u64,
    pub objects_total: u64,
}

// gix progress ids (gix-protocol / gix-pack): the server's counting and compressing, pack bytes
// read, objects indexed from the pack, deltas resolved.
const REMOTE_PROGRESS: [u8; 4] = *b"FERP";
const BYTES_READ: [u8; 4] = *b"BWRB";
const OBJECTS_INDEXED: [u8; 4] = *b"IWIO";
const DELTAS_RESOLVED: [u8; 4] = *b"IWRO";

/// Percent ranges of each phase; receiving is where the time goes.
fn range(phase: Phase) -> (u8, u8) {
    match phase {
        Phase::Connecting => (0, 2),
        Phase::Negotiating => (2, 5),
        Phase::Receiving => (5, 80),
        Phase::Resolving => (80, 95),
        Phase::CheckingOut => (95, 99),
        Phase::Finishing => (99, 99),
    }
}

/// Samples a progress tree. Never goes backwards: phase and percent only grow within one
/// tracker (one attempt).
pub(crate) struct Tracker {
    root: Arc<Root>,
    snapshot: Vec<(
        gix::progress::prodash::progress::Key,
        gix::progress::prodash::progress::Task,
    )>,
    last: Progress,
    last_sample: Option<(Instant, u64)>,
    /// A value that changes whenever anything moves, for stall detection.
    activity: u64,
}

impl Tracker {
    pub(crate) fn new(root: Arc<Root>) -> Self {
        Tracker {
            root,
            snapshot: Vec::new(),
            last: Progress {
                phase: Phase::Connecting,
                percent: 0,
                bytes_received: 0,
                bytes_per_sec: 0,
                objects_received: 0,
                objects_total: 0,
            },
            last_sample: None,
            activity: 0,
        }
    }

    pub(crate) fn current(&self) -> &Progress {
        &self.last
    }

    /// A number that changes whenever the transfer makes progress of any kind.
    pub(crate) fn activity(&self) -> u64 {
        self.activity
    }

    /// Forces a later phase (checkout, finishing), which the tree does not show.
    pub(crate) fn enter(&mut self, phase: Phase) {
        if phase > self.last.phase {
            self.last.phase = phase;
            self.last.percent = self.last.percent.max(range(phase).0);
        }
    }

    /// Takes a new sample and returns it.
    pub(crate) fn sample(&mut self) -> &Progress {
        self.root.sorted_snapshot(&mut self.snapshot);
        let mut phase = Phase::Connecting;
        let mut fraction = 0.0f64;
        let mut bytes = self.last.bytes_received;
        let mut objects = (self.last.objects_received, self.last.objects_total);
        let mut activity: u64 = self.snapshot.len() as u64;
        for (_, task) in &self.snapshot {
            let Some(value) = &task.progress else {
                if phase == Phase::Connecting && task.name.contains("negotiat") {
                    phase = Phase::Negotiating;
                }
                continue;
            };
            let step = value.step.load(std::sync::atomic::Ordering::Relaxed) as u64;
            let max = value.done_at.map(|m| m as u64);
            activity = activity.wrapping_mul(31).wrapping_add(step);
            let frac = |step: u64, max: Option<u64>| match max {
                Some(m) if m > 0 => (step as f64 / m as f64).min(1.0),
                _ => 0.0,
            };
            match task.id {
                REMOTE_PROGRESS if phase <= Phase::Negotiating => {
                    phase = Phase::Negotiating;
                    fraction = frac(step, max);
                }
                BYTES_READ => {
                    bytes = bytes.max(step);
                    if phase < Phase::Receiving {
                        phase = Phase::Receiving;
                        fraction = 0.0;
                    }
                }
                OBJECTS_INDEXED => {
                    objects = (step, max.unwrap_or(objects.1));
                    if phase <= Phase::Receiving {
                        phase = Phase::Receiving;
                        fraction = frac(step, max);
                    }
                }
                DELTAS_RESOLVED if step > 0 && phase <= Phase::Resolving => {
                    phase = Phase::Resolving;
                    fraction = frac(step, max);
                }
                _ => {}
            }
        }
        let phase = phase.max(self.last.phase);
        let (lo, hi) = range(phase);
        let percent = if phase == self.last.phase || fraction > 0.0 {
            lo + ((hi - lo) as f64 * fraction).round() as u8
        } else {
            lo
        };
        let now = Instant::now();
        let rate = match self.last_sample {
            Some((at, prev)) if now > at => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs >= 0.5 {
                    ((bytes.saturating_sub(prev)) as f64 / secs) as u64
                } else {
                    self.last.bytes_per_sec
                }
            }
            _ => 0,
        };
        if self
            .last_sample
            .is_none_or(|(at, _)| now.duration_since(at).as_secs_f64() >= 0.5)
        {
            self.last_sample = Some((now, bytes));
        }
        self.activity = activity
            .wrapping_mul(31)
            .wrapping_add(bytes)
            .wrapping_mul(31)
            .wrapping_add(phase as u64);
        self.last = Progress {
            phase,
            percent: percent.max(self.last.percent),
            bytes_received: bytes,
            bytes_per_sec: rate,
            objects_received: objects.0,
            objects_total: objects.1,
        };
        &self.last
    }
}
