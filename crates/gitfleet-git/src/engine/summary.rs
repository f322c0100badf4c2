//! What an operation did, as its result reports it: refs created, updated and deleted (lists
//! bounded), branches, HEAD, commits (counted once per state of the refs), and the check that
//! every tip written is present.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gitfleet_proto::{Branch, ErrorCode, SyncResult, TaskError};

/// Every direct ref and the object it points to.
pub(super) fn ref_snapshot(repo: &gix::Repository) -> gix::Result<BTreeMap<String, gix::ObjectId>> {
    let mut out = BTreeMap::new();
    for reference in repo.references()?.all()?.flatten() {
        if let Some(id) = reference.target().try_id() {
            out.insert(reference.name().as_bstr().to_string(), id.to_owned());
        }
    }
    Ok(out)
}

/// Size of the pack a fetch received (0 when none was needed).
pub(super) fn pack_size(status: &gix::remote::fetch::Status) -> u64 {
    match status {
        gix::remote::fetch::Status::Change {
            write_pack_bundle, ..
        } => write_pack_bundle
            .data_path
            .as_ref()
            .and_then(|path| std::fs::metadata(path).ok())
            .map_or(0, |m| m.len()),
        gix::remote::fetch::Status::NoPackReceived { .. } => 0,
    }
}

/// The refs new or moved since `before` whose object is not in the repository: a server can
/// advertise a ref to an object it never sends, and the mirror would look complete and be broken.
pub(super) fn missing_tips(
    repo: &gix::Repository,
    before: &BTreeMap<String, gix::ObjectId>,
    after: &BTreeMap<String, gix::ObjectId>,
) -> Vec<(String, gix::ObjectId)> {
    after
        .iter()
        .filter(|(name, id)| before.get(*name) != Some(*id) && !repo.has_object(*id))
        .map(|(name, id)| (name.clone(), *id))
        .collect()
}

pub(super) fn missing_tip_error((name, id): &(String, gix::ObjectId)) -> TaskError {
    TaskError::new(
        ErrorCode::Protocol,
        format!(
            "the server advertised {} at {id} but did not send it",
            crate::printable(name)
        ),
    )
}

/// The longest ref name a result lists, in bytes: a record holds up to four lists of
/// [`SyncResult::MAX_LISTED`] names, and must stay far below NATS' payload limit.
const MAX_LISTED_NAME: usize = 256;

/// A ref name as a result lists it: printable, and cut (with `…`) beyond [`MAX_LISTED_NAME`].
fn listed_name(name: &str) -> String {
    let name = crate::printable(name);
    if name.len() <= MAX_LISTED_NAME {
        return name;
    }
    let mut end = MAX_LISTED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// `<git dir>/gitfleet-commits` caches the number of commits reachable from the refs, with a
/// digest of the refs it was counted for: a sync that changed nothing reads it instead of walking
/// the whole history again. A missing, stale or unreadable cache only costs the walk.
const COMMITS_CACHE: &str = "gitfleet-commits";

fn refs_digest(refs: &BTreeMap<String, gix::ObjectId>) -> Option<String> {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    for (name, id) in refs {
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(id.as_bytes());
    }
    hasher.try_finalize().ok().map(|digest| digest.to_string())
}

fn cached_total_commits(git_dir: &Path, digest: Option<&str>) -> Option<u64> {
    let digest = digest?;
    let text = std::fs::read_to_string(git_dir.join(COMMITS_CACHE)).ok()?;
    let (cached_for, total) = text.trim_end().split_once(' ')?;
    (cached_for == digest).then(|| total.parse().ok()).flatten()
}

fn store_total_commits(git_dir: &Path, digest: Option<&str>, total: u64) {
    let Some(digest) = digest else { return };
    if let Err(e) = std::fs::write(git_dir.join(COMMITS_CACHE), format!("{digest} {total}\n")) {
        tracing::debug!(error = %e, "cannot cache the commit count");
    }
}

/// The result of an operation that moved the refs from `before` to `after`.
pub(super) fn summarize(
    repo: &gix::Repository,
    before: &BTreeMap<String, gix::ObjectId>,
    after: &BTreeMap<String, gix::ObjectId>,
) -> Result<SyncResult, TaskError> {
    let mut result = SyncResult::default();
    let listed = SyncResult::MAX_LISTED;
    for (name, id) in after {
        match before.get(name) {
            None => {
                result.num_refs_created += 1;
                if result.refs_created.len() < listed {
                    result.refs_created.push(listed_name(name));
                }
            }
            Some(old) if old != id => {
                result.num_refs_updated += 1;
                if result.refs_updated.len() < listed {
                    result.refs_updated.push(listed_name(name));
                }
            }
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        result.num_refs_deleted += 1;
        if result.refs_deleted.len() < listed {
            result.refs_deleted.push(listed_name(name));
        }
    }
    let changed = result.num_refs_created + result.num_refs_updated > 0;
    // Every tip written must be here (and the history walk below fails on a missing commit).
    if let Some(missing) = missing_tips(repo, before, after).first() {
        return Err(missing_tip_error(missing));
    }

    // A no-op sync finds the count in the cache and never loads the object database.
    let digest = refs_digest(after);
    let cached = cached_total_commits(repo.git_dir(), digest.as_deref());
    if let (false, Some(total)) = (changed, cached) {
        result.total_commits = total;
    } else {
        let commits_of = |refs: &BTreeMap<String, gix::ObjectId>| -> BTreeSet<gix::ObjectId> {
            refs.values()
                .filter_map(|id| {
                    repo.find_object(*id)
                        .ok()?
                        .peel_to_commit()
                        .ok()
                        .map(|c| c.id)
                })
                .collect()
        };
        let walk_err = |e: &dyn std::fmt::Display| {
            TaskError::new(ErrorCode::Protocol, format!("walking history: {e}"))
        };
        let new_tips = commits_of(after);
        let old_tips = if changed {
            commits_of(before)
        } else {
            BTreeSet::new()
        };
        if !new_tips.is_empty() {
            let all = repo
                .rev_walk(new_tips.iter().copied())
                .all()
                .map_err(|e| walk_err(&e))?;
            result.total_commits = all.count() as u64;
            result.new_commits = if !changed {
                0
            } else if old_tips.is_empty() {
                result.total_commits
            } else {
                let walk = repo
                    .rev_walk(new_tips.iter().copied())
                    .with_hidden(old_tips.iter().copied())
                    .all()
                    .map_err(|e| walk_err(&e))?;
                walk.count() as u64
            };
        }
        if cached != Some(result.total_commits) {
            store_total_commits(repo.git_dir(), digest.as_deref(), result.total_commits);
        }
    }

    let branch_prefix = if repo.is_bare() {
        "refs/heads/"
    } else {
        "refs/remotes/origin/"
    };
    let branches = after.iter().filter_map(|(name, id)| {
        let short = name.strip_prefix(branch_prefix)?;
        (short != "HEAD").then_some((short, id))
    });
    for (short, id) in branches {
        result.num_branches += 1;
        if result.branches.len() < listed {
            result.branches.push(Branch {
                name: listed_name(short),
                commit: id.to_string(),
            });
        }
    }
    if let Ok(Some(head)) = repo.head_name() {
        result.default_branch = Some(listed_name(&head.shorten().to_string()));
    }
    result.head_commit = repo.head_id().ok().map(|id| id.to_string());
    Ok(result)
}
