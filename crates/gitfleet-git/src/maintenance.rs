//! Maintenance of a repository that fetched many times. Every fetch that receives something
//! leaves a pack behind, and a mirror synced a thousand times would hold a thousand of them;
//! past a threshold the repository is repacked by the git command line, which does this best:
//! one pack with a reachability bitmap, and a commit-graph.
//!
//! It runs after a sync, in the same job (so never while the repository syncs), outside the
//! attempt's watch (the stall limit would take a long repack for a stalled transfer), at most
//! [`MAX_AT_ONCE`] per process (one more waits for the next sync), and only on a repository this
//! root's gitfleet made. git reads no system or global configuration and runs no hook; the
//! repository's own configuration is gitfleet's (a fetch transfers none). A failure leaves the
//! repository as it was (git writes the new pack before it deletes the old ones) and is the
//! caller's to log: the sync it follows succeeded.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gitfleet_proto::{ErrorCode, Operation, TaskError};

use crate::place::Found;
use crate::{Control, Layout, Limits};

/// Repacks running at once in this process, at most.
pub const MAX_AT_ONCE: usize = 2;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static NO_GIT_WARNED: AtomicBool = AtomicBool::new(false);

/// What a repack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repacked {
    pub packs_before: usize,
    pub packs_after: usize,
}

/// Repacks the repository at `dest` when it holds more than `limits.repack_after_packs` packs
/// (0: never); `Ok(None)` when there was nothing to do, or no room to do it now.
pub fn maintain(
    layout: &Layout,
    dest: &Path,
    limits: &Limits,
    control: &Control,
) -> Result<Option<Repacked>, TaskError> {
    if limits.repack_after_packs == 0 {
        return Ok(None);
    }
    let git_dir = match layout.probe(dest)? {
        Found::Ours(Operation::Checkout) => dest.join(".git"),
        Found::Ours(_) => dest.to_path_buf(),
        Found::Absent => return Ok(None),
    };
    let packs_before = count_packs(&git_dir)?;
    if packs_before <= limits.repack_after_packs {
        return Ok(None);
    }
    let Some(_slot) = Slot::take() else {
        tracing::debug!(
            packs = packs_before,
            "another repack runs; this one waits for the next sync"
        );
        return Ok(None);
    };
    let deadline = Instant::now() + limits.time_limit;
    for args in [
        &["repack", "-a", "-d", "-q", "--write-bitmap-index"][..],
        &["commit-graph", "write", "--reachable", "--no-progress"][..],
    ] {
        match run_git(&git_dir, args, control, deadline)? {
            Ran::Done => {}
            Ran::NoGit => return Ok(None),
        }
    }
    let packs_after = count_packs(&git_dir)?;
    tracing::info!(
        packs_before,
        packs_after,
        "repacked a repository that had fetched many times"
    );
    Ok(Some(Repacked {
        packs_before,
        packs_after,
    }))
}

/// A place among the repacks running at once, given back on drop.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_AT_ONCE).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn count_packs(git_dir: &Path) -> Result<usize, TaskError> {
    let dir = git_dir.join("objects/pack");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(storage(&dir, &e)),
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .count())
}

fn storage(path: &Path, e: &std::io::Error) -> TaskError {
    TaskError::new(
        ErrorCode::Storage,
        format!("cannot read {}: {e}", path.display()),
    )
}

/// Kills git and everything it started (its process group).
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY-free: rustix's kill of a process group we created.
        if let Some(group) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

enum Ran {
    Done,
    /// git is not installed: maintenance is off (said once).
    NoGit,
}

/// Runs `git ARGS` in `git_dir` with no configuration but the repository's and no hook, until
/// it ends, the task is cancelled, or `deadline` passes (then it and what it started are
/// killed).
fn run_git(
    git_dir: &Path,
    args: &[&str],
    control: &Control,
    deadline: Instant,
) -> Result<Ran, TaskError> {
    let mut command = Command::new("git");
    // Nothing of this process's git environment (a GIT_DIR, an object directory, config
    // parameters) reaches it.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            command.env_remove(key);
        }
    }
    command
        .arg("-C")
        .arg(git_dir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(["-c", "core.fsmonitor=false"])
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A group of its own: git repack runs pack-objects, and a cancel must stop both.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !NO_GIT_WARNED.swap(true, Ordering::SeqCst) {
                tracing::warn!("git is not installed: repositories are not repacked");
            }
            return Ok(Ran::NoGit);
        }
        Err(e) => {
            return Err(TaskError::new(
                ErrorCode::Internal,
                format!("cannot run git {}: {e}", args[0]),
            ));
        }
    };
    // What git says, bounded; read on a thread of its own so that a full pipe never blocks it.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut said = Vec::new();
            let _ = pipe.by_ref().take(16 * 1024).read_to_end(&mut said);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            said
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if control.is_cancelled() || Instant::now() >= deadline => {
                kill_group(&mut child);
                break Err("stopped before it finished");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => {
                kill_group(&mut child);
                break Err("lost track of it");
            }
        }
    };
    // After a kill, a grandchild that still holds the pipe must not hold this thread.
    let said = stderr
        .filter(|_| status.is_ok())
        .and_then(|t| t.join().ok())
        .map(|bytes| crate::printable(String::from_utf8_lossy(&bytes).trim()))
        .unwrap_or_default();
    match status {
        Ok(status) if status.success() => Ok(Ran::Done),
        Ok(status) => Err(TaskError::new(
            ErrorCode::Storage,
            format!("git {} failed ({status}): {said}", args[0]),
        )),
        Err(why) => Err(TaskError::new(
            ErrorCode::Cancelled,
            format!("git {}: {why}", args[0]),
        )),
    }
}
