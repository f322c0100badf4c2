//! Moving the records of the former layout (one file per task, `tasks/<id>.json`, which readers
//! still read, the log winning) into the log, once, when the writer first opens it.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use gitfleet_proto::CloneTask;

use super::LOG;
use super::journal::{for_each_line, parse_line, push_record};
use super::writer::{Log, Writer};

/// The former layout: one `<id>.json` file per task in this directory of the state directory.
pub(super) const LEGACY_DIR: &str = "tasks";

impl Writer {
    /// Appends the records of the former layout that the log does not hold a record of the
    /// task of (readers let the log win) to the log, then removes them. Unreadable ones stay.
    pub(super) fn migrate(&self, log: &mut Log) -> std::io::Result<()> {
        let dir = self.state_dir.join(LEGACY_DIR);
        let Some(files) = legacy_files(&dir)? else {
            return Ok(());
        };
        // The tasks the log holds a record of (after a migration that stopped half-way), read
        // when a readable former record is found.
        let mut in_log: Option<HashSet<String>> = None;
        let mut records = Vec::new();
        let mut moved = Vec::new();
        let mut written = 0usize;
        for path in files {
            match read_legacy(&path) {
                Ok(Some(task)) => {
                    let in_log = match &mut in_log {
                        Some(in_log) => in_log,
                        None => in_log.insert(self.ids_in_log(log.len)?),
                    };
                    if !in_log.contains(&task.id) {
                        push_record(&mut records, &task);
                        written += 1;
                    }
                    moved.push(path);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "leaving an unreadable task record in place");
                }
            }
            if records.len() >= 1 << 20 {
                log.file.write_all(&records)?;
                log.len += records.len() as u64;
                records.clear();
            }
        }
        log.file.write_all(&records)?;
        log.len += records.len() as u64;
        // Records found in the log are durable before their files go, too.
        log.file.sync_data()?;
        for path in &moved {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a moved task record");
                }
                _ => {}
            }
        }
        // Temporary files of the former writer, never records.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "leaving the former task record directory in place");
            }
        }
        tracing::info!(
            moved = moved.len(),
            written,
            "moved the task records into the task log"
        );
        Ok(())
    }

    /// The tasks the first `len` bytes of the log hold a record of that this version reads.
    pub(super) fn ids_in_log(&self, len: u64) -> std::io::Result<HashSet<String>> {
        let mut ids = HashSet::new();
        if len > 0 {
            let path = self.state_dir.join(LOG);
            for_each_line(&path, |offset, line| {
                if offset < len
                    && let Some(task) = parse_line(&path, offset, line)
                {
                    ids.insert(task.id);
                }
                Ok(())
            })?;
        }
        Ok(ids)
    }
}

/// The `*.json` files of the former layout, `None` if there is no such directory.
pub(super) fn legacy_files(dir: &Path) -> std::io::Result<Option<Vec<PathBuf>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(Some(files))
}

/// A record of the former layout; `None` if it is gone (moved into the log meanwhile) or
/// unreadable (with a warning).
pub(super) fn read_legacy(path: &Path) -> std::io::Result<Option<CloneTask>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match gitfleet_proto::from_json(&bytes) {
        Ok(task) => Ok(Some(task)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping unreadable task record");
            Ok(None)
        }
    }
}
