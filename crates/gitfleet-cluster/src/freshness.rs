//! A node keeps the repositories it owns fresh. It watches the task bucket (every record's
//! `next_sync_at`, which the owner's Registry sets at every final state) and, when a repository
//! that placement gives it is due, requests its sync exactly as the API does: a new generation
//! of the record (a compare-and-set, so two nodes that disagree about ownership for a moment
//! still enqueue it once) and a job on its own subject, which its intake then runs. When a node
//! joins or leaves, ownership moves with placement and each node schedules what it owns now:
//! the schedule is in the records, so nothing is lost or run twice.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use gitfleet_actors::{DueTimes, spread, spread_if_overdue};
use gitfleet_git::Target;
use gitfleet_proto::{CloneTask, Operation, StatusType, Timestamp};

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

    /// The live nodes changed: what this node owns changed too.
    fn set_live(&mut self, live: Vec<String>) {
        if live == self.live {
            return;
        }
        self.live = live;
        self.own = DueTimes::default();
        for (id, at) in &self.due_at {
            if placement::owner(id, &self.live).is_some_and(|owner| *owner == self.me) {
                self.own.set(id, *at);
            }
        }
    }
}

/// Runs until the bucket's watch ends (the node aborts it when it stops).
pub(crate) async fn keep_owned_fresh(ctx: ApiContext, me: String) -> Result<(), ClusterError> {
    let bucket = ctx.nats.tasks().await?;
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::setup("task bucket watch", e))?;
    let mut schedules = Schedules {
        me,
        live: api::live_nodes(&ctx.nodes).await.unwrap_or_default(),
        due_at: HashMap::new(),
        own: DueTimes::default(),
        overdue: 0,
    };
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
            entry = watch.next() => match entry {
                Some(Ok(entry)) => record(&mut schedules, &entry),
                Some(Err(e)) => tracing::warn!(error = %e, "task bucket watch error"),
                None => return Ok(()),
            },
            _ = nodes_tick.tick() => {
                if let Ok(live) = api::live_nodes(&ctx.nodes).await {
                    schedules.set_live(live);
                }
            }
            () = due => {
                let ids = schedules.own.take_due(Timestamp::now());
                for id in ids {
                    request_sync(&ctx, &schedules.live, &id).await;
                }
            }
        }
    }
}

/// Takes a record (or its deletion) from the watch.
fn record(schedules: &mut Schedules, entry: &kv::Entry) {
    match entry.operation {
        kv::Operation::Put => match gitfleet_proto::from_json::<CloneTask>(&entry.value) {
            Ok(task) => schedules.set(&task.id, task.due_at()),
            Err(e) => tracing::debug!(key = %entry.key, error = %e, "unreadable task record"),
        },
        kv::Operation::Delete | kv::Operation::Purge => schedules.set(&entry.key, None),
    }
}

/// Enqueues the sync of task `id`, as the API does for a request, if it is still due.
async fn request_sync(ctx: &ApiContext, live: &[String], id: &str) {
    let found = match ctx.store.get(id).await {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "cannot read a task that is due");
            return;
        }
    };
    let (task, _) = &found;
    if task.due_at().is_none_or(|at| at > Timestamp::now()) {
        return;
    }
    let target = match Target::of_task(task) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "not scheduling a task that does not match its record");
            return;
        }
    };
    let operation = if task.status.status_type == StatusType::Completed {
        Operation::Sync
    } else {
        task.operation
    };
    let url = task.url.clone();
    let submitted = api::enqueue(ctx, &url, target, operation, live, None, Some(found)).await;
    if let Some(error) = submitted.error {
        tracing::warn!(task = %id, error = %error.message, "cannot enqueue a scheduled sync");
    }
}
