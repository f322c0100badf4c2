//! A storage root opened for work: the lock that makes one process work on a root, the staging
//! directories an interrupted run left, the task records, and the repositories of an earlier
//! version adopted. The command line (embedded, `serve`, a node) and the Python package open
//! their roots here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gitfleet_git::Layout;
use gitfleet_proto::CloneTask;

use crate::{FileStore, RootLock};

/// Why a root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot use {} as the storage root: {source}", root.display())]
    Unusable {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another gitfleet process is working in {}; {busy}", root.display())]
    Busy { root: PathBuf, busy: String },
    #[error("cannot clean the staging directory of {}: {source}", root.display())]
    Staging {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the task records of {}: {source}", root.display())]
    Records {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot adopt the repositories of an earlier version in {}: {source}", root.display())]
    Adopt {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The root at `root`, created if missing.
pub fn open_layout(root: &Path) -> Result<Layout, RootError> {
    Layout::open(root).map_err(|source| RootError::Unusable {
        root: root.to_path_buf(),
        source,
    })
}

/// `root` opened and locked for this process, with the staging directories of an interrupted
/// run removed (only the holder of the lock may: they could be another process's clones).
/// `busy` says what to do when another process holds it.
pub fn claim(root: &Path, busy: &str) -> Result<(Layout, RootLock), RootError> {
    let layout = open_layout(root)?;
    let unusable = |source| RootError::Unusable {
        root: layout.root().to_path_buf(),
        source,
    };
    let Some(lock) = RootLock::try_acquire(&layout.state_dir()).map_err(unusable)? else {
        return Err(RootError::Busy {
            root: layout.root().to_path_buf(),
            busy: busy.to_string(),
        });
    };
    let removed = layout
        .clean_staging()
        .map_err(|source| RootError::Staging {
            root: layout.root().to_path_buf(),
            source,
        })?;
    if removed > 0 {
        tracing::info!(removed, "removed staging directories of an interrupted run");
    }
    Ok((layout, lock))
}

/// A root opened for work: locked (one working process per root), staging cleaned, its task
/// records read, the repositories of an earlier version adopted.
#[derive(Debug)]
pub struct OpenRoot {
    pub layout: Layout,
    pub store: Arc<FileStore>,
    /// The task records as they were when the root was opened.
    pub known: Vec<CloneTask>,
    /// Repositories of an earlier version (no marker) that this opening marked as the root's.
    pub adopted: usize,
    _lock: RootLock,
}

impl OpenRoot {
    /// `busy`: what to tell the user when another process works in the root.
    pub fn open(root: &Path, busy: &str) -> Result<OpenRoot, RootError> {
        let (layout, lock) = claim(root, busy)?;
        let records = |source| RootError::Records {
            root: layout.root().to_path_buf(),
            source,
        };
        let store = Arc::new(FileStore::open(&layout.state_dir()).map_err(records)?);
        let known = store.load_all_sync().map_err(records)?;
        // Repositories an earlier version made carry no marker: once, adopt those that this
        // root's own records say it finished, so that they keep syncing.
        let adopted = layout
            .adopt_once(&known)
            .map_err(|source| RootError::Adopt {
                root: layout.root().to_path_buf(),
                source,
            })?;
        Ok(OpenRoot {
            layout,
            store,
            known,
            adopted,
            _lock: lock,
        })
    }
}

/// This machine's name: the default node id, and who ran a task.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}
