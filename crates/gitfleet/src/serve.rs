//! `gitfleet serve`: the embedded mode as a long-running service on one root. The same actors
//! and task log as a one-shot run; the scheduler (`gitfleet_actors::keep_fresh`) syncs each
//! repository when its record says it is due. Ctrl-C or SIGTERM drains: no new syncs start,
//! running transfers get `--drain-timeout` to finish and are then cancelled (a cancelled clone
//! leaves nothing half-written; the schedule is in the records). With `--listen`, webhooks
//! (`hooks.rs`) sync a pushed repository at once.

use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use gitfleet_actors::{Fleet, keep_fresh, plan_from_task};
use gitfleet_git::{Layout, Policy, Secret, Target};
use gitfleet_proto::{CloneTask, Operation, StatusType, TaskUpdate};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::RunArgs;
use crate::display::Display;
use crate::embedded::{OpenRoot, Started};
use crate::hooks::{self, Hooks, SyncUrls, Synced};

/// How long cancelled transfers get to stop after the drain time ran out.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// Where webhooks are accepted, and the secret they are signed with.
pub struct Webhooks {
    pub address: std::net::SocketAddr,
    pub secret: Option<Secret>,
}

pub async fn serve(
    root: &std::path::Path,
    run: RunArgs,
    drain_timeout: Duration,
    webhooks: Option<Webhooks>,
) -> anyhow::Result<ExitCode> {
    let open = OpenRoot::open(root)?;
    let policy = run.policy()?;
    let Started {
        fleet,
        mut updates,
        resumed: _,
    } = open.start_fleet(&run, &policy, &[]).await?;
    let scheduled = open
        .known
        .iter()
        .filter(|t| !t.quarantined && t.status.status_type.is_final())
        .count();
    eprintln!(
        "gitfleet: serving {} ({scheduled} repositories scheduled); stop with Ctrl-C or SIGTERM",
        open.layout.root().display()
    );

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
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
    // Webhooks hand their URLs to this loop, which has the fleet.
    let (hook_tx, mut hook_rx) = mpsc::channel::<(Vec<String>, oneshot::Sender<Synced>)>(64);
    let server = match webhooks {
        Some(webhooks) => Some(start_webhooks(webhooks, hook_tx, stopped(stop.clone())).await?),
        None => None,
    };
    let hook_worker = async {
        let stop = stopped(stop.clone());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some((urls, reply)) = hook_rx.recv() => {
                    let synced = sync_tracked(&fleet, &layout, &policy, &urls).await;
                    let _ = reply.send(synced);
                }
            }
        }
    };
    let (scheduled, (), ()) = tokio::join!(scheduler, reporter, hook_worker);
    scheduled?;
    if let Some(server) = server {
        let _ = server.await;
    }

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

/// Serves the webhook endpoints on `webhooks.address` until `stop`; returns the server's task.
async fn start_webhooks(
    webhooks: Webhooks,
    requests: mpsc::Sender<(Vec<String>, oneshot::Sender<Synced>)>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(webhooks.address)
        .await
        .with_context(|| format!("cannot listen on {}", webhooks.address))?;
    let address = listener.local_addr()?;
    if webhooks.secret.is_none() {
        eprintln!("gitfleet: no GITFLEET_WEBHOOK_SECRET: every webhook will be refused (401)");
    }
    let sync: SyncUrls = Arc::new(move |urls| {
        let requests = requests.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if requests.send((urls, tx)).await.is_err() {
                return Synced::default();
            }
            rx.await.unwrap_or_default()
        })
    });
    let router = hooks::router(Hooks::new(webhooks.secret, sync));
    eprintln!("gitfleet: webhooks on http://{address}/hooks/{{github,gitlab,gitea,sync}}");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "the webhook server stopped");
        }
    }))
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

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
