//! Where repositories live: `<root>/<host>/<owner>/<name>.git`, plus gitfleet's own state under
//! `<root>/.gitfleet/` (a name no host segment can take: hosts never start with a dot).

use std::io;
use std::path::{Path, PathBuf};

use gitfleet_proto::Operation;

use crate::{RepoUrl, UrlError};

const STATE_DIR: &str = ".gitfleet";
const STAGING_DIR: &str = "staging";

/// The storage root and everything derived from it.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Creates the root (and gitfleet's state directories) if needed.
    pub fn open(root: &Path) -> io::Result<Layout> {
        std::fs::create_dir_all(root.join(STATE_DIR).join(STAGING_DIR))?;
        Ok(Layout {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// gitfleet's own files: task records, locks, staging.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    fn staging_root(&self) -> PathBuf {
        self.state_dir().join(STAGING_DIR)
    }

    /// Where a repository fetched from `url` is stored. Mirror and bare clones are bare
    /// repositories named `<name>.git`; checkouts are working trees named `<name>`.
    pub fn repo_path(&self, url: &RepoUrl, operation: Operation) -> PathBuf {
        self.root.join(relative_repo_path(url, operation))
    }

    /// Where `gitfleet init` puts a new repository.
    pub fn init_path(&self, name: &InitName, worktree: bool) -> PathBuf {
        let mut segments = vec!["_local".to_string()];
        segments.extend(name.segments.iter().cloned());
        self.join_segments(segments, worktree)
    }

    fn join_segments(&self, segments: Vec<String>, worktree: bool) -> PathBuf {
        self.root.join(join_segments(segments, worktree))
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

    /// The path relative to the root, as used for task ids.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

/// Where a repository fetched from `url` is stored, relative to any root: the same on every node.
pub fn relative_repo_path(url: &RepoUrl, operation: Operation) -> PathBuf {
    join_segments(url.storage_segments(), operation == Operation::Checkout)
}

fn join_segments(mut segments: Vec<String>, worktree: bool) -> PathBuf {
    if !worktree && let Some(last) = segments.last_mut() {
        last.push_str(".git");
    }
    segments.into_iter().collect()
}

/// The stable id of the task for the repository stored at `relative` (a path below the root):
/// 16 hex digits of its FNV-1a hash. Derived from the storage path, so every spelling of one
/// repository maps to one id.
pub fn task_id(relative: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in relative.to_string_lossy().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The name of a repository created by `gitfleet init`: `owner/name`, validated like a URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitName {
    segments: Vec<String>,
}

impl InitName {
    pub fn parse(input: &str) -> Result<InitName, UrlError> {
        // The same segment rules as URL paths: no '..', no leading '-', no control characters.
        let url = RepoUrl::parse(&format!("https://init.invalid/{}", input.trim_matches('/')))
            .map_err(|e| UrlError {
                code: e.code,
                message: e.message.replace("https://init.invalid/", ""),
            })?;
        Ok(InitName {
            segments: url.storage_segments().into_iter().skip(1).collect(),
        })
    }

    pub fn as_str(&self) -> String {
        self.segments.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_owners_apart_and_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::open(dir.path()).expect("layout");
        let a = layout.repo_path(
            &RepoUrl::parse("https://h.example/a/utils").expect("a"),
            Operation::Mirror,
        );
        let b = layout.repo_path(
            &RepoUrl::parse("https://h.example/b/utils.git").expect("b"),
            Operation::Mirror,
        );
        assert_ne!(a, b);
        assert!(a.starts_with(layout.root()) && b.starts_with(layout.root()));
        assert!(a.ends_with("h.example/a/utils.git"), "{}", a.display());
        let wt = layout.repo_path(
            &RepoUrl::parse("https://h.example/a/utils").expect("a"),
            Operation::Checkout,
        );
        assert!(wt.ends_with("h.example/a/utils"));
        assert_ne!(task_id(layout.relative(&a)), task_id(layout.relative(&b)));
    }

    #[test]
    fn init_names_are_validated() {
        assert_eq!(
            InitName::parse("team/tools").expect("ok").as_str(),
            "team/tools"
        );
        assert!(InitName::parse("../etc").is_err());
        assert!(InitName::parse("team/-x").is_err());
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
