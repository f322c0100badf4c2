//! Checks the test support itself against the real git CLI, so an end-to-end failure can be
//! blamed on gitfleet rather than on the fixtures or servers.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use gitfleet_tests::{
    Fixtures, GitDaemon, HttpOptions, HttpServer, fsck, git_command, head_target, mirror_clone,
    objects, refs, remote_urls, run_git, try_git, try_mirror_clone, wait_until,
};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(60);

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

fn object_type(repo: &Path, rev: &str) -> String {
    run_git(repo, &["cat-file", "-t", rev]).trim().to_owned()
}

fn is_ancestor(repo: &Path, ancestor: &str, descendant: &str) -> bool {
    try_git(repo, &["merge-base", "--is-ancestor", ancestor, descendant]).is_ok()
}

/// The mirror must be indistinguishable from its source: same refs, same objects, same
/// HEAD, and a clean fsck.
fn assert_same_repo(source: &Path, mirror: &Path) {
    assert_eq!(refs(source), refs(mirror), "refs of {}", mirror.display());
    assert_eq!(
        objects(source),
        objects(mirror),
        "objects of {}",
        mirror.display()
    );
    assert_eq!(head_target(source), head_target(mirror));
    fsck(mirror).expect("mirror passes fsck");
}

/// Kills a background git on drop, so a failing assertion cannot leak it.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fixtures_have_expected_refs() {
    let fx = Fixtures::new();
    let alpha = fx.repo("alpha.git");
    let names: BTreeSet<String> = refs(&alpha).into_keys().collect();
    let expected: BTreeSet<String> = [
        "refs/heads/main",
        "refs/heads/feature",
        "refs/heads/release/1.0",
        "refs/tags/v0.1",
        "refs/tags/v1.0",
        "refs/tags/v1.0-nested",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
    assert_eq!(head_target(&alpha).as_deref(), Some("refs/heads/main"));
    let main_commits = run_git(&alpha, &["rev-list", "--count", "main"]);
    assert!(main_commits.trim().parse::<u32>().expect("a count") >= 5);
    assert_eq!(object_type(&alpha, "refs/tags/v0.1"), "commit");
    assert_eq!(object_type(&alpha, "refs/tags/v1.0"), "tag");
    assert_eq!(object_type(&alpha, "refs/tags/v1.0-nested"), "tag");
    assert_eq!(object_type(&alpha, "refs/tags/v1.0-nested^{}"), "commit");
    assert_eq!(
        run_git(&alpha, &["cat-file", "tag", "v1.0-nested"])
            .lines()
            .nth(1),
        Some("type tag"),
        "v1.0-nested must point at the v1.0 tag object, not the commit"
    );

    let beta = fx.repo("beta.git");
    assert_eq!(
        refs(&beta).into_keys().collect::<Vec<_>>(),
        ["refs/heads/main"]
    );
    assert_eq!(run_git(&beta, &["rev-list", "--count", "main"]).trim(), "2");

    let empty = fx.repo("empty.git");
    assert!(refs(&empty).is_empty());
    assert!(objects(&empty).is_empty());
    assert_eq!(head_target(&empty).as_deref(), Some("refs/heads/main"));

    let first_message = |repo: &Path| run_git(repo, &["log", "--format=%s", "main"]);
    let (a, b) = (
        first_message(&fx.repo("org-a/utils.git")),
        first_message(&fx.repo("org-b/utils.git")),
    );
    assert_ne!(a, b);
    assert_ne!(
        objects(&fx.repo("org-a/utils.git")),
        objects(&fx.repo("org-b/utils.git"))
    );

    let big = fx.repo("big.git");
    let sizes = run_git(
        &big,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectsize)",
        ],
    );
    let total: u64 = sizes
        .lines()
        .map(|l| l.parse::<u64>().expect("a size"))
        .sum();
    assert!(total >= 4 * 1024 * 1024, "big.git holds {total} bytes");

    for name in [
        "alpha.git",
        "beta.git",
        "empty.git",
        "big.git",
        "org-a/utils.git",
        "org-b/utils.git",
    ] {
        let repo = fx.repo(name);
        assert!(
            repo.join("git-daemon-export-ok").is_file(),
            "{name} export-ok"
        );
        assert_eq!(
            run_git(&repo, &["rev-parse", "--is-bare-repository"]).trim(),
            "true"
        );
        fsck(&repo).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn fixtures_are_deterministic() {
    let (cached, fresh) = (Fixtures::new(), Fixtures::uncached());
    for name in ["alpha.git", "beta.git", "big.git", "org-a/utils.git"] {
        assert_eq!(refs(&cached.repo(name)), refs(&fresh.repo(name)), "{name}");
        assert_eq!(
            objects(&cached.repo(name)),
            objects(&fresh.repo(name)),
            "{name}"
        );
    }
}

#[test]
fn mutate_changes_exactly_what_it_says() {
    let fx = Fixtures::new();
    let alpha = fx.repo("alpha.git");
    let before = refs(&alpha);
    fx.mutate("alpha.git");
    let after = refs(&alpha);

    let (old_main, new_main) = (&before["refs/heads/main"], &after["refs/heads/main"]);
    assert!(is_ancestor(&alpha, old_main, new_main));
    assert_eq!(
        run_git(
            &alpha,
            &["rev-list", "--count", &format!("{old_main}..{new_main}")]
        )
        .trim(),
        "2"
    );

    let new_feature = &after["refs/heads/feature"];
    assert_ne!(&before["refs/heads/feature"], new_feature);
    // The old feature tip was pruned, so "not a fast-forward" is checked via the message.
    assert!(!objects(&alpha).contains(&before["refs/heads/feature"]));
    assert_eq!(
        run_git(&alpha, &["log", "-1", "--format=%s", new_feature]).trim(),
        "mutate: feature rewritten"
    );

    assert!(!after.contains_key("refs/heads/release/1.0"));
    assert!(!after.contains_key("refs/tags/v0.1"));
    assert!(after.contains_key("refs/heads/hotfix"));
    assert_eq!(object_type(&alpha, "refs/tags/v2.0"), "tag");

    let unchanged = ["refs/tags/v1.0", "refs/tags/v1.0-nested"];
    for name in unchanged {
        assert_eq!(before[name], after[name], "{name}");
    }
    let changed: BTreeSet<&str> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "refs/heads/main",
        "refs/heads/feature",
        "refs/heads/release/1.0",
        "refs/heads/hotfix",
        "refs/tags/v0.1",
        "refs/tags/v2.0",
    ]
    .into();
    assert_eq!(changed, expected);
    fsck(&alpha).expect("mutated alpha passes fsck");

    // Deterministic: a second copy mutates to the same ids.
    let other = Fixtures::new();
    other.mutate("alpha.git");
    assert_eq!(refs(&other.repo("alpha.git")), after);
}

#[test]
#[should_panic(expected = "runs once per repository")]
fn mutate_twice_fails_loudly() {
    let fx = Fixtures::new();
    fx.mutate("alpha.git");
    fx.mutate("alpha.git");
}

#[test]
fn git_daemon_serves_mirror_clones() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let out = tempdir();
    for name in ["alpha.git", "org-a/utils.git", "big.git"] {
        let dest = out.path().join(name);
        mirror_clone(&daemon.url(name), &dest);
        assert_same_repo(&fx.repo(name), &dest);
    }
    let empty = out.path().join("empty.git");
    mirror_clone(&daemon.url("empty.git"), &empty);
    assert!(refs(&empty).is_empty());

    // After mutate, a fetch converges and a fresh mirror equals the pruned source exactly.
    fx.mutate("alpha.git");
    let existing = out.path().join("alpha.git");
    run_git(&existing, &["fetch", "--prune", "origin"]);
    assert_eq!(refs(&existing), refs(&fx.repo("alpha.git")));
    fsck(&existing).expect("fetched mirror passes fsck");
    let fresh = out.path().join("alpha-fresh.git");
    mirror_clone(&daemon.url("alpha.git"), &fresh);
    assert_same_repo(&fx.repo("alpha.git"), &fresh);

    assert!(try_mirror_clone(&daemon.url("missing.git"), &out.path().join("m"), &[]).is_err());
}

#[test]
fn git_daemon_stops_on_drop() {
    let fx = Fixtures::new();
    let daemon = GitDaemon::start(&fx.root);
    let port = daemon.port();
    drop(daemon);
    wait_until(
        WAIT,
        "the dropped daemon's port refuses connections",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
    );
}

#[test]
fn http_serves_protocol_v2_v1_and_v0() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let out = tempdir();
    for (version, header) in [
        ("2", Some("version=2")),
        ("1", Some("version=1")),
        ("0", None),
    ] {
        let before = server.request_log().len();
        let dest = out.path().join(format!("v{version}.git"));
        try_mirror_clone(
            &server.url("alpha.git"),
            &dest,
            &[&format!("protocol.version={version}")],
        )
        .unwrap_or_else(|e| panic!("protocol v{version}: {e}"));
        assert_same_repo(&fx.repo("alpha.git"), &dest);
        let log = server.request_log();
        let this_clone = &log[before..];
        assert!(!this_clone.is_empty());
        for request in this_clone {
            assert_eq!(request.status, 200, "{request:?}");
            assert_eq!(request.git_protocol.as_deref(), header, "{request:?}");
        }
        assert!(this_clone.iter().any(|r| r.method == "POST"));
    }

    let nested = out.path().join("nested.git");
    mirror_clone(&server.url("org-b/utils.git"), &nested);
    assert_same_repo(&fx.repo("org-b/utils.git"), &nested);
    let missing = try_mirror_clone(&server.url("missing.git"), &out.path().join("m"), &[]);
    assert!(missing.is_err());
    assert_eq!(server.request_log().last().map(|r| r.status), Some(404));
}

#[test]
fn http_server_stops_on_drop() {
    let fx = Fixtures::new();
    let server = HttpServer::start(&fx.root, HttpOptions::default());
    let out = tempdir();
    mirror_clone(&server.url("beta.git"), &out.path().join("beta.git"));
    let (port, url) = (server.port(), server.url("beta.git"));
    drop(server);
    wait_until(
        WAIT,
        "the dropped server's port refuses connections",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
    );
    assert!(try_mirror_clone(&url, &out.path().join("again.git"), &[]).is_err());
}

/// git gzips request bodies over 1 KiB and streams them chunked beyond http.postBuffer; a
/// mirror clone of a repository with many distinct tips produces both.
#[test]
fn http_accepts_gzip_and_chunked_request_bodies() {
    let root = tempdir();
    let repo = root.path().join("many.git");
    run_git(root.path(), &["init", "-q", "--bare", "many.git"]);
    let mut stream = String::new();
    for i in 0..2000 {
        stream.push_str(&format!(
            "commit refs/tags/t{i}\ncommitter C <c@example.invalid> {} +0000\ndata 0\n\n",
            1_700_000_000 + i
        ));
    }
    let mut import = git_command()
        .args(["fast-import", "--quiet"])
        .current_dir(&repo)
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting git fast-import");
    std::io::Write::write_all(
        import.stdin.as_mut().expect("piped stdin"),
        stream.as_bytes(),
    )
    .expect("feeding git fast-import");
    drop(import.stdin.take());
    assert!(import.wait().expect("git fast-import").success());
    assert_eq!(refs(&repo).len(), 2000);

    let server = HttpServer::start(root.path(), HttpOptions::default());
    let gz = root.path().join("gz.git");
    try_mirror_clone(&server.url("many.git"), &gz, &["protocol.version=2"]).expect("gzip clone");
    assert_same_repo(&repo, &gz);
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.method == "POST" && r.content_encoding.as_deref() == Some("gzip")),
        "{:#?}",
        server.request_log()
    );

    let before = server.request_log().len();
    let chunked = root.path().join("chunked.git");
    try_mirror_clone(
        &server.url("many.git"),
        &chunked,
        &["protocol.version=2", "http.postBuffer=65536"],
    )
    .expect("chunked clone");
    assert_same_repo(&repo, &chunked);
    assert!(
        server.request_log()[before..]
            .iter()
            .any(|r| r.method == "POST" && r.content_length.is_none()),
        "{:#?}",
        server.request_log()
    );
}

#[test]
fn http_basic_auth() {
    let fx = Fixtures::new();
    let opts = HttpOptions {
        auth: Some(("alice".to_owned(), "s3cret/+token".to_owned())),
        ..HttpOptions::default()
    };
    let server = HttpServer::start(&fx.root, opts);
    let out = tempdir();

    let ok = out.path().join("ok.git");
    let url = server.url_with_credentials("alpha.git", "alice", "s3cret/+token");
    try_mirror_clone(&url, &ok, &["protocol.version=2"]).expect("right token clones");
    assert_same_repo(&fx.repo("alpha.git"), &ok);
    // "alice:s3cret/+token" in base64.
    assert!(
        server
            .seen_authorization_headers()
            .contains(&"Basic YWxpY2U6czNjcmV0Lyt0b2tlbg==".to_owned())
    );
    // git itself keeps the credentials in the remote URL; gitfleet must not (remote_urls).
    assert_eq!(remote_urls(&ok), [url]);

    let wrong = out.path().join("wrong.git");
    let err = try_mirror_clone(
        &server.url_with_credentials("alpha.git", "alice", "nope"),
        &wrong,
        &[],
    )
    .expect_err("a wrong token must fail");
    assert!(err.contains("Authentication failed"), "{err}");

    let anonymous = out.path().join("anonymous.git");
    let err = try_mirror_clone(&server.url("alpha.git"), &anonymous, &[])
        .expect_err("no token must fail");
    assert!(err.contains("terminal prompts disabled"), "{err}");
    assert!(server.request_log().iter().all(|r| r.status != 200
        || r.authorization.as_deref() == Some("Basic YWxpY2U6czNjcmV0Lyt0b2tlbg==")));
}

#[test]
fn http_fail_first_returns_503_then_serves() {
    let fx = Fixtures::new();
    let opts = HttpOptions {
        fail_first: 2,
        ..HttpOptions::default()
    };
    let server = HttpServer::start(&fx.root, opts);
    let out = tempdir();
    for attempt in 0..2 {
        let err = try_mirror_clone(
            &server.url("alpha.git"),
            &out.path().join(format!("a{attempt}")),
            &[],
        )
        .expect_err("injected failure");
        assert!(err.contains("503"), "{err}");
    }
    assert_eq!(server.requests(), 2);
    let dest = out.path().join("ok.git");
    mirror_clone(&server.url("alpha.git"), &dest);
    assert_same_repo(&fx.repo("alpha.git"), &dest);
    let statuses: Vec<u16> = server.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..2], [503, 503]);
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
}

/// No wall-clock thresholds: a full unthrottled clone of big.git completes while a throttled
/// one that started first is still running.
#[test]
fn http_throttle_slows_transfers() {
    let fx = Fixtures::new();
    let throttled = HttpServer::start(
        &fx.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(128 * 1024),
            ..HttpOptions::default()
        },
    );
    let normal = HttpServer::start(&fx.root, HttpOptions::default());
    let out = tempdir();

    let mut slow = Background(
        git_command()
            .args(["clone", "--mirror", "-q", &throttled.url("big.git")])
            .arg(out.path().join("slow.git"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the throttled clone"),
    );
    // A pack body (not just the ref advertisement) is flowing.
    wait_until(WAIT, "the throttled pack transfer starts", || {
        throttled.body_bytes_sent() > 64 * 1024
    });

    let fast = out.path().join("fast.git");
    mirror_clone(&normal.url("big.git"), &fast);
    assert_same_repo(&fx.repo("big.git"), &fast);

    assert!(
        slow.0.try_wait().expect("polling clone").is_none(),
        "the throttled clone finished no later than an unthrottled one"
    );
    assert!(normal.body_bytes_sent() > throttled.body_bytes_sent());
}

#[test]
fn http_stall_trips_low_speed_limit() {
    let fx = Fixtures::new();
    let server = HttpServer::start(
        &fx.root,
        HttpOptions {
            stall_after_bytes: Some(64 * 1024),
            ..HttpOptions::default()
        },
    );
    let out = tempdir();
    let err = try_mirror_clone(
        &server.url("big.git"),
        &out.path().join("stalled.git"),
        &["http.lowSpeedLimit=1000", "http.lowSpeedTime=2"],
    )
    .expect_err("a stalled transfer must trip the low-speed limit");
    assert!(err.contains("too slow") || err.contains("curl 28"), "{err}");
    assert!(server.body_bytes_sent() <= 64 * 1024 * server.requests() as u64);
    // Dropping must release the stalled responder instead of hanging the test.
    drop(server);
}
