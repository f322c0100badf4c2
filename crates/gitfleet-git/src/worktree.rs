//! Whether a working-tree clone gitfleet made shows what its remote has: its checked-out branch
//! at the remote-tracking branch of the same name (what a sync moved). The cache asks this after
//! a sync to know whether its copy is out of date, however many syncs ago upstream moved.

use std::path::Path;

use gitfleet_proto::{ErrorCode, TaskError};

/// True when the branch checked out in the clone at `dir` is not at `refs/remotes/origin/<it>`
/// (or the clone has no such branch, or HEAD is detached: then it cannot be told current).
pub fn checkout_is_behind(dir: &Path) -> Result<bool, TaskError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        TaskError::new(
            ErrorCode::Storage,
            format!("{}: {what}: {e}", dir.display()),
        )
    };
    let repo = gix::open_opts(dir, gix::open::Options::isolated())
        .map_err(|e| failed("opening the repository", &e))?;
    let Some(head) = repo.head_name().map_err(|e| failed("reading HEAD", &e))? else {
        return Ok(true);
    };
    let Some(branch) = head.as_bstr().strip_prefix(b"refs/heads/".as_slice()) else {
        return Ok(true);
    };
    let tracking = format!("refs/remotes/origin/{}", String::from_utf8_lossy(branch));
    let Some(mut tracking) = repo
        .try_find_reference(tracking.as_str())
        .map_err(|e| failed("reading the remote-tracking branch", &e))?
    else {
        return Ok(true);
    };
    let upstream = tracking
        .peel_to_id()
        .map_err(|e| failed("reading the remote-tracking branch", &e))?
        .detach();
    let local = repo
        .head_id()
        .map_err(|e| failed("reading HEAD", &e))?
        .detach();
    Ok(local != upstream)
}
