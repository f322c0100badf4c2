//! Bringing a repository gitfleet made up to date with its remote: list, fetch what changed
//! (only the changed refs when few of many did), put back refs whose objects never came, and
//! prune what the remote no longer lists, within the prune limit.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use gitfleet_proto::{ErrorCode, Operation, Phase, SyncResult, TaskError};
use gix::bstr::{BString, ByteSlice};
use gix::remote::Direction;

use super::summary::{missing_tip_error, missing_tips, pack_size, ref_snapshot, summarize};
use super::transport::{connect, ref_map_options};
use super::{
    Attempt, Event, Limits, ProgressItem, fetch_specs, git_error, interrupted, open_options,
};

pub(super) fn sync(
    at: &Attempt<'_>,
    kind: Operation,
    mut progress: ProgressItem,
) -> Result<SyncResult, TaskError> {
    let req = at.req;
    let repo = gix::open_opts(&req.dest, open_options(req))
        .map_err(|e| git_error("opening the repository", &e))?;
    let before = ref_snapshot(&repo).map_err(|e| git_error("reading refs", &e))?;
    // The URL of this request and the refspecs of the repository's kind: nothing from the
    // repository's config (no remote, refspec, insteadOf or credential an attacker wrote).
    let (spec_list, tags) = fetch_specs(kind);
    let remote = repo
        .remote_at_without_url_rewrite(req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(spec_list.iter().copied(), Direction::Fetch))
        .map_err(|e| git_error("sync", &e))?
        .with_fetch_tags(tags);
    let specs: Vec<BString> = spec_list.iter().map(|s| BString::from(*s)).collect();
    let connection = connect(at, &remote, "sync")?;
    let mut fetch_progress = progress.add_child("fetch");
    let listed = (|| -> gix::Result<Listed> {
        let prepare = connection.prepare_fetch(&mut fetch_progress, ref_map_options())?;
        at.meter.listing_done();
        let ref_map = prepare.ref_map();
        if let Err(e) = req
            .limits
            .check_listing(ref_map.remote_refs.iter().map(|r| r.unpack().0))
        {
            return Ok(Listed::Refused(TaskError::new(
                ErrorCode::LimitExceeded,
                e.0,
            )));
        }
        let mappings = &ref_map.mappings;
        let upstream = Upstream::of(mappings);
        // Nothing to negotiate or write. Refs none of the refspecs match count as none at all:
        // prune decides what that may delete.
        if is_up_to_date(mappings, &before) || ref_map.is_missing_required_mapping() {
            // gix would otherwise rewrite every ref (one lock file each; 20k refs took 28-55 s
            // where git takes 0.24 s).
            return Ok(Listed::UpToDate(upstream));
        }
        if let Some(specs) = narrowed_refspecs(mappings, &before) {
            return Ok(Listed::Narrow(upstream, specs));
        }
        let outcome = prepare.receive(&mut fetch_progress, at.interrupt)?;
        Ok(Listed::Fetched(upstream, pack_size(&outcome.status)))
    })();
    let (upstream, pack_bytes, received) = match listed {
        Ok(Listed::Refused(e)) => return Err(e),
        Ok(Listed::UpToDate(upstream)) => (upstream, 0, false),
        Ok(Listed::Fetched(upstream, bytes)) => (upstream, bytes, true),
        Ok(Listed::Narrow(upstream, specs)) => {
            // The listing's connection ended with its `prepare` (a flush-pkt to the server).
            let bytes = fetch_only(at, &repo, &specs, &mut fetch_progress)?;
            (upstream, bytes, true)
        }
        Err(e) => return Err(git_error("sync", &e)),
    };
    if at.interrupt.load(Ordering::SeqCst) {
        return Err(interrupted());
    }
    let _ = at.events.send(Event::Phase(Phase::Finishing));
    if !at.commit.try_commit() {
        return Err(interrupted());
    }
    // Nothing received: the refs are still `before` (the repository's lock keeps other tasks out).
    let fetched = if received {
        Some(ref_snapshot(&repo).map_err(|e| git_error("reading refs", &e))?)
    } else {
        None
    };
    if let Some(fetched) = &fetched {
        restore_missing_tips(&repo, &before, fetched)?;
        // A tip gix refused to write because its object never came leaves the ref where it
        // was: the mirror is whole, but not what the remote advertised.
        if let Some(unsent) = upstream.unsent(&repo, fetched).first() {
            return Err(missing_tip_error(unsent));
        }
    }
    let pruned = prune(
        &req.limits,
        &repo,
        &specs,
        &upstream.names,
        fetched.as_ref().unwrap_or(&before),
    )?;
    let after = if pruned {
        Some(ref_snapshot(&repo).map_err(|e| git_error("reading refs", &e))?)
    } else {
        fetched
    };
    let mut result = summarize(&repo, &before, after.as_ref().unwrap_or(&before))?;
    result.bytes_received = pack_bytes;
    Ok(result)
}

/// What the ref listing of a sync decided.
enum Listed {
    /// Every ref is where the remote has it: nothing was fetched.
    UpToDate(Upstream),
    /// Fetched, with the pack's size.
    Fetched(Upstream, u64),
    /// A few of many refs changed: fetch just these refspecs.
    Narrow(Upstream, Vec<BString>),
    /// The listing broke a limit.
    Refused(TaskError),
}

/// The local refs the remote's listing maps to, and the object each is to point to.
struct Upstream {
    names: HashSet<BString>,
    tips: Vec<(String, gix::ObjectId)>,
}

impl Upstream {
    fn of(mappings: &[gix::remote::fetch::refmap::Mapping]) -> Upstream {
        let names = mappings.iter().filter_map(|m| m.local.clone()).collect();
        let tips = mappings
            .iter()
            .filter_map(|m| Some((m.local.as_ref()?.to_string(), m.remote.as_id()?.to_owned())))
            .collect();
        Upstream { names, tips }
    }

    /// The advertised tips that are neither where the fetch left the refs nor in the repository.
    fn unsent(
        &self,
        repo: &gix::Repository,
        fetched: &BTreeMap<String, gix::ObjectId>,
    ) -> Vec<(String, gix::ObjectId)> {
        self.tips
            .iter()
            .filter(|(name, id)| fetched.get(name) != Some(id) && !repo.has_object(*id))
            .cloned()
            .collect()
    }
}

/// Below this many refs a full fetch is cheap enough.
const NARROW_MIN_REFS: usize = 256;

/// For a repository with many refs of which few changed, one exact refspec per changed ref:
/// gix 0.90 locks and rewrites every ref a fetch maps, changed or not (20,000 lock files for one
/// new commit), so fetching only what changed, over a second connection, is far cheaper.
fn narrowed_refspecs(
    mappings: &[gix::remote::fetch::refmap::Mapping],
    local: &BTreeMap<String, gix::ObjectId>,
) -> Option<Vec<BString>> {
    if mappings.len() < NARROW_MIN_REFS {
        return None;
    }
    let mut specs = Vec::new();
    for m in mappings {
        let Some(dest) = &m.local else { continue };
        let id = m.remote.as_id()?;
        if local
            .get(dest.to_str_lossy().as_ref())
            .is_some_and(|have| have.as_ref() == id)
        {
            continue;
        }
        let source = m.remote.as_name()?;
        let mut spec = BString::from("+");
        spec.extend_from_slice(source);
        spec.push(b':');
        spec.extend_from_slice(dest);
        specs.push(spec);
        if specs.len() * 4 > mappings.len() {
            return None;
        }
    }
    Some(specs)
}

/// Fetches exactly `specs` from the request's URL into `repo` (no tags beyond them); the size of
/// the pack received.
fn fetch_only(
    at: &Attempt<'_>,
    repo: &gix::Repository,
    specs: &[BString],
    progress: &mut ProgressItem,
) -> Result<u64, TaskError> {
    let remote = repo
        .remote_at_without_url_rewrite(at.req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(specs.iter().map(|s| s.as_bstr()), Direction::Fetch))
        .map_err(|e| git_error("sync", &e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let connection = connect(at, &remote, "sync")?;
    // Exact names: the server lists only these refs.
    let options = gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: true,
        ..Default::default()
    };
    connection
        .prepare_fetch(&mut *progress, options)
        .and_then(|prepare| prepare.receive(&mut *progress, at.interrupt))
        .map(|outcome| pack_size(&outcome.status))
        .map_err(|e| git_error("sync", &e))
}

/// Whether every ref the fetch would write already has the id the remote advertises.
fn is_up_to_date(
    mappings: &[gix::remote::fetch::refmap::Mapping],
    local: &BTreeMap<String, gix::ObjectId>,
) -> bool {
    mappings.iter().all(|m| match (&m.local, m.remote.as_id()) {
        (Some(name), Some(id)) => local
            .get(name.to_str_lossy().as_ref())
            .is_some_and(|have| have.as_ref() == id),
        // Nothing is written for it (a mapping without a destination).
        (None, _) => true,
        // A symbolic or unborn ref to write: let gix handle it.
        (Some(_), None) => false,
    })
}

/// Deletes local refs in the refspecs' destinations that the remote no longer has, within the
/// prune limit; true if it deleted any.
fn prune(
    limits: &Limits,
    repo: &gix::Repository,
    specs: &[BString],
    upstream: &HashSet<BString>,
    local: &BTreeMap<String, gix::ObjectId>,
) -> Result<bool, TaskError> {
    let prefixes: Vec<String> = specs
        .iter()
        .filter_map(|spec| {
            let spec = spec.to_str_lossy();
            let dest = spec.split_once(':')?.1.to_string();
            dest.strip_suffix('*').map(str::to_string)
        })
        .collect();
    if prefixes.is_empty() {
        return Ok(false);
    }
    let mut edits = Vec::new();
    let mut kept_before = 0;
    for (name, id) in local {
        if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        kept_before += 1;
        if upstream.contains(name.as_bytes().as_bstr()) {
            continue;
        }
        let Ok(full_name) = gix::refs::FullName::try_from(name.as_str()) else {
            continue;
        };
        edits.push(gix::refs::transaction::RefEdit {
            change: gix::refs::transaction::Change::Delete {
                expected: gix::refs::transaction::PreviousValue::MustExistAndMatch(
                    gix::refs::Target::Object(*id),
                ),
                log: gix::refs::transaction::RefLog::AndReference,
            },
            name: full_name,
            deref: false,
        });
    }
    if edits.is_empty() {
        return Ok(false);
    }
    let deleting = edits.len();
    if !limits.allows_prune(deleting, kept_before) {
        let all = deleting == kept_before;
        return Err(TaskError::new(
            ErrorCode::PruneRefused,
            format!(
                "the remote no longer lists {deleting} of the {kept_before} refs kept; refusing \
                 to delete {}, they are kept (sync with --force-prune to delete them)",
                if all { "all of them" } else { "that many" },
            ),
        ));
    }
    repo.edit_references(edits)
        .map_err(|e| git_error("pruning refs", &e))?;
    Ok(true)
}

/// After a sync fetched refs to objects it never received: puts each such ref back where it was
/// (or removes it, if it is new), so that the repository stays whole, and reports the first.
fn restore_missing_tips(
    repo: &gix::Repository,
    before: &BTreeMap<String, gix::ObjectId>,
    after: &BTreeMap<String, gix::ObjectId>,
) -> Result<(), TaskError> {
    use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
    let missing = missing_tips(repo, before, after);
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let mut edits = Vec::new();
    for (name, id) in &missing {
        let Ok(full_name) = gix::refs::FullName::try_from(name.as_str()) else {
            continue;
        };
        let expected = PreviousValue::MustExistAndMatch(gix::refs::Target::Object(*id));
        let change = match before.get(name) {
            Some(old) => Change::Update {
                log: LogChange::default(),
                expected,
                new: gix::refs::Target::Object(*old),
            },
            None => Change::Delete {
                expected,
                log: RefLog::AndReference,
            },
        };
        edits.push(RefEdit {
            change,
            name: full_name,
            deref: false,
        });
    }
    repo.edit_references(edits)
        .map_err(|e| git_error("restoring refs", &e))?;
    Err(missing_tip_error(first))
}
