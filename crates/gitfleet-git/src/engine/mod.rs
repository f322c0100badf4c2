//! Running one operation: clone (mirror, bare, checkout), init, or sync.
//!
//! [`execute`] runs the gix work on a thread of its own and watches it from the calling thread
//! (watch.rs): it samples progress, enforces the limits and the cancel flag, and gives up on a
//! transport that does not notice the interrupt after a grace period. Whatever happens, a clone
//! only becomes visible by an atomic rename from the staging directory (clone.rs), and a thread
//! that was given up on can no longer perform that rename, nor prune a mirror (sync.rs).
//!
//! The steps return errors that do not name the URL and may hold a secret a server echoed:
//! [`execute`] names the URL, removes secrets and bounds the text once, where the error leaves
//! the engine.

mod clone;
mod fresh;
mod limits;
mod summary;
mod sync;
mod transport;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use gitfleet_proto::{ErrorCode, Operation, SyncResult, TaskError};
use gix::progress::tree::Root;

pub use limits::{Limits, MinFree};
pub use watch::Control;

use crate::error::{classify, describe};
use crate::meter::Meter;
use crate::place::Found;
use crate::progress::{Progress, Tracker};
use crate::pushback::Pushback;
use crate::{Credentials, Layout, Redactor, RepoUrl};
use watch::{Commit, Event};

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
    /// The addresses the policy checked for the URL's host: a transfer connects to these and
    /// resolves nothing again (a name cannot point elsewhere between the check and the
    /// connection). `None`: resolve as usual.
    pub addresses: Option<Vec<std::net::SocketAddr>>,
}

/// One attempt at a request, as the git thread runs it: what its steps share.
struct Attempt<'a> {
    req: &'a Request,
    layout: &'a Layout,
    /// Set when the watcher stops the operation; gix's loops and our transports poll it.
    interrupt: &'a Arc<AtomicBool>,
    /// Whether this thread may still publish its result.
    commit: &'a Commit,
    events: &'a mpsc::Sender<Event>,
    /// Bytes received on the wire, against the listing and transfer budgets.
    meter: &'a Arc<Meter>,
    /// A server's request to slow down, as the transport met it.
    pushback: &'a Arc<Pushback>,
}

type ProgressItem = gix::progress::tree::Item;

/// Runs `req` to completion, calling `on_progress` whenever the percent or phase changes.
pub fn execute(
    req: &Request,
    layout: &Layout,
    control: &Control,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<SyncResult, TaskError> {
    let started = Instant::now();
    // Every transport may build a TLS client: the process must have its crypto provider.
    crate::init_tls();
    transport::check_credentials(req).map_err(|e| leaving(req, e))?;
    let root: Arc<Root> = Root::new();
    let mut tracker = Tracker::new(root.clone());
    let (tx, rx) = mpsc::channel();
    let commit = Arc::new(Commit::default());
    let meter = Meter::new(req.limits.max_listing_bytes, req.limits.max_bytes);
    let pushback = Arc::new(Pushback::default());
    {
        let req = req.clone();
        let layout = layout.clone();
        let interrupt = control.interrupt();
        let commit = commit.clone();
        let meter = meter.clone();
        let pushback = pushback.clone();
        // The caller's span (the task, in the actors) goes with the work to the git thread.
        let span = tracing::Span::current();
        let spawned = crate::threads::spawn(Box::new(move || {
            let _task = span.enter();
            let _running = crate::threads::Running::start();
            let attempt = Attempt {
                req: &req,
                layout: &layout,
                interrupt: &interrupt,
                commit: &commit,
                events: &tx,
                meter: &meter,
                pushback: &pushback,
            };
            let result = run(&attempt, root.add_child("gitfleet")).map(|mut result| {
                measure(&req, &mut result);
                result
            });
            let _ = tx.send(Event::Done(Box::new(result)));
        }));
        if let Err(e) = spawned {
            return Err(TaskError::new(
                ErrorCode::Internal,
                format!("could not start a git thread: {e}"),
            ));
        }
    }
    let outcome = watch::watch(
        req,
        control,
        &mut tracker,
        &rx,
        &commit,
        &meter,
        on_progress,
    );
    let mut result = outcome.map_err(|e| leaving(req, slowed_down(e, &pushback)))?;
    // The pack's size is exact; the sampled counter misses what arrived after the last tick.
    result.bytes_received = result.bytes_received.max(tracker.current().bytes_received);
    result.duration_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
    Ok(result)
}

/// Records the repository's size on disk after work that changed it: a clone, an init, or a
/// sync that received data or moved a ref. A no-op sync leaves it out: the record keeps the
/// earlier measurement, and a quiet check stays one round trip.
fn measure(req: &Request, result: &mut SyncResult) {
    let changed = result.bytes_received > 0
        || result.num_refs_created + result.num_refs_updated + result.num_refs_deleted > 0;
    if !changed && req.operation == Operation::Sync {
        return;
    }
    match crate::disk_usage(&req.dest) {
        Ok(bytes) => result.disk_bytes = Some(bytes),
        Err(e) => tracing::warn!(error = %e, "cannot measure the repository on disk"),
    }
}

/// An attempt that failed after the server asked to slow down failed because of it, whatever
/// gix made of the refusal: `rate_limited` (429, GitHub's 403) or the outage it was (a 503),
/// with the pause the server asked for.
fn slowed_down(e: TaskError, pushback: &Pushback) -> TaskError {
    match pushback.take() {
        Some(refusal) if e.code != ErrorCode::Cancelled => {
            let code = if refusal.rate_limited {
                ErrorCode::RateLimited
            } else {
                ErrorCode::ServerError
            };
            TaskError::new(code, e.message).with_retry_after(refusal.pause)
        }
        _ => e,
    }
}

/// An error as it leaves the engine: naming the URL, with every secret removed, printable and
/// bounded, whatever a server put into it.
fn leaving(req: &Request, e: TaskError) -> TaskError {
    let message = format!("{}: {}", req.url.display(), e.message);
    TaskError {
        message: crate::printable(&req.redactor.redact(&message)),
        ..e
    }
}

fn run(at: &Attempt<'_>, progress: ProgressItem) -> Result<SyncResult, TaskError> {
    let req = at.req;
    // Only a repository this root's gitfleet made (with its marker) is ever opened; anything
    // else at the path, or on the way to it, is refused and left alone (place.rs).
    let found = at.layout.probe(&req.dest)?;
    match (req.operation, found) {
        (Operation::Sync, Found::Absent) => Err(TaskError::new(
            ErrorCode::NotFound,
            format!("has not been cloned yet: nothing at {}", req.dest.display()),
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
            crate::locks::clear_stale(&git_dir, at.layout.opened_at())?;
            sync::sync(at, kind, progress)
        }
        (Operation::Init, Found::Absent) => {
            room_for_new(at)?;
            clone::init(at)
        }
        (_, Found::Absent) => {
            room_for_new(at)?;
            clone::clone(at, progress)
        }
    }
}

/// A new repository needs room: below `--min-free` on the root's file system it is refused
/// (`storage`), so that the repositories already held keep the space to sync.
fn room_for_new(at: &Attempt<'_>) -> Result<(), TaskError> {
    let Some(floor) = at.req.limits.min_free else {
        return Ok(());
    };
    let root = at.layout.root();
    let stat = rustix::fs::statvfs(root)
        .map_err(|e| storage_error("cannot read the free space", &e.into()))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    let total = stat.f_blocks.saturating_mul(stat.f_frsize);
    if floor.is_below(available, total) {
        return Err(TaskError::new(
            ErrorCode::Storage,
            format!(
                "only {available} of {total} bytes are free on the file system of {} (below \
                 --min-free {floor}): new repositories are refused; those already there keep \
                 syncing",
                root.display()
            ),
        ));
    }
    Ok(())
}

/// A failure of a git step: `what` failed, and why (the whole error chain).
fn git_error(what: &str, err: &(dyn std::error::Error + 'static)) -> TaskError {
    TaskError::new(classify(err), format!("{what} failed: {}", describe(err)))
}

/// A failure to write or read the repository on disk.
fn storage_error(what: &str, err: &std::io::Error) -> TaskError {
    TaskError::new(ErrorCode::Storage, format!("{what}: {err}"))
}

/// The step stopped because the watcher asked it to; the watcher reports why.
fn interrupted() -> TaskError {
    TaskError::new(ErrorCode::Internal, "interrupted")
}

/// How every repository is opened: with no global or system configuration (no credential
/// helpers, no insteadOf), gix's pack threads shared among the running operations, no object
/// built bigger than the limit, and a committer for the reflog entries a sync writes in a
/// repository with a working tree (which keeps reflogs; with no identity configured, gix refuses
/// to move its refs).
fn open_options(req: &Request) -> gix::open::Options {
    gix::open::Options::isolated().config_overrides([
        format!("pack.threads={}", crate::threads::pack_threads()),
        format!(
            "gitoxide.objects.allocLimit={}",
            req.limits.max_object_bytes
        ),
        "gitoxide.committer.nameFallback=gitfleet".to_string(),
        "gitoxide.committer.emailFallback=gitfleet@localhost".to_string(),
    ])
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
