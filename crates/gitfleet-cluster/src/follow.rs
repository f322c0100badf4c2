//! A client waiting for tasks to end: their status events as they come, and the task bucket
//! (one `get` each) for the tasks no event has finished. Events are core NATS, best effort, so
//! the bucket is the truth; but reading every waiting task every few seconds is a storm at
//! thousands of tasks (requests that compete with the work for the nodes' links). So a task is
//! read only after it has been quiet (no event of it) for a while, then at doubling gaps, and a
//! round reads at most [`READS_PER_ROUND`] tasks, whatever the number waited for.
//!
//! A wait is for a generation of a task's record (what the submit reply names): a final state
//! of an earlier generation, a late event of the run before, does not end it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_proto::{ApiErrorCode, CloneTask, SubmitReply, TaskUpdate};
use tokio::time::Instant;

use crate::client::{Client, ClientError};

/// A task is first read this long after its last event (or after the wait began).
pub const QUIET: Duration = Duration::from_secs(2);
/// The longest gap between two reads of a task still under way.
const MAX_GAP: Duration = Duration::from_secs(30);
/// How often due tasks are read.
const ROUND: Duration = Duration::from_secs(1);
/// At most this many reads per round.
pub const READS_PER_ROUND: usize = 64;

/// A waiting task: the generation whose end is waited for (0: any), and when it is read next.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    generation: u64,
    at: Instant,
    gap: Duration,
}

/// A task whose wait ended: the generation it ended with, and its final record (none when it
/// ended before anyone waited: only that it ended is known).
#[derive(Debug)]
struct Ended {
    generation: u64,
    record: Option<CloneTask>,
}

/// The tasks waited for: pending ones with when each is read next, those that ended, and those
/// that are gone (removed while waited for).
#[derive(Debug, Default)]
pub struct Follow {
    pending: HashMap<String, Waiting>,
    finished: HashMap<String, Ended>,
    gone: HashSet<String>,
    /// Whether the final records are kept (a wait that only asks whether tasks ended keeps
    /// none: a long-lived session would otherwise hold a record of every task it ever ran).
    keep_records: bool,
}

/// What a round of reads found.
#[derive(Debug, Default)]
pub struct Round {
    /// Tasks found final: their wait ended.
    pub ended: Vec<CloneTask>,
    /// Set when every read of the round failed (and not because a task is gone): the cluster
    /// did not answer.
    pub failed: Option<ClientError>,
}

impl Follow {
    /// Waits for `tasks` (id and generation; 0 for any); the first read of each is at
    /// `first_read` (now, when the tasks may have ended before anyone listened; later when
    /// events were subscribed to in time).
    pub fn new(tasks: impl IntoIterator<Item = (String, u64)>, first_read: Instant) -> Follow {
        let mut follow = Follow {
            keep_records: true,
            ..Follow::default()
        };
        follow.add(tasks, first_read);
        follow
    }

    /// The tasks a submit reply accepted, with their generations.
    pub fn accepted(reply: &SubmitReply) -> impl Iterator<Item = (String, u64)> + '_ {
        reply
            .tasks
            .iter()
            .filter_map(|t| match (&t.task_id, &t.error) {
                (Some(id), None) => Some((id.clone(), t.generation.unwrap_or(0))),
                _ => None,
            })
    }

    /// Waits for `tasks` too. A task already waited for keeps its place; one that ended or
    /// went is left as it is unless a later generation is asked for.
    pub fn add(&mut self, tasks: impl IntoIterator<Item = (String, u64)>, first_read: Instant) {
        for (id, generation) in tasks {
            if let Some(waiting) = self.pending.get_mut(&id) {
                waiting.generation = waiting.generation.max(generation);
                continue;
            }
            let ended = self
                .finished
                .get(&id)
                .is_some_and(|ended| ended.generation >= generation)
                || (generation == 0 && self.gone.contains(&id));
            if ended {
                continue;
            }
            self.finished.remove(&id);
            self.gone.remove(&id);
            self.pending.insert(
                id,
                Waiting {
                    generation,
                    at: first_read,
                    gap: QUIET,
                },
            );
        }
    }

    /// No longer waits for `ids`, nor keeps what they ended with.
    pub fn forget<'a>(&mut self, ids: impl IntoIterator<Item = &'a String>) {
        for id in ids {
            self.pending.remove(id);
            self.finished.remove(id);
            self.gone.remove(id);
        }
    }

    /// Whether the task `id` is waited for and has not ended.
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    /// Whether every task waited for has ended.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// An event: a final state of the generation waited for (or a later one) ends its task's
    /// wait; any other event of a waiting task says it is alive, so its next read waits for a
    /// quiet spell again. True when it ended a wait.
    pub fn event(&mut self, update: &TaskUpdate, now: Instant) -> bool {
        let id = match update {
            TaskUpdate::State { task } => &task.id,
            TaskUpdate::Progress(progress) => &progress.task_id,
        };
        let Some(waiting) = self.pending.get_mut(id) else {
            return false;
        };
        if let TaskUpdate::State { task } = update {
            if task.generation < waiting.generation {
                // The run before: says nothing of this one.
                return false;
            }
            if task.status.status_type.is_final() {
                self.finish((**task).clone());
                return true;
            }
        }
        waiting.at = now + QUIET;
        waiting.gap = QUIET;
        false
    }

    /// Its final record (without its history, which nobody waiting needs).
    fn finish(&mut self, mut task: CloneTask) {
        self.pending.remove(&task.id);
        task.history.clear();
        let id = task.id.clone();
        let generation = task.generation;
        let record = self.keep_records.then_some(task);
        self.finished.insert(id, Ended { generation, record });
    }

    /// `id` ended with `generation` before anyone waited for it (no record).
    fn ended_unseen(&mut self, id: &str, generation: u64) {
        self.pending.remove(id);
        self.gone.remove(id);
        self.finished.insert(
            id.to_string(),
            Ended {
                generation,
                record: None,
            },
        );
    }

    /// A task read from the bucket: a final one of the generation waited for ends its wait
    /// (true). A record older than the generation waited for was removed and created anew
    /// since: the task waited for is gone.
    fn read(&mut self, task: &CloneTask) -> bool {
        let Some(waiting) = self.pending.get(&task.id) else {
            return false;
        };
        if task.generation < waiting.generation {
            self.pending.remove(&task.id);
            self.gone.insert(task.id.clone());
            return false;
        }
        let ends = task.status.status_type.is_final();
        if ends {
            self.finish(task.clone());
        }
        ends
    }

    /// The pending tasks due for a read at `now`, the longest due first, at most
    /// [`READS_PER_ROUND`]; each is rescheduled (its gap doubled) as it is handed out.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due: Vec<(Instant, &String)> = self
            .pending
            .iter()
            .filter(|(_, w)| w.at <= now)
            .map(|(id, w)| (w.at, id))
            .collect();
        due.sort_unstable();
        let ids: Vec<String> = due
            .into_iter()
            .take(READS_PER_ROUND)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &ids {
            if let Some(w) = self.pending.get_mut(id) {
                w.at = now + w.gap;
                w.gap = (w.gap * 2).min(MAX_GAP);
            }
        }
        ids
    }

    /// Takes what a round of reads found.
    fn apply(&mut self, reads: Reads) -> Round {
        for id in &reads.gone {
            if self.pending.remove(id).is_some() {
                self.gone.insert(id.clone());
            }
        }
        let mut ended = reads.found;
        ended.retain(|task| self.read(task));
        Round {
            ended,
            failed: reads.failed,
        }
    }

    /// Reads the tasks due at `now` from the bucket.
    pub async fn read_due(&mut self, client: &Client, now: Instant) -> Round {
        let reads = read(client, self.due(now)).await;
        self.apply(reads)
    }

    /// Follows the tasks until none is pending: `events` (subscribed with [`Client::watch`]
    /// before the submit) as they come, each handed to `seen`, as are the final records read
    /// from the bucket (as state events); due reads every round. A cluster that does not
    /// answer is waited for. Dropped half-way (a deadline, Ctrl-C), it loses nothing already
    /// learned.
    pub async fn run(
        &mut self,
        client: &Client,
        events: &mut async_nats::Subscriber,
        mut seen: impl FnMut(&TaskUpdate),
    ) {
        let mut round = tokio::time::interval(ROUND);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listening = true;
        while !self.pending.is_empty() {
            tokio::select! {
                message = events.next(), if listening => match message {
                    Some(message) => {
                        if let Ok(update) = gitfleet_proto::from_json::<TaskUpdate>(&message.payload) {
                            self.event(&update, Instant::now());
                            seen(&update);
                        }
                    }
                    // No events any more (the connection is closing): reads alone.
                    None => listening = false,
                },
                _ = round.tick() => {
                    for task in self.read_due(client, Instant::now()).await.ended {
                        seen(&TaskUpdate::State { task: Box::new(task) });
                    }
                }
            }
        }
    }

    /// Whether the task `id` was gone (removed) when it was read.
    pub fn is_gone(&self, id: &str) -> bool {
        self.gone.contains(id)
    }

    /// The final records of the tasks that ended, by id.
    pub fn into_finished(self) -> HashMap<String, CloneTask> {
        self.finished
            .into_iter()
            .filter_map(|(id, ended)| ended.record.map(|task| (id, task)))
            .collect()
    }
}

/// What reading some tasks found.
#[derive(Debug, Default)]
struct Reads {
    found: Vec<CloneTask>,
    gone: Vec<String>,
    failed: Option<ClientError>,
}

/// Reads `ids` from the bucket.
async fn read(client: &Client, ids: Vec<String>) -> Reads {
    let asked = ids.len();
    let mut reads = Reads::default();
    let mut errors = 0;
    for (id, answer) in client.get_many(ids).await {
        match answer {
            Ok(task) => reads.found.push(task),
            Err(ClientError::Api(e)) if e.code == ApiErrorCode::NotFound => reads.gone.push(id),
            Err(e) => {
                errors += 1;
                reads.failed = Some(e);
            }
        }
    }
    if errors < asked {
        reads.failed = None;
    }
    reads
}

/// How many final generations of tasks nobody waited for yet [`SharedFollow`] remembers.
const RECENT_FINALS: usize = 100_000;

/// A [`Follow`] shared between a task that feeds it the cluster's status events and waits on
/// other threads (Python's `ClusterSession`, whose waits come in short slices). The rounds of
/// reads are the follow's, not the waits': at most one a second, each run to its end in a task
/// of its own whatever deadline the wait that started it had, its error kept for the next wait.
/// The final states of tasks not yet waited for are remembered while a submit is under way (a
/// task can end before its submit's reply comes back).
#[derive(Debug)]
pub struct SharedFollow {
    state: Mutex<Shared>,
}

impl Default for SharedFollow {
    fn default() -> Self {
        SharedFollow {
            state: Mutex::new(Shared::default()),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    follow: Follow,
    next_round: Option<Instant>,
    /// A round of reads is under way.
    reading: bool,
    /// Why the last round read nothing (the cluster did not answer), for the next wait.
    failed: Option<ClientError>,
    /// Submits under way.
    submitting: usize,
    /// Final generations seen of tasks nobody waited for (while submitting), oldest first.
    recent: HashMap<String, u64>,
    recent_order: VecDeque<String>,
}

impl SharedFollow {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing is left half-written by a panic that matters here: go on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A status event from `<prefix>.status.<task_id>`: parsed only when it may matter (its
    /// task is waited for, or a submit is under way).
    pub fn event(&self, task_id: &str, payload: &[u8]) {
        {
            let shared = self.lock();
            if shared.submitting == 0 && !shared.follow.is_pending(task_id) {
                return;
            }
        }
        let Ok(update) = gitfleet_proto::from_json::<TaskUpdate>(payload) else {
            return;
        };
        let mut shared = self.lock();
        if shared.follow.is_pending(task_id) {
            shared.follow.event(&update, Instant::now());
        } else if let TaskUpdate::State { task } = &update
            && task.status.status_type.is_final()
        {
            shared.remember(&task.id, task.generation);
        }
    }

    /// Submits `submit` and waits for what it accepted from then on.
    pub async fn submit<F>(&self, submit: F) -> Result<SubmitReply, ClientError>
    where
        F: Future<Output = Result<SubmitReply, ClientError>>,
    {
        self.lock().submitting += 1;
        let reply = submit.await;
        let mut shared = self.lock();
        shared.submitting -= 1;
        if let Ok(reply) = &reply {
            let first_read = Instant::now() + QUIET;
            for (id, generation) in Follow::accepted(reply) {
                // (An unknown generation, from an older node, cannot be told from the run
                // before: waited for anew.)
                if generation == 0 {
                    shared.follow.forget([&id]);
                }
                match shared.recent.get(&id).copied() {
                    // Ended before the reply came.
                    Some(seen) if generation > 0 && seen >= generation => {
                        shared.follow.ended_unseen(&id, seen);
                    }
                    // (An end of this generation or a later one already known stays.)
                    _ => shared.follow.add([(id, generation)], first_read),
                }
            }
        }
        if shared.submitting == 0 {
            shared.recent.clear();
            shared.recent_order.clear();
        }
        reply
    }

    /// Waits until every task of `ids` has ended (or is gone), or `deadline` passes: true when
    /// they have. Ids it does not wait for yet are read at once. An error when the cluster
    /// answered none of the last round's reads.
    pub async fn wait(
        self: &Arc<Self>,
        client: &Client,
        ids: &[String],
        deadline: Option<Instant>,
    ) -> Result<bool, ClientError> {
        const LOOK: Duration = Duration::from_millis(50);
        self.lock()
            .follow
            .add(ids.iter().map(|id| (id.clone(), 0)), Instant::now());
        loop {
            let now = Instant::now();
            {
                let mut shared = self.lock();
                if let Some(e) = shared.failed.take() {
                    return Err(e);
                }
                if !ids.iter().any(|id| shared.follow.is_pending(id)) {
                    return Ok(true);
                }
                if !shared.reading && shared.next_round.is_none_or(|at| at <= now) {
                    shared.next_round = Some(now + ROUND);
                    let due = shared.follow.due(now);
                    if !due.is_empty() {
                        shared.reading = true;
                        tokio::spawn(Arc::clone(self).round(client.clone(), due));
                    }
                }
            }
            if deadline.is_some_and(|at| now >= at) {
                return Ok(false);
            }
            let wake = deadline.map_or(now + LOOK, |at| at.min(now + LOOK));
            tokio::time::sleep_until(wake).await;
        }
    }

    /// One round of reads, to its end.
    async fn round(self: Arc<Self>, client: Client, due: Vec<String>) {
        let reads = read(&client, due).await;
        let mut shared = self.lock();
        shared.reading = false;
        if let Some(e) = shared.follow.apply(reads).failed {
            shared.failed = Some(e);
        }
    }
}

impl Shared {
    fn remember(&mut self, id: &str, generation: u64) {
        if self.recent.insert(id.to_string(), generation).is_none() {
            self.recent_order.push_back(id.to_string());
            if self.recent_order.len() > RECENT_FINALS
                && let Some(oldest) = self.recent_order.pop_front()
            {
                self.recent.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_proto::{CloneStatus, Operation, Phase, ProgressEvent};

    fn task(id: &str, status: CloneStatus, generation: u64) -> CloneTask {
        let mut task = CloneTask::new(
            id.to_string(),
            format!("https://example.com/{id}.git"),
            Operation::Mirror,
            format!("/srv/{id}.git"),
            jiff::Timestamp::now(),
        );
        task.status = status;
        task.generation = generation;
        task
    }

    fn state(task: CloneTask) -> TaskUpdate {
        TaskUpdate::State {
            task: Box::new(task),
        }
    }

    fn ids(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("t{i:05}"), 1)).collect()
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

        assert!(follow.event(&state(task("t00000", CloneStatus::completed(), 1)), later));
        // A running state keeps it waiting; events of other tasks change nothing.
        let running = task("t00001", CloneStatus::cloning(10), 1);
        assert!(!follow.event(&state(running), later));
        assert!(!follow.event(&state(task("x", CloneStatus::completed(), 1)), later));
        assert!(!follow.is_done());
        let finished = follow.into_finished();
        assert!(finished.contains_key("t00000") && !finished.contains_key("x"));
    }

    #[test]
    fn the_end_of_the_run_before_does_not_end_a_wait() {
        let now = Instant::now();
        let mut follow = Follow::new([("t".to_string(), 3)], now);
        // A late event of generation 2: still waiting.
        assert!(!follow.event(&state(task("t", CloneStatus::completed(), 2)), now));
        assert!(follow.is_pending("t"));
        assert!(follow.event(&state(task("t", CloneStatus::completed(), 3)), now));
        // Waiting again for a later generation forgets the end of this one.
        follow.add([("t".to_string(), 4)], now);
        assert!(follow.is_pending("t"));
        // Waiting for "any" generation of what ended is no wait.
        assert!(follow.event(&state(task("t", CloneStatus::completed(), 4)), now));
        follow.add([("t".to_string(), 0)], now);
        assert!(follow.is_done());

        // A record read older than the generation waited for: removed and created anew since.
        let mut follow = Follow::new([("u".to_string(), 5)], now);
        assert!(!follow.read(&task("u", CloneStatus::completed(), 1)));
        assert!(follow.is_gone("u") && follow.is_done());
    }

    #[test]
    fn a_gone_task_ends_its_wait() {
        let now = Instant::now();
        let mut follow = Follow::new([("t".to_string(), 1), ("u".to_string(), 1)], now);
        let round = follow.apply(Reads {
            gone: vec!["t".to_string()],
            ..Reads::default()
        });
        assert!(round.ended.is_empty() && round.failed.is_none());
        assert!(follow.is_gone("t") && !follow.is_pending("t") && follow.is_pending("u"));
    }
}
