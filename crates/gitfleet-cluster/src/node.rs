//! A gitfleet node: the embedded actors plus NATS around them. Pulls the jobs placed on it,
//! acknowledges each only when its result is durable, publishes status events, answers the API,
//! and announces itself with a heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_actors::{Fleet, FleetConfig};
use gitfleet_git::Policy;
use gitfleet_proto::{NodeInfo, StatusType, TaskUpdate};
use tokio::sync::broadcast::error::RecvError;

use crate::api::{self, ApiContext};
use crate::infra::{ClusterError, Durability, HEARTBEAT_INTERVAL, NODE_TTL, Nats};
use crate::intake::JobIntake;
use crate::kv_store::KvStore;

const PROGRESS_ACK_INTERVAL: Duration = Duration::from_secs(10);
/// Progress events of a task go out at most this often; a state transition goes out at once.
const PROGRESS_EVENT_INTERVAL: Duration = Duration::from_millis(250);

pub struct NodeOptions {
    pub node_id: String,
    pub durability: Durability,
    /// Applied to every URL of the API and of jobs: strict unless configured otherwise.
    pub policy: Policy,
    /// What watches this node's actors once they run (metrics, notifications), each given the
    /// fleet once.
    pub watchers: Vec<Watcher>,
}

/// Something that watches a node's actors: started with them.
pub type Watcher = Box<dyn FnOnce(&Fleet) + Send>;

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("node_id", &self.node_id)
            .field("durability", &self.durability)
            .field("policy", &self.policy)
            .field("watchers", &self.watchers.len())
            .finish()
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run_node(
    nats: Nats,
    mut options: NodeOptions,
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
    for watch in std::mem::take(&mut options.watchers) {
        watch(&fleet);
    }
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
        let node_id = options.node_id.clone();
        background.spawn(async move {
            if let Err(e) = api::serve(context, &node_id).await {
                tracing::error!(error = &e as &dyn std::error::Error, "the API stopped");
            }
        });
    }
    // The commits of the repositories it holds, for the API's `log`.
    {
        let (nats, store, layout) = (nats.clone(), store.clone(), layout.clone());
        let me = options.node_id.clone();
        background.spawn(async move {
            if let Err(e) = crate::commit_log::answer_log_requests(nats, store, layout, me).await {
                tracing::error!(error = &e as &dyn std::error::Error, "log requests stopped");
            }
        });
    }
    // The repositories this node owns, synced when due.
    {
        let context = ApiContext {
            nats: nats.clone(),
            store: store.clone(),
            nodes: nodes.clone(),
            policy: options.policy.clone(),
        };
        let me = options.node_id.clone();
        let updates = fleet.subscribe();
        background.spawn(async move {
            if let Err(e) = crate::freshness::keep_owned_fresh(context, me, updates).await {
                tracing::error!(error = &e as &dyn std::error::Error, "the schedule stopped");
            }
        });
    }

    let mut cancels = nats
        .client
        .subscribe(nats.subjects.cancel())
        .await
        .map_err(|e| ClusterError::request("cancel subscription", e))?;
    let mut removals = nats
        .client
        .subscribe(nats.subjects.removals())
        .await
        .map_err(|e| ClusterError::request("removal subscription", e))?;
    let mut handovers = nats
        .client
        .subscribe(nats.subjects.handovers())
        .await
        .map_err(|e| ClusterError::request("handover subscription", e))?;
    let mut host_pauses = nats
        .client
        .subscribe(nats.subjects.host_pauses())
        .await
        .map_err(|e| ClusterError::request("host pause subscription", e))?;
    // The hosts this node pauses: its queued jobs of them go back to the stream, and the other
    // nodes are told.
    let mut local_pauses = fleet.host_pauses();
    background.spawn(announce_host_pauses(
        nats.clone(),
        fleet.host_pauses(),
        options.node_id.clone(),
    ));
    // The hosts' limits are the cluster's: each node takes its part of them, by the live nodes
    // the takeover's look counts.
    let (live_counts, mut live_count) = tokio::sync::mpsc::channel::<usize>(1);
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
    let mut intake = JobIntake::open(
        &fleet,
        store.clone(),
        nats.clone(),
        layout.clone(),
        options.policy.clone(),
        &options.node_id,
        concurrency,
    )
    .await?;

    let mut updates = fleet.subscribe();
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
                    running: u32::try_from(intake.running()).unwrap_or(u32::MAX),
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
                    let live_counts = live_counts.clone();
                    takeover = Some(tokio::spawn(async move {
                        let Ok(live) = api::live_nodes(&nodes).await else { return };
                        let _ = live_counts.try_send(live.len());
                        match crate::takeover::take_over_dead_nodes(&nats, &store, &nodes, &me, &live).await {
                            Ok(0) => {}
                            Ok(moved) => tracing::warn!(moved, "took over jobs of departed nodes"),
                            Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "takeover failed"),
                        }
                    }));
                }
            }
            _ = progress.tick() => intake.keep_alive().await,
            Some(cancel) = cancels.next() => {
                let id = String::from_utf8_lossy(&cancel.payload).into_owned();
                let _ = fleet.cancel(&id).await;
            }
            Some(removal) = removals.next() => {
                remove_held(&fleet, &layout, &options.node_id, &removal.payload);
            }
            Some(handover) = handovers.next() => {
                release_moved(&fleet, &layout, &store, &options.node_id, &handover.payload);
            }
            Some(notice) = host_pauses.next() => {
                if let Some((host, pause)) = pause_host(&fleet, &options.node_id, &notice.payload) {
                    intake.hand_back(&host, pause).await;
                }
            }
            paused = local_pauses.recv() => match paused {
                Ok(paused) => intake.hand_back(&paused.host, paused.pause).await,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            Some(nodes) = live_count.recv() => {
                let _ = fleet.share_host_limits(nodes);
            }
            message = intake.next_job() => intake.take(message).await?,
            update = updates.recv() => match update {
                Ok(TaskUpdate::State { task }) if task.status.status_type.is_final() => {
                    intake.settle(&task).await;
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

/// Tells the other nodes of every host this node pauses.
async fn announce_host_pauses(
    nats: Nats,
    mut pauses: tokio::sync::broadcast::Receiver<gitfleet_actors::HostPaused>,
    me: String,
) {
    loop {
        match pauses.recv().await {
            Ok(paused) => {
                let notice = gitfleet_proto::HostPauseNotice {
                    host: paused.host,
                    pause_secs: paused.pause.as_secs(),
                    node: me.clone(),
                };
                let payload = gitfleet_proto::to_json(&notice);
                let _ = nats
                    .client
                    .publish(nats.subjects.host_pauses(), payload.into())
                    .await;
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Another node was asked to slow down: this one pauses the host too, for at most
/// `MAX_PAUSE`. Returns the host (as queues name it) and the pause, if it paused.
fn pause_host(fleet: &Fleet, me: &str, payload: &[u8]) -> Option<(String, Duration)> {
    let notice: gitfleet_proto::HostPauseNotice = match gitfleet_proto::from_json(payload) {
        Ok(notice) => notice,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable host pause notice");
            return None;
        }
    };
    if notice.node == me || notice.host.len() > 255 {
        return None;
    }
    tracing::info!(host = %notice.host, pause_s = notice.pause_secs, from = %notice.node, "pausing a host another node was refused by");
    let host = notice.host.to_ascii_lowercase();
    let pause = Duration::from_secs(notice.pause_secs).min(gitfleet_git::MAX_PAUSE);
    fleet.pause_host(&host, pause).ok()?;
    Some((host, pause))
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
    let mut mine = Vec::new();
    let scanned = store
        .scan_all(|task, _| {
            if task.node.as_deref() == Some(me) {
                mine.push(task);
            }
        })
        .await;
    if let Err(e) = scanned {
        tracing::warn!(error = %e, "cannot read tasks to adopt earlier repositories");
        return;
    }
    let layout = layout.clone();
    match tokio::task::spawn_blocking(move || layout.adopt_once(&mine)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(adopted)) => tracing::warn!(adopted, "marked repositories of an earlier version"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot adopt earlier repositories"),
        Err(e) => tracing::warn!(error = %e, "adopting earlier repositories failed"),
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

/// A removed task: the node that ran it last (the record's `node`) forgets it and deletes its
/// repository.
fn remove_held(fleet: &Fleet, layout: &gitfleet_git::Layout, me: &str, payload: &[u8]) {
    let Ok(notice) = gitfleet_proto::from_json::<gitfleet_proto::RemovalNotice>(payload) else {
        tracing::warn!("ignoring an unreadable removal notice");
        return;
    };
    if notice.task.node.as_deref() == Some(me) {
        delete_copy(
            fleet,
            layout,
            notice.task,
            None,
            "removed a repository on request",
        );
    }
}

/// A repository placement moved away from this node is complete at its new owner: this node
/// forgets it and deletes its copy, once the task bucket confirms it (the record is completed
/// on another node, at the notice's generation or later): a forged or stale notice deletes
/// nothing.
fn release_moved(
    fleet: &Fleet,
    layout: &gitfleet_git::Layout,
    store: &KvStore,
    me: &str,
    payload: &[u8],
) {
    let Ok(notice) = gitfleet_proto::from_json::<gitfleet_proto::HandoverNotice>(payload) else {
        tracing::warn!("ignoring an unreadable handover notice");
        return;
    };
    if notice.from == me
        && notice.task.node.as_deref() != Some(me)
        && notice.task.status.status_type == StatusType::Completed
    {
        delete_copy(
            fleet,
            layout,
            notice.task,
            Some((store.clone(), me.to_string())),
            "deleted a copy placement moved to another node",
        );
    }
}

/// Forgets `task` and deletes its repository here, in a task of its own (a big delete must not
/// hold up heartbeats). Where the repository is follows from the task's URL and operation; only
/// one this root's gitfleet made is deleted (`remove_repository`). A task this node runs a newer
/// generation of, or one that is running here, is kept. With `moved_from` (the bucket and this
/// node), only if the bucket's record is completed on another node at `task`'s generation or
/// later.
fn delete_copy(
    fleet: &Fleet,
    layout: &gitfleet_git::Layout,
    task: gitfleet_proto::CloneTask,
    moved_from: Option<(KvStore, String)>,
    done: &'static str,
) {
    let path = match gitfleet_git::Target::of_task(&task) {
        Ok(target) => layout.path_of(&target),
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "a notice names no repository");
            return;
        }
    };
    let (fleet, layout) = (fleet.view(), layout.clone());
    tokio::spawn(async move {
        if let Some((store, me)) = moved_from {
            let confirmed = matches!(
                store.get(&task.id).await,
                Ok(Some((record, _)))
                    if record.status.status_type == StatusType::Completed
                        && record.node.as_deref().is_some_and(|n| n != me)
                        && record.generation >= task.generation
            );
            if !confirmed {
                tracing::warn!(task = %task.id, "kept a copy: the task bucket does not say it moved");
                return;
            }
        }
        if let Ok(Some(current)) = fleet.get(&task.id).await
            && current.generation > task.generation
        {
            return;
        }
        match fleet.forget(&task.id).await {
            Ok(Err(why)) => {
                tracing::warn!(task = %task.id, why = %why, "kept: it runs here");
                return;
            }
            Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let removed = tokio::task::spawn_blocking(move || layout.remove_repository(&path)).await;
        match removed {
            Ok(Ok(removed)) => tracing::info!(task = %task.id, removed, "{done}"),
            Ok(Err(e)) => {
                tracing::warn!(task = %task.id, error = %e, "cannot delete a repository")
            }
            Err(e) => tracing::warn!(task = %task.id, error = %e, "the delete stopped"),
        }
    });
}
