//! Lock files a crash left behind. git and gix take `<file>.lock` while they change a file
//! (`packed-refs.lock`, `refs/heads/main.lock`, `HEAD.lock`, `config.lock`); a process killed in
//! between leaves the lock, and every later sync of that repository would fail.
//!
//! One gitfleet process works on a root at a time (the root lock), and it opened the root before
//! it started any work. So a lock file older than that is a leftover of a gitfleet that died, and
//! is removed; a newer one belongs to someone else working in the repository right now (an
//! operator's git), and the sync fails with `storage`, leaving it alone.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gitfleet_proto::{ErrorCode, TaskError};

/// The lock files git and gix take in a git directory, outside `refs/`.
const TOP_LEVEL_LOCKS: [&str; 4] = ["packed-refs.lock", "HEAD.lock", "config.lock", "index.lock"];

/// Removes the lock files in `git_dir` older than `since`; fails on a newer one. Returns how many
/// it removed.
pub(crate) fn clear_stale(git_dir: &Path, since: SystemTime) -> Result<usize, TaskError> {
    let mut locks: Vec<PathBuf> = TOP_LEVEL_LOCKS
        .iter()
        .map(|name| git_dir.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    collect_ref_locks(&git_dir.join("refs"), &mut locks);
    let mut removed = 0;
    for lock in locks {
        let modified = lock
            .symlink_metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if modified >= since {
            return Err(TaskError::new(
                ErrorCode::Storage,
                format!(
                    "{} is locked by another process ({}); not touching it",
                    git_dir.display(),
                    lock.display()
                ),
            ));
        }
        match std::fs::remove_file(&lock) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TaskError::new(
                    ErrorCode::Storage,
                    format!("cannot remove the stale lock {}: {e}", lock.display()),
                ));
            }
        }
    }
    if removed > 0 {
        tracing::warn!(git_dir = %git_dir.display(), removed, "removed lock files a crash left");
    }
    Ok(removed)
}

/// Every `*.lock` below `dir`, without following symlinks.
fn collect_ref_locks(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            collect_ref_locks(&path, out);
        } else if path.extension().is_some_and(|e| e == "lock") {
            out.push(path);
        }
    }
}
