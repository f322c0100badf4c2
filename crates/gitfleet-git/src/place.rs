//! Reaching a repository's path below the root without trusting anything on the way.
//!
//! Repository content is other people's: a checkout's tree holds symlinks and directories of
//! any name. So every path below the root is walked one component at a time from a handle on the
//! root (`openat` with `O_NOFOLLOW`), never by a path string that the kernel resolves:
//!
//! - a symlink anywhere on the way is refused, not followed;
//! - no component before the last may be a repository or a working tree (a directory ending in
//!   `.git`, or holding `.git`, `HEAD` with `objects`, or a gitfleet marker): one task's
//!   repository is never created inside another's;
//! - what is at the last component counts as gitfleet's only with this root's marker
//!   (marker.rs); anything else is left alone and reported;
//! - a clone moves into place with `renameat2(RENAME_NOREPLACE)` relative to the walked parent:
//!   it never replaces anything, not even an empty directory.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use gitfleet_proto::{ErrorCode, Operation, TaskError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::Layout;
use crate::marker::MARKER_FILE;

/// What is at a repository's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Absent,
    /// A repository this root's gitfleet made, of this kind.
    Ours(Operation),
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The longest marker read (a real one is ~100 bytes).
const MAX_MARKER: u64 = 512;

impl Layout {
    /// Removes the repository this root's gitfleet made at `dest`: first moved into the staging
    /// area in one rename (a crash leaves the whole repository at `dest`, or nothing there; the
    /// staging area is emptied when the root is next claimed), then deleted. Anything gitfleet
    /// did not make is refused and left alone, as by every other write. Whether there was one.
    pub fn remove_repository(&self, dest: &Path) -> Result<bool, TaskError> {
        if let Found::Absent = self.probe(dest)? {
            return Ok(false);
        }
        // The rename starts from the directory the walk reached without following a symlink,
        // never from the path string: a directory on the way swapped for a symlink since the
        // probe cannot redirect it.
        let relative = self.below_root(dest)?;
        let Some((parent, leaf)) = self.walk(relative, false)? else {
            return Ok(false);
        };
        let staging = self.staging_root();
        std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, &e))?;
        let staging_dir = rustix::fs::open(&staging, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error(&staging, &e.into()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("removed-{}-{nanos}", std::process::id());
        rustix::fs::renameat(&parent, leaf, &staging_dir, name.as_str())
            .map_err(|e| io_error(dest, &e.into()))?;
        let aside = staging.join(&name);
        std::fs::remove_dir_all(&aside).map_err(|e| io_error(&aside, &e))?;
        Ok(true)
    }

    /// Whether this root's gitfleet made the repository at `dest` (`false`: nothing there);
    /// anything else there, or on the way, is an error.
    pub fn holds_repository(&self, dest: &Path) -> Result<bool, TaskError> {
        Ok(matches!(self.probe(dest)?, Found::Ours(_)))
    }

    /// What is at `dest`, an absolute path below the root. A path that leaves the root, passes a
    /// symlink or another repository, or holds something gitfleet did not make is an error.
    pub(crate) fn probe(&self, dest: &Path) -> Result<Found, TaskError> {
        let relative = self.below_root(dest)?;
        let Some((parent, leaf)) = self.walk(relative, false)? else {
            return Ok(Found::Absent);
        };
        let stat = match rustix::fs::statat(&parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(Found::Absent),
            Err(e) => return Err(io_error(dest, &e.into())),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(foreign(dest, "is not a directory (a symlink or a file)"));
        }
        let repo = rustix::fs::openat(&parent, leaf, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error(dest, &e.into()))?;
        let git_dir = if is_bare_name(leaf) {
            repo
        } else {
            match rustix::fs::openat(&repo, ".git", DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {
                    return Err(foreign(dest, "is not a working tree that gitfleet made"));
                }
                Err(e) => return Err(io_error(dest, &e.into())),
            }
        };
        let marker = match rustix::fs::openat(
            &git_dir,
            MARKER_FILE,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let mut bytes = Vec::new();
                File::from(fd)
                    .take(MAX_MARKER)
                    .read_to_end(&mut bytes)
                    .map_err(|e| io_error(dest, &e))?;
                bytes
            }
            Err(Errno::NOENT | Errno::LOOP) => Vec::new(),
            Err(e) => return Err(io_error(dest, &e.into())),
        };
        match self.marker_key().verify(relative, &marker) {
            Some(kind) => Ok(Found::Ours(kind)),
            None => Err(foreign(
                dest,
                "holds a repository that this gitfleet root did not create (no valid gitfleet \
                 marker); not touching it",
            )),
        }
    }

    /// Marks the repository in `staging` as this root's, of `kind`, and moves it to `dest` (an
    /// absolute path below the root), creating the directories on the way. Never replaces
    /// anything at `dest`.
    pub(crate) fn place(
        &self,
        staging: &Path,
        dest: &Path,
        kind: Operation,
    ) -> Result<(), TaskError> {
        let relative = self.below_root(dest)?;
        let git_dir = if is_bare_name(leaf_of(relative)) {
            staging.to_path_buf()
        } else {
            staging.join(".git")
        };
        std::fs::write(
            git_dir.join(MARKER_FILE),
            self.marker_key().seal(relative, kind),
        )
        .map_err(|e| io_error(dest, &e))?;
        let Some((parent, leaf)) = self.walk(relative, true)? else {
            return Err(io_error(dest, &io::ErrorKind::NotFound.into()));
        };
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            staging,
            &parent,
            leaf,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Err(TaskError::new(
                ErrorCode::Conflict,
                format!(
                    "{} appeared while cloning; keeping what is there",
                    dest.display()
                ),
            )),
            Err(e) => Err(io_error(dest, &e.into())),
        }
    }

    /// Marks the repository of `kind` at `dest` as this root's, if it has no marker: for the
    /// repositories an earlier gitfleet made before there were markers (see
    /// [`Layout::adopt_once`]). The way there is walked as for any other access. Returns whether it
    /// marked it; a path with nothing, or nothing like a git directory, is left alone.
    pub(crate) fn adopt(&self, dest: &Path, kind: Operation) -> Result<bool, TaskError> {
        let relative = self.below_root(dest)?;
        let Some((parent, leaf)) = self.walk(relative, false)? else {
            return Ok(false);
        };
        let Ok(repo) = rustix::fs::openat(&parent, leaf, DIR_FLAGS, Mode::empty()) else {
            return Ok(false);
        };
        let git_dir = if is_bare_name(leaf) {
            repo
        } else {
            match rustix::fs::openat(&repo, ".git", DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(_) => return Ok(false),
            }
        };
        let present =
            |name: &str| rustix::fs::statat(&git_dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        if present(MARKER_FILE) || !(present("HEAD") && present("objects")) {
            return Ok(false);
        }
        let marker = rustix::fs::openat(
            &git_dir,
            MARKER_FILE,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| io_error(dest, &e.into()))?;
        std::io::Write::write_all(
            &mut File::from(marker),
            self.marker_key().seal(relative, kind).as_bytes(),
        )
        .map_err(|e| io_error(dest, &e))?;
        Ok(true)
    }

    /// `dest` below the root, made only of plain names, not in gitfleet's own directory.
    fn below_root<'a>(&self, dest: &'a Path) -> Result<&'a Path, TaskError> {
        let relative = dest.strip_prefix(self.root()).ok().filter(|r| {
            r.components().count() > 0 && r.components().all(|c| matches!(c, Component::Normal(_)))
        });
        match relative {
            Some(r) if !r.starts_with(crate::layout::STATE_DIR) => Ok(r),
            _ => Err(TaskError::new(
                ErrorCode::Internal,
                format!(
                    "{} is not a repository path below the storage root",
                    dest.display()
                ),
            )),
        }
    }

    /// Opens the parent directory of `relative` from the root, one component at a time, never
    /// following a symlink and never entering a repository; with `create`, makes the missing
    /// directories. `None`: a directory on the way does not exist (and `create` is off).
    fn walk<'a>(
        &self,
        relative: &'a Path,
        create: bool,
    ) -> Result<Option<(OwnedFd, &'a std::ffi::OsStr)>, TaskError> {
        let shown = |upto: &Path| self.root().join(upto);
        let mut dir = rustix::fs::open(self.root(), DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error(self.root(), &e.into()))?;
        let mut components: Vec<&std::ffi::OsStr> =
            relative.components().map(|c| c.as_os_str()).collect();
        let Some(leaf) = components.pop() else {
            return Err(io_error(self.root(), &io::ErrorKind::InvalidInput.into()));
        };
        let mut upto = std::path::PathBuf::new();
        for name in components {
            upto.push(name);
            if is_bare_name(name) {
                return Err(foreign(
                    &shown(&upto),
                    "is a repository; nothing is stored inside it",
                ));
            }
            let next = match rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_error(&shown(&upto), &e.into())),
                    }
                    rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())
                        .map_err(|e| walk_error(&shown(&upto), e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(walk_error(&shown(&upto), e)),
            };
            if let Some(what) = repository_inside(&next) {
                return Err(foreign(
                    &shown(&upto),
                    &format!("is {what}; nothing is stored inside it"),
                ));
            }
            dir = next;
        }
        Ok(Some((dir, leaf)))
    }
}

/// Whether the directory `dir` is a repository or a working tree, and which.
fn repository_inside(dir: &OwnedFd) -> Option<&'static str> {
    let has = |name: &str| rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    if has(".git") {
        Some("a working tree")
    } else if has(MARKER_FILE) || (has("HEAD") && has("objects")) {
        Some("a repository")
    } else {
        None
    }
}

fn is_bare_name(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().ends_with(b".git")
}

fn leaf_of(relative: &Path) -> &std::ffi::OsStr {
    relative.file_name().unwrap_or_default()
}

fn walk_error(path: &Path, e: Errno) -> TaskError {
    match e {
        Errno::LOOP | Errno::NOTDIR => foreign(path, "is a symlink or a file, not a directory"),
        e => io_error(path, &e.into()),
    }
}

fn foreign(path: &Path, why: &str) -> TaskError {
    TaskError::new(ErrorCode::Conflict, format!("{} {why}", path.display()))
}

fn io_error(path: &Path, e: &io::Error) -> TaskError {
    TaskError::new(ErrorCode::Storage, format!("{}: {e}", path.display()))
}
