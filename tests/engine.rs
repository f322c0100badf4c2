//! gitfleet-git's engine (`gitfleet_git::execute`) against real git servers on 127.0.0.1: the
//! git CLI's `clone --mirror` of the same source is the reference for every result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitfleet_git::{Control, Credentials, CredentialsConfig, Limits, Progress, Request, Secret};
use gitfleet_proto::{ErrorCode, Operation, Phase, SyncResult, TaskError};
use gitfleet_tests::{
    EngineRoot, Fixtures, GitDaemon, HttpOptions, HttpServer, Refusal, TestCa, TlsProxy, free_port,
    fsck, head_target, mirror_clone, objects, refs, remote_urls, run_git, try_mirror_clone,
    wait_until,
};
use tempfile::TempDir;

/// Upper bound for polls; a healthy run needs a fraction of it.
const WAIT: Duration = Duration::from_secs(60);
/// big.git holds four incompressible 1 MiB blobs.
const BIG_BYTES: u64 = 4 * 1024 * 1024;

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

fn with_credentials(mut req: Request, username: &str, token: &str) -> Request {
    let token = Secret::new(token);
    req.redactor.add(&token);
    req.credentials = Some(Credentials {
        username: username.to_owned(),
        token,
    });
    req
}

/// `git clone --mirror URL` into a new directory: what gitfleet must be equal to.
fn reference_mirror(url: &str) -> (TempDir, PathBuf) {
    let dir = tempdir();
    let dest = dir.path().join("reference.git");
    mirror_clone(url, &dest);
    (dir, dest)
}

fn assert_same_as_reference(mirror: &Path, reference: &Path) {
    assert_eq!(
        refs(mirror),
        refs(reference),
        "refs of {}",
        mirror.display()
    );
    assert_eq!(
        objects(mirror),
        objects(reference),
        "objects of {}",
        mirror.display()
    );
    assert_eq!(head_target(mirror), head_target(reference), "HEAD");
    fsck(mirror).expect("the mirror passes git fsck --strict");
}

fn assert_no_credentials_stored(repo: &Path, expected_url: &str) {
    let urls = remote_urls(repo);
    assert_eq!(
        urls,
        [expected_url.to_owned()],
        "remote urls of {}",
        repo.display()
    );
    for url in &urls {
        let authority = url.split("://").nth(1).unwrap_or(url).split('/').next();
        let userinfo = authority.and_then(|a| a.rsplit_once('@')).map(|(u, _)| u);
        assert!(
            !userinfo.is_some_and(|u| u.contains(':')),
            "a password is stored in {url}"
        );
    }
}

fn expect_err(result: Result<SyncResult, TaskError>, what: &str) -> TaskError {
    match result {
        Ok(r) => panic!("{what} must fail, but it succeeded: {r:?}"),
        Err(e) => e,
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn set(items: &[String]) -> BTreeSet<&str> {
    items.iter().map(String::as_str).collect()
}

fn assert_no_changes(result: &SyncResult) {
    assert!(result.refs_created.is_empty(), "{result:?}");
    assert_eq!(result.bytes_received, 0, "{result:?}");
    assert!(result.refs_updated.is_empty(), "{result:?}");
    assert!(result.refs_deleted.is_empty(), "{result:?}");
    assert_eq!(result.new_commits, 0, "{result:?}");
}

/// Mirrors alpha, empty and big from `url_of(name)` with `prepare`d requests and compares
/// each with `git clone --mirror` of `reference_url_of(name)`.
fn check_mirrors(
    store: &EngineRoot,
    url_of: &dyn Fn(&str) -> String,
    reference_url_of: &dyn Fn(&str) -> String,
    prepare: &dyn Fn(Request) -> Request,
) {
    for name in ["alpha.git", "empty.git", "big.git"] {
        let url = url_of(name);
        let req = prepare(store.request(&url, Operation::Mirror));
        let result = store
            .run(&req)
            .unwrap_or_else(|e| panic!("mirror of {url}: {e}"));
        let (_ref_dir, reference) = reference_mirror(&reference_url_of(name));
        assert_same_as_reference(&req.dest, &reference);
        assert_no_credentials_stored(&req.dest, &url);
        assert_eq!(
            run_git(&req.dest, &["config", "remote.origin.mirror"]).trim(),
            "true",
            "{name} is configured as a mirror, like git clone --mirror"
        );

        let reference_refs = refs(&reference);
        assert_eq!(
            set(&result.refs_created),
            reference_refs.keys().map(String::as_str).collect(),
            "{name}: a clone creates every ref"
        );
        assert!(result.refs_updated.is_empty() && result.refs_deleted.is_empty());
        // The size on disk is measured after every clone, as du counts it.
        let du = std::process::Command::new("du")
            .args(["-s", "-B1"])
            .arg(&req.dest)
            .output()
            .expect("du");
        let du: u64 = text_of(&du.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du's total");
        assert_eq!(result.disk_bytes, Some(du), "{name}");
        if name == "empty.git" {
            assert_eq!(result.total_commits, 0);
            assert_eq!(result.bytes_received, 0);
        } else {
            assert!(result.bytes_received > 0, "{name}: {result:?}");
            if name == "big.git" {
                assert!(result.bytes_received >= BIG_BYTES, "{result:?}");
            }
            let count = run_git(&reference, &["rev-list", "--all", "--count"]);
            assert_eq!(result.total_commits.to_string(), count.trim(), "{name}");
            assert_eq!(result.default_branch.as_deref(), Some("main"), "{name}");
            assert_eq!(
                result.head_commit.as_ref(),
                reference_refs.get("refs/heads/main"),
                "{name}"
            );
        }
    }
    assert!(store.staging().is_empty(), "{:?}", store.staging());
}

#[test]
fn mirror_over_git_daemon_equals_git_clone_mirror() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let url_of = |name: &str| daemon.url(name);
    check_mirrors(&store, &url_of, &url_of, &|req| req);
}

#[test]
fn mirror_over_http_equals_git_clone_mirror_and_speaks_protocol_v2() {
    let fx = Fixtures::new();
    let (user, token) = ("alice", "s3cret/+token");
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            auth: Some((user.to_owned(), token.to_owned())),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    // Where each of gitfleet's clones starts and ends in the server's log.
    let windows = Mutex::new(Vec::new());
    let url_of = |name: &str| {
        windows
            .lock()
            .expect("window lock")
            .push((server.request_log().len(), 0));
        server.url(name)
    };
    let reference_url_of = |name: &str| {
        if let Some(last) = windows.lock().expect("window lock").last_mut() {
            last.1 = server.request_log().len();
        }
        server.url_with_credentials(name, user, token)
    };
    check_mirrors(&store, &url_of, &reference_url_of, &|req| {
        with_credentials(req, user, token)
    });

    let log = server.request_log();
    let windows = windows.into_inner().expect("window lock");
    assert_eq!(windows.len(), 3);
    for (start, end) in windows {
        let own = &log[start..end];
        assert!(own.iter().any(|r| r.method == "POST"), "{own:#?}");
        for r in own {
            assert_eq!(r.git_protocol.as_deref(), Some("version=2"), "{r:?}");
            assert!(r.status == 200 || r.status == 401, "{r:?}");
            if r.status == 200 {
                assert_eq!(
                    r.authorization.as_deref(),
                    Some("Basic YWxpY2U6czNjcmV0Lyt0b2tlbg=="),
                    "{r:?}"
                );
            }
        }
    }
}

/// Adds a ref outside refs/heads and refs/tags, which a mirror copies and a bare clone does
/// not.
fn add_pull_ref(fx: &Fixtures) {
    run_git(
        &fx.repo("alpha.git"),
        &["update-ref", "refs/pull/1/head", "refs/heads/feature"],
    );
}

#[test]
fn bare_clone_has_only_branches_and_tags() {
    let fx = Fixtures::new();
    add_pull_ref(&fx);
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let source = refs(&fx.repo("alpha.git"));
    assert!(source.contains_key("refs/pull/1/head"));

    let req = store.request(&daemon.url("alpha.git"), Operation::Bare);
    store.run(&req).expect("bare clone of alpha");
    let expected: BTreeMap<String, String> = source
        .iter()
        .filter(|(name, _)| name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
        .map(|(n, id)| (n.clone(), id.clone()))
        .collect();
    assert_eq!(refs(&req.dest), expected);
    assert_eq!(
        run_git(&req.dest, &["rev-parse", "--is-bare-repository"]).trim(),
        "true"
    );
    assert_eq!(head_target(&req.dest).as_deref(), Some("refs/heads/main"));
    fsck(&req.dest).expect("the bare clone passes fsck");
    assert_no_credentials_stored(&req.dest, &daemon.url("alpha.git"));

    // A mirror of the same source (in a root of its own: mirror and bare clones share a path)
    // does have the extra ref.
    let other = EngineRoot::new();
    let mirror = other.request(&daemon.url("alpha.git"), Operation::Mirror);
    assert_eq!(mirror.dest.file_name(), req.dest.file_name());
    other.run(&mirror).expect("mirror of alpha");
    assert_eq!(refs(&mirror.dest), source);
}

#[test]
fn checkout_has_a_clean_working_tree_and_remote_tracking_refs() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let store = EngineRoot::new();
    let source_repo = fx.repo("alpha.git");
    let source = refs(&source_repo);

    let req = store.request(&server.url("alpha.git"), Operation::Checkout);
    assert!(!req.dest.to_string_lossy().ends_with(".git"));
    let result = store.run(&req).expect("checkout of alpha");
    assert!(req.dest.join(".git").is_dir(), "a non-bare repository");
    for file in ["README.md", "src/lib.txt", "docs/guide.md"] {
        let on_disk = std::fs::read_to_string(req.dest.join(file))
            .unwrap_or_else(|e| panic!("{file} is checked out: {e}"));
        assert_eq!(
            on_disk,
            run_git(&source_repo, &["show", &format!("main:{file}")]),
            "{file}"
        );
    }
    assert!(
        !req.dest.join("feature.txt").exists(),
        "only main is checked out"
    );
    assert_eq!(
        run_git(&req.dest, &["status", "--porcelain"]).trim(),
        "",
        "the working tree matches HEAD"
    );
    let local = refs(&req.dest);
    for branch in ["main", "feature", "release/1.0"] {
        assert_eq!(
            local.get(&format!("refs/remotes/origin/{branch}")),
            source.get(&format!("refs/heads/{branch}")),
            "refs/remotes/origin/{branch}"
        );
    }
    assert_eq!(
        local.get("refs/heads/main"),
        source.get("refs/heads/main"),
        "the local main branch"
    );
    assert!(
        !local.contains_key("refs/heads/feature"),
        "only the default branch is local: {local:?}"
    );
    let tags = |all: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        all.iter()
            .filter(|(name, _)| name.starts_with("refs/tags/"))
            .map(|(n, id)| (n.clone(), id.clone()))
            .collect()
    };
    assert_eq!(
        tags(&local),
        tags(&source),
        "tags, as git clone fetches them"
    );
    assert_eq!(head_target(&req.dest).as_deref(), Some("refs/heads/main"));
    fsck(&req.dest).expect("the checkout passes fsck");
    let branches: BTreeSet<&str> = result.branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(branches, BTreeSet::from(["feature", "main", "release/1.0"]));
    assert_no_credentials_stored(&req.dest, &server.url("alpha.git"));
}

/// What a sync reports after `Fixtures::mutate` of an alpha-shaped repository.
fn assert_mutation_synced(result: &SyncResult) {
    assert_eq!(
        set(&result.refs_created),
        BTreeSet::from(["refs/heads/hotfix", "refs/tags/v2.0"])
    );
    assert_eq!(
        set(&result.refs_updated),
        BTreeSet::from(["refs/heads/feature", "refs/heads/main"])
    );
    assert_eq!(
        set(&result.refs_deleted),
        BTreeSet::from(["refs/heads/release/1.0", "refs/tags/v0.1"])
    );
}

#[test]
fn sync_reports_upstream_changes_and_converges() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let url = daemon.url("alpha.git");
    let mirror = store.request(&url, Operation::Mirror);
    store.run(&mirror).expect("first mirror");

    fx.mutate("alpha.git");
    let sync = Request {
        operation: Operation::Sync,
        ..mirror.clone()
    };
    let result = store.run(&sync).expect("sync after mutate");
    assert_mutation_synced(&result);
    assert!(result.disk_bytes.is_some_and(|b| b > 0), "{result:?}");
    assert!(result.new_commits >= 2, "{result:?}");
    assert!(result.bytes_received > 0, "{result:?}");

    let (_ref_dir, fresh) = reference_mirror(&url);
    assert_eq!(refs(&mirror.dest), refs(&fresh));
    assert_eq!(head_target(&mirror.dest), head_target(&fresh));
    let (have, need) = (objects(&mirror.dest), objects(&fresh));
    assert!(
        have.is_superset(&need),
        "missing after sync: {:?}",
        need.difference(&have).collect::<Vec<_>>()
    );
    fsck(&mirror.dest).expect("the synced mirror passes fsck");
    assert_no_credentials_stored(&mirror.dest, &url);

    let again = store.run(&sync).expect("no-op sync");
    assert_no_changes(&again);
    // A quiet check does not walk the repository: the record keeps the last measurement.
    assert_eq!(again.disk_bytes, None);
    assert_eq!(refs(&mirror.dest), refs(&fresh));
}

#[test]
fn sync_of_a_working_tree_clone_moves_its_remote_tracking_refs() {
    // A repository with a working tree keeps reflogs: its refs move only with a committer
    // identity, which nothing configures (isolated config), so the engine gives one.
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let clone = store.request(&daemon.url("alpha.git"), Operation::Checkout);
    store.run(&clone).expect("first checkout");
    let head_before = run_git(&clone.dest, &["rev-parse", "HEAD"]);

    fx.mutate("alpha.git");
    let sync = Request {
        operation: Operation::Sync,
        ..clone.clone()
    };
    let result = store.run(&sync).expect("sync after mutate");
    assert!(result.num_refs_updated > 0, "{result:?}");
    let upstream = refs(&fx.repo("alpha.git"));
    let local = refs(&clone.dest);
    assert_eq!(
        local.get("refs/remotes/origin/main"),
        upstream.get("refs/heads/main")
    );
    assert!(
        !local.contains_key("refs/remotes/origin/release/1.0"),
        "{local:?}"
    );
    // The working tree and the local branch are the user's: a sync leaves them.
    assert_eq!(run_git(&clone.dest, &["rev-parse", "HEAD"]), head_before);
    assert_eq!(run_git(&clone.dest, &["status", "--porcelain"]).trim(), "");
    fsck(&clone.dest).expect("the synced checkout passes fsck");
}

/// Loose ref files under `refs/` of a bare repository.
fn loose_refs(repo: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![repo.join("refs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading refs/") {
            let entry = entry.expect("an entry of refs/");
            if entry.file_type().expect("its type").is_dir() {
                stack.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

/// A repository with hundreds of refs of which a few change (the engine then fetches just those,
/// over a second connection): the sync converges like git's and leaves only the changed refs
/// loose.
#[test]
fn sync_of_a_few_changes_among_many_refs() {
    let fx = Fixtures::new();
    let many = fx.repo("many.git");
    let copied = std::process::Command::new("cp")
        .args([
            "-r".as_ref(),
            fx.repo("alpha.git").as_os_str(),
            many.as_os_str(),
        ])
        .status()
        .expect("running cp");
    assert!(copied.success());
    let main = run_git(&many, &["rev-parse", "refs/heads/main"]);
    let mut stdin = String::new();
    for i in 0..300 {
        stdin.push_str(&format!("create refs/heads/many/{i:03} {}\n", main.trim()));
        stdin.push_str(&format!("create refs/tags/many-{i:03} {}\n", main.trim()));
    }
    let file = many.join("many-refs.txt");
    std::fs::write(&file, stdin).expect("writing the ref list");
    let script = format!("git update-ref --stdin < '{}'", file.display());
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(&many)
        .status()
        .expect("running git update-ref");
    assert!(status.success());
    std::fs::remove_file(&file).expect("removing the ref list");

    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let url = daemon.url("many.git");
    let mirror = store.request(&url, Operation::Mirror);
    let first = store.run(&mirror).expect("the first mirror");
    assert!(first.num_refs_created > 600, "{first:?}");

    fx.mutate("many.git");
    let sync = Request {
        operation: Operation::Sync,
        ..mirror.clone()
    };
    let result = store.run(&sync).expect("the sync");
    assert_mutation_synced(&result);
    let (_ref_dir, fresh) = reference_mirror(&url);
    assert_eq!(refs(&mirror.dest), refs(&fresh));
    fsck(&mirror.dest).expect("the synced mirror passes fsck");
    assert!(
        loose_refs(&mirror.dest) <= 4,
        "only the changed refs were written: {} loose refs",
        loose_refs(&mirror.dest)
    );
}

#[test]
fn progress_never_goes_backwards() {
    let fx = Fixtures::new();
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(1024 * 1024),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    let req = store.request(&server.url("big.git"), Operation::Mirror);
    let mut samples: Vec<Progress> = Vec::new();
    let result = gitfleet_git::execute(&req, &store.layout, &Control::new(), &mut |p| {
        samples.push(p.clone());
    })
    .expect("throttled mirror of big");

    assert!(samples.len() >= 3, "{samples:#?}");
    for pair in samples.windows(2) {
        assert!(
            pair[0].percent <= pair[1].percent,
            "percent fell: {pair:#?}"
        );
        assert!(pair[0].phase <= pair[1].phase, "phase went back: {pair:#?}");
        assert!(
            pair[0].bytes_received <= pair[1].bytes_received,
            "bytes fell: {pair:#?}"
        );
    }
    let last = samples.last().expect("at least one sample");
    assert!(last.percent >= 80, "{last:?}");
    assert!(last.percent <= 100, "{last:?}");
    assert!(
        samples
            .iter()
            .any(|p| p.phase == Phase::Receiving && p.percent > 5 && p.percent < 80),
        "the receiving phase reports intermediate percents: {samples:#?}"
    );
    assert!(result.bytes_received >= BIG_BYTES, "{result:?}");
    assert_eq!(refs(&req.dest), refs(&fx.repo("big.git")));
}

/// Runs `req` on a thread; the returned progress slot holds the latest sample.
struct Running {
    control: Control,
    latest: Arc<Mutex<Option<Progress>>>,
    handle: std::thread::JoinHandle<Result<SyncResult, TaskError>>,
}

fn start(store: &EngineRoot, req: &Request) -> Running {
    let control = Control::new();
    let latest = Arc::new(Mutex::new(None));
    let handle = {
        let (req, layout, control, latest) = (
            req.clone(),
            store.layout.clone(),
            control.clone(),
            Arc::clone(&latest),
        );
        std::thread::spawn(move || {
            gitfleet_git::execute(&req, &layout, &control, &mut |p| {
                *latest.lock().expect("progress lock") = Some(p.clone());
            })
        })
    };
    Running {
        control,
        latest,
        handle,
    }
}

impl Running {
    fn phase(&self) -> Option<Phase> {
        self.latest
            .lock()
            .expect("progress lock")
            .as_ref()
            .map(|p| p.phase)
    }

    fn join(self) -> Result<SyncResult, TaskError> {
        self.handle
            .join()
            .expect("the execute thread does not panic")
    }
}

fn throttled(fx: &Fixtures, bytes_per_sec: u64) -> HttpServer {
    HttpServer::start(
        &fx.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(bytes_per_sec),
            ..HttpOptions::default()
        },
    )
}

#[test]
fn cancel_stops_a_clone_and_leaves_nothing_behind() {
    let fx = Fixtures::new();
    let server = throttled(&fx, 256 * 1024);
    let store = EngineRoot::new();
    let req = store.request(&server.url("big.git"), Operation::Mirror);
    let running = start(&store, &req);
    wait_until(WAIT, "the clone is receiving the pack", || {
        running.phase().is_some_and(|p| p >= Phase::Receiving)
    });
    assert!(!running.control.is_cancelled());
    running.control.cancel();
    assert!(running.control.is_cancelled());
    let err = expect_err(running.join(), "a cancelled clone");
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    assert!(err.message.contains(&req.url.display()), "{err}");
    assert!(!req.dest.exists(), "nothing published at the destination");
    assert!(
        server.body_bytes_sent() < BIG_BYTES,
        "the transfer stopped before the end"
    );
    store.wait_staging_empty(WAIT);
}

#[test]
fn time_limit_aborts_with_timeout() {
    let fx = Fixtures::new();
    let server = throttled(&fx, 256 * 1024);
    let store = EngineRoot::new();
    let mut req = store.request(&server.url("big.git"), Operation::Mirror);
    req.limits = Limits {
        time_limit: Duration::from_secs(1),
        stall_limit: Duration::from_secs(60),
        grace: Duration::from_secs(2),
        ..Limits::default()
    };
    let err = expect_err(store.run(&req), "a clone over its time limit");
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(err.message.contains(&req.url.display()), "{err}");
    assert!(err.message.contains("time limit"), "{err}");
    assert!(!req.dest.exists());
    assert!(server.body_bytes_sent() < BIG_BYTES);
    store.wait_staging_empty(WAIT);
}

/// The server stops sending in the middle of the pack and keeps the connection open. The git
/// thread sits in a read that cannot see the interrupt, so after the stall limit and the grace
/// period the engine gives up on it and reports `stalled` (not `internal`). The abandoned
/// thread may not publish; it removes its staging directory once its read fails, which the
/// HTTP transport's own read timeout (reqwest's default, 30 s) eventually makes happen.
#[test]
fn stalled_transfer_aborts_with_stalled() {
    let fx = Fixtures::new();
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            stall_after_bytes: Some(64 * 1024),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    let mut req = store.request(&server.url("big.git"), Operation::Mirror);
    req.limits = Limits {
        time_limit: Duration::from_secs(300),
        stall_limit: Duration::from_secs(2),
        grace: Duration::from_secs(2),
        ..Limits::default()
    };
    let err = expect_err(store.run(&req), "a stalled clone");
    assert_eq!(err.code, ErrorCode::Stalled, "{err}");
    assert!(err.message.contains(&req.url.display()), "{err}");
    assert!(err.message.contains("stalled"), "{err}");
    assert!(!req.dest.exists());
    assert!(server.body_bytes_sent() <= 64 * 1024 * server.requests() as u64);
    store.wait_staging_empty(WAIT);
    assert!(
        !req.dest.exists(),
        "the abandoned thread did not publish when its read returned"
    );
}

/// A git:// server that accepts connections and never says a word.
#[test]
fn silent_git_daemon_is_stalled_and_frees_the_thread() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a silent server");
    let port = listener.local_addr().expect("its address").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().expect("the held connections").push(stream);
            }
        });
    }
    let store = EngineRoot::new();
    let mut req = store.request(
        &format!("git://127.0.0.1:{port}/silent.git"),
        Operation::Mirror,
    );
    req.limits = Limits {
        time_limit: Duration::from_secs(300),
        stall_limit: Duration::from_secs(1),
        // Far longer than the test takes unless the git thread is stuck: if the read had no
        // timeout, execute() would return only after giving the thread up, with its staging
        // directory still there.
        grace: Duration::from_secs(120),
        ..Limits::default()
    };
    let err = expect_err(store.run(&req), "a clone from a silent server");
    assert_eq!(err.code, ErrorCode::Stalled, "{err}");
    assert!(err.message.contains(&req.url.display()), "{err}");
    assert!(
        store.staging().is_empty(),
        "the git thread ended (its staging directory is gone) before execute returned"
    );
    assert!(!req.dest.exists());
    assert!(!held.lock().expect("the held connections").is_empty());
}

/// Every file and directory of a repository with its size and modification time (a directory's
/// changes when a file, a lock file say, is created or removed in it).
fn file_stamps(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("reading a repository directory") {
            let entry = entry.expect("a directory entry");
            let meta = entry.metadata().expect("its metadata");
            let modified = meta.modified().expect("its modification time");
            let len = if meta.is_dir() {
                stack.push(entry.path());
                0
            } else {
                meta.len()
            };
            out.insert(entry.path(), (len, modified));
        }
    }
    out
}

#[test]
fn no_op_sync_writes_nothing() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let store = EngineRoot::new();
    for url in [daemon.url("alpha.git"), server.url("alpha.git")] {
        let mirror = store.request(&url, Operation::Mirror);
        let first = store.run(&mirror).expect("the first mirror");
        let before = file_stamps(&mirror.dest);
        // Coarse file-system clocks would hide a rewrite done within the same tick.
        std::thread::sleep(Duration::from_millis(50));
        let sync = Request {
            operation: Operation::Sync,
            ..mirror.clone()
        };
        let again = store.run(&sync).expect("a no-op sync");
        assert_no_changes(&again);
        assert_eq!(again.head_commit, first.head_commit, "{url}");
        assert_eq!(again.num_branches, first.num_branches, "{url}");
        assert_eq!(again.total_commits, first.total_commits, "{url}");
        assert_eq!(
            file_stamps(&mirror.dest),
            before,
            "{url}: the sync wrote files"
        );
    }
}

#[test]
fn unknown_repository_is_not_found() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    for url in [server.url("missing.git"), daemon.url("missing.git")] {
        let req = store.request(&url, Operation::Mirror);
        let err = expect_err(store.run(&req), &url);
        assert_eq!(err.code, ErrorCode::NotFound, "{url}: {err}");
        assert!(err.message.contains(&req.url.display()), "{err}");
        assert!(!req.dest.exists());
    }
    assert_eq!(server.request_log().last().map(|r| r.status), Some(404));
    store.wait_staging_empty(WAIT);
}

/// A server that refuses every request this way, and the engine's error against it.
fn refused_by(status: u16, headers: &[(&str, &str)], body: &str) -> TaskError {
    let fx = Fixtures::new();
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            refuse_first: Some(Refusal {
                count: usize::MAX / 2,
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.to_string(),
            }),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    let req = store.request(&server.url("alpha.git"), Operation::Mirror);
    let err = expect_err(store.run(&req), "a refusing server");
    assert!(!req.dest.exists());
    assert!(err.message.contains(&req.url.display()), "{err}");
    store.wait_staging_empty(WAIT);
    err
}

#[test]
fn a_server_asking_to_slow_down_is_rate_limited_with_its_pause_never_auth_failed() {
    let err = refused_by(429, &[("Retry-After", "7")], "slow down");
    assert_eq!(
        (err.code, err.retry_after_secs),
        (ErrorCode::RateLimited, Some(7)),
        "{err}"
    );
    assert!(err.message.contains("429"), "{err}");

    // GitHub's primary limit: 403 with the remaining count at 0 and the reset time.
    let reset = (std::time::SystemTime::now() + Duration::from_secs(600))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
        .to_string();
    let err = refused_by(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ],
        "API rate limit exceeded",
    );
    assert_eq!(err.code, ErrorCode::RateLimited, "{err}");
    assert!(
        err.retry_after_secs
            .is_some_and(|s| (500..=600).contains(&s)),
        "{err:?}"
    );
    // GitHub's secondary limit says so only in the body.
    let err = refused_by(403, &[], "You have exceeded a secondary rate limit.");
    assert_eq!(err.code, ErrorCode::RateLimited, "{err}");
    assert_eq!(err.retry_after(), Some(gitfleet_git::DEFAULT_PAUSE));

    // A 503 that says when to come back is the outage it is, with the pause.
    let err = refused_by(503, &[("Retry-After", "3")], "maintenance");
    assert_eq!(
        (err.code, err.retry_after_secs),
        (ErrorCode::ServerError, Some(3)),
        "{err}"
    );
    // A plain 403 is the credentials' fault, and a lying Retry-After is bounded.
    let err = refused_by(403, &[], "Permission denied");
    assert_eq!(
        (err.code, err.retry_after_secs),
        (ErrorCode::AuthFailed, None)
    );
    let err = refused_by(429, &[("Retry-After", "99999999")], "");
    assert_eq!(err.retry_after(), Some(gitfleet_git::MAX_PAUSE));
}

#[test]
fn wrong_token_is_auth_failed_and_never_shown() {
    let fx = Fixtures::new();
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            auth: Some(("alice".to_owned(), "right-token".to_owned())),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    let wrong = "wr0ng-t0ken/+x";
    let req = with_credentials(
        store.request(&server.url("alpha.git"), Operation::Mirror),
        "alice",
        wrong,
    );
    let err = expect_err(store.run(&req), "a wrong token");
    assert_eq!(err.code, ErrorCode::AuthFailed, "{err}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains("wr0ng-t0ken%2F%2Bx"), "{shown}");
    }
    assert!(!req.dest.exists());
    assert!(server.request_log().iter().any(|r| r.status == 401));
    assert!(
        server
            .request_log()
            .iter()
            .all(|r| r.status != 200 || !r.url.contains("upload-pack") || r.method != "POST")
    );

    // Without any credentials it fails the same way instead of prompting.
    let anonymous = store.request(&server.url("alpha.git"), Operation::Mirror);
    let err = expect_err(store.run(&anonymous), "no token");
    assert_eq!(err.code, ErrorCode::AuthFailed, "{err}");
    store.wait_staging_empty(WAIT);
}

#[test]
fn token_inside_the_url_is_used_and_never_stored() {
    let fx = Fixtures::new();
    let token = "url-t0ken/+secret";
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            auth: Some(("bob".to_owned(), token.to_owned())),
            ..HttpOptions::default()
        },
    );
    let store = EngineRoot::new();
    let config = CredentialsConfig::default();
    let prepare = |input: &str| {
        let mut req = store.request(input, Operation::Mirror);
        req.credentials = config.for_url(&req.url);
        let inline = req.credentials.as_ref().expect("inline credentials");
        req.redactor.add(&inline.token);
        req
    };

    let input = server.url_with_credentials("alpha.git", "bob", token);
    let req = prepare(&input);
    assert!(
        !req.url.display().contains("t0ken"),
        "{}",
        req.url.display()
    );
    let result = store.run(&req).expect("the token in the URL is used");
    assert_eq!(refs(&req.dest), refs(&fx.repo("alpha.git")));
    // Over http(s) not even the user name is stored: it may be a token.
    let stored_url = format!("http://127.0.0.1:{}/alpha.git", server.port());
    assert_no_credentials_stored(&req.dest, &stored_url);
    let config_text =
        std::fs::read_to_string(req.dest.join("config")).expect("reading the mirror's config");
    assert!(!config_text.contains("t0ken"), "{config_text}");
    let json = serde_json::to_string(&result).expect("SyncResult serialises");
    assert!(!json.contains("t0ken"), "{json}");
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.status == 200 && r.authorization.is_some())
    );

    // A wrong token in the URL fails without showing it.
    let mut bad = prepare(&server.url_with_credentials("alpha.git", "bob", "bad-t0ken/+x"));
    // Another path below the same root (a path outside it is refused before any transfer).
    bad.dest = store.layout.root().join("other/bad.git");
    let err = expect_err(store.run(&bad), "a wrong token in the URL");
    assert_eq!(err.code, ErrorCode::AuthFailed, "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("bad-t0ken"), "{shown}");
    assert!(!bad.dest.exists());
}

#[test]
fn closed_port_is_a_network_error() {
    let store = EngineRoot::new();
    let port = free_port();
    for url in [
        format!("http://127.0.0.1:{port}/o/r.git"),
        format!("git://127.0.0.1:{port}/o/r.git"),
    ] {
        let req = store.request(&url, Operation::Mirror);
        let err = expect_err(store.run(&req), &url);
        assert_eq!(err.code, ErrorCode::Network, "{url}: {err}");
        assert!(err.message.contains(&req.url.display()), "{err}");
        assert!(!req.dest.exists());
    }
    store.wait_staging_empty(WAIT);
}

#[test]
fn credentials_over_plain_http_to_a_remote_host_are_refused() {
    let store = EngineRoot::new();
    let req = with_credentials(
        store.request("http://example.invalid/o/r", Operation::Mirror),
        "alice",
        "never-sent",
    );
    let err = expect_err(store.run(&req), "credentials over plain http");
    assert_eq!(err.code, ErrorCode::PolicyDenied, "{err}");
    assert!(err.message.contains("http://example.invalid/o/r"), "{err}");
    assert!(!err.message.contains("never-sent"), "{err}");
    assert!(!req.dest.exists());
    assert!(store.staging().is_empty());
}

#[test]
fn existing_non_git_directory_is_a_conflict_and_untouched() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    for operation in [Operation::Mirror, Operation::Checkout] {
        let req = store.request(&daemon.url("alpha.git"), operation);
        std::fs::create_dir_all(req.dest.join("notes")).expect("creating the directory");
        std::fs::write(req.dest.join("notes/keep.txt"), "precious\n").expect("writing a file");
        let err = expect_err(store.run(&req), "cloning over a non-git directory");
        assert_eq!(err.code, ErrorCode::Conflict, "{operation}: {err}");
        let entries: Vec<_> = std::fs::read_dir(&req.dest)
            .expect("the directory is still there")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        assert_eq!(entries, ["notes"], "{operation}");
        assert_eq!(
            std::fs::read_to_string(req.dest.join("notes/keep.txt")).expect("the file is kept"),
            "precious\n"
        );
    }
    assert!(store.staging().is_empty());
}

#[test]
fn second_mirror_into_an_existing_repository_is_a_sync() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let store = EngineRoot::new();
    let req = store.request(&server.url("alpha.git"), Operation::Mirror);
    let first = store.run(&req).expect("first mirror");
    assert!(!first.refs_created.is_empty());
    let before = (refs(&req.dest), objects(&req.dest));

    let second = store.run(&req).expect("mirroring again is harmless");
    assert_no_changes(&second);
    assert_eq!(second.head_commit, first.head_commit);
    assert_eq!(second.total_commits, first.total_commits);
    assert_eq!((refs(&req.dest), objects(&req.dest)), before);
    fsck(&req.dest).expect("still passes fsck");
    assert!(store.staging().is_empty());
}

/// https against a TLS server whose certificate a test CA signed: refused until the CA is
/// trusted (`--ca-file`), then the same mirror as `git clone --mirror`, credentials included.
#[test]
fn mirror_over_https_with_a_test_ca_equals_git_clone_mirror() {
    let fx = Fixtures::new();
    let (user, token) = ("alice", "tls-s3cret");
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            auth: Some((user.to_owned(), token.to_owned())),
            ..HttpOptions::default()
        },
    );
    let proxy = TlsProxy::start(server.port());
    let ca = TestCa::get();
    let store = EngineRoot::new();
    let url = proxy.url("alpha.git");
    let req = with_credentials(store.request(&url, Operation::Mirror), user, token);
    // The only test in this process that trusts the CA, so this one runs first.
    let err = expect_err(store.run(&req), "an untrusted certificate");
    assert_eq!(err.code, ErrorCode::Network, "{err}");
    assert!(!req.dest.exists());

    gitfleet_git::trust_ca_file(ca.ca_file()).expect("trusting the test CA");
    store.run(&req).expect("the mirror over https");
    let reference = tempdir();
    let reference_dest = reference.path().join("reference.git");
    let authenticated = format!(
        "https://{user}:{token}@localhost:{}",
        &url["https://localhost:".len()..]
    );
    try_mirror_clone(
        &authenticated,
        &reference_dest,
        &[&format!("http.sslCAInfo={}", ca.ca_file().display())],
    )
    .expect("git clone --mirror over https");
    assert_same_as_reference(&req.dest, &reference_dest);
    let config_text = std::fs::read_to_string(req.dest.join("config")).expect("the config");
    assert!(!config_text.contains(token), "{config_text}");
}

#[test]
fn a_mirror_synced_many_times_is_repacked_and_stays_exact() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let store = EngineRoot::new();
    let url = daemon.url("beta.git");
    let mut mirror = store.request(&url, Operation::Mirror);
    mirror.limits.repack_after_packs = 3;
    store.run(&mirror).expect("the mirror");
    let mut sync = store.request(&url, Operation::Sync);
    sync.limits.repack_after_packs = 3;
    let packs = |repo: &Path| {
        std::fs::read_dir(repo.join("objects/pack"))
            .expect("a pack directory")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    // Each push gives the next sync something to fetch, and so a pack of its own.
    let work = tempdir();
    let tree = work.path().join("w");
    run_git(
        work.path(),
        &[
            "clone",
            "-q",
            fx.repo("beta.git").to_str().expect("utf-8"),
            "w",
        ],
    );
    let mut repacked = Vec::new();
    for n in 0..6 {
        std::fs::write(tree.join(format!("file-{n}")), format!("{n}\n")).expect("write");
        run_git(&tree, &["add", "."]);
        run_git(
            &tree,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-qm",
                "more",
            ],
        );
        run_git(&tree, &["push", "-q", "origin", "HEAD"]);
        let result = store.run(&sync).expect("a sync");
        assert!(result.bytes_received > 0, "{result:?}");
        let done = gitfleet_git::maintain(&store.layout, &sync.dest, &sync.limits, &Control::new())
            .expect("maintenance");
        repacked.extend(done);
        assert!(packs(&sync.dest) <= 3, "after sync {n}: {repacked:?}");
    }
    assert!(!repacked.is_empty(), "never repacked");
    assert!(
        repacked
            .iter()
            .all(|r| r.packs_before == 4 && r.packs_after == 1),
        "{repacked:?}"
    );
    // The mirror is exact, whole and has the bitmap and commit-graph.
    assert_eq!(refs(&sync.dest), refs(&fx.repo("beta.git")));
    fsck(&sync.dest).expect("a whole mirror");
    assert!(sync.dest.join("objects/info/commit-graph").exists());
    let bitmaps = std::fs::read_dir(sync.dest.join("objects/pack"))
        .expect("the pack directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bitmap"))
        .count();
    assert_eq!(bitmaps, 1);
    // A sync after the repack goes on as before.
    let again = store.run(&sync).expect("a quiet sync");
    assert_eq!(again.bytes_received, 0, "{again:?}");
}
