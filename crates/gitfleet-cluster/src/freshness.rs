//! A node keeps the repositories it owns fresh. It learns each record's `next_sync_at` (which
//! the Registry of the node that ran it sets at every final state) from its own Registry's
//! broadcast for what it runs, and from one read of the task bucket when it starts and when a
//! node leaves (ownership of what that node ran moves): no per-write traffic. When a repository placement
//! gives it is due, it requests the sync exactly as the API does: a new generation of the
//! record (a compare-and-set, so two nodes that disagree about ownership for a moment still
//! enqueue it once) and a job on its own subject, which its intake then runs. The schedule is in
//! the records, so nothing is lost or run twice when ownership moves. An operator's change of a
//! schedule through the API (resume, schedule) is announced on a control subject; the owner
//! reads that record again.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_actors::{DueTimes, spread, spread_if_overdue};
use gitfleet_git::Target;
use gitfleet_proto::{Operation, StatusType, TaskUpdate, Timestamp};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::{self, ApiContext};
use crate::infra::{ClusterError, HEARTBEAT_INTERVAL};
use crate::placement;

/// What this node knows of every task's schedule, and which due times are its own.
struct Schedules {
    me: String,
    live: Vec<String>,
    /// Every task's due time, owned or not (ownership changes with the live nodes).
    due_at: HashMap<String, Option<Timestamp>>,
    /// The due times of the tasks this node owns.
    own: DueTimes,
    /// Overdue records seen so far, to spread them.
    overdue: usize,
}

impl Schedules {
    fn owns(&self, id: &str) -> bool {
        placement::owner(id, &self.live).is_some_and(|owner| *owner == self.me)
    }

    fn set(&mut self, id: &str, at: Option<Timestamp>) {
        let now = Timestamp::now();
        let at = at.map(|at| {
            if at <= now {
                self.overdue += 1;
            }
            spread_if_overdue(at, now, spread(self.overdue))
        });
        self.due_at.insert(id.to_string(), at);
        let owned = self.owns(id);
        self.own.set(id, at.filter(|_| owned));
    }

    /// Every record's due time (read from the bucket at start and after a node left; what was
    /// known, when a node joined), sorted again by who owns what now.
    fn reload(&mut self, due_at: HashMap<String, Option<Timestamp>>) {
        self.due_at.clear();
        self.own = DueTimes::default();
        self.overdue = 0;
        for (id, at) in due_at {
            self.set(&id, at);
        }
    }
}

/// Every task's due time, from one scan of the bucket (a page of records per round trip, not a
/// read per task).
async fn read_due_times(
    ctx: &ApiContext,
) -> Result<HashMap<String, Option<Timestamp>>, ClusterError> {
    let mut due_at = HashMap::new();
    ctx.store
        .scan_all(|task, _| {
            due_at.insert(task.id.clone(), task.due_at());
        })
        .await
        .map_err(|e| ClusterError::request("task bucket", e))?;
    Ok(due_at)
}

/// Every task's due time, read again until the bucket answers (a NATS leader change or a
/// timeout while a node leaves must not end this node's schedule), with backoff.
async fn due_times(ctx: &ApiContext) -> HashMap<String, Option<Timestamp>> {
    let mut delay = Duration::from_secs(1);
    loop {
        match read_due_times(ctx).await {
            Ok(due_at) => return due_at,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    retry_in_s = delay.as_secs(),
                    "cannot read the schedules; trying again"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Runs until `updates` (this node's Registry's broadcast) closes.
pub(crate) async fn keep_owned_fresh(
    ctx: ApiContext,
    me: String,
    mut updates: broadcast::Receiver<TaskUpdate>,
) -> Result<(), ClusterError> {
    let mut schedules = Schedules {
        me,
        live: api::live_nodes(&ctx.nodes).await.unwrap_or_default(),
        due_at: HashMap::new(),
        own: DueTimes::default(),
        overdue: 0,
    };
    // Subscribed before the first read: a change made meanwhile is not missed.
    let mut rescheduled = ctx
        .nats
        .client
        .subscribe(ctx.nats.subjects.rescheduled())
        .await
        .map_err(|e| ClusterError::request("schedule changes", e))?;
    schedules.reload(due_times(&ctx).await);
    let mut nodes_tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        let wait = schedules.own.earliest().map(|at| {
            Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
        });
        let due = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = updates.recv() => match update {
                Ok(TaskUpdate::State { task }) => schedules.set(&task.id, task.due_at()),
                Ok(TaskUpdate::Progress(_)) => {}
                Err(RecvError::Lagged(_)) => schedules.reload(due_times(&ctx).await),
                Err(RecvError::Closed) => return Ok(()),
            },
            Some(message) = rescheduled.next() => {
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                if schedules.owns(&id)
                    && let Ok(Some((task, _))) = ctx.store.get(&id).await
                {
                    schedules.set(&task.id, task.due_at());
                }
            }
            _ = nodes_tick.tick() => {
                if let Ok(live) = api::live_nodes(&ctx.nodes).await
                    && live != schedules.live
                {
                    // A node that left may leave this one repositories it never ran: read their
                    // schedules. One that joined only takes some away: what is known suffices.
                    let one_left = schedules.live.iter().any(|n| !live.contains(n));
                    schedules.live = live;
                    let due_at = if one_left {
                        due_times(&ctx).await
                    } else {
                        std::mem::take(&mut schedules.due_at)
                    };
                    schedules.reload(due_at);
                }
            }
            () = due => {
                let ids = schedules.own.take_due(Timestamp::now());
                for id in ids {
                    match request_sync(&ctx, &schedules.live, &id).await {
                        Requested::Done | Requested::Dropped => {}
                        Requested::Later(at) => schedules.set(&id, Some(at)),
                        Requested::TryAgain => {
                            let later = Timestamp::now().checked_add(RETRY_AFTER).ok();
                            schedules.set(&id, later);
                        }
                    }
                }
            }
        }
    }
}

/// A due sync that could not be enqueued (NATS unavailable) is tried again this much later.
const RETRY_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// What became of a due task.
#[derive(Debug)]
enum Requested {
    /// Enqueued (or already running, or not final): its next final state reschedules it.
    Done,
    /// Its record says it is due later (changed meanwhile).
    Later(Timestamp),
    /// Not scheduled: it does not match its record, or is gone.
    Dropped,
    /// Enqueueing failed for now.
    TryAgain,
}

/// Enqueues the sync of task `id`, as the API does for a request, if it is still due.
async fn request_sync(ctx: &ApiContext, live: &[String], id: &str) -> Requested {
    let found = match ctx.store.get(id).await {
        Ok(Some(found)) => found,
        Ok(None) => return Requested::Dropped,
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "cannot read a task that is due");
            return Requested::TryAgain;
        }
    };
    let (task, _) = &found;
    match task.due_at() {
        None => return Requested::Done,
        Some(at) if at > Timestamp::now() => return Requested::Later(at),
        Some(_) => {}
    }
    let target = match Target::of_task(task) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "not scheduling a task that does not match its record");
            return Requested::Dropped;
        }
    };
    let operation = if task.status.status_type == StatusType::Completed {
        Operation::Sync
    } else {
        task.operation
    };
    let url = task.url.clone();
    let submitted = api::enqueue(ctx, &url, target, operation, live, None, Some(found)).await;
    match submitted.error {
        None => Requested::Done,
        Some(error) => {
            tracing::warn!(task = %id, error = %error.message, "cannot enqueue a scheduled sync; trying again later");
            Requested::TryAgain
        }
    }
}
