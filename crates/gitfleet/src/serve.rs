//! `gitfleet serve`: the embedded mode as a long-running service on one root. The same actors
//! and task log as a one-shot run; the scheduler (`gitfleet_actors::keep_fresh`) syncs each
//! repository when its record says it is due. Ctrl-C or SIGTERM drains: no new syncs start,
//! running transfers get `--drain-timeout` to finish and are then cancelled (a cancelled clone
//! leaves nothing half-written; the schedule is in the records). With `--listen`, webhooks
//! (`hooks.rs`) sync a pushed repository at once. The other commands on the root (`mirror`,
//! `clone`, `init`, `sync`) hand their work to it over `<root>/.gitfleet/serve.sock`
//! (`served.rs` is their side): one JSON request line, then the replies as the tasks move.

use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use gitfleet_actors::{Fleet, Submitted, keep_fresh, plan_from_task, plan_work};
use gitfleet_git::{Layout, Policy, Target};
use gitfleet_proto::{CloneTask, Operation, StatusType, TaskUpdate, WorkReply, WorkRequest};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::RunArgs;
use crate::dashboard::{Control, Dashboard};
use crate::display::Display;
use crate::embedded::{Started, open_root, start_fleet};
use crate::hooks::{SyncUrls, Synced};
use crate::listener::{Endpoints, Listen};

/// How long cancelled transfers get to stop after the drain time ran out.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// How long the HTTP listener's requests get to end when serve stops.
const LISTENER_STOP: Duration = Duration::from_secs(5);

pub async fn serve(
    root: &std::path::Path,
    run: RunArgs,
    drain_timeout: Duration,
    http: Option<Listen>,
    notifications: crate::notify::Notifications,
) -> anyhow::Result<ExitCode> {
    let open = open_root(root)?;
    let policy = run.policy()?;
    let Started {
        fleet,
        mut updates,
        resumed: _,
    } = start_fleet(&open, &run, &policy, &[]).await?;
    let scheduled = open.known.iter().filter(|t| t.due_at().is_some()).count();
    eprintln!(
        "gitfleet: serving {} ({scheduled} repositories scheduled); stop with Ctrl-C or SIGTERM",
        open.layout.root().display()
    );

    let metrics = gitfleet_actors::FleetMetrics::new(run.work.stale_after());
    metrics.watch(&fleet);
    crate::notify::start(notifications, &fleet, Some(metrics.clone()));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let layout = open.layout.clone();
    let scheduler = keep_fresh(
        &fleet,
        |task: &CloneTask| plan_from_task(&layout, &policy, task),
        stopped(stop.clone()),
    );
    let mut display = run.json.then(|| Display::new(true));
    let reporter = async {
        let stop = stopped(stop.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                update = updates.recv() => match update {
                    Ok(update) => match &mut display {
                        Some(display) => display.update(&update),
                        None => report(&update),
                    },
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
    };
    // Webhooks and commands on the socket hand their work to this loop, which has the fleet.
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let server = match http {
        Some(http) => Some(
            start_listener(
                http,
                calls_tx.clone(),
                &fleet,
                run.work.stale_after(),
                metrics.clone(),
                stopped(stop.clone()),
            )
            .await?,
        ),
        None => None,
    };
    let socket = socket_path(&open.layout);
    let listener = listen(&socket, calls_tx.clone(), stopped(stop.clone()))?;
    let worker = async {
        let stop = stopped(stop.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(call) = calls.recv() => match call {
                    Call::Webhook(urls, reply) => {
                        let synced = sync_tracked(&fleet, &layout, &policy, &urls).await;
                        let _ = reply.send(synced);
                    }
                    Call::Work(work, reply) => {
                        take_work(&fleet, &layout, &policy, work, reply, calls_tx.clone()).await;
                    }
                    Call::Control(control, id, reply) => {
                        let done = match control {
                            Control::Sync => sync_task(&fleet, &layout, &policy, &id).await,
                            Control::Cancel => fleet.cancel(&id).await,
                            Control::Resume => resume(&fleet, &id).await,
                        };
                        let _ = reply.send(done.map_err(anyhow::Error::from));
                    }
                    Call::States(ids, reply) => {
                        let mut tasks = Vec::new();
                        for id in ids {
                            if let Ok(Some(task)) = fleet.get(&id).await {
                                tasks.push(task);
                            }
                        }
                        let _ = reply.send(tasks);
                    }
                },
            }
        }
    };
    let (scheduled, (), ()) = tokio::join!(scheduler, reporter, worker);
    scheduled?;
    // What the endpoints asked and the loop did not take is answered now (their replies are
    // dropped: "stopping"), so that no request waits for a loop that has ended.
    calls.close();
    while calls.try_recv().is_ok() {}
    if let Some(mut server) = server {
        // A reader that stopped reading its event stream could hold the listener open.
        if tokio::time::timeout(LISTENER_STOP, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
    listener.abort();
    let _ = std::fs::remove_file(&socket);

    eprintln!(
        "gitfleet: stopping: running transfers get {}s to finish",
        drain_timeout.as_secs()
    );
    if tokio::time::timeout(drain_timeout, fleet.wait_idle())
        .await
        .is_err()
    {
        let running: Vec<CloneTask> = fleet
            .tasks()
            .await?
            .into_iter()
            .filter(|t| !t.status.status_type.is_final())
            .collect();
        eprintln!("gitfleet: cancelling {} unfinished task(s)", running.len());
        for task in &running {
            fleet.cancel(&task.id).await?;
        }
        let _ = tokio::time::timeout(CANCEL_WAIT, fleet.wait_idle()).await;
    }
    // A round trip to the Registry: every state before it is stored.
    let _ = fleet.tasks().await?;
    fleet.shutdown().await;
    eprintln!("gitfleet: stopped");
    Ok(ExitCode::SUCCESS)
}

/// What the serve loop is asked by its endpoints.
enum Call {
    /// Sync the tracked repositories these URLs name.
    Webhook(Vec<String>, oneshot::Sender<Synced>),
    /// Plan and run this work, replying on the channel until it is done.
    Work(WorkRequest, mpsc::Sender<WorkReply>),
    /// The current records of these tasks.
    States(Vec<String>, oneshot::Sender<Vec<CloneTask>>),
    /// Resume or cancel this task (the dashboard).
    Control(Control, String, oneshot::Sender<anyhow::Result<bool>>),
}

/// Where a running serve listens for the commands of its root: only the root's user may
/// connect (0600).
pub fn socket_path(layout: &Layout) -> std::path::PathBuf {
    layout.state_dir().join("serve.sock")
}

/// Accepts commands on `path` until `stop`: one request line each, then reply lines.
fn listen(
    path: &std::path::Path,
    calls: mpsc::Sender<Call>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    // This process holds the root lock: a socket left here is a dead serve's.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, calls.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot accept a command"),
                },
            }
        }
    }))
}

/// The longest request line a command may send (a URL list of many thousands fits).
const MAX_REQUEST: u64 = 64 << 20;

/// One command's conversation: its request, then its replies as they come.
async fn answer(stream: tokio::net::UnixStream, calls: mpsc::Sender<Call>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let mut send = async |reply: &WorkReply| {
        let mut bytes = gitfleet_proto::to_json(reply);
        bytes.push(b'\n');
        write.write_all(&bytes).await
    };
    let work = match read.map(|_| gitfleet_proto::from_json::<WorkRequest>(line.as_bytes())) {
        Ok(Ok(work)) => work,
        Ok(Err(e)) => {
            let message = format!("not a work request: {e}");
            let _ = send(&WorkReply::Refused { message }).await;
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "a command hung up");
            return;
        }
    };
    let (reply_tx, mut replies) = mpsc::channel(1024);
    if calls.send(Call::Work(work, reply_tx)).await.is_err() {
        let message = "gitfleet serve is stopping".to_string();
        let _ = send(&WorkReply::Refused { message }).await;
        return;
    }
    while let Some(reply) = replies.recv().await {
        let last = matches!(reply, WorkReply::Done | WorkReply::Refused { .. });
        if send(&reply).await.is_err() || last {
            return;
        }
    }
}

/// Plans `work` on the served root, submits it, and follows its tasks on `reply` (in a task of
/// its own: the serve loop goes on).
async fn take_work(
    fleet: &Fleet,
    layout: &Layout,
    policy: &Policy,
    work: WorkRequest,
    reply: mpsc::Sender<WorkReply>,
    calls: mpsc::Sender<Call>,
) {
    let known = match fleet.tasks().await {
        Ok(known) => known,
        Err(e) => {
            let _ = reply.try_send(WorkReply::Refused {
                message: e.to_string(),
            });
            return;
        }
    };
    let planned = plan_work(layout, policy, &known, &work);
    let updates = fleet.subscribe();
    let submitted = match fleet.submit(planned.jobs).await {
        Ok(submitted) => submitted,
        Err(e) => {
            let _ = reply.try_send(WorkReply::Refused {
                message: e.to_string(),
            });
            return;
        }
    };
    let ids: BTreeSet<String> = submitted
        .into_iter()
        .map(|s| match s {
            Submitted::Accepted(id) | Submitted::Duplicate(id) => id,
        })
        .collect();
    tokio::spawn(async move {
        for (input, error) in planned.rejected {
            if reply
                .send(WorkReply::Rejected { input, error })
                .await
                .is_err()
            {
                return;
            }
        }
        let tracking = WorkReply::Tracking {
            ids: ids.iter().cloned().collect(),
        };
        if reply.send(tracking).await.is_err() {
            return;
        }
        follow(updates, ids, &reply, &calls).await;
        let _ = reply.send(WorkReply::Done).await;
    });
}

/// Forwards the updates of `pending` tasks until each is final.
async fn follow(
    mut updates: tokio::sync::broadcast::Receiver<TaskUpdate>,
    mut pending: BTreeSet<String>,
    reply: &mpsc::Sender<WorkReply>,
    calls: &mpsc::Sender<Call>,
) {
    while !pending.is_empty() {
        let finals = match updates.recv().await {
            Ok(update) => {
                let (id, is_final) = match &update {
                    TaskUpdate::State { task } => (&task.id, task.status.status_type.is_final()),
                    TaskUpdate::Progress(p) => (&p.task_id, false),
                };
                if !pending.contains(id) {
                    continue;
                }
                let id = id.clone();
                if reply.send(WorkReply::Update { update }).await.is_err() {
                    return;
                }
                if is_final {
                    pending.remove(&id);
                }
                continue;
            }
            // Missed updates: ask the loop for the records instead.
            Err(RecvError::Lagged(_)) => {
                let (tx, rx) = oneshot::channel();
                let ids = pending.iter().cloned().collect();
                if calls.send(Call::States(ids, tx)).await.is_err() {
                    return;
                }
                rx.await.unwrap_or_default()
            }
            Err(RecvError::Closed) => return,
        };
        for task in finals
            .into_iter()
            .filter(|t| t.status.status_type.is_final())
        {
            pending.remove(&task.id);
            let update = TaskUpdate::State {
                task: Box::new(task),
            };
            if reply.send(WorkReply::Update { update }).await.is_err() {
                return;
            }
        }
    }
}

/// Serves the listener (webhooks, metrics, dashboard) until `stop`, handing what it is asked to
/// do to the serve loop.
async fn start_listener(
    listen: Listen,
    requests: mpsc::Sender<Call>,
    fleet: &Fleet,
    stale_after: Duration,
    metrics: Arc<gitfleet_actors::FleetMetrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let calls = requests.clone();
    let sync: SyncUrls = Arc::new(move |urls| {
        let requests = calls.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if requests.send(Call::Webhook(urls, tx)).await.is_err() {
                return Synced::default();
            }
            rx.await.unwrap_or_default()
        })
    });
    let controls: crate::dashboard::Controls = Arc::new(move |control, id| {
        let requests = requests.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            requests
                .send(Call::Control(control, id, tx))
                .await
                .map_err(|_| anyhow::anyhow!("gitfleet serve is stopping"))?;
            rx.await
                .map_err(|_| anyhow::anyhow!("gitfleet serve is stopping"))?
        })
    });
    let view = Arc::new(std::sync::OnceLock::new());
    let _ = view.set(fleet.view());
    let dashboard = Dashboard {
        mode: "serve",
        name: gitfleet_actors::hostname(),
        view,
        stale_after,
        controls,
        nodes: None,
    };
    let endpoints = Endpoints {
        sync,
        metrics,
        dashboard,
    };
    crate::listener::listen(listen, endpoints, stop).await
}

/// Syncs one task now (single flight: a running sync is joined): whether it could be.
async fn sync_task(
    fleet: &Fleet,
    layout: &Layout,
    policy: &Policy,
    id: &str,
) -> Result<bool, gitfleet_actors::FleetError> {
    let Some(task) = fleet.get(id).await? else {
        return Ok(false);
    };
    if task.operation == Operation::Init {
        return Ok(false);
    }
    match plan_from_task(layout, policy, &task) {
        Ok(job) => {
            fleet.submit(vec![job]).await?;
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(task = %id, error = %e, "cannot sync a task on request");
            Ok(false)
        }
    }
}

/// Takes a quarantined task back into the schedule: whether it was quarantined.
async fn resume(fleet: &Fleet, id: &str) -> Result<bool, gitfleet_actors::FleetError> {
    match fleet.get(id).await? {
        Some(task) if task.quarantined => {
            fleet.resume(id).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Requests a sync of every tracked repository that one of `urls` names (a webhook never adds
/// a repository).
async fn sync_tracked(fleet: &Fleet, layout: &Layout, policy: &Policy, urls: &[String]) -> Synced {
    let ids: BTreeSet<String> = urls
        .iter()
        .flat_map(|url| Target::lookup_ids(url, policy))
        .collect();
    let mut synced = Synced::default();
    let mut jobs = Vec::new();
    for id in ids {
        let Ok(Some(task)) = fleet.get(&id).await else {
            continue;
        };
        if task.operation == Operation::Init {
            continue;
        }
        match plan_from_task(layout, policy, &task) {
            Ok(job) => {
                jobs.push(job);
                synced.tasks.push(id);
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "a webhook's repository cannot be synced")
            }
        }
    }
    if let Err(e) = fleet.submit(jobs).await {
        tracing::error!(error = %e, "cannot submit a webhook's sync");
        synced.tasks.clear();
    }
    synced
}

/// One line per finished sync on standard error.
fn report(update: &TaskUpdate) {
    let TaskUpdate::State { task } = update else {
        return;
    };
    let next = task
        .next_sync_at
        .map_or_else(|| "not scheduled".to_string(), |at| format!("next {at}"));
    match task.status.status_type {
        StatusType::Completed => {
            let r = task.last_sync.clone().unwrap_or_default();
            eprintln!(
                "synced  {}: {} created, {} updated, {} deleted; {next}",
                task.url, r.num_refs_created, r.num_refs_updated, r.num_refs_deleted
            );
        }
        StatusType::Failed => {
            let code = task.error_code.map_or("unknown", |c| c.as_str());
            let quarantined = if task.quarantined {
                " (quarantined: `gitfleet resume` brings it back)"
            } else {
                ""
            };
            eprintln!(
                "failed  {} [{code}]: {}; {next}{quarantined}",
                task.url,
                task.status.error.as_deref().unwrap_or("")
            );
        }
        StatusType::Queued | StatusType::Cloning => {}
    }
}
