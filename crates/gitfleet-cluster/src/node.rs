//! A gitfleet node: the embedded actors plus NATS around them. Pulls the jobs placed on it,
//! acknowledges each only when its result is durable, publishes status events, answers the API,
//! and announces itself with a heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer};
use futures_util::StreamExt;
use gitfleet_actors::{Fleet, FleetConfig, Job, TaskStore};
use gitfleet_git::{Policy, Target};
use gitfleet_proto::{
    CloneStatus, JobMessage, NodeInfo, Operation, StatusType, TaskError, TaskUpdate,
};
use tokio::sync::broadcast::error::RecvError;

use crate::api::{self, ApiContext};
use crate::infra::{ClusterError, Durability, HEARTBEAT_INTERVAL, NODE_TTL, Nats};
use crate::kv_store::KvStore;

/// A job is redelivered when its node has not acknowledged it (or said it is still working) for
/// this long.
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_ACK_INTERVAL: Duration = Duration::from_secs(10);
/// Progress events of a task go out at most this often; a state transition goes out at once.
const PROGRESS_EVENT_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: String,
    pub durability: Durability,
    /// Applied to every URL of the API and of jobs: strict unless configured otherwise.
    pub policy: Policy,
}

/// Runs a node until `shutdown` resolves.
pub async fn run_node(
    nats: Nats,
    options: NodeOptions,
    fleet_config: FleetConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClusterError> {
    crate::subjects::validate_node_id(&options.node_id).map_err(ClusterError::Config)?;
    nats.ensure_resources(options.durability).await?;
    let store = KvStore::new(nats.tasks().await?);
    let nodes = nats.nodes().await?;
    let layout = fleet_config.layout.clone();
    let concurrency = fleet_config.concurrency;
    let fleet = Fleet::start(fleet_config, Arc::new(store.clone()))
        .await
        .map_err(|e| ClusterError::Config(e.to_string()))?;
    let started_at = jiff::Timestamp::now();
    adopt_earlier_repositories(&store, &layout, &options.node_id).await;

    let mut background = tokio::task::JoinSet::new();
    // Status events: every transition of this node's tasks, and their progress.
    {
        let updates = fleet.subscribe();
        let nats = nats.clone();
        background.spawn(publish_status(nats, updates));
    }
    // The API, answered by whichever node the queue group picks.
    {
        let context = ApiContext {
            nats: nats.clone(),
            store: store.clone(),
            nodes: nodes.clone(),
            policy: options.policy.clone(),
        };
        background.spawn(async move {
            if let Err(e) = api::serve(context).await {
                tracing::error!(error = %e, "the API stopped");
            }
        });
    }

    let mut cancels = nats
        .client
        .subscribe(nats.subjects.cancel())
        .await
        .map_err(|e| ClusterError::Request(e.to_string()))?;
    // Announce ourselves before our consumer exists: a consumer without a heartbeat is what
    // the takeover looks for.
    let _ = nodes
        .put(
            &options.node_id,
            gitfleet_proto::to_json(&NodeInfo {
                node_id: options.node_id.clone(),
                running: 0,
                concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
                repositories_owned: 0,
                started_at,
                last_seen: started_at,
            })
            .into(),
        )
        .await;
    let stream = nats
        .jetstream
        .get_stream(nats.subjects.jobs_stream())
        .await
        .map_err(|e| ClusterError::Setup {
            what: "jobs stream".into(),
            message: e.to_string(),
        })?;
    let consumer_config = consumer::pull::Config {
        durable_name: Some(nats.subjects.node_consumer(&options.node_id)),
        filter_subject: nats.subjects.jobs(&options.node_id),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: i64::try_from(concurrency.saturating_mul(4).max(16)).unwrap_or(64),
        ..Default::default()
    };
    // A takeover that died half-way leaves `takeover-<us>`, which filters our subject: a work
    // queue stream allows one consumer per subject, so ours could not be created. Removing it
    // releases what it held to us.
    let leftover = format!("takeover-{}", options.node_id);
    if stream.consumer_info(&leftover).await.is_ok() {
        tracing::warn!(consumer = %leftover, "removing a takeover consumer left on our jobs");
        let _ = stream.delete_consumer(&leftover).await;
    }
    let open_jobs = || async {
        let consumer = stream
            .get_or_create_consumer(
                &nats.subjects.node_consumer(&options.node_id),
                consumer_config.clone(),
            )
            .await
            .map_err(|e| ClusterError::Setup {
                what: "node consumer".into(),
                message: e.to_string(),
            })?;
        consumer.messages().await.map_err(|e| ClusterError::Setup {
            what: "node consumer".into(),
            message: e.to_string(),
        })
    };
    let mut jobs = open_jobs().await?;

    let mut updates = fleet.subscribe();
    let mut held: HashMap<String, Message> = HashMap::new();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut progress = tokio::time::interval(PROGRESS_ACK_INTERVAL);
    let mut takeover: Option<tokio::task::JoinHandle<()>> = None;
    // The first look is due at the first heartbeat.
    let mut last_takeover = tokio::time::Instant::now()
        .checked_sub(NODE_TTL)
        .unwrap_or_else(tokio::time::Instant::now);
    tokio::pin!(shutdown);
    tracing::info!(node = %options.node_id, "node running");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = heartbeat.tick() => {
                let info = NodeInfo {
                    node_id: options.node_id.clone(),
                    running: u32::try_from(held.len()).unwrap_or(u32::MAX),
                    concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
                    repositories_owned: 0,
                    started_at,
                    last_seen: jiff::Timestamp::now(),
                };
                if let Err(e) = nodes.put(&options.node_id, gitfleet_proto::to_json(&info).into()).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                // Looking for departed nodes lists the node bucket (a consumer created and
                // deleted: about ten messages); a node is only presumed dead after NODE_TTL, so
                // looking more often than that finds nothing sooner.
                if last_takeover.elapsed() >= NODE_TTL
                    && takeover.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
                {
                    last_takeover = tokio::time::Instant::now();
                    let nats = nats.clone();
                    let nodes = nodes.clone();
                    let store = store.clone();
                    let me = options.node_id.clone();
                    takeover = Some(tokio::spawn(async move {
                        let Ok(live) = api::live_nodes(&nodes).await else { return };
                        match crate::takeover::take_over_dead_nodes(&nats, &store, &nodes, &me, &live).await {
                            Ok(0) => {}
                            Ok(moved) => tracing::warn!(moved, "took over jobs of departed nodes"),
                            Err(e) => tracing::warn!(error = %e, "takeover failed"),
                        }
                    }));
                }
            }
            _ = progress.tick() => {
                // Long clones: tell JetStream we are still at it, so it does not redeliver.
                for message in held.values() {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
            Some(cancel) = cancels.next() => {
                let id = String::from_utf8_lossy(&cancel.payload).into_owned();
                let _ = fleet.cancel(&id).await;
            }
            message = jobs.next() => {
                match message {
                    Some(Ok(message)) => accept(&fleet, &store, &nats, &layout, &options.policy, &mut held, message).await,
                    Some(Err(e)) if !e.to_string().contains("consumer deleted") => {
                        tracing::warn!(error = %e, "job stream error");
                    }
                    // Our consumer was removed (we were silent long enough to be taken for
                    // dead, and our jobs were moved): start again with a fresh one.
                    _ => {
                        tracing::warn!("job consumer gone; recreating it");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        jobs = open_jobs().await?;
                    }
                }
            }
            update = updates.recv() => match update {
                Ok(TaskUpdate::State { task }) if task.status.status_type.is_final() => {
                    // The result is in the task bucket (the Registry persists before it
                    // broadcasts): now the job may go. A plain ack (no confirmation round
                    // trip): if it is lost, the job comes back after the ack wait and `accept`
                    // finds the task finished and acknowledges it then.
                    // A final state that could not be stored (a long NATS outage) is not
                    // acknowledged: the job comes back after a while and runs again.
                    if let Some(message) = held.remove(&task.id) {
                        let acked = if store.is_unstored(&task.id) {
                            tracing::warn!(task = %task.id, "final state not stored; the job will run again");
                            message.ack_with(AckKind::Nak(Some(UNSTORED_RETRY))).await
                        } else {
                            message.ack().await
                        };
                        if let Err(e) = acked {
                            tracing::warn!(task = %task.id, error = %e, "cannot acknowledge a finished job");
                        }
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
    let _ = nodes.delete(&options.node_id).await;
    background.abort_all();
    fleet.shutdown().await;
    let _ = nats.client.flush().await;
    Ok(())
}

/// Once per root, before any job: marks the repositories an earlier version made on this node
/// (no markers then), as the task bucket records them completed here, so that they keep
/// syncing. A one-time read of the whole bucket; a failure leaves the repositories unmarked
/// (their syncs then report `conflict`) and is tried again at the next start.
async fn adopt_earlier_repositories(store: &KvStore, layout: &gitfleet_git::Layout, me: &str) {
    if layout.adopted_already() {
        return;
    }
    // A root with nothing in it (a new node) has nothing to adopt: no need to read the bucket.
    let holds_repositories = std::fs::read_dir(layout.root()).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    });
    if !holds_repositories {
        if let Err(e) = layout.adopt_once(std::iter::empty()) {
            tracing::warn!(error = %e, "cannot record that there is nothing to adopt");
        }
        return;
    }
    let ids = match store.ids().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tasks to adopt earlier repositories");
            return;
        }
    };
    let mut mine = Vec::new();
    for id in ids {
        match store.get(&id).await {
            Ok(Some((task, _))) if task.node.as_deref() == Some(me) => mine.push(task),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tasks to adopt earlier repositories");
                return;
            }
        }
    }
    let layout = layout.clone();
    match tokio::task::spawn_blocking(move || layout.adopt_once(&mine)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(adopted)) => tracing::warn!(adopted, "marked repositories of an earlier version"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot adopt earlier repositories"),
        Err(e) => tracing::warn!(error = %e, "adopting earlier repositories failed"),
    }
}

/// When a job whose final state could not be stored comes back.
const UNSTORED_RETRY: Duration = Duration::from_secs(30);

async fn accept(
    fleet: &Fleet,
    store: &KvStore,
    nats: &Nats,
    layout: &gitfleet_git::Layout,
    policy: &Policy,
    held: &mut HashMap<String, Message>,
    message: Message,
) {
    let job: JobMessage = match gitfleet_proto::from_json(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(error = %e, "dropping a malformed job");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if held.contains_key(&job.task_id) {
        // A redelivery of a job we are running.
        let _ = message.ack_with(AckKind::Progress).await;
        return;
    }
    // The job's repository, derived from its URL and operation here: a path or id from the wire
    // is never used. A job whose id does not match what its URL derives to, or whose task is not
    // in the bucket with the same source, was not made by the API: it is dropped, nothing written.
    let shape_of = |op: Operation| match op {
        Operation::Sync if job.path.ends_with(".git") => Operation::Mirror,
        Operation::Sync => Operation::Checkout,
        op => op,
    };
    let target = Target::of_parts(&job.task_id, &job.url, shape_of(job.operation), &job.path);
    let stored = store.get(&job.task_id).await;
    let (target, task) = match (target, stored) {
        (Ok(target), Ok(Some((task, revision)))) if target.check_stored(&task).is_ok() => {
            // The base of this node's first write of the task: no read before it.
            store.remember(&task, revision);
            (target, task)
        }
        (_, Err(e)) => {
            tracing::warn!(task = %job.task_id, error = %e, "cannot read a job's task; retrying later");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
        (target, _) => {
            let why = target.err().map_or_else(
                || "no task of that source in the bucket".to_string(),
                |e| e.message,
            );
            tracing::warn!(task = %job.task_id, why = %why, "dropping a job that does not match its task");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    // Cancelled (or finished) before it reached us, or superseded by a later request or a
    // takeover: nothing to do, and running it again would be harmless but wasteful.
    if task.status.status_type.is_final() || job.generation < task.generation {
        let _ = message.ack().await;
        return;
    }
    if job.generation > task.generation {
        tracing::warn!(task = %job.task_id, "dropping a job of a generation its task never had");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    }
    let mut operation = job.operation;
    if operation == Operation::Sync && !layout.path_of(&target).exists() {
        // This node was not the owner when the repository was cloned: clone it here.
        operation = shape_of(operation);
    }
    let planned = match target.url() {
        Some(url) => policy
            .check(url)
            .map(|()| Job::new(layout, &target, operation))
            .map_err(|e| TaskError::new(e.code, e.message)),
        None => Ok(Job::new(layout, &target, operation)),
    };
    let planned = planned.map(|mut job| {
        job.fence = task.generation;
        job
    });
    let planned = match planned {
        Ok(planned) => planned,
        Err(error) => {
            let mut task = task;
            task.status = CloneStatus::failed(error.message.clone());
            task.error_code = Some(error.code);
            task.updated_at = jiff::Timestamp::now();
            if store.put(&task).await.is_ok() {
                api::publish_state(nats, &task).await;
            }
            let _ = message.double_ack().await;
            return;
        }
    };
    match fleet.submit(vec![planned]).await {
        Ok(_) => {
            held.insert(job.task_id, message);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot hand a job to the actors");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// Publishes the actors' updates on the status subjects. A state transition goes out at once; of
/// a task's progress samples only the latest goes out, every [`PROGRESS_EVENT_INTERVAL`] (the
/// first one an interval after the task started), and none that a transition has overtaken. A
/// small repository then costs its transitions alone, and a long clone a few events a second,
/// whatever its sampling rate.
async fn publish_status(nats: Nats, mut updates: tokio::sync::broadcast::Receiver<TaskUpdate>) {
    let publish = |id: &str, update: &TaskUpdate| {
        let subject = nats.subjects.status(id);
        let payload = gitfleet_proto::to_json(update);
        let client = nats.client.clone();
        async move {
            let _ = client.publish(subject, payload.into()).await;
        }
    };
    let mut pending: HashMap<String, TaskUpdate> = HashMap::new();
    // When each running task started: its first progress event waits an interval, so that a
    // clone shorter than that costs its transitions alone.
    let mut started: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut flush = tokio::time::interval(PROGRESS_EVENT_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(TaskUpdate::Progress(p)) => {
                    pending.insert(p.task_id.clone(), TaskUpdate::Progress(p));
                }
                Ok(update @ TaskUpdate::State { .. }) => {
                    let TaskUpdate::State { task } = &update else { continue };
                    pending.remove(&task.id);
                    if task.status.status_type == StatusType::Cloning {
                        started.entry(task.id.clone()).or_insert_with(tokio::time::Instant::now);
                    } else {
                        started.remove(&task.id);
                    }
                    // The API published `queued` when it accepted the request; the node's first
                    // `queued` says nothing new (a retry's `queued` does: attempts, last error).
                    if task.status.status_type == StatusType::Queued && task.attempts == 0 {
                        continue;
                    }
                    publish(&task.id, &update).await;
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = flush.tick(), if !pending.is_empty() => {
                let now = tokio::time::Instant::now();
                let due: Vec<String> = pending
                    .keys()
                    .filter(|id| {
                        started
                            .get(*id)
                            .is_none_or(|at| now.duration_since(*at) >= PROGRESS_EVENT_INTERVAL)
                    })
                    .cloned()
                    .collect();
                for id in due {
                    if let Some(update) = pending.remove(&id) {
                        publish(&id, &update).await;
                    }
                }
            }
        }
    }
}
