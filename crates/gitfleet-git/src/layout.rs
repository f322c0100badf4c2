//! Where repositories live: `<root>/<path of the target>` (target.rs), plus gitfleet's own state
//! under `<root>/.gitfleet/` (a name no host segment can take: hosts never start with a dot).
//! Reaching those paths safely is place.rs.

use std::io;
use std::path::{Path, PathBuf};

use crate::Target;
use crate::marker::MarkerKey;

pub(crate) const STATE_DIR: &str = ".gitfleet";
const STAGING_DIR: &str = "staging";
/// Written once the repositories of an earlier version were adopted ([`Layout::adopt_once`]).
const ADOPTED: &str = "markers-adopted";

/// The storage root and everything derived from it.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    marker_key: MarkerKey,
    /// When this process opened the root: a lock file older than this is a crash's leftover
    /// (locks.rs).
    opened_at: std::time::SystemTime,
}

impl Layout {
    /// Creates the root (and gitfleet's state directories and marker key) if needed.
    pub fn open(root: &Path) -> io::Result<Layout> {
        std::fs::create_dir_all(root.join(STATE_DIR).join(STAGING_DIR))?;
        let root = std::fs::canonicalize(root)?;
        let marker_key = MarkerKey::load_or_create(&root.join(STATE_DIR))?;
        Ok(Layout {
            root,
            marker_key,
            opened_at: std::time::SystemTime::now(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn marker_key(&self) -> &MarkerKey {
        &self.marker_key
    }

    pub(crate) fn opened_at(&self) -> std::time::SystemTime {
        self.opened_at
    }

    /// gitfleet's own files: task records, locks, staging.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub(crate) fn staging_root(&self) -> PathBuf {
        self.state_dir().join(STAGING_DIR)
    }

    /// Where `target`'s repository is stored below this root.
    pub fn path_of(&self, target: &Target) -> PathBuf {
        self.root.join(target.relative())
    }

    /// Whether [`Layout::adopt_once`] already ran on this root.
    pub fn adopted_already(&self) -> bool {
        self.state_dir().join(ADOPTED).exists()
    }

    /// Once per root: marks the repositories an earlier gitfleet made before repositories had
    /// markers, so that they keep syncing. `stored` are gitfleet's own task records of this
    /// root: only a repository at the path of a completed task (re-derived from its URL) is
    /// adopted, as the kind its task and path say. Returns how many were marked; later calls do
    /// nothing (`.gitfleet/markers-adopted`).
    pub fn adopt_once<'a>(
        &self,
        stored: impl IntoIterator<Item = &'a gitfleet_proto::CloneTask>,
    ) -> io::Result<usize> {
        use gitfleet_proto::{Operation, StatusType};
        let done = self.state_dir().join(ADOPTED);
        if done.exists() {
            return Ok(0);
        }
        let mut adopted = 0;
        for task in stored {
            if task.status.status_type != StatusType::Completed && task.last_sync.is_none() {
                continue;
            }
            let Ok(target) = Target::of_task(task) else {
                continue;
            };
            let kind = match task.operation {
                Operation::Sync if target.is_bare() => Operation::Mirror,
                Operation::Sync => Operation::Checkout,
                op => op,
            };
            let dest = self.path_of(&target);
            match self.adopt(&dest, kind) {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(path = %dest.display(), error = %e, "not adopted"),
            }
        }
        std::fs::write(&done, format!("{adopted}\n"))?;
        Ok(adopted)
    }

    /// A fresh, unique staging path on the same file system as the root, so that the final
    /// move into place is an atomic rename. The directory itself is not created.
    pub fn new_staging_path(&self) -> PathBuf {
        let suffix: u64 = rand::random();
        self.staging_root()
            .join(format!("{}-{suffix:016x}", std::process::id()))
    }

    /// Removes staging directories left by a process that died mid-clone. Call only while
    /// holding the root's lock: a live process's staging directory would go too.
    pub fn clean_staging(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.staging_root())? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_owners_apart_and_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::open(dir.path()).expect("layout");
        let policy = crate::Policy::permissive();
        let mirror = gitfleet_proto::Operation::Mirror;
        let a = Target::for_url("https://h.example/a/utils", mirror, &policy).expect("a");
        let b = Target::for_url("https://h.example/b/utils.git", mirror, &policy).expect("b");
        let (pa, pb) = (layout.path_of(&a), layout.path_of(&b));
        assert_ne!(pa, pb);
        assert!(pa.starts_with(layout.root()) && pb.starts_with(layout.root()));
        assert!(pa.ends_with("h.example/a/utils.git"), "{}", pa.display());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn stale_staging_is_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::open(dir.path()).expect("layout");
        let stale = layout.new_staging_path();
        std::fs::create_dir_all(stale.join("objects")).expect("mkdir");
        assert_eq!(layout.clean_staging().expect("clean"), 1);
        assert!(!stale.exists());
    }
}
