//! Running one operation: clone (mirror, bare, checkout), init, or sync.
//!
//! [`execute`] runs the gix work on a thread of its own and watches it from the calling thread:
//! it samples progress, enforces the time and stall limits and the cancel flag, and gives up on
//! a transport that does not notice the interrupt (a blocking read on a silent socket) after a
//! grace period. Whatever happens, a clone only becomes visible by an atomic rename from the
//! staging directory, and a thread that was given up on can no longer perform that rename.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gitfleet_proto::{Branch, ErrorCode, Operation, Phase, SyncResult, TaskError};
use gix::bstr::{BString, ByteSlice};
use gix::progress::tree::Root;
use gix::remote::Direction;

use crate::error::{classify, describe};
use crate::meter::{Meter, OverLimit};
use crate::place::Found;
use crate::progress::{Progress, Tracker};
use crate::url::is_loopback_host;
use crate::{Credentials, Layout, Redactor, RepoUrl, Scheme};

/// What one attempt may do: how long it may take, and how much of a mirror a sync may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole operation (default 30 minutes).
    pub time_limit: Duration,
    /// No progress of any kind for this long aborts the operation (default 2 minutes).
    pub stall_limit: Duration,
    /// How long to wait for the git thread to notice an interrupt before giving up on it.
    pub grace: Duration,
    /// A sync refuses to delete more than this percentage of the refs it keeps (when more than
    /// [`PRUNE_FEW`] would go), and always refuses to delete all of them (default 50).
    pub max_prune_percent: u8,
    /// Delete whatever the remote no longer lists, however much that is.
    pub force_prune: bool,
    /// Bytes one transfer may receive (default 20 GiB).
    pub max_bytes: u64,
    /// Bytes a server may send while listing its refs, which are held in memory (default
    /// 128 MiB; git:// only: gix's http transport gives no hook to count them).
    pub max_listing_bytes: u64,
    /// The largest object a pack may hold, unpacked (default 512 MiB): a small delta can
    /// declare a huge result, which would be built in memory.
    pub max_object_bytes: u64,
    /// Refs a remote may list (default 1,000,000).
    pub max_refs: usize,
    /// The longest ref name a remote may list, in bytes (default 1,024).
    pub max_ref_name: usize,
    /// Fewer bytes than `min_rate` per second, averaged over `rate_window`, abort the attempt
    /// (default 1 byte/s over 60 s): a server that sends a byte now and then holds no thread.
    pub min_rate: u64,
    pub rate_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time_limit: Duration::from_secs(30 * 60),
            stall_limit: Duration::from_secs(120),
            grace: Duration::from_secs(10),
            max_prune_percent: 50,
            force_prune: false,
            max_bytes: 20 << 30,
            max_listing_bytes: 128 << 20,
            max_object_bytes: 512 << 20,
            max_refs: 1_000_000,
            max_ref_name: 1024,
            min_rate: 1,
            rate_window: Duration::from_secs(60),
        }
    }
}

/// Up to this many refs may go in one sync whatever their share (unless they are all there is).
pub const PRUNE_FEW: usize = 10;

/// One operation on one repository.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: RepoUrl,
    pub operation: Operation,
    /// Where the repository is (sync) or is to be (clone, init).
    pub dest: PathBuf,
    pub credentials: Option<Credentials>,
    pub limits: Limits,
    /// Secrets to scrub from every message.
    pub redactor: Redactor,
    /// The addresses the policy checked for the URL's host: a git:// or http(s) transfer
    /// connects to these and resolves nothing again (a name cannot point elsewhere between the
    /// check and the connection). `None`: resolve as usual.
    pub addresses: Option<Vec<std::net::SocketAddr>>,
}

/// How long to wait for a git:// server to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;
const STALLED: u8 = 3;
const TOO_MUCH: u8 = 4;
const TOO_SLOW: u8 = 5;

/// Shared between the caller and a running operation: cancel it from any thread.
#[derive(Debug, Clone, Default)]
pub struct Control {
    interrupt: Arc<AtomicBool>,
    reason: Arc<AtomicU8>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the running operation to stop; it fails with `cancelled`.
    pub fn cancel(&self) {
        self.stop(CANCELLED);
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason.load(Ordering::SeqCst) == CANCELLED
    }

    fn stop(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(RUNNING, reason, Ordering::SeqCst, Ordering::SeqCst);
        self.interrupt.store(true, Ordering::SeqCst);
    }

    fn reason_error(&self, req: &Request) -> Option<TaskError> {
        let url = req.url.display();
        match self.reason.load(Ordering::SeqCst) {
            CANCELLED => Some(TaskError::new(
                ErrorCode::Cancelled,
                format!("{} of {url} was cancelled", req.operation),
            )),
            TIMED_OUT => Some(TaskError::new(
                ErrorCode::Timeout,
                format!(
                    "{} of {url} exceeded the time limit of {}s",
                    req.operation,
                    req.limits.time_limit.as_secs()
                ),
            )),
            STALLED => Some(TaskError::new(
                ErrorCode::Stalled,
                format!(
                    "{} of {url} stalled: no progress for {}s",
                    req.operation,
                    req.limits.stall_limit.as_secs()
                ),
            )),
            TOO_MUCH => Some(TaskError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} of {url} received more than the limit of {} bytes",
                    req.operation, req.limits.max_bytes
                ),
            )),
            TOO_SLOW => Some(TaskError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} of {url} received fewer than {} bytes/s over {}s",
                    req.operation,
                    req.limits.min_rate,
                    req.limits.rate_window.as_secs()
                ),
            )),
            _ => None,
        }
    }
}

/// Decides, once, whether the git thread may publish its result (rename into place, prune refs)
/// or the watcher has given up on it.
#[derive(Debug, Default)]
struct Commit(AtomicU8);

impl Commit {
    const OPEN: u8 = 0;
    const COMMITTED: u8 = 1;
    const ABANDONED: u8 = 2;

    fn try_commit(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::COMMITTED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    fn try_abandon(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::ABANDONED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

enum Event {
    Phase(Phase),
    Done(Box<Result<SyncResult, TaskError>>),
}

/// Runs `req` to completion, calling `on_progress` whenever the percent or phase changes.
pub fn execute(
    req: &Request,
    layout: &Layout,
    control: &Control,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<SyncResult, TaskError> {
    let started = Instant::now();
    check_credentials_transport(req)?;
    let root: Arc<Root> = Root::new();
    let mut tracker = Tracker::new(root.clone());
    let (tx, rx) = mpsc::channel();
    let commit = Arc::new(Commit::default());
    let meter = Meter::new(req.limits.max_listing_bytes, req.limits.max_bytes);
    {
        let req = req.clone();
        let layout = layout.clone();
        let interrupt = control.interrupt.clone();
        let commit = commit.clone();
        let meter = meter.clone();
        let spawned = crate::threads::spawn(Box::new(move || {
            let _running = crate::threads::Running::start();
            let _meter = crate::meter::install(meter);
            let progress = root.add_child("gitfleet");
            let result = run(&req, &layout, progress, &interrupt, &commit, &tx);
            let _ = tx.send(Event::Done(Box::new(result)));
        }));
        if let Err(e) = spawned {
            return Err(TaskError::new(
                ErrorCode::Internal,
                format!("could not start a git thread: {e}"),
            ));
        }
    }

    let tick = Duration::from_millis(100);
    let mut last_reported: Option<(Phase, u8)> = None;
    let mut last_activity = (tracker.activity(), Instant::now());
    let mut interrupted_at: Option<Instant> = None;
    // Bytes received at the start of the current rate window.
    let mut window = (Instant::now(), 0u64);
    let outcome = loop {
        match rx.recv_timeout(tick) {
            Ok(Event::Phase(phase)) => tracker.enter(phase),
            Ok(Event::Done(result)) => break *result,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(TaskError::new(
                    ErrorCode::Internal,
                    "the git thread ended without a result",
                ));
            }
        }
        let sample = tracker.sample().clone();
        if last_reported != Some((sample.phase, sample.percent)) {
            last_reported = Some((sample.phase, sample.percent));
            on_progress(&sample);
        }
        let now = Instant::now();
        if tracker.activity() != last_activity.0 {
            last_activity = (tracker.activity(), now);
        }
        if interrupted_at.is_none() {
            if control.interrupt.load(Ordering::SeqCst) {
                interrupted_at = Some(now);
            } else if now.duration_since(started) >= req.limits.time_limit {
                control.stop(TIMED_OUT);
                interrupted_at = Some(now);
            } else if now.duration_since(last_activity.1) >= req.limits.stall_limit {
                control.stop(STALLED);
                interrupted_at = Some(now);
            } else {
                // On the wire where gitfleet reads it (git://: progress messages count too),
                // else the pack bytes gix counts, which only flow once the pack does: before
                // that, a server still counting objects is judged by the stall limit alone.
                let on_wire = meter.read();
                let received = on_wire.max(sample.bytes_received);
                let measurable = on_wire > 0 || sample.phase >= Phase::Receiving;
                if !measurable {
                    window = (now, received);
                }
                if sample.bytes_received > req.limits.max_bytes {
                    control.stop(TOO_MUCH);
                    interrupted_at = Some(now);
                } else if now.duration_since(window.0) >= req.limits.rate_window {
                    let expected = req
                        .limits
                        .min_rate
                        .saturating_mul(req.limits.rate_window.as_secs());
                    if received.saturating_sub(window.1) < expected {
                        control.stop(TOO_SLOW);
                        interrupted_at = Some(now);
                    }
                    window = (now, received);
                }
            }
        } else if interrupted_at.is_some_and(|at| now.duration_since(at) >= req.limits.grace)
            && commit.try_abandon()
        {
            // The transport is stuck in a read that cannot see the interrupt. The thread cleans
            // its staging directory up when the read returns; it can no longer publish.
            tracing::warn!(url = %req.url.display(), "git thread did not stop in time; abandoned");
            break Err(TaskError::new(ErrorCode::Internal, "interrupted"));
        }
    };

    let outcome = match outcome {
        Err(_) if control.reason_error(req).is_some() => Err(control
            .reason_error(req)
            .unwrap_or_else(|| TaskError::new(ErrorCode::Internal, "interrupted"))),
        other => other,
    };
    // Every error leaves the engine printable and bounded, whatever a server put into it.
    let outcome = outcome.map_err(|e| TaskError::new(e.code, crate::printable(&e.message)));
    outcome.map(|mut result| {
        // The pack's size is exact; the sampled counter misses what arrived after the last tick.
        result.bytes_received = result.bytes_received.max(tracker.current().bytes_received);
        result.duration_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        result
    })
}

/// gix (with the insecure-credentials feature gitfleet needs for its loopback test servers) would
/// send a token over plain http anywhere; gitfleet allows that only to loopback hosts.
fn check_credentials_transport(req: &Request) -> Result<(), TaskError> {
    if req.credentials.is_some()
        && req.url.scheme() == Scheme::Http
        && !req.url.host().is_some_and(is_loopback_host)
    {
        return Err(TaskError::new(
            ErrorCode::PolicyDenied,
            format!(
                "refusing to send credentials over plain http to {}; use https",
                req.url.display()
            ),
        ));
    }
    Ok(())
}

type ProgressItem = gix::progress::tree::Item;

fn run(
    req: &Request,
    layout: &Layout,
    progress: ProgressItem,
    interrupt: &AtomicBool,
    commit: &Commit,
    events: &mpsc::Sender<Event>,
) -> Result<SyncResult, TaskError> {
    // Only a repository this root's gitfleet made (with its marker) is ever opened; anything
    // else at the path, or on the way to it, is refused and left alone (place.rs).
    let found = layout.probe(&req.dest).map_err(|e| with_url(req, e))?;
    match (req.operation, found) {
        (Operation::Sync, Found::Absent) => Err(TaskError::new(
            ErrorCode::NotFound,
            format!(
                "{} has not been cloned yet: nothing at {}",
                req.url.display(),
                req.dest.display()
            ),
        )),
        // A repository made by `init` has no upstream: there is nothing to fetch.
        (_, Found::Ours(Operation::Init)) if req.operation != Operation::Init => {
            Err(TaskError::new(
                ErrorCode::Conflict,
                format!(
                    "{} was made by init and has no upstream",
                    req.dest.display()
                ),
            ))
        }
        // Asking again for a repository `init` made is harmless.
        (Operation::Init, Found::Ours(_)) => Ok(SyncResult::default()),
        // Cloning what is already there is a sync: running the same request twice is harmless.
        (_, Found::Ours(kind)) => {
            let git_dir = if kind == Operation::Checkout {
                req.dest.join(".git")
            } else {
                req.dest.clone()
            };
            crate::locks::clear_stale(&git_dir, layout.opened_at())
                .map_err(|e| with_url(req, e))?;
            sync(req, kind, progress, interrupt, commit, events)
        }
        (Operation::Init, Found::Absent) => init(req, layout, commit),
        (_, Found::Absent) => clone(req, layout, progress, interrupt, commit, events),
    }
}

/// Names the request's URL in an error that does not yet.
fn with_url(req: &Request, e: TaskError) -> TaskError {
    TaskError::new(e.code, format!("{}: {}", req.url.display(), e.message))
}

/// Removes a staging directory unless it was moved into place.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep && self.path.exists() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn storage_error(req: &Request, what: &str, err: &std::io::Error) -> TaskError {
    let code = match err.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => ErrorCode::Storage,
        _ => ErrorCode::Storage,
    };
    TaskError::new(
        code,
        req.redactor
            .redact(&format!("{what} for {}: {err}", req.url.display())),
    )
}

fn git_error(req: &Request, what: &str, err: &(dyn std::error::Error + 'static)) -> TaskError {
    let code = classify(err);
    let message = describe(err, &req.redactor);
    TaskError::new(
        code,
        format!("{what} {} failed: {message}", req.url.display()),
    )
}

/// Marks a finished repository as this root's and moves it from staging into place, if the
/// watcher has not given up.
fn publish(
    req: &Request,
    layout: &Layout,
    staging: &mut Staging,
    commit: &Commit,
) -> Result<(), TaskError> {
    if !commit.try_commit() {
        return Err(TaskError::new(ErrorCode::Internal, "interrupted"));
    }
    layout
        .place(&staging.path, &req.dest, req.operation)
        .map_err(|e| with_url(req, e))?;
    staging.keep = true;
    Ok(())
}

fn init(req: &Request, layout: &Layout, commit: &Commit) -> Result<SyncResult, TaskError> {
    let mut staging = Staging {
        path: layout.new_staging_path(),
        keep: false,
    };
    let worktree = !req.dest.to_string_lossy().ends_with(".git");
    let created = if worktree {
        gix::init(&staging.path)
    } else {
        gix::init_bare(&staging.path)
    };
    created.map_err(|e| git_error(req, "init of", &e))?;
    publish(req, layout, &mut staging, commit)?;
    Ok(SyncResult {
        default_branch: Some("main".into()).filter(|_| false),
        ..SyncResult::default()
    })
}

fn credentials_helper(
    credentials: Option<Credentials>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    move |action| match (&credentials, action) {
        (Some(c), gix::credentials::helper::Action::Get(ctx)) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: c.username.clone(),
                    password: c.token.expose().to_string(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            }))
        }
        // Nothing to store or erase: gitfleet keeps no credential state.
        _ => Ok(None),
    }
}

fn ref_map_options() -> gix::remote::ref_map::Options {
    // With the default (true), gix turns `refs/*` into a literal ref-prefix for protocol v2 and
    // the server lists only HEAD: a mirror would silently have no refs (dependency-facts.md).
    gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    }
}

fn clone(
    req: &Request,
    layout: &Layout,
    mut progress: ProgressItem,
    interrupt: &AtomicBool,
    commit: &Commit,
    events: &mpsc::Sender<Event>,
) -> Result<SyncResult, TaskError> {
    let mut staging = Staging {
        path: layout.new_staging_path(),
        keep: false,
    };
    let (repo, pack_bytes) = if req.operation == Operation::Checkout {
        checkout_clone(req, &staging.path, &mut progress, interrupt, events)?
    } else {
        bare_clone(req, &staging.path, &mut progress, interrupt)?
    };
    let _ = events.send(Event::Phase(Phase::Finishing));
    let after = ref_snapshot(&repo).map_err(|e| git_error(req, "reading refs of", &e))?;
    let mut result = summarize(req, &repo, &BTreeMap::new(), &after)?;
    result.bytes_received = pack_bytes;
    drop(repo);
    publish(req, layout, &mut staging, commit)?;
    Ok(result)
}

/// How every repository is opened: with no global or system configuration (no credential
/// helpers, no insteadOf), gix's pack threads shared among the running operations, and no
/// object built bigger than the limit.
fn open_options(req: &Request) -> gix::open::Options {
    gix::open::Options::isolated().config_overrides([
        format!("pack.threads={}", crate::threads::pack_threads()),
        format!(
            "gitoxide.objects.allocLimit={}",
            req.limits.max_object_bytes
        ),
    ])
}

/// A clone with a working tree, by gix's `PrepareFetch` (which also checks it out).
fn checkout_clone(
    req: &Request,
    path: &Path,
    progress: &mut ProgressItem,
    interrupt: &AtomicBool,
    events: &mpsc::Sender<Event>,
) -> Result<(gix::Repository, u64), TaskError> {
    // gix lists and fetches in one call here: the listing budget cannot be told from the
    // transfer's, so the transfer limit applies from the start.
    listing_done();
    let mut prepare = gix::clone::PrepareFetch::new(
        req.url.fetch_url().clone(),
        path,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        open_options(req),
    )
    .map_err(|e| git_error(req, "clone of", &e))?
    .with_fetch_options(ref_map_options())
    .configure_connection({
        let credentials = req.credentials.clone();
        let mut ours = Some(open_transport(req, "clone of")?);
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
        .fetch_then_checkout(progress.add_child("fetch"), interrupt)
        .map_err(|e| git_error(req, "clone of", &e))?;
    let _ = events.send(Event::Phase(Phase::CheckingOut));
    let (repo, _) = checkout
        .main_worktree(progress.add_child("checkout"), interrupt)
        .map_err(|e| git_error(req, "checkout of", &e))?;
    if interrupt.load(Ordering::SeqCst) {
        return Err(TaskError::new(ErrorCode::Internal, "interrupted"));
    }
    Ok((repo, pack_size(&fetched.status)))
}

/// A bare or mirror clone, done here rather than by gix's `PrepareFetch`: a repository made as
/// `git init --bare --template=` does, the remote written, every object fetched over one
/// connection of our choosing (daemon.rs) and the refs written straight into `packed-refs`
/// (fresh.rs), HEAD pointed where the remote's HEAD points — what `git clone --bare/--mirror`
/// does.
fn bare_clone(
    req: &Request,
    path: &Path,
    progress: &mut ProgressItem,
    interrupt: &AtomicBool,
) -> Result<(gix::Repository, u64), TaskError> {
    crate::fresh::init_bare(path)
        .map_err(|e| storage_error(req, "cannot create the repository", &e))?;
    let repo = gix::open_opts(path, open_options(req))
        .map_err(|e| git_error(req, "initialising the clone of", &e))?;
    let (specs, tags) = fetch_specs(req.operation);
    let mut remote = repo
        .remote_at_without_url_rewrite(req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(specs.iter().copied(), Direction::Fetch))
        .map_err(|e| git_error(req, "clone of", &e))?
        .with_fetch_tags(tags);
    write_remote_config(req, &mut remote, repo.git_dir())?;

    let mut transport = open_transport(req, "clone of")?;
    let mut authenticate = credentials_helper(req.credentials.clone());
    let mut fetch_progress = progress.add_child("fetch");
    let fetched = crate::fresh::fetch(
        &repo,
        &mut transport,
        &mut authenticate,
        specs,
        &req.limits,
        &mut fetch_progress,
        interrupt,
    )
    .map_err(|e| git_error(req, "clone of", &e))?;
    if interrupt.load(Ordering::SeqCst) {
        return Err(TaskError::new(ErrorCode::Internal, "interrupted"));
    }
    fetched
        .write_refs(repo.git_dir())
        .map_err(|e| storage_error(req, "cannot write the refs", &e))?;
    set_head_like_remote(req, &repo, &fetched.remote_refs)?;
    Ok((repo, fetched.pack_bytes))
}

/// `[remote "origin"]` with the URL and refspecs (and `mirror = true` for a mirror), as `git clone`
/// writes it. The URL is the one without credentials: a token is never stored.
fn write_remote_config(
    req: &Request,
    remote: &mut gix::Remote<'_>,
    git_dir: &Path,
) -> Result<(), TaskError> {
    let path = git_dir.join("config");
    let mut config =
        gix::config::File::from_path_no_includes(path.clone(), gix::config::Source::Local)
            .map_err(|e| git_error(req, "configuring", &e))?;
    remote
        .save_as_to("origin", &mut config)
        .map_err(|e| git_error(req, "configuring", &e))?;
    if req.operation == Operation::Mirror {
        config
            .set_raw_value_by("remote", Some("origin".into()), "mirror", "true")
            .map_err(|e| git_error(req, "configuring", &e))?;
    }
    let mut out = Vec::new();
    config
        .write_to(&mut out)
        .map_err(|e| storage_error(req, "cannot write config", &e))?;
    std::fs::write(&path, out).map_err(|e| storage_error(req, "cannot write config", &e))
}

/// Points HEAD where the remote's does: to the same branch (even an unborn one), or detached at
/// the same commit.
fn set_head_like_remote(
    req: &Request,
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
    .map_err(|e| git_error(req, "setting HEAD of", &e))?;
    Ok(())
}

/// What a repository of `kind` fetches, and whether it follows tags beyond that: what its
/// clone wrote into its config, decided here again rather than read back from that config (a
/// repository's config is never trusted).
fn fetch_specs(kind: Operation) -> (&'static [&'static str], gix::remote::fetch::Tags) {
    use gix::remote::fetch::Tags;
    match kind {
        Operation::Mirror => (&["+refs/*:refs/*"], Tags::None),
        Operation::Checkout => (&["+refs/heads/*:refs/remotes/origin/*"], Tags::Included),
        _ => (
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            Tags::None,
        ),
    }
}

fn sync(
    req: &Request,
    kind: Operation,
    mut progress: ProgressItem,
    interrupt: &AtomicBool,
    commit: &Commit,
    events: &mpsc::Sender<Event>,
) -> Result<SyncResult, TaskError> {
    let repo = gix::open_opts(&req.dest, open_options(req))
        .map_err(|e| git_error(req, "opening the repository of", &e))?;
    let before = ref_snapshot(&repo).map_err(|e| git_error(req, "reading refs of", &e))?;
    // The URL of this request and the refspecs of the repository's kind: nothing from the
    // repository's config (no remote, refspec, insteadOf or credential an attacker wrote).
    let (spec_list, tags) = fetch_specs(kind);
    let remote = repo
        .remote_at_without_url_rewrite(req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(spec_list.iter().copied(), Direction::Fetch))
        .map_err(|e| git_error(req, "sync of", &e))?
        .with_fetch_tags(tags);
    let specs: Vec<BString> = spec_list.iter().map(|s| BString::from(*s)).collect();
    let connection = connect(req, &remote, "sync of")?;
    let mut fetch_progress = progress.add_child("fetch");
    let listed = (|| -> gix::Result<Listed> {
        let prepare = connection.prepare_fetch(&mut fetch_progress, ref_map_options())?;
        listing_done();
        let mappings = &prepare.ref_map().mappings;
        if let Err(e) = check_listing(
            &req.limits,
            prepare.ref_map().remote_refs.iter().map(|r| r.unpack().0),
        ) {
            return Ok(Listed::Refused(TaskError::new(
                ErrorCode::LimitExceeded,
                e.0,
            )));
        }
        let upstream: HashSet<BString> = mappings.iter().filter_map(|m| m.local.clone()).collect();
        if is_up_to_date(mappings, &before) {
            // Nothing to negotiate or write: gix would otherwise rewrite every ref (one lock
            // file each; 20k refs took 28-55 s where git takes 0.24 s).
            return Ok(Listed::UpToDate(upstream));
        }
        if let Some(specs) = narrowed_refspecs(mappings, &before) {
            return Ok(Listed::Narrow(upstream, specs));
        }
        let outcome = prepare.receive(&mut fetch_progress, interrupt)?;
        Ok(Listed::Fetched(upstream, pack_size(&outcome.status)))
    })();
    let (upstream, pack_bytes, received) = match listed {
        Ok(Listed::Refused(e)) => return Err(with_url(req, e)),
        Ok(Listed::UpToDate(upstream)) => (upstream, 0, false),
        Ok(Listed::Fetched(upstream, bytes)) => (upstream, bytes, true),
        Ok(Listed::Narrow(upstream, specs)) => {
            // The listing's connection ended with its `prepare` (a flush-pkt to the server).
            let bytes = fetch_only(req, &repo, &specs, &mut fetch_progress, interrupt)?;
            (upstream, bytes, true)
        }
        Err(e) if describe(&e, &req.redactor).contains("matched any of the") => {
            (HashSet::new(), 0, false)
        }
        Err(e) => return Err(git_error(req, "sync of", &e)),
    };
    if interrupt.load(Ordering::SeqCst) {
        return Err(TaskError::new(ErrorCode::Internal, "interrupted"));
    }
    let _ = events.send(Event::Phase(Phase::Finishing));
    if !commit.try_commit() {
        return Err(TaskError::new(ErrorCode::Internal, "interrupted"));
    }
    // Nothing received: the refs are still `before` (the repository's lock keeps other tasks out).
    let fetched = if received {
        Some(ref_snapshot(&repo).map_err(|e| git_error(req, "reading refs of", &e))?)
    } else {
        None
    };
    if let Some(fetched) = &fetched {
        restore_missing_tips(req, &repo, &before, fetched)?;
    }
    let pruned = prune(
        req,
        &repo,
        &specs,
        &upstream,
        fetched.as_ref().unwrap_or(&before),
    )?;
    let after = if pruned {
        Some(ref_snapshot(&repo).map_err(|e| git_error(req, "reading refs of", &e))?)
    } else {
        fetched
    };
    let mut result = summarize(req, &repo, &before, after.as_ref().unwrap_or(&before))?;
    result.bytes_received = pack_bytes;
    Ok(result)
}

/// What the ref listing of a sync decided.
enum Listed {
    /// Every ref is where the remote has it: nothing was fetched.
    UpToDate(HashSet<BString>),
    /// Fetched, with the pack's size.
    Fetched(HashSet<BString>, u64),
    /// A few of many refs changed: fetch just these refspecs.
    Narrow(HashSet<BString>, Vec<BString>),
    /// The listing broke a limit.
    Refused(TaskError),
}

/// The refs are listed: the operation's meter moves on to the transfer limit.
pub(crate) fn listing_done() {
    if let Some(meter) = crate::meter::current() {
        meter.listing_done();
    }
}

/// Refuses a listing of more refs, or longer names, than the limits allow.
pub(crate) fn check_listing<'a>(
    limits: &Limits,
    names: impl Iterator<Item = &'a gix::bstr::BStr>,
) -> Result<(), OverLimit> {
    let mut count = 0usize;
    for name in names {
        count += 1;
        if count > limits.max_refs {
            return Err(OverLimit(format!(
                "the server lists more than {} refs",
                limits.max_refs
            )));
        }
        if name.len() > limits.max_ref_name {
            return Err(OverLimit(format!(
                "the server lists a ref name longer than {} bytes",
                limits.max_ref_name
            )));
        }
    }
    Ok(())
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
    req: &Request,
    repo: &gix::Repository,
    specs: &[BString],
    progress: &mut ProgressItem,
    interrupt: &AtomicBool,
) -> Result<u64, TaskError> {
    let remote = repo
        .remote_at_without_url_rewrite(req.url.fetch_url().clone())
        .and_then(|r| r.with_refspecs(specs.iter().map(|s| s.as_bstr()), Direction::Fetch))
        .map_err(|e| git_error(req, "sync of", &e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let connection = connect(req, &remote, "sync of")?;
    // Exact names: the server lists only these refs.
    let options = gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: true,
        ..Default::default()
    };
    connection
        .prepare_fetch(&mut *progress, options)
        .and_then(|prepare| prepare.receive(&mut *progress, interrupt))
        .map(|outcome| pack_size(&outcome.status))
        .map_err(|e| git_error(req, "sync of", &e))
}

type FetchConnection<'remote, 'repo> = gix::remote::Connection<
    'remote,
    'static,
    'repo,
    Box<dyn gix_transport::client::blocking_io::Transport + Send>,
>;

/// A fetch connection to the request's URL with its credentials: over our own git:// transport
/// (daemon.rs), or gix's for the other schemes. `what` names the operation in errors.
fn connect<'remote, 'repo>(
    req: &Request,
    remote: &'remote gix::Remote<'repo>,
    what: &str,
) -> Result<FetchConnection<'remote, 'repo>, TaskError> {
    let mut connection = remote.to_connection_with_transport(open_transport(req, what)?);
    connection.set_credentials(credentials_helper(req.credentials.clone()));
    Ok(connection)
}

/// Our own git:// transport (daemon.rs) for a git:// request; `None` for the other schemes.
fn daemon_transport(
    req: &Request,
) -> Result<Option<Box<dyn gix_transport::client::blocking_io::Transport + Send>>, TaskError> {
    if req.url.scheme() != Scheme::Git {
        return Ok(None);
    }
    // A little longer than the stall limit, so that the watcher reports `stalled` first and the
    // read then returns and frees the thread well within the grace period.
    let io_timeout = req.limits.stall_limit + Duration::from_secs(1);
    // The operation's meter (none outside `execute`: no budget then).
    let meter = crate::meter::current().unwrap_or_else(|| Meter::new(u64::MAX, u64::MAX));
    match crate::daemon::connect(
        req.url.fetch_url(),
        req.addresses.as_deref(),
        CONNECT_TIMEOUT,
        io_timeout,
        meter,
    ) {
        Ok(connection) => Ok(Some(Box::new(connection))),
        Err(e) => Err(TaskError::new(
            ErrorCode::Network,
            req.redactor
                .redact(&format!("cannot reach {}: {e}", req.url.display())),
        )),
    }
}

/// A transport to the request's URL: our own for git:// (daemon.rs), otherwise gix's, with
/// gitfleet's own settings. Nothing comes from the repository's configuration: that would let
/// whoever wrote it choose the ssh command (`core.sshCommand`), a proxy, extra headers, or turn
/// off certificate checks (`http.sslVerify`).
fn open_transport(
    req: &Request,
    what: &str,
) -> Result<Box<dyn gix_transport::client::blocking_io::Transport + Send>, TaskError> {
    if let Some(transport) = daemon_transport(req)? {
        return Ok(transport);
    }
    let url = req.url.fetch_url().clone();
    let is_http = matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https);
    let mut transport = gix_transport::client::blocking_io::connect::connect(
        url,
        gix_transport::client::blocking_io::connect::Options {
            version: gix::protocol::transport::Protocol::V2,
            // The `ssh` program found on PATH with gitfleet's options (ssh.rs).
            ssh: crate::ssh::options(),
            trace: false,
        },
    )
    .map_err(|e| git_error(req, what, &e))?;
    if is_http {
        transport
            .configure(&http_options(req))
            .map_err(|e| git_error(req, what, &e))?;
    }
    Ok(transport)
}

/// gitfleet's HTTP settings. Redirects are not followed: a redirect could send the request, and
/// with it credentials, to another host or to an address the policy refuses.
fn http_options(req: &Request) -> gix_transport::client::blocking_io::http::Options {
    use gix_transport::client::blocking_io::http::options::FollowRedirects;
    let host = req
        .url
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string());
    let addresses = req.addresses.clone();
    // The client as gix builds it, plus: the checked addresses for the host, and the extra
    // certificate authorities.
    let configure_client: Box<
        gix_transport::client::blocking_io::http::reqwest::ConfigureClientFn,
    > = Box::new(move |mut builder| {
        if let (Some(host), Some(addresses)) = (&host, &addresses) {
            builder = builder.resolve_to_addrs(host, addresses);
        }
        if let Some(roots) = crate::tls::extra_roots() {
            builder = builder.tls_certs_merge(roots.iter().cloned());
        }
        Ok(builder)
    });
    let backend = gix_transport::client::blocking_io::http::reqwest::Options {
        configure_client: Some(configure_client),
        configure_request: None,
    };
    gix_transport::client::blocking_io::http::Options {
        backend: Some(Arc::new(std::sync::Mutex::new(backend))),
        follow_redirects: FollowRedirects::None,
        user_agent: Some(concat!("gitfleet/", env!("CARGO_PKG_VERSION")).to_string()),
        connect_timeout: Some(CONNECT_TIMEOUT),
        // The stall limit, enforced by the transport too: a server trickling a byte now and then
        // keeps no thread.
        low_speed_limit_bytes_per_second: 1,
        low_speed_time_seconds: req.limits.stall_limit.as_secs().max(1),
        ..Default::default()
    }
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

/// Size of the pack a fetch received (0 when none was needed).
fn pack_size(status: &gix::remote::fetch::Status) -> u64 {
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

/// Deletes local refs in the refspecs' destinations that the remote no longer has; true if it
/// deleted any.
fn prune(
    req: &Request,
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
    check_prune(req, edits.len(), kept_before)?;
    repo.edit_references(edits)
        .map_err(|e| git_error(req, "pruning refs of", &e))?;
    Ok(true)
}

/// A mirror is a backup: a remote that suddenly lists no refs, or far fewer (a glitch, a
/// misconfigured server, a compromised account), must not wipe it. Deleting `deleting` of the
/// `kept` refs a sync manages is refused when it is all of them, or more than the allowed share
/// of more than a few, unless the request forces it.
fn check_prune(req: &Request, deleting: usize, kept: usize) -> Result<(), TaskError> {
    let limits = &req.limits;
    let all = deleting == kept;
    let too_many =
        deleting > PRUNE_FEW && deleting * 100 > kept * usize::from(limits.max_prune_percent);
    if limits.force_prune || !(all || too_many) {
        return Ok(());
    }
    Err(TaskError::new(
        ErrorCode::PruneRefused,
        format!(
            "{} no longer lists {deleting} of the {kept} refs kept; refusing to delete {}, they \
             are kept (sync with --force-prune to delete them)",
            req.url.display(),
            if all { "all of them" } else { "that many" },
        ),
    ))
}

/// The refs new or moved since `before` whose object is not in the repository: a server can
/// advertise a ref to an object it never sends, and the mirror would look complete and be broken.
fn missing_tips(
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

fn missing_tip_error(req: &Request, (name, id): &(String, gix::ObjectId)) -> TaskError {
    TaskError::new(
        ErrorCode::Protocol,
        format!(
            "{}: the server advertised {} at {id} but did not send it",
            req.url.display(),
            crate::printable(name)
        ),
    )
}

/// After a sync fetched refs to objects it never received: puts each such ref back where it was
/// (or removes it, if it is new), so that the repository stays whole, and reports the first.
fn restore_missing_tips(
    req: &Request,
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
        .map_err(|e| git_error(req, "restoring refs of", &e))?;
    Err(missing_tip_error(req, first))
}

/// Every direct ref and the object it points to.
fn ref_snapshot(repo: &gix::Repository) -> gix::Result<BTreeMap<String, gix::ObjectId>> {
    let mut out = BTreeMap::new();
    for reference in repo.references()?.all()?.flatten() {
        if let Some(id) = reference.target().try_id() {
            out.insert(reference.name().as_bstr().to_string(), id.to_owned());
        }
    }
    Ok(out)
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

fn summarize(
    req: &Request,
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
        return Err(missing_tip_error(req, missing));
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
            TaskError::new(
                ErrorCode::Protocol,
                req.redactor
                    .redact(&format!("walking history of {}: {e}", req.url.display())),
            )
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
