//! `gitfleet serve`: the embedded mode as a long-running service on one root. The same actors
//! and task log as a one-shot run; the scheduler (`gitfleet_actors::keep_fresh`) syncs each
//! repository when its record says it is due. Ctrl-C or SIGTERM drains: no new syncs start,
//! running transfers get `--drain-timeout` to finish and are then cancelled (a cancelled clone
//! leaves nothing half-written; the schedule is in the records).

use std::process::ExitCode;
use std::time::Duration;

use gitfleet_actors::{keep_fresh, plan_from_task};
use gitfleet_proto::{CloneTask, StatusType, TaskUpdate};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::display::Display;
use crate::embedded::{OpenRoot, Started};

/// How long cancelled transfers get to stop after the drain time ran out.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

pub async fn serve(
    root: &std::path::Path,
    run: RunArgs,
    drain_timeout: Duration,
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
    let (scheduled, ()) = tokio::join!(scheduler, reporter);
    scheduled?;

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
