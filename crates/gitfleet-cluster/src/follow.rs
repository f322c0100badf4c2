//! A client waiting for tasks to end: their status events as they come, and the task bucket
//! (one `get` each) for the tasks no event has finished. Events are core NATS, best effort, so
//! the bucket is the truth; but reading every waiting task every few seconds is a storm at
//! thousands of tasks (requests that compete with the work for the nodes' links). So a task is
//! read only after it has been quiet (no event of it) for a while, then at doubling gaps, and a
//! round reads at most [`READS_PER_ROUND`] tasks, whatever the number waited for.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_proto::{CloneTask, TaskUpdate};
use tokio::time::Instant;

use crate::client::{Client, ClientError};

/// A task is first read this long after its last event (or after the wait began).
pub const QUIET: Duration = Duration::from_secs(2);
/// The longest gap between two reads of a task still under way.
const MAX_GAP: Duration = Duration::from_secs(30);
/// How often due tasks are read.
const ROUND: Duration = Duration::from_secs(1);
/// At most this many reads per round, [`CONCURRENT_READS`] at a time.
pub const READS_PER_ROUND: usize = 64;
const CONCURRENT_READS: usize = 16;

/// When a waiting task is read next.
#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    gap: Duration,
}

/// The tasks waited for: pending ones with when each is read next, and the final records of
/// those that ended.
#[derive(Debug, Default)]
pub struct Follow {
    pending: HashMap<String, Due>,
    finished: HashMap<String, CloneTask>,
}

impl Follow {
    /// Waits for `ids`; the first read of each is at `first_read` (now, when the tasks may
    /// have ended before anyone listened; later when events were subscribed to in time).
    pub fn new(ids: impl IntoIterator<Item = String>, first_read: Instant) -> Follow {
        let mut follow = Follow::default();
        follow.add(ids, first_read);
        follow
    }

    /// Waits for `ids` too (those already waited for or finished are left as they are).
    pub fn add(&mut self, ids: impl IntoIterator<Item = String>, first_read: Instant) {
        for id in ids {
            if !self.finished.contains_key(&id) {
                self.pending.entry(id).or_insert(Due {
                    at: first_read,
                    gap: QUIET,
                });
            }
        }
    }

    /// Waits for `ids` again (submitted again: what they ended with before is forgotten).
    pub fn restart(&mut self, ids: impl IntoIterator<Item = String>, first_read: Instant) {
        let ids: Vec<String> = ids.into_iter().collect();
        self.forget(&ids);
        self.add(ids, first_read);
    }

    /// No longer waits for `ids`, nor keeps what they ended with.
    pub fn forget(&mut self, ids: &[String]) {
        for id in ids {
            self.pending.remove(id);
            self.finished.remove(id);
        }
    }

    /// Whether the task `id` is waited for and has not ended.
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// An event: a final state ends its task's wait; any other event of a waiting task says it
    /// is alive, so its next read waits for a quiet spell again. True when it ended a wait.
    pub fn event(&mut self, update: &TaskUpdate, now: Instant) -> bool {
        let id = match update {
            TaskUpdate::State { task } => &task.id,
            TaskUpdate::Progress(progress) => &progress.task_id,
        };
        if !self.pending.contains_key(id) {
            return false;
        }
        if let TaskUpdate::State { task } = update
            && task.status.status_type.is_final()
        {
            self.finish((**task).clone());
            return true;
        }
        self.pending.insert(
            id.clone(),
            Due {
                at: now + QUIET,
                gap: QUIET,
            },
        );
        false
    }

    /// Its final record (without its history, which nobody waiting needs).
    fn finish(&mut self, mut task: CloneTask) {
        self.pending.remove(&task.id);
        task.history.clear();
        self.finished.insert(task.id.clone(), task);
    }

    /// A task read from the bucket: a final one ends its wait (true).
    pub fn read(&mut self, task: &CloneTask) -> bool {
        if task.status.status_type.is_final() && self.pending.contains_key(&task.id) {
            self.finish(task.clone());
            return true;
        }
        false
    }

    /// The pending tasks due for a read at `now`, the longest due first, at most
    /// [`READS_PER_ROUND`]; each is rescheduled (its gap doubled) as it is handed out.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<(Instant, &String)> = self
            .pending
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(id, d)| (d.at, id))
            .collect();
        due.sort_unstable();
        let ids: Vec<String> = due
            .into_iter()
            .take(READS_PER_ROUND)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &ids {
            if let Some(d) = self.pending.get_mut(id) {
                d.at = now + d.gap;
                d.gap = (d.gap * 2).min(MAX_GAP);
            }
        }
        ids
    }

    /// Reads the tasks due at `now` from the bucket; those found final end their wait and are
    /// returned (for a display). A task that cannot be read is read again later.
    pub async fn read_due(&mut self, client: &Client, now: Instant) -> Vec<CloneTask> {
        let mut ended = read(client, self.due(now)).await;
        ended.retain(|task| self.read(task));
        ended
    }

    /// Follows the tasks until none is pending: `events` (subscribed with [`Client::watch`])
    /// as they come, each handed to `seen` (and the final records read from the bucket, as
    /// state events); due reads every round. Dropped half-way (a deadline, Ctrl-C), it loses
    /// nothing already learned.
    pub async fn run(
        &mut self,
        client: &Client,
        events: &mut async_nats::Subscriber,
        mut seen: impl FnMut(&TaskUpdate),
    ) -> Result<(), ClientError> {
        let mut round = tokio::time::interval(ROUND);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.pending.is_empty() {
            tokio::select! {
                message = events.next() => {
                    let Some(message) = message else {
                        // No events any more (the connection is closing): reads alone.
                        while !self.pending.is_empty() {
                            round.tick().await;
                            self.read_into(client, &mut seen).await;
                        }
                        break;
                    };
                    if let Ok(update) = gitfleet_proto::from_json::<TaskUpdate>(&message.payload) {
                        self.event(&update, Instant::now());
                        seen(&update);
                    }
                }
                _ = round.tick() => self.read_into(client, &mut seen).await,
            }
        }
        Ok(())
    }

    async fn read_into(&mut self, client: &Client, seen: &mut impl FnMut(&TaskUpdate)) {
        for task in self.read_due(client, Instant::now()).await {
            seen(&TaskUpdate::State {
                task: Box::new(task),
            });
        }
    }

    /// Whether every task waited for has ended.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// The final record of a task that ended.
    pub fn finished(&self, id: &str) -> Option<&CloneTask> {
        self.finished.get(id)
    }

    /// The final records of the tasks that ended, by id.
    pub fn into_finished(self) -> HashMap<String, CloneTask> {
        self.finished
    }
}

/// Reads `ids` from the bucket, [`CONCURRENT_READS`] at a time; those that cannot be read
/// (gone, or no answer) are left out.
pub async fn read(client: &Client, ids: Vec<String>) -> Vec<CloneTask> {
    futures_util::stream::iter(ids)
        .map(|id| async move { client.get(&id).await })
        .buffer_unordered(CONCURRENT_READS)
        .filter_map(|read| async move { read.ok() })
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_proto::{CloneStatus, Operation, Phase, ProgressEvent};

    fn task(id: &str, status: CloneStatus) -> CloneTask {
        let mut task = CloneTask::new(
            id.to_string(),
            format!("https://example.com/{id}.git"),
            Operation::Mirror,
            format!("/srv/{id}.git"),
            jiff::Timestamp::now(),
        );
        task.status = status;
        task
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:05}")).collect()
    }

    #[test]
    fn a_round_reads_a_bounded_number_and_each_task_ever_less_often() {
        let start = Instant::now();
        let mut follow = Follow::new(ids(1_000), start);
        let mut reads: HashMap<String, usize> = HashMap::new();
        // Two minutes of rounds, one a second, nothing ever ending.
        for second in 0..120u64 {
            let due = follow.due(start + Duration::from_secs(second));
            assert!(
                due.len() <= READS_PER_ROUND,
                "{} reads in one round",
                due.len()
            );
            for id in due {
                *reads.entry(id).or_default() += 1;
            }
        }
        let total: usize = reads.values().sum();
        // Without a bound: 1,000 reads every round.
        assert!(total <= 120 * READS_PER_ROUND);
        // Every task was read, none more than its doubling gaps allow in two minutes
        // (gaps of 2, 4, 8 and 16 s, then 30 s).
        assert_eq!(reads.len(), 1_000, "some task was never read");
        assert!(reads.values().all(|n| *n <= 8), "{reads:?}");
    }

    #[test]
    fn an_event_ends_a_wait_or_puts_the_next_read_off() {
        let start = Instant::now();
        let mut follow = Follow::new(ids(2), start + QUIET);
        let progress = TaskUpdate::Progress(ProgressEvent {
            task_id: "t00000".into(),
            attempt: 1,
            phase: Phase::Receiving,
            progress: 10,
            bytes_received: 0,
            bytes_per_sec: 0,
            objects_received: 0,
            objects_total: 0,
        });
        let later = start + Duration::from_secs(10);
        assert!(!follow.event(&progress, later));
        // t00001 is due at QUIET (and again later), t00000 only QUIET after its event.
        assert_eq!(follow.due(start + QUIET), vec!["t00001".to_string()]);
        assert_eq!(follow.due(later), vec!["t00001".to_string()]);
        assert_eq!(follow.due(later + QUIET), vec!["t00000".to_string()]);

        let done = task("t00000", CloneStatus::completed());
        assert!(follow.event(
            &TaskUpdate::State {
                task: Box::new(done)
            },
            later
        ));
        assert!(follow.finished("t00000").is_some());
        // A running state keeps it waiting; events of other tasks change nothing.
        let running = task("t00001", CloneStatus::cloning(10));
        assert!(!follow.event(
            &TaskUpdate::State {
                task: Box::new(running)
            },
            later
        ));
        let other = task("x", CloneStatus::completed());
        assert!(!follow.event(
            &TaskUpdate::State {
                task: Box::new(other)
            },
            later
        ));
        assert!(!follow.is_done());
        assert!(follow.finished("x").is_none());
    }
}
