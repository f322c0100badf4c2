//! One working process per storage root, and requests (cancel, resume) from other processes.

use std::fs::File;
use std::path::{Path, PathBuf};

/// An exclusive lock on a storage root, held while a process clones or syncs into it. Released
/// when dropped (or when the process dies: it is an OS file lock).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock, or returns `None` when another process holds it.
    pub fn try_acquire(state_dir: &Path) -> std::io::Result<Option<RootLock>> {
        let path = state_dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RootLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Requests from other processes as files under `<root>/.gitfleet/<kind>/`, one per task id:
/// `gitfleet cancel` (or `resume`) in one process asks the process that works on the root.
#[derive(Debug, Clone)]
pub struct Requests {
    dir: PathBuf,
}

impl Requests {
    /// Requests to stop a task.
    pub fn cancels(state_dir: &Path) -> std::io::Result<Requests> {
        Self::open(state_dir.join("cancel"))
    }

    /// Requests to take a task out of quarantine and sync it now.
    pub fn resumes(state_dir: &Path) -> std::io::Result<Requests> {
        Self::open(state_dir.join("resume"))
    }

    fn open(dir: PathBuf) -> std::io::Result<Requests> {
        std::fs::create_dir_all(&dir)?;
        Ok(Requests { dir })
    }

    pub fn request(&self, task_id: &str) -> std::io::Result<()> {
        std::fs::write(self.dir.join(task_id), b"")
    }

    /// The task ids asked for since the last call; each is returned once.
    pub fn take(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let valid = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if std::fs::remove_file(entry.path()).is_ok() && valid {
                ids.push(name);
            }
        }
        ids
    }
}
