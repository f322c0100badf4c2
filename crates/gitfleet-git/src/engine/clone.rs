//! Making a repository that is not there yet: `init`, and clones (mirror, bare, checkout), each
//! built in a staging directory and moved into place only when whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use gitfleet_proto::{Operation, Phase, SyncResult, TaskError};
use gix::remote::Direction;

use super::summary::{pack_size, ref_snapshot, summarize};
use super::transport::{self, credentials_helper, ref_map_options};
use super::{
    Attempt, Event, ProgressItem, fetch_specs, git_error, interrupted, open_options, storage_error,
};

/// Removes a staging directory unless it was moved into place.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Staging {
    fn new(at: &Attempt<'_>) -> Staging {
        Staging {
            path: at.layout.new_staging_path(),
            keep: false,
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep && self.path.exists() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Marks a finished repository as this root's and moves it from staging into place, if the
/// watcher has not given up.
fn publish(at: &Attempt<'_>, staging: &mut Staging) -> Result<(), TaskError> {
    if !at.commit.try_commit() {
        return Err(interrupted());
    }
    at.layout
        .place(&staging.path, &at.req.dest, at.req.operation)?;
    staging.keep = true;
    Ok(())
}

pub(super) fn init(at: &Attempt<'_>) -> Result<SyncResult, TaskError> {
    let mut staging = Staging::new(at);
    let worktree = !at.req.dest.to_string_lossy().ends_with(".git");
    let created = if worktree {
        gix::init(&staging.path)
    } else {
        gix::init_bare(&staging.path)
    };
    created.map_err(|e| git_error("init", &e))?;
    publish(at, &mut staging)?;
    Ok(SyncResult::default())
}

pub(super) fn clone(at: &Attempt<'_>, mut progress: ProgressItem) -> Result<SyncResult, TaskError> {
    let mut staging = Staging::new(at);
    let (repo, pack_bytes) = if at.req.operation == Operation::Checkout {
        checkout_clone(at, &staging.path, &mut progress)?
    } else {
        bare_clone(at, &staging.path, &mut progress)?
    };
    let _ = at.events.send(Event::Phase(Phase::Finishing));
    let after = ref_snapshot(&repo).map_err(|e| git_error("reading refs", &e))?;
    let mut result = summarize(&repo, &BTreeMap::new(), &after)?;
    result.bytes_received = pack_bytes;
    drop(repo);
    publish(at, &mut staging)?;
    Ok(result)
}

/// A clone with a working tree, by gix's `PrepareFetch` (which also checks it out).
fn checkout_clone(
    at: &Attempt<'_>,
    path: &Path,
    progress: &mut ProgressItem,
) -> Result<(gix::Repository, u64), TaskError> {
    let req = at.req;
    // gix lists and fetches in one call here: the listing budget cannot be told from the
    // transfer's, so the transfer limit applies from the start.
    at.meter.listing_done();
    let mut prepare = gix::clone::PrepareFetch::new(
        req.url.fetch_url().clone(),
        path,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        open_options(req),
    )
    .map_err(|e| git_error("clone", &e))?
    .with_fetch_options(ref_map_options())
    .configure_connection({
        let credentials = req.credentials.clone();
        let mut ours = Some(transport::open(at, "clone")?);
        move |connection| {
            // Our transport, with gitfleet's settings. For git:// gix has connected by now; its
            // transport is dropped unused (one extra TCP connect per checkout clone), which costs
            // less than its Nagle stalls (daemon.rs).
            if let Some(transport) = ours.take() {
                *connection.transport_mut() = transport;
            }
            connection.set_credentials(credentials_helper(credentials.clone()));
            Ok(())
        }
    });
    let (mut checkout, fetched) = prepare
        .fetch_then_checkout(progress.add_child("fetch"), at.interrupt)
        .map_err(|e| git_error("clone", &e))?;
    let _ = at.events.send(Event::Phase(Phase::CheckingOut));
    let (repo, _) = checkout
        .main_worktree(progress.add_child("checkout"), at.interrupt)
        .map_err(|e| git_error("checkout", &e))?;
    if at.interrupt.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    Ok((repo, pack_size(&fetched.status)))
}

/// A bare or mirror clone, done here rather than by gix's `PrepareFetch`: a repository made as
/// `git init --bare --template=` does, the remote written, every object fetched over one
/// connection of our choosing (daemon.rs) and the refs written straight into `packed-refs`
/// (fresh.rs), HEAD pointed where the remote's HEAD points — what `git clone --bare/--mirror`
/// does.
fn bare_clone(
    at: &Attempt<'_>,
    path: &Path,
    progress: &mut ProgressItem,
) -> Result<(gix::Repository, u64), TaskError> {
    let req = at.req;
    super::fresh::init_bare(path).map_err(|e| storage_error("cannot create the repository", &e))?;
    let repo = gix::open_opts(path, open_options(req))
        .map_err(|e| git_error("initialising the clone", &e))?;
    let (specs, tags) = fetch_specs(req.operation);
    let mut remote = repo
        .remote_at_without_url_rewrite(req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(specs.iter().copied(), Direction::Fetch))
        .map_err(|e| git_error("clone", &e))?
        .with_fetch_tags(tags);
    write_remote_config(req.operation, &mut remote, repo.git_dir())?;

    let mut transport = transport::open(at, "clone")?;
    let mut authenticate = credentials_helper(req.credentials.clone());
    let mut fetch_progress = progress.add_child("fetch");
    let fetched = super::fresh::fetch(
        &repo,
        &mut transport,
        &mut authenticate,
        specs,
        at,
        &mut fetch_progress,
    )
    .map_err(|e| git_error("clone", &e))?;
    if at.interrupt.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    fetched
        .write_refs(repo.git_dir())
        .map_err(|e| storage_error("cannot write the refs", &e))?;
    set_head_like_remote(&repo, &fetched.remote_refs)?;
    Ok((repo, fetched.pack_bytes))
}

/// `[remote "origin"]` with the URL and refspecs (and `mirror = true` for a mirror), as `git clone`
/// writes it. The URL is the one without credentials: a token is never stored.
fn write_remote_config(
    operation: Operation,
    remote: &mut gix::Remote<'_>,
    git_dir: &Path,
) -> Result<(), TaskError> {
    let path = git_dir.join("config");
    let mut config =
        gix::config::File::from_path_no_includes(path.clone(), gix::config::Source::Local)
            .map_err(|e| git_error("configuring", &e))?;
    remote
        .save_as_to("origin", &mut config)
        .map_err(|e| git_error("configuring", &e))?;
    if operation == Operation::Mirror {
        config
            .set_raw_value_by("remote", Some("origin".into()), "mirror", "true")
            .map_err(|e| git_error("configuring", &e))?;
    }
    let mut out = Vec::new();
    config
        .write_to(&mut out)
        .map_err(|e| storage_error("cannot write config", &e))?;
    std::fs::write(&path, out).map_err(|e| storage_error("cannot write config", &e))
}

/// Points HEAD where the remote's does: to the same branch (even an unborn one), or detached at
/// the same commit.
fn set_head_like_remote(
    repo: &gix::Repository,
    remote_refs: &[gix::protocol::handshake::Ref],
) -> Result<(), TaskError> {
    use gix::protocol::handshake::Ref;
    use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit};
    let new = remote_refs.iter().find_map(|r| match r {
        Ref::Symbolic {
            full_ref_name,
            target,
            ..
        }
        | Ref::Unborn {
            full_ref_name,
            target,
        } if full_ref_name == "HEAD" => gix::refs::FullName::try_from(target.clone())
            .ok()
            .map(gix::refs::Target::Symbolic),
        Ref::Direct {
            full_ref_name,
            object,
        } if full_ref_name == "HEAD" => Some(gix::refs::Target::Object(*object)),
        _ => None,
    });
    let Some(new) = new else {
        return Ok(());
    };
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange::default(),
            expected: PreviousValue::Any,
            new,
        },
        name: "HEAD".try_into().expect("a valid ref name"),
        deref: false,
    })
    .map_err(|e| git_error("setting HEAD", &e))?;
    Ok(())
}
