//! The commits a repository gitfleet made holds, newest first: `gitfleet log`, "what did the
//! last sync bring". Names, addresses and messages are someone else's text: made printable and
//! bounded like every server text.

use std::path::Path;

use gitfleet_proto::{CommitInfo, ErrorCode, TaskError, Timestamp};

use crate::Layout;
use crate::place::Found;

/// The longest subject kept, in characters.
const MAX_SUBJECT: usize = 200;
/// The longest author name or address kept, in characters.
const MAX_NAME: usize = 256;

/// `text` made printable and cut to `max` characters.
fn shown(text: &[u8], max: usize) -> String {
    crate::printable(&String::from_utf8_lossy(text))
        .chars()
        .take(max)
        .collect()
}

/// Up to `limit` commits reachable from the branches of the repository at `dir` (its own
/// branches and, in a working-tree clone, its remote-tracking ones; not tags), newest first by
/// commit time, none older than `since`. Only a repository this root's gitfleet made is opened.
pub fn recent_commits(
    layout: &Layout,
    dir: &Path,
    since: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<CommitInfo>, TaskError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        TaskError::new(
            ErrorCode::Storage,
            format!("{}: {what}: {e}", dir.display()),
        )
    };
    match layout.probe(dir)? {
        Found::Ours(_) => {}
        Found::Absent => {
            return Err(TaskError::new(
                ErrorCode::NotFound,
                format!("nothing at {}: not cloned (yet)", dir.display()),
            ));
        }
    }
    let repo = gix::open_opts(dir, gix::open::Options::isolated())
        .map_err(|e| failed("opening the repository", &e))?;
    let mut tips = Vec::new();
    let references = repo.references().map_err(|e| failed("reading refs", &e))?;
    for prefix in ["refs/heads/", "refs/remotes/"] {
        let refs = references
            .prefixed(prefix)
            .map_err(|e| failed("reading refs", &e))?;
        for reference in refs.flatten() {
            let mut reference = reference;
            if let Ok(id) = reference.peel_to_id() {
                tips.push(id.detach());
            }
        }
    }
    tips.sort();
    tips.dedup();
    if tips.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    use gix::revision::walk::Sorting;
    use gix::traverse::commit::simple::CommitTimeOrder;
    let sorting = match since {
        Some(since) => Sorting::ByCommitTimeCutoff {
            order: CommitTimeOrder::NewestFirst,
            seconds: since.as_second(),
        },
        None => Sorting::ByCommitTime(CommitTimeOrder::NewestFirst),
    };
    let walk = repo
        .rev_walk(tips)
        .sorting(sorting)
        .all()
        .map_err(|e| failed("walking the history", &e))?;
    let mut commits = Vec::new();
    for info in walk.take(limit) {
        let info = info.map_err(|e| failed("walking the history", &e))?;
        let commit = info.object().map_err(|e| failed("reading a commit", &e))?;
        let author = commit
            .author()
            .map_err(|e| failed("reading a commit's author", &e))?;
        let time = author
            .time()
            .ok()
            .and_then(|t| Timestamp::from_second(t.seconds).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let message = commit
            .message()
            .map_err(|e| failed("reading a commit's message", &e))?;
        commits.push(CommitInfo {
            id: info.id.to_string(),
            author: shown(author.name, MAX_NAME),
            email: shown(author.email, MAX_NAME),
            time,
            subject: shown(message.summary().as_ref(), MAX_SUBJECT),
        });
    }
    Ok(commits)
}
