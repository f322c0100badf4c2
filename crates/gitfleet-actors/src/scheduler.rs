//! Keeping a fleet fresh: runs each repository's sync when its record says it is due
//! (`next_sync_at`, which the Registry sets at every final state, see `schedule.rs`).
//!
//! Due times are kept in a heap, updated from the fleet's broadcast; a stale heap entry (the
//! task was rescheduled meanwhile) is skipped when it comes up. A sync is submitted like any
//! other request, so the Supervisor keeps it single-flight: a repository already queued or
//! running is not submitted twice. Work that was overdue when the scheduler started (a restart
//! after a while) is spread over a little time rather than started at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use gitfleet_proto::{CloneTask, TaskError, TaskUpdate, Timestamp};
use tokio::sync::broadcast::error::RecvError;

use crate::{Fleet, FleetError, Job};

/// Overdue work at start is spread over at most this long...
const MAX_SPREAD: Duration = Duration::from_secs(600);
/// ...and at least this much apart per repository (so a few overdue repositories start almost
/// at once).
const SPREAD_STEP: Duration = Duration::from_millis(50);

/// What is due when: a heap of due times, where setting a task's time again replaces its
/// entry (the old one is skipped when it comes up).
#[derive(Debug, Default)]
pub struct DueTimes {
    heap: BinaryHeap<Reverse<(Timestamp, String)>>,
    /// The current due time of each scheduled task.
    current: HashMap<String, Timestamp>,
}

impl DueTimes {
    /// Task `id` is due at `at` (`None`: not scheduled).
    pub fn set(&mut self, id: &str, at: Option<Timestamp>) {
        match at {
            Some(at) => {
                if self.current.insert(id.to_string(), at) != Some(at) {
                    self.heap.push(Reverse((at, id.to_string())));
                }
            }
            None => {
                self.current.remove(id);
            }
        }
    }

    /// When the earliest current entry is due.
    pub fn earliest(&mut self) -> Option<Timestamp> {
        while let Some(Reverse((at, id))) = self.heap.peek() {
            if self.current.get(id) == Some(at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes every task due at `now`.
    pub fn take_due(&mut self, now: Timestamp) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(at) = self.earliest() {
            if at > now {
                break;
            }
            if let Some(Reverse((_, id))) = self.heap.pop() {
                self.current.remove(&id);
                due.push(id);
            }
        }
        due
    }
}

/// Delays that spread `overdue` repositories, due at once after a restart, over a little time.
pub fn spread(overdue: usize) -> Duration {
    SPREAD_STEP
        .saturating_mul(u32::try_from(overdue).unwrap_or(u32::MAX))
        .min(MAX_SPREAD)
}

/// `at`, or when it has passed, a random moment within `spread` from `now`.
pub fn spread_if_overdue(at: Timestamp, now: Timestamp, spread: Duration) -> Timestamp {
    if at > now {
        return at;
    }
    let delay = spread.mul_f64(rand::random_range(0.0..=1.0));
    jiff::SignedDuration::try_from(delay)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now)
}

/// Syncs the repositories of `fleet` as they come due until `shutdown` resolves. `plan` turns
/// a task into its sync job (it applies the caller's URL policy); a task it refuses is left
/// unscheduled, with a warning.
pub async fn keep_fresh(
    fleet: &Fleet,
    plan: impl Fn(&CloneTask) -> Result<Job, TaskError>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FleetError> {
    let mut updates = fleet.subscribe();
    let mut due = DueTimes::default();
    let now = Timestamp::now();
    let tasks = fleet.tasks().await?;
    let overdue = tasks
        .iter()
        .filter_map(CloneTask::due_at)
        .filter(|at| *at <= now)
        .count();
    let spread = spread(overdue);
    for task in &tasks {
        let at = task.due_at().map(|at| spread_if_overdue(at, now, spread));
        due.set(&task.id, at);
    }
    if overdue > 0 {
        tracing::info!(
            overdue,
            spread_s = spread.as_secs(),
            "spreading overdue syncs"
        );
    }
    tokio::pin!(shutdown);
    loop {
        let wait = due.earliest().map(|at| {
            Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
        });
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = sleep => {
                let mut jobs = Vec::new();
                for id in due.take_due(Timestamp::now()) {
                    let Some(task) = fleet.get(&id).await? else { continue };
                    match plan(&task) {
                        Ok(job) => jobs.push(job),
                        Err(e) => {
                            tracing::warn!(task = %id, error = %e, "not scheduling a task that cannot be planned");
                        }
                    }
                }
                if !jobs.is_empty() {
                    tracing::debug!(jobs = jobs.len(), "scheduled syncs due");
                    fleet.submit(jobs).await?;
                }
            }
            update = updates.recv() => match update {
                Ok(TaskUpdate::State { task }) => due.set(&task.id, task.due_at()),
                Ok(TaskUpdate::Progress(_)) => {}
                // Missed updates: read the schedule again from the records.
                Err(RecvError::Lagged(_)) => {
                    for task in fleet.tasks().await? {
                        due.set(&task.id, task.due_at());
                    }
                }
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("a valid time")
    }

    #[test]
    fn overdue_work_is_spread_and_future_work_keeps_its_time() {
        let now = at(1_000_000);
        // A few overdue repositories start almost at once; many are spread, up to a cap.
        assert_eq!(spread(3), Duration::from_millis(150));
        assert_eq!(spread(100_000), MAX_SPREAD);
        let window = spread(200);
        for _ in 0..200 {
            let start = spread_if_overdue(at(10), now, window);
            assert!(start >= now, "{start}");
            assert!(
                start.duration_since(now) <= jiff::SignedDuration::try_from(window).expect("small"),
                "{start}"
            );
        }
        assert_eq!(spread_if_overdue(at(2_000_000), now, window), at(2_000_000));
    }

    #[test]
    fn due_times_come_in_order_and_rescheduling_replaces() {
        let mut due = DueTimes::default();
        due.set("a", Some(at(30)));
        due.set("b", Some(at(10)));
        due.set("c", Some(at(20)));
        // Rescheduled later, and unscheduled: their old entries never come up.
        due.set("b", Some(at(40)));
        due.set("c", None);
        assert_eq!(due.earliest(), Some(at(30)));
        assert_eq!(due.take_due(at(35)), vec!["a".to_string()]);
        assert_eq!(due.take_due(at(39)), Vec::<String>::new());
        assert_eq!(due.take_due(at(100)), vec!["b".to_string()]);
        assert_eq!(due.earliest(), None);
    }
}
