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

    /// Requests to set a task's interval (the file holds the seconds, or `adaptive`).
    pub fn intervals(state_dir: &Path) -> std::io::Result<Requests> {
        Self::open(state_dir.join("interval"))
    }

    /// Requests to forget a finished task whose repository is being removed.
    pub fn removes(state_dir: &Path) -> std::io::Result<Requests> {
        Self::open(state_dir.join("remove"))
    }

    /// Requests to archive a task or bring it back (the file holds `archive` or `unarchive`).
    pub fn archives(state_dir: &Path) -> std::io::Result<Requests> {
        Self::open(state_dir.join("archive"))
    }

    fn open(dir: PathBuf) -> std::io::Result<Requests> {
        std::fs::create_dir_all(&dir)?;
        Ok(Requests { dir })
    }

    pub fn request(&self, task_id: &str) -> std::io::Result<()> {
        self.request_with(task_id, "")
    }

    /// A request that carries a value (written whole before it is visible: a rename).
    pub fn request_with(&self, task_id: &str, value: &str) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{task_id}.{}", std::process::id()));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, self.dir.join(task_id))
    }

    /// Takes back a request not taken yet: whether it was still there.
    pub fn withdraw(&self, task_id: &str) -> std::io::Result<bool> {
        match std::fs::remove_file(self.dir.join(task_id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The task ids asked for since the last call; each is returned once.
    pub fn take(&self) -> Vec<String> {
        self.take_with_values()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The task ids asked for since the last call, with the value of each request.
    pub fn take_with_values(&self) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let valid = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                continue;
            }
            let value = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if std::fs::remove_file(entry.path()).is_ok() {
                taken.push((name, value.trim().to_string()));
            }
        }
        taken
    }
}
