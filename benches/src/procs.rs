//! Processes: /proc readers (CPU, memory), running a child with a deadline while sampling its
//! peak memory, and the interrupt flag every wait loop checks.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set by the signal watcher (Ctrl-C, SIGTERM): every wait loop bails out, so that the drops
/// that stop servers, nodes and namespaces run.
pub fn set_interrupted() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Clock ticks per second of /proc's CPU times (USER_HZ; 100 on every usual Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// CPU seconds (user + system) of a live process, all its threads.
pub fn process_cpu(pid: u32) -> Option<f64> {
    let f = stat_fields(&pid.to_string())?;
    // utime, stime are fields 14 and 15 (indices 11 and 12 here).
    Some((f.get(11)? + f.get(12)?) as f64 / clock_ticks())
}

/// CPU seconds of this process' children that have been waited for (cutime + cstime).
pub fn reaped_children_cpu() -> f64 {
    stat_fields("self")
        .and_then(|f| Some((f.get(13)? + f.get(14)?) as f64 / clock_ticks()))
        .unwrap_or(0.0)
}

fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident memory (VmHWM) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(&pid.to_string(), "VmHWM:")
}

/// Resident memory (VmRSS) of a live process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:").unwrap_or(0)
}

/// This process' resident memory (VmRSS), in KiB.
pub fn own_rss_kib() -> u64 {
    status_kib("self", "VmRSS:").unwrap_or(0)
}

/// True when this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Pids of this process' children whose command line contains `needle`.
pub fn child_pids_matching(needle: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let Some(fields) = stat_fields(&name) else {
            continue;
        };
        // ppid is field 4 (index 1 here).
        if fields.get(1).map(u64::to_string) != Some(me.clone()) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// What became of one watched child.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub wall: Duration,
    /// Largest VmHWM sampled while it ran, KiB (0 when it exited before the first sample).
    pub peak_kib: u64,
}

impl Outcome {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
}

/// Runs `cmd` to completion or until `limit`, sampling its peak memory every 10 ms.
pub fn run_watched(cmd: &mut Command, limit: Duration) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    wait_watched(&mut child, start, limit)
}

pub fn wait_watched(child: &mut Child, start: Instant, limit: Duration) -> anyhow::Result<Outcome> {
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            return Ok(Outcome {
                status: Some(status),
                wall: start.elapsed(),
                peak_kib: peak,
            });
        }
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if start.elapsed() >= limit || check_interrupted().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            return Ok(Outcome {
                status: None,
                wall: start.elapsed(),
                peak_kib: peak,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed with {}: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes of every file below `dir`, skipping directories named `.gitfleet` (task state).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if entry.file_name() != ".gitfleet" {
                total += dir_bytes(&entry.path());
            }
        } else if kind.is_file() {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// A child killed (and reaped) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes every dirty page out before a row starts: git does not fsync, so a row that follows a
/// `git clone` batch would otherwise pay for writing that batch's files back (ext4's ordered
/// journal makes an fsync wait for other files' dirty data), and whichever side runs second
/// would look slower. Best effort: a machine without `sync` only measures less evenly.
pub fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("bench: cannot run sync before a row: {e}");
    }
}
