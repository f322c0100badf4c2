//! Making a copy of a source in a directory of its own: a git repository cloned with a working
//! tree by gitfleet's engine (the same policy, limits and redaction as every other transfer), or
//! a local directory copied without following a symlink.

use std::path::{Path, PathBuf};

use gitfleet_actors::{Executor, GitExecutor, Job};
use gitfleet_git::{Control, CredentialsConfig, Layout, Limits, Policy, Target};
use gitfleet_proto::{ErrorCode, Operation, TaskError};

/// How git copies are made.
#[derive(Debug, Clone)]
pub(crate) struct GitSettings {
    pub(crate) policy: Policy,
    pub(crate) credentials: CredentialsConfig,
    pub(crate) limits: Limits,
}

impl GitSettings {
    fn run(
        &self,
        copy_root: &Path,
        source: &str,
        operation: Operation,
    ) -> Result<(Job, gitfleet_proto::SyncResult), TaskError> {
        let layout = Layout::open(copy_root).map_err(|e| {
            TaskError::new(ErrorCode::Storage, format!("{}: {e}", copy_root.display()))
        })?;
        let target = Target::for_url(source, Operation::Checkout, &self.policy)?;
        let job = Job::new(&layout, &target, operation);
        let executor = GitExecutor {
            layout,
            policy: self.policy.clone(),
            credentials: self.credentials.clone(),
            limits: self.limits,
        };
        let result = executor.execute(&job, &Control::new(), &mut |_| {})?;
        Ok((job, result))
    }

    /// Clones `source` with a working tree into the empty `copy_root`; the repository's path
    /// inside it.
    pub(crate) fn clone(&self, copy_root: &Path, source: &str) -> Result<PathBuf, TaskError> {
        let (job, _) = self.run(copy_root, source, Operation::Checkout)?;
        Ok(inner(copy_root, &job.dest))
    }

    /// Fetches into the copy in `copy_root`; true when its working tree is not at what the
    /// remote has (upstream moved, in this fetch or an earlier one whose re-clone failed).
    pub(crate) fn behind_upstream(
        &self,
        copy_root: &Path,
        source: &str,
    ) -> Result<bool, TaskError> {
        let (job, _) = self.run(copy_root, source, Operation::Sync)?;
        gitfleet_git::checkout_is_behind(&job.dest)
    }
}

fn inner(copy_root: &Path, dest: &Path) -> PathBuf {
    dest.strip_prefix(copy_root).unwrap_or(dest).to_path_buf()
}

/// Copies the directory `from` into `to` (created): files and directories, symlinks as symlinks
/// (never followed), nothing else (sockets, devices).
pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        }
    }
    Ok(())
}

/// Bytes of the files below `dir`, symlinks not followed.
pub(crate) fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => size_of(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// A `git_config` entry must be `section.key` or `section.subsection.key` (letters, digits and
/// `-` in section and key), with a value on one line.
pub(crate) fn check_git_config(key: &str, value: &str) -> Result<(), crate::CacheError> {
    let invalid = |reason| crate::CacheError::GitConfig {
        key: gitfleet_git::printable(key),
        reason,
    };
    let (section, rest) = key.split_once('.').ok_or(invalid("not section.key"))?;
    let name = rest.rsplit('.').next().unwrap_or(rest);
    let word = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !word(section) || !word(name) {
        return Err(invalid(
            "section and key start with a letter and hold letters, digits and '-'",
        ));
    }
    let subsection = &rest[..rest.len() - name.len()];
    if subsection.contains(['\n', '"', '\0']) || value.contains(['\n', '\r', '\0']) {
        return Err(invalid("no line breaks, quotes in the subsection, or NUL"));
    }
    Ok(())
}

/// Appends `pairs` (checked) to the config of the working-tree clone at `repo`.
pub(crate) fn write_git_config(repo: &Path, pairs: &[(String, String)]) -> std::io::Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for (key, value) in pairs {
        let (section, rest) = key.split_once('.').unwrap_or((key, ""));
        let name = rest.rsplit('.').next().unwrap_or(rest);
        let subsection = rest[..rest.len() - name.len()].trim_end_matches('.');
        if subsection.is_empty() {
            text.push_str(&format!("[{section}]\n"));
        } else {
            let subsection = subsection.replace('\\', "\\\\");
            text.push_str(&format!("[{section} \"{subsection}\"]\n"));
        }
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("\t{name} = \"{escaped}\"\n"));
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(repo.join(".git/config"))?;
    file.write_all(text.as_bytes())
}
