//! What a run shows when it ends, and the task table of `status`: the same in the embedded and
//! the cluster mode.

use std::process::ExitCode;
use std::time::Duration;

use gitfleet_proto::{CloneTask, CommitInfo, StatusType};

/// The outcome of one run of mirror, clone, init or sync.
#[derive(Debug, Default)]
pub struct Summary {
    pub completed: usize,
    /// The tasks that did not complete, with their records.
    pub failed: Vec<CloneTask>,
    /// Inputs refused before they became tasks (they were shown as they were refused).
    pub rejected: usize,
    /// Tasks removed while they were waited for (their ids).
    pub removed: Vec<String>,
}

impl Summary {
    /// Counts `task` by its final state.
    pub fn add(&mut self, task: CloneTask) {
        if task.status.status_type == StatusType::Completed {
            self.completed += 1;
        } else {
            self.failed.push(task);
        }
    }

    /// Prints the summary on standard error (not with `--json`: the updates said it all) and
    /// returns the exit code: 0 if everything completed, 1 otherwise.
    pub fn finish(&self, json: bool, elapsed: Duration) -> ExitCode {
        let failed = self.failed.len() + self.rejected + self.removed.len();
        if !json {
            eprintln!(
                "gitfleet: {} completed, {failed} failed in {:.1}s",
                self.completed,
                elapsed.as_secs_f64()
            );
            for task in &self.failed {
                eprintln!(
                    "  {} [{}]: {}",
                    task.url,
                    code_of(task),
                    task.status.error.as_deref().unwrap_or("unfinished")
                );
            }
            for id in &self.removed {
                eprintln!("  task {id}: removed while it was waited for");
            }
        }
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

fn code_of(task: &CloneTask) -> &'static str {
    task.error_code.map_or("unknown", |c| c.as_str())
}

/// The task table of `status` (or a JSON array); `place` names the root or cluster.
pub fn print_tasks(tasks: &[CloneTask], json: bool, place: &str) -> anyhow::Result<()> {
    if json {
        // Records as the cluster's `list` gives them, in both modes: `history` has the runs.
        let tasks: Vec<CloneTask> = tasks
            .iter()
            .map(|t| CloneTask {
                history: Vec::new(),
                ..t.clone()
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    if tasks.is_empty() {
        println!("no tasks in {place}");
        return Ok(());
    }
    println!(
        "{:<16}  {:<9}  {:>4}  {:<8}  {:<11}  URL / PATH / NEXT SYNC / ERROR",
        "ID", "STATUS", "PCT", "OP", "FRESHNESS"
    );
    let blank = |text: &dyn std::fmt::Display| {
        println!(
            "{:<16}  {:<9}  {:>4}  {:<8}  {:<11}  {text}",
            "", "", "", "", ""
        );
    };
    for t in tasks {
        let pct = t
            .status
            .progress
            .map(|p| format!("{p}%"))
            .unwrap_or_default();
        let freshness = t.freshness.map_or("", |f| f.as_str());
        println!(
            "{:<16}  {:<9}  {:>4}  {:<8}  {:<11}  {}",
            t.id, t.status.status_type, pct, t.operation, freshness, t.url
        );
        blank(&t.path);
        if let Some(next) = t.next_sync_at {
            blank(&format!("next sync {next}"));
        }
        if let Some(error) = &t.status.error {
            blank(&format!("[{}] {error}", code_of(t)));
        }
    }
    Ok(())
}

/// The runs of `gitfleet history`, newest first, one line each (or a JSON array).
pub fn print_history(task: &CloneTask, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&task.history)?);
        return Ok(());
    }
    if task.history.is_empty() {
        println!("no finished run of {} recorded yet", task.url);
        return Ok(());
    }
    println!(
        "{:<20}  {:<8}  {:<9}  {:>16}  {:>7}  {:>10}  {:>8}  ERROR",
        "FINISHED", "OP", "RESULT", "REFS NEW/MOV/DEL", "COMMITS", "RECEIVED", "TOOK"
    );
    for run in &task.history {
        let refs = format!(
            "{}/{}/{}",
            run.refs_created, run.refs_updated, run.refs_deleted
        );
        let error = match (&run.error_code, &run.error) {
            (Some(code), Some(message)) => format!("[{code}] {message}"),
            (Some(code), None) => format!("[{code}]"),
            _ => String::new(),
        };
        println!(
            "{:<20}  {:<8}  {:<9}  {:>16}  {:>7}  {:>10}  {:>7.1}s  {error}",
            run.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
            run.operation,
            run.status,
            refs,
            run.new_commits,
            human_bytes(run.bytes_received),
            run.duration_ms as f64 / 1000.0,
        );
    }
    Ok(())
}

/// The commits of `gitfleet log`, one line each (or a JSON array).
pub fn print_commits(commits: &[CommitInfo], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(commits)?);
        return Ok(());
    }
    for c in commits {
        let short = c.id.get(..12).unwrap_or(&c.id);
        let time = c.time.strftime("%Y-%m-%d %H:%M");
        println!("{short}  {time}  {} <{}>  {}", c.author, c.email, c.subject);
    }
    Ok(())
}

/// Bytes in binary units, as `du -h` prints them.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
