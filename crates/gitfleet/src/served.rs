//! The command line's side of a running `gitfleet serve`: while serve holds a root, `mirror`,
//! `clone`, `init` and `sync` on that root hand their work to it over its socket and show the
//! progress as a run of their own would. The work runs with serve's settings (policy, limits,
//! concurrency); the command only shows it.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use gitfleet_proto::{CloneTask, TaskUpdate, WorkReply, WorkRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::RunArgs;
use crate::display::Display;
use crate::report::Summary;

/// A connection to the serve running on `root`, if one is.
pub async fn connect(root: &std::path::Path) -> Option<UnixStream> {
    let layout = gitfleet_git::Layout::open(root).ok()?;
    let socket = crate::serve::socket_path(&layout);
    if !socket.exists() {
        return None;
    }
    // A socket a dead serve left refuses: the command then works on the root itself.
    UnixStream::connect(&socket).await.ok()
}

/// Hands `work` to the serve at the other end of `stream` and shows it until it is done.
pub async fn hand_over(
    stream: UnixStream,
    work: WorkRequest,
    run: &RunArgs,
) -> anyhow::Result<ExitCode> {
    eprintln!("gitfleet: handing the work to the gitfleet serve running on this root");
    let started = Instant::now();
    let (read, mut write) = stream.into_split();
    let mut request = gitfleet_proto::to_json(&work);
    request.push(b'\n');
    write
        .write_all(&request)
        .await
        .context("cannot reach gitfleet serve")?;
    let mut display = Display::new(run.json);
    let mut summary = Summary::default();
    let mut finals: HashMap<String, CloneTask> = HashMap::new();
    let mut ids = Vec::new();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("lost gitfleet serve")?,
            _ = tokio::signal::ctrl_c() => {
                display.finish();
                eprintln!("gitfleet: stopped watching; gitfleet serve keeps working");
                return Ok(ExitCode::from(130));
            }
        };
        let Some(line) = line else {
            bail!("gitfleet serve stopped before the work was done");
        };
        let reply: WorkReply = gitfleet_proto::from_json(line.as_bytes())
            .with_context(|| "an unreadable reply from gitfleet serve".to_string())?;
        match reply {
            WorkReply::Rejected { input, error } => {
                summary.rejected += 1;
                display.rejected(&input, &error);
            }
            WorkReply::Tracking { ids: tracked } => {
                display.track(tracked.iter().cloned());
                ids = tracked;
            }
            WorkReply::Update { update } => {
                if let TaskUpdate::State { task } = &update
                    && task.status.status_type.is_final()
                {
                    finals.insert(task.id.clone(), (**task).clone());
                }
                display.update(&update);
            }
            WorkReply::Done => break,
            WorkReply::Refused { message } => bail!("gitfleet serve refused: {message}"),
        }
    }
    display.finish();
    for id in &ids {
        if let Some(task) = finals.remove(id) {
            summary.add(task);
        }
    }
    Ok(summary.finish(run.json, started.elapsed()))
}
