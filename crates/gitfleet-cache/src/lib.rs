//! A cache of git repositories and local directories under one root, for programs that want a
//! recent copy of a repository by name (`gitfleet cache`, Python's `GitCacheManager`).
//!
//! Layout of a cache root:
//! - `<name>`: a symlink to the entry's current copy (what users open);
//! - `.gitfleet-cache/copies/<name>.<generation>/`: the copies. A git copy is a gitfleet root of
//!   its own holding one working-tree clone made by the engine; a local copy is the directory's
//!   files. A refresh makes the next generation beside the current one and, once it is complete,
//!   points the symlink at it (one rename) and deletes the old one: a failed refresh leaves the
//!   previous good copy in place, and a reader never sees half a copy.
//! - `.gitfleet-cache/index.json` and `lock` (index.rs).
//!
//! Status is derived, never stored: MISSING when the copy is gone, ERROR when the last operation
//! failed, STALE after the timeout, FRESH otherwise. A refresh of a git entry first fetches into
//! the current copy: when nothing moved upstream the copy stays (a cheap check); otherwise the
//! next generation is cloned.

mod fill;
mod index;
mod name;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use gitfleet_git::{Credentials, CredentialsConfig, Limits, Policy, Secret, scrub_userinfo};
use gitfleet_proto::{ErrorCode, TaskError};
use jiff::Timestamp;
use serde::Serialize;

use crate::fill::GitSettings;
pub use crate::index::{CacheType, Entry};
use crate::index::{Locked, STATE_DIR};

/// Why a cache operation failed. `code()` is stable; messages name what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "invalid cache entry name {name:?}: use 1-100 letters, digits, '.', '_' or '-', not \
         starting with '.' or '-'"
    )]
    InvalidName { name: String },
    #[error("cannot make an entry name from {input}: give one")]
    NoDefaultName { input: String },
    #[error(
        "the name {name:?} is taken by {existing}; give another name to cache {input} (two \
         sources with the same last path segment need names of their own)"
    )]
    Clash {
        name: String,
        existing: String,
        input: String,
    },
    #[error("no cache entry named {name:?}")]
    NotFound { name: String },
    #[error("{name} has no copy: {reason}")]
    NoCopy { name: String, reason: String },
    #[error("{summary}: {message}")]
    Fill {
        summary: &'static str,
        code: ErrorCode,
        message: String,
    },
    #[error("cannot cache {input}: {reason}")]
    Source { input: String, reason: String },
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("the cache index {} is unreadable: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    #[error("invalid git_config entry {key:?}: {reason}")]
    GitConfig { key: String, reason: &'static str },
}

impl CacheError {
    pub(crate) fn io(what: &str, path: &Path, error: std::io::Error) -> CacheError {
        CacheError::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            error,
        }
    }

    fn not_found(name: &str) -> CacheError {
        CacheError::NotFound {
            name: gitfleet_git::printable(name),
        }
    }

    /// A failed clone or fetch, led by what happened in the words users look for.
    fn fill(e: TaskError) -> CacheError {
        let summary = match e.code {
            ErrorCode::NotFound => "Repository not found",
            ErrorCode::AuthFailed => "Authentication failed",
            ErrorCode::InvalidUrl | ErrorCode::PolicyDenied => "Invalid source",
            _ => "Caching failed",
        };
        CacheError::Fill {
            summary,
            code: e.code,
            message: e.message,
        }
    }

    /// The stable code of the failure (`not_found`, `auth_failed`, `name_clash`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            CacheError::InvalidName { .. } | CacheError::NoDefaultName { .. } => "invalid_name",
            CacheError::Clash { .. } => "name_clash",
            CacheError::NotFound { .. } => "not_found",
            CacheError::NoCopy { .. } => "missing",
            CacheError::Fill { code, .. } => code.as_str(),
            CacheError::Source { .. } => "invalid_source",
            CacheError::Io { .. } | CacheError::Index { .. } => "storage",
            CacheError::GitConfig { .. } => "invalid_config",
        }
    }
}

/// An entry's state, derived when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CacheStatus {
    Fresh,
    Stale,
    Missing,
    Error,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Fresh => "FRESH",
            CacheStatus::Stale => "STALE",
            CacheStatus::Missing => "MISSING",
            CacheStatus::Error => "ERROR",
        }
    }
}

/// An entry as users see it: the record, its status now, and its path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CachedEntry {
    #[serde(flatten)]
    pub entry: Entry,
    pub status: CacheStatus,
    /// `<cache root>/<name>`: the symlink to the current copy.
    pub cache_path: PathBuf,
}

/// What the unlocked part of a refresh made.
enum Made {
    /// Nothing moved upstream: the current copy stays.
    Unchanged { size: u64 },
    /// A new copy, complete, not yet switched in.
    Copy { inner: PathBuf, size: u64 },
}

/// `url` without the user information of its authority (`https://user@host/x` is
/// `https://host/x`); ssh's `user@host:path` form keeps its user, which names no secret.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if matches!(scheme, "http" | "https") => format!("{scheme}://{}", &rest[at + 1..]),
        _ => url.to_string(),
    }
}

/// Totals over the cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub total_entries: usize,
    pub total_size_bytes: u64,
    pub total_size_gb: f64,
    pub max_size_bytes: u64,
    pub by_status: std::collections::BTreeMap<&'static str, usize>,
    pub by_type: std::collections::BTreeMap<&'static str, usize>,
}

/// How a cache behaves.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub root: PathBuf,
    /// After this long without a refresh an entry is STALE (and `add` refreshes it).
    pub timeout: Duration,
    /// Above this, the least recently used entries are evicted (never the one just cached).
    pub max_bytes: u64,
    pub limits: Limits,
    /// `(key, value)` pairs written into every git entry's repository config
    /// (`user.name`, `http.extraHeader`, ...), for the tools that open the copy. gitfleet's own
    /// transfers never read a repository's config.
    pub git_config: Vec<(String, String)>,
}

impl CacheConfig {
    pub fn new(root: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            root: root.into(),
            timeout: Duration::from_secs(60 * 60),
            max_bytes: 10 * 1024 * 1024 * 1024,
            limits: Limits::default(),
            git_config: Vec::new(),
        }
    }
}

/// A cache root opened by this process. Every operation reads and writes the index under the
/// cache's lock; clones, fetches and copies run without it, so operations of several processes
/// (and threads) on one cache run side by side.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    state_dir: PathBuf,
    /// Behind a lock of its own, held only to read or change it.
    credentials: Mutex<CredentialsConfig>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `config.root`.
    pub fn open(config: CacheConfig) -> Result<Cache, CacheError> {
        for (key, value) in &config.git_config {
            fill::check_git_config(key, value)?;
        }
        std::fs::create_dir_all(&config.root)
            .map_err(|e| CacheError::io("creating the cache root", &config.root, e))?;
        let root = config
            .root
            .canonicalize()
            .map_err(|e| CacheError::io("opening the cache root", &config.root, e))?;
        let state_dir = root.join(STATE_DIR);
        // Read once: a broken index is an error now rather than at the first operation.
        drop(Locked::open(&state_dir)?);
        Ok(Cache {
            config: CacheConfig { root, ..config },
            state_dir,
            credentials: Mutex::new(CredentialsConfig::default()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Which credentials go to which host for git sources (replacing those set before).
    pub fn set_credentials(&self, credentials: CredentialsConfig) {
        if let Ok(mut held) = self.credentials.lock() {
            *held = credentials;
        }
    }

    /// Offers `username`/`token` to `host` (an exact name or `*.suffix`) for git sources; kept
    /// in memory only. Operations already running keep the credentials they started with.
    pub fn add_credentials(&self, host: &str, username: &str, token: &str) {
        if let Ok(mut held) = self.credentials.lock() {
            held.per_host.insert(
                0,
                (
                    host.to_ascii_lowercase(),
                    Credentials {
                        username: username.to_string(),
                        token: Secret::new(token),
                    },
                ),
            );
        }
    }

    /// How git copies are made now (the credentials as they are at this moment).
    fn git(&self) -> GitSettings {
        GitSettings {
            policy: Policy::permissive(),
            credentials: self
                .credentials
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
            limits: self.config.limits,
        }
    }

    fn copy_dir(&self, name: &str, generation: u64) -> PathBuf {
        self.state_dir
            .join("copies")
            .join(format!("{name}.{generation}"))
    }

    fn link_of(&self, name: &str) -> PathBuf {
        self.config.root.join(name)
    }

    fn view(&self, entry: &Entry, now: Timestamp) -> CachedEntry {
        let cache_path = self.link_of(&entry.name);
        let status = if entry.generation == 0 {
            if entry.error.is_some() {
                CacheStatus::Error
            } else {
                CacheStatus::Missing
            }
        } else if !cache_path.exists() {
            CacheStatus::Missing
        } else if entry.error.is_some() {
            CacheStatus::Error
        } else {
            let stale = entry.last_updated.is_none_or(|at| {
                now.duration_since(at)
                    .try_into()
                    .is_ok_and(|age: Duration| age > self.config.timeout)
            });
            if stale {
                CacheStatus::Stale
            } else {
                CacheStatus::Fresh
            }
        };
        CachedEntry {
            entry: entry.clone(),
            status,
            cache_path,
        }
    }

    /// Caches `source` (a URL, or a local directory) as `name` (default: its last path
    /// segment). An entry of that name and source is reused: refreshed when it is not FRESH. A
    /// name another source holds is refused.
    pub fn add(&self, source: &str, name: Option<&str>) -> Result<CachedEntry, CacheError> {
        let name = match name {
            Some(name) => name::checked(name)?.to_string(),
            None => name::default_for(source)?,
        };
        let (cache_type, source_key) = self.classify(source)?;
        let mut locked = Locked::open(&self.state_dir)?;
        let now = Timestamp::now();
        if let Some(existing) = locked.index.entries.get(&name) {
            if existing.source != source_key || existing.cache_type != cache_type {
                return Err(CacheError::Clash {
                    name,
                    existing: existing.source.clone(),
                    input: source_key,
                });
            }
            if self.view(existing, now).status == CacheStatus::Fresh {
                let entry = locked
                    .index
                    .entries
                    .get_mut(&name)
                    .ok_or_else(|| CacheError::not_found(&name))?;
                entry.last_used = now;
                let view = self.view(entry, now);
                locked.save()?;
                return Ok(view);
            }
        } else {
            locked.index.entries.insert(
                name.clone(),
                Entry {
                    name: name.clone(),
                    source: source_key,
                    cache_type,
                    created_at: now,
                    last_updated: None,
                    last_used: now,
                    size_bytes: 0,
                    error: None,
                    error_code: None,
                    generation: 0,
                    inner: PathBuf::new(),
                },
            );
        }
        self.refresh_from(locked, &name, source)
    }

    /// Brings the entry `name` up to date: a git entry is fetched (and cloned anew when
    /// upstream moved), a local one copied again. On failure the previous copy stays.
    pub fn refresh(&self, name: &str) -> Result<CachedEntry, CacheError> {
        let locked = Locked::open(&self.state_dir)?;
        let entry = locked
            .index
            .entries
            .get(name)
            .ok_or_else(|| CacheError::not_found(name))?;
        let source = entry.source.clone();
        let name = entry.name.clone();
        self.refresh_from(locked, &name, &source)
    }

    /// Refreshes `name` from `source` (as the caller gave it: a URL may carry credentials the
    /// index does not keep). Three steps, so that other operations go on meanwhile: under the
    /// lock, reserve the next generation; without it, fetch and make the copy; under the lock
    /// again, switch the copy in, unless the entry went away or a newer copy is in place already
    /// (then this one is deleted).
    fn refresh_from(
        &self,
        mut locked: Locked,
        name: &str,
        source: &str,
    ) -> Result<CachedEntry, CacheError> {
        let entry = locked
            .index
            .entries
            .get_mut(name)
            .ok_or_else(|| CacheError::not_found(name))?;
        let before = entry.clone();
        // Copy numbers are the cache's, never reused: no two copies (of this entry or of an
        // entry of the same name made again) share a directory.
        locked.index.next_copy = locked.index.next_copy.max(before.generation) + 1;
        let generation = locked.index.next_copy;
        locked.save()?;
        drop(locked);

        let outcome = self.fill(&before, generation, source);

        let mut locked = Locked::open(&self.state_dir)?;
        let now = Timestamp::now();
        let new_copy = self.copy_dir(name, generation);
        let discard = |made: &Result<Made, CacheError>| {
            if matches!(made, Ok(Made::Copy { .. })) {
                let _ = std::fs::remove_dir_all(&new_copy);
            }
        };
        // Gone, or removed and made again meanwhile (perhaps of another source): not ours.
        let Some(stored) = locked
            .index
            .entries
            .get_mut(name)
            .filter(|e| e.created_at == before.created_at && e.source == before.source)
        else {
            discard(&outcome);
            return Err(CacheError::not_found(name));
        };
        stored.last_used = now;
        let switched = match outcome {
            Ok(Made::Copy { inner, size }) if generation > stored.generation => self
                .point_at(name, &new_copy.join(&inner))
                .map(|()| {
                    let old = std::mem::replace(&mut stored.generation, generation);
                    stored.inner = inner;
                    stored.size_bytes = size;
                    (old > 0).then(|| self.copy_dir(name, old))
                })
                .inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&new_copy);
                }),
            made @ Ok(Made::Copy { .. }) => {
                // Another refresh switched a newer copy in meanwhile.
                discard(&made);
                Ok(None)
            }
            // What was learned about a copy that is no longer the entry's says nothing about it.
            _ if stored.generation != before.generation => {
                let stale = self.copy_dir(name, before.generation);
                if before.generation > 0 {
                    let _ = std::fs::remove_dir_all(&stale);
                }
                let view = self.view(stored, now);
                locked.save()?;
                return Ok(view);
            }
            Ok(Made::Unchanged { size }) => {
                stored.size_bytes = size;
                Ok(None)
            }
            Err(e) => Err(e),
        };
        match switched {
            Ok(old) => {
                stored.last_updated = Some(now);
                stored.error = None;
                stored.error_code = None;
                let view = self.view(stored, now);
                let evicted = self.evict(&mut locked, name);
                // The index first: if it cannot be written, the copies it names are still there.
                locked.save()?;
                drop(locked);
                for dir in old.into_iter().chain(evicted) {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(path = %dir.display(), error = %e, "cannot remove an old copy");
                    }
                }
                Ok(view)
            }
            Err(e) => {
                stored.error = Some(e.to_string());
                stored.error_code = Some(e.code().to_string());
                locked.save()?;
                Err(e)
            }
        }
    }

    /// The work of a refresh, without the lock: a git copy is fetched and kept when nothing
    /// moved upstream; otherwise copy `generation` is made.
    fn fill(&self, entry: &Entry, generation: u64, source: &str) -> Result<Made, CacheError> {
        let current = self.copy_dir(&entry.name, entry.generation);
        let has_copy = entry.generation > 0 && self.link_of(&entry.name).exists();
        if entry.cache_type == CacheType::Git && has_copy {
            let behind = self
                .git()
                .behind_upstream(&current, source)
                .map_err(CacheError::fill)?;
            if !behind {
                return Ok(Made::Unchanged {
                    size: fill::size_of(&current),
                });
            }
        }
        let dir = self.copy_dir(&entry.name, generation);
        let made = match entry.cache_type {
            CacheType::Git => self
                .git()
                .clone(&dir, source)
                .map_err(CacheError::fill)
                .and_then(|inner| {
                    fill::write_git_config(&dir.join(&inner), &self.config.git_config)
                        .map_err(|e| CacheError::io("configuring", &dir.join(&inner), e))?;
                    Ok(inner)
                }),
            // The directory checked when the entry was made, checked again (a symlink on its
            // way may have changed since).
            CacheType::Local => self
                .classify(&entry.source)
                .and_then(|(kind, checked)| {
                    if kind != CacheType::Local || checked != entry.source {
                        return Err(CacheError::Source {
                            input: entry.source.clone(),
                            reason: "it is no longer the directory it was".into(),
                        });
                    }
                    fill::copy_dir(Path::new(&checked), &dir).map_err(|e| CacheError::Source {
                        input: entry.source.clone(),
                        reason: e.to_string(),
                    })
                })
                .map(|()| PathBuf::new()),
        };
        match made {
            Ok(inner) => Ok(Made::Copy {
                inner,
                size: fill::size_of(&dir),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Points `<root>/<name>` at `target` in one rename (a symlink made beside it first). A
    /// directory or file that is not the cache's symlink is never replaced.
    fn point_at(&self, name: &str, target: &Path) -> Result<(), CacheError> {
        let link = self.link_of(name);
        if let Ok(meta) = std::fs::symlink_metadata(&link)
            && !meta.file_type().is_symlink()
        {
            return Err(CacheError::Source {
                input: link.display().to_string(),
                reason: "something that is not the cache's own link is at the entry's path".into(),
            });
        }
        let relative = target.strip_prefix(&self.config.root).unwrap_or(target);
        let tmp = self.state_dir.join(format!("link-{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(relative, &tmp)
            .map_err(|e| CacheError::io("linking", &tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| CacheError::io("linking", &link, e))
    }

    /// Evicts the least recently used entries until the cache fits, never `keep`: out of the
    /// index and their links removed; their copies are returned, to delete once the index is
    /// saved.
    fn evict(&self, locked: &mut Locked, keep: &str) -> Vec<PathBuf> {
        let mut doomed = Vec::new();
        let mut total: u64 = locked.index.entries.values().map(|e| e.size_bytes).sum();
        while total > self.config.max_bytes {
            let Some(victim) = locked
                .index
                .entries
                .values()
                .filter(|e| e.name != keep && e.size_bytes > 0)
                .min_by_key(|e| e.last_used)
                .map(|e| e.name.clone())
            else {
                break;
            };
            if let Some(entry) = locked.index.entries.remove(&victim) {
                tracing::info!(name = %victim, bytes = entry.size_bytes, "evicted from the cache");
                total -= entry.size_bytes;
                self.unlink(&entry);
                if entry.generation > 0 {
                    doomed.push(self.copy_dir(&entry.name, entry.generation));
                }
            }
        }
        doomed
    }

    /// Removes the entry's link (only the cache's own symlink).
    fn unlink(&self, entry: &Entry) {
        let link = self.link_of(&entry.name);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&link);
        }
    }

    fn delete_copies(&self, entry: &Entry) {
        self.unlink(entry);
        if entry.generation > 0 {
            let _ = std::fs::remove_dir_all(self.copy_dir(&entry.name, entry.generation));
        }
    }

    /// What `source` is: a local directory (copied), or a git URL (checked now, so that a bad
    /// one is refused before an entry is made). The key is the source as the index keeps it.
    fn classify(&self, source: &str) -> Result<(CacheType, String), CacheError> {
        let path = Path::new(source);
        if !source.contains("://") && path.is_dir() {
            let canonical = path.canonicalize().map_err(|e| CacheError::Source {
                input: source.to_string(),
                reason: e.to_string(),
            })?;
            if canonical.starts_with(&self.config.root) || self.config.root.starts_with(&canonical)
            {
                return Err(CacheError::Source {
                    input: source.to_string(),
                    reason: "the cache and the directory contain one another".into(),
                });
            }
            return Ok((CacheType::Local, canonical.display().to_string()));
        }
        let target = gitfleet_git::Target::for_url(
            source,
            gitfleet_proto::Operation::Checkout,
            &Policy::permissive(),
        )
        .map_err(CacheError::fill)?;
        // Kept without any user information: a token given inside the URL is for this call,
        // and a later refresh uses the credentials registered for the host.
        let key = target.url().map_or_else(
            || scrub_userinfo(source),
            |url| without_userinfo(&url.display()),
        );
        Ok((CacheType::Git, key))
    }

    /// Every entry, by name.
    pub fn list(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let locked = Locked::open(&self.state_dir)?;
        let now = Timestamp::now();
        Ok(locked
            .index
            .entries
            .values()
            .map(|e| self.view(e, now))
            .collect())
    }

    /// The entry `name`.
    pub fn get(&self, name: &str) -> Result<CachedEntry, CacheError> {
        let locked = Locked::open(&self.state_dir)?;
        locked
            .index
            .entries
            .get(name)
            .map(|e| self.view(e, Timestamp::now()))
            .ok_or_else(|| CacheError::not_found(name))
    }

    /// The path of `name`'s copy (and it counts as used): an error when it has none.
    pub fn path(&self, name: &str) -> Result<PathBuf, CacheError> {
        let mut locked = Locked::open(&self.state_dir)?;
        let now = Timestamp::now();
        let entry = locked
            .index
            .entries
            .get_mut(name)
            .ok_or_else(|| CacheError::not_found(name))?;
        entry.last_used = now;
        let view = self.view(entry, now);
        if matches!(view.status, CacheStatus::Missing)
            || (view.entry.generation == 0 && view.status == CacheStatus::Error)
        {
            return Err(CacheError::NoCopy {
                name: view.entry.name,
                reason: view
                    .entry
                    .error
                    .unwrap_or_else(|| "its files are gone; refresh it".into()),
            });
        }
        locked.save()?;
        Ok(view.cache_path)
    }

    /// Removes the entry `name` and its copy.
    pub fn remove(&self, name: &str) -> Result<(), CacheError> {
        let mut locked = Locked::open(&self.state_dir)?;
        let entry = locked
            .index
            .entries
            .remove(name)
            .ok_or_else(|| CacheError::not_found(name))?;
        self.delete_copies(&entry);
        locked.save()
    }

    /// Removes every entry; how many there were.
    pub fn clear(&self) -> Result<usize, CacheError> {
        let mut locked = Locked::open(&self.state_dir)?;
        let entries = std::mem::take(&mut locked.index.entries);
        for entry in entries.values() {
            self.delete_copies(entry);
        }
        locked.save()?;
        Ok(entries.len())
    }

    /// Totals, by status and by type.
    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let entries = self.list()?;
        let mut stats = CacheStats {
            total_entries: entries.len(),
            max_size_bytes: self.config.max_bytes,
            ..CacheStats::default()
        };
        for status in ["FRESH", "STALE", "MISSING", "ERROR"] {
            stats.by_status.insert(status, 0);
        }
        for kind in ["git", "local"] {
            stats.by_type.insert(kind, 0);
        }
        for e in &entries {
            stats.total_size_bytes += e.entry.size_bytes;
            *stats.by_status.entry(e.status.as_str()).or_default() += 1;
            *stats
                .by_type
                .entry(e.entry.cache_type.as_str())
                .or_default() += 1;
        }
        stats.total_size_gb = stats.total_size_bytes as f64 / (1024.0 * 1024.0 * 1024.0);
        Ok(stats)
    }
}
