//! Telling, from the Registry's broadcast, which state changes end work: a final state with a
//! finish time after the watcher started, not seen before, ends it; a final state broadcast
//! again (a schedule change, a resume) carries the finish time it had and ends nothing. (Whether
//! the task was seen in flight cannot tell: the Registry may deliver only the latest of several
//! states of a task that waited together.) A task seen at a later attempt than before was tried
//! again. Metrics and notifications both count by this rule.

use std::collections::HashMap;

use gitfleet_proto::{CloneTask, Timestamp};

/// What one state change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Queued or running, as before or for the first time.
    InFlight,
    /// Queued or running again at a later attempt: a retry.
    Retried,
    /// A final state that ended work.
    Ended,
    /// A final state seen before, or from before the watcher started: nothing ended.
    Repeated,
}

/// What has been seen of each task.
#[derive(Debug)]
pub struct Transitions {
    started: Timestamp,
    /// The attempt each unfinished task was last seen at.
    in_flight: HashMap<String, u32>,
    /// The finish time of each task's last final state seen (tasks that ended since `started`).
    finished: HashMap<String, Timestamp>,
}

impl Default for Transitions {
    fn default() -> Self {
        Transitions {
            started: Timestamp::now(),
            in_flight: HashMap::new(),
            finished: HashMap::new(),
        }
    }
}

impl Transitions {
    pub fn observe(&mut self, task: &CloneTask) -> Change {
        if !task.status.status_type.is_final() {
            // Attempts count from 1 when one starts (0 while first queued).
            let previous = self.in_flight.insert(task.id.clone(), task.attempts);
            return if previous.is_some_and(|attempt| attempt >= 1 && attempt < task.attempts) {
                Change::Retried
            } else {
                Change::InFlight
            };
        }
        self.in_flight.remove(&task.id);
        let Some(finished) = task.finished_at.filter(|at| *at >= self.started) else {
            return Change::Repeated;
        };
        match self.finished.insert(task.id.clone(), finished) {
            Some(seen) if seen == finished => Change::Repeated,
            _ => Change::Ended,
        }
    }

    /// Updates were missed: forget what was in flight (seen again at its next state) rather
    /// than keep it forever. (What finished is kept: it tells repeats apart.)
    pub fn forget(&mut self) {
        self.in_flight.clear();
    }
}
