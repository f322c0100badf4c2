//! The cache's index: every entry, in `<cache root>/.gitfleet-cache/index.json`, replaced whole
//! (written to a temporary file, fsynced, renamed) so that a reader sees the old index or the new
//! one. Every change holds `.gitfleet-cache/lock` (an exclusive `flock`) from reading the index
//! to writing it back, so no change is lost to another process's; the long work (clones,
//! copies) runs between two such holds (lib.rs `refresh_from`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::CacheError;

/// The cache's own directory under the root.
pub(crate) const STATE_DIR: &str = ".gitfleet-cache";
const INDEX: &str = "index.json";
const LOCK: &str = "lock";

/// What an entry caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheType {
    /// A working-tree clone of a git repository.
    Git,
    /// A copy of a local directory.
    Local,
}

impl CacheType {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheType::Git => "git",
            CacheType::Local => "local",
        }
    }
}

/// One entry as the index keeps it. Its status is derived (`Cache::status_of`), never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// The URL or directory, as given (user information of http(s) URLs masked).
    pub source: String,
    pub cache_type: CacheType,
    pub created_at: Timestamp,
    /// When the copy was last made or found up to date; None if it never was.
    pub last_updated: Option<Timestamp>,
    /// When it was last cached, refreshed or asked for (eviction takes the oldest first).
    pub last_used: Timestamp,
    pub size_bytes: u64,
    /// Why the last operation on it failed (its copy, if any, is the previous good one).
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// The copy in use: `.gitfleet-cache/copies/<name>.<generation>`; 0 before the first. A
    /// cache-wide number, never given twice.
    pub generation: u64,
    /// Where the repository or directory is inside its copy (relative; empty for a local copy).
    pub inner: PathBuf,
}

/// The index as read under the lock; `save` writes it back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub(crate) entries: BTreeMap<String, Entry>,
    /// The last copy number handed out.
    #[serde(default)]
    pub(crate) next_copy: u64,
}

impl Index {
    /// Refuses an index whose names or paths could lead outside the cache (edited by hand, or
    /// damaged): every key a valid name equal to its entry's, every `inner` path relative and
    /// without `..`.
    fn check(&self) -> Result<(), String> {
        for (key, entry) in &self.entries {
            crate::name::checked(key).map_err(|e| e.to_string())?;
            if *key != entry.name {
                return Err(format!("the entry under {key:?} is named {:?}", entry.name));
            }
            let inner_ok = entry
                .inner
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inner_ok {
                return Err(format!(
                    "{key}: its copy's path {:?} leaves the copy",
                    entry.inner
                ));
            }
        }
        Ok(())
    }
}

/// The index, locked for this process until dropped.
pub(crate) struct Locked {
    _lock: File,
    pub(crate) index: Index,
    path: PathBuf,
}

impl Locked {
    /// Waits for the lock, then reads the index (empty if there is none yet).
    pub(crate) fn open(state_dir: &Path) -> Result<Locked, CacheError> {
        let io = |what: &str, e: std::io::Error| CacheError::io(what, state_dir, e);
        std::fs::create_dir_all(state_dir).map_err(|e| io("creating", e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK))
            .map_err(|e| io("opening the lock of", e))?;
        lock.lock().map_err(|e| io("locking", e))?;
        let path = state_dir.join(INDEX);
        let index: Index = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CacheError::Index {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(io("reading the index in", e)),
        };
        index.check().map_err(|reason| CacheError::Index {
            path: path.clone(),
            reason,
        })?;
        Ok(Locked {
            _lock: lock,
            index,
            path,
        })
    }

    /// Replaces the index on disk with this one.
    pub(crate) fn save(&self) -> Result<(), CacheError> {
        let io = |e| CacheError::io("writing the index", &self.path, e);
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(&self.index).map_err(|e| CacheError::Index {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}
