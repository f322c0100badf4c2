//! End-to-end tests of the `gitfleet` command: real git servers on 127.0.0.1, real processes,
//! including one killed in the middle of a clone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gitfleet_tests::{
    Fixtures, GitDaemon, HttpOptions, HttpServer, fsck, http_post, mirror_clone, refs, wait_until,
};
use serde_json::Value;

fn gitfleet(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitfleet"));
    cmd.arg("--root")
        .arg(root)
        .env_remove("GITFLEET_TOKEN")
        .env_remove("GITFLEET_ROOT");
    cmd.stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run gitfleet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status_json(root: &Path) -> Vec<Value> {
    let out = run(gitfleet(root).args(["status", "--json"]));
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("status --json is a JSON array")
}

fn task_for<'a>(tasks: &'a [Value], url_part: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["url"].as_str().is_some_and(|u| u.contains(url_part)))
        .unwrap_or_else(|| panic!("no task for {url_part} in {tasks:#?}"))
}

/// Every file below `dir`, for checking that nothing holds a secret.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path)
            } else {
                out.push(path)
            }
        }
    }
    out
}

/// SIGTERM to a running `gitfleet serve`, and its exit, waited for.
fn terminate(serve: &mut Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_until(Duration::from_secs(60), "serve stopped", || {
        serve.try_wait().expect("try_wait").is_some()
    });
}

fn staging_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join(".gitfleet/staging"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn mirror_status_and_sync_over_git_daemon() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path())
        .args(["mirror", "--json", &alpha, &daemon.url("org-a/utils.git")])
        .arg(daemon.url("org-b/utils")) // the same daemon, spelled without .git
        .arg("ext::sh -c touch% /tmp/gitfleet-pwned")
        .arg(daemon.url("missing.git")));
    // One rejected URL and one missing repository fail alone; the rest complete.
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every --json line is JSON"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "rejected" && l["error"]["code"] == "policy_denied")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "state" && l["task"]["status"]["status_type"] == "completed")
    );
    assert!(!Path::new("/tmp/gitfleet-pwned").exists());

    let tasks = status_json(root.path());
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
    let a = task_for(&tasks, "alpha");
    assert_eq!(a["status"]["status_type"], "completed");
    assert!(a["status"]["progress"].is_null());
    let missing = task_for(&tasks, "missing");
    assert_eq!(missing["status"]["status_type"], "failed");
    assert_eq!(missing["error_code"], "not_found");
    assert!(
        missing["status"]["error"]
            .as_str()
            .expect("error")
            .contains("missing")
    );
    let utils_a = task_for(&tasks, "org-a/utils")["path"]
        .as_str()
        .expect("path")
        .to_string();
    let utils_b = task_for(&tasks, "org-b/utils")["path"]
        .as_str()
        .expect("path")
        .to_string();
    assert_ne!(utils_a, utils_b, "owners must not collide");

    let mirror = PathBuf::from(a["path"].as_str().expect("path"));
    assert!(mirror.starts_with(root.path().canonicalize().expect("canonical")));
    fixtures.mutate("alpha.git");
    let out = run(gitfleet(root.path()).args(["sync", &alpha]));
    assert!(out.status.success(), "sync: {}", text(&out.stderr));
    let fresh = tempfile::tempdir().expect("tempdir");
    mirror_clone(&alpha, &fresh.path().join("m.git"));
    assert_eq!(refs(&mirror), refs(&fresh.path().join("m.git")));
    fsck(&mirror).expect("fsck clean after sync");
    let tasks = status_json(root.path());
    let last = &task_for(&tasks, "alpha")["last_sync"];
    let deleted: Vec<&str> = last["refs_deleted"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(deleted.contains(&"refs/heads/release/1.0"), "{last:#}");

    // Sync of everything known: the failed task is retried as a clone and fails again, alone.
    let out = run(gitfleet(root.path()).arg("sync"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("3 completed, 1 failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_arguments_get_one_line_errors() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = run(gitfleet(root.path()).arg("mirror"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no repositories given"),
        "{}",
        text(&out.stderr)
    );

    let out = run(gitfleet(root.path()).args(["mirror", "https://h.example/o/../../etc"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("'..'"), "{}", text(&out.stdout));

    let out = run(gitfleet(root.path()).args(["status", "https://h.example/never/seen"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a known repository"));

    let out = run(gitfleet(root.path()).args(["mirror", "--concurrency", "0", "x"]));
    assert_eq!(out.status.code(), Some(2));
    // Nothing was created outside the root.
    assert!(
        all_files(root.path())
            .iter()
            .all(|p| p.starts_with(root.path()))
    );
}

#[test]
fn wrong_token_fails_clearly_and_is_never_printed_or_stored() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            auth: Some(("robot".into(), "right-token-1234".into())),
            ..HttpOptions::default()
        },
    );
    let root = tempfile::tempdir().expect("tempdir");
    let secret = "wrong-token-5678";
    let out = run(gitfleet(root.path())
        .args(["mirror", &server.url("beta.git")])
        .arg(server.url_with_credentials("alpha.git", "robot", secret))
        .env("GITFLEET_TOKEN", secret)
        .env("GITFLEET_USERNAME", "robot")
        .env("GITFLEET_LOG", "debug"));
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("auth_failed"), "{all}");
    assert!(!all.contains(secret), "secret printed: {all}");
    for file in all_files(root.path()) {
        let content = std::fs::read(&file).expect("read");
        assert!(
            !String::from_utf8_lossy(&content).contains(secret),
            "secret stored in {}",
            file.display()
        );
    }

    // The right token in the environment works, and is not stored either.
    let out = run(gitfleet(root.path())
        .args(["mirror", &server.url("beta.git")])
        .env("GITFLEET_TOKEN", "right-token-1234")
        .env("GITFLEET_USERNAME", "robot"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in all_files(root.path()) {
        let content = std::fs::read(&file).expect("read");
        assert!(
            !String::from_utf8_lossy(&content).contains("right-token-1234"),
            "{}",
            file.display()
        );
    }
}

fn spawn_mirror(root: &Path, url: &str) -> Child {
    gitfleet(root)
        .args(["mirror", "--json", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gitfleet")
}

fn wait_until_cloning(root: &Path, url_part: &str) {
    wait_until(
        Duration::from_secs(60),
        "the clone to start receiving",
        || {
            let tasks = status_json(root);
            tasks.iter().any(|t| {
                t["url"].as_str().is_some_and(|u| u.contains(url_part))
                    && t["status"]["status_type"] == "cloning"
            }) && std::fs::read_dir(root.join(".gitfleet/staging"))
                .is_ok_and(|mut d| d.next().is_some())
        },
    );
}

#[test]
fn a_killed_run_leaves_no_half_mirror_and_resumes() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(1 << 20),
            ..HttpOptions::default()
        },
    );
    let root = tempfile::tempdir().expect("tempdir");
    let url = server.url("big.git");
    let mut child = spawn_mirror(root.path(), &url);
    wait_until_cloning(root.path(), "big");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let tasks = status_json(root.path());
    let task = task_for(&tasks, "big");
    let path = PathBuf::from(task["path"].as_str().expect("path"));
    assert!(
        !path.exists(),
        "a half-written mirror is visible at {}",
        path.display()
    );

    // The next run cleans the staging area and resumes the unfinished task.
    let out = run(gitfleet(root.path()).arg("sync"));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("resuming 1 unfinished task"),
        "{}",
        text(&out.stderr)
    );
    let tasks = status_json(root.path());
    assert_eq!(
        task_for(&tasks, "big")["status"]["status_type"],
        "completed"
    );
    fsck(&path).expect("resumed mirror is fsck clean");
    assert_eq!(refs(&path), refs(&fixtures.repo("big.git")));
    assert!(staging_is_empty(root.path()));
}

#[test]
fn cancel_from_another_process_stops_the_clone() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(128 << 10),
            ..HttpOptions::default()
        },
    );
    let root = tempfile::tempdir().expect("tempdir");
    let url = server.url("big.git");
    let mut child = spawn_mirror(root.path(), &url);
    wait_until_cloning(root.path(), "big");
    let out = run(gitfleet(root.path()).args(["cancel", &url]));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "the cancelled run reports failure");
    let tasks = status_json(root.path());
    let task = task_for(&tasks, "big");
    assert_eq!(task["status"]["status_type"], "failed");
    assert_eq!(task["error_code"], "cancelled");
    assert!(!Path::new(task["path"].as_str().expect("path")).exists());
    wait_until(Duration::from_secs(10), "staging to be cleaned", || {
        staging_is_empty(root.path())
    });
}

/// A stored repository asked for over another scheme is a conflict (its URL is not re-pointed),
/// and `status`/`cancel` by name find a repository made by `init --worktree`.
#[test]
fn a_changed_scheme_is_a_conflict_and_init_worktrees_are_found_by_name() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).args(["mirror", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let over_http = alpha.replacen("git://", "http://", 1);
    let out = run(gitfleet(root.path()).args(["mirror", "--json", &over_http]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"conflict\""), "{stdout}");
    let tasks = status_json(root.path());
    assert_eq!(tasks.len(), 1);
    assert_eq!(task_for(&tasks, "alpha")["url"], alpha.as_str());

    let out = run(gitfleet(root.path()).args(["init", "--worktree", "team/tools"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(gitfleet(root.path()).args(["status", "--json", "team/tools"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let found: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(found.len(), 1);
    assert!(
        found[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("_local/team/tools")),
        "{found:?}"
    );
    let out = run(gitfleet(root.path()).args(["cancel", "team/tools"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A token goes only to the hosts it is bound to: GITFLEET_TOKEN to `--token-host`, never to
/// another host that asks for credentials; a node refuses a token bound to no host.
#[test]
fn a_token_is_offered_only_to_its_hosts() {
    let fixtures = Fixtures::new();
    let auth = |token: &str| HttpOptions {
        auth: Some(("robot".into(), token.into())),
        ..HttpOptions::default()
    };
    let bound = HttpServer::start(&fixtures.root, auth("right-token-1234"));
    let other = HttpServer::start(&fixtures.root, auth("other-token-9999"));
    let root = tempfile::tempdir().expect("tempdir");
    let elsewhere = format!("http://localhost:{}/alpha.git", other.port());
    let out = run(gitfleet(root.path())
        .args([
            "mirror",
            "--token-host",
            "127.0.0.1",
            &bound.url("beta.git"),
            &elsewhere,
        ])
        .env("GITFLEET_TOKEN", "right-token-1234")
        .env("GITFLEET_USERNAME", "robot"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let tasks = status_json(root.path());
    assert_eq!(
        task_for(&tasks, "beta")["status"]["status_type"],
        "completed"
    );
    assert_eq!(task_for(&tasks, "alpha")["error_code"], "auth_failed");
    assert!(
        other.seen_authorization_headers().is_empty(),
        "a token was offered to a host it is not bound to: {:?}",
        other.seen_authorization_headers()
    );

    let node_root = tempfile::tempdir().expect("tempdir");
    let out = run(gitfleet(node_root.path())
        .args(["--nats", "nats://127.0.0.1:1", "node"])
        .env("GITFLEET_TOKEN", "right-token-1234"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--token-host"),
        "{}",
        text(&out.stderr)
    );
}

/// Secrets typed into URLs (passwords with spaces, quotes or '#', tokens as user names) show
/// nowhere: not in rejected lines, errors, records or the repository.
#[test]
fn secrets_in_urls_show_nowhere() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(&fixtures.root, HttpOptions::default());
    let root = tempfile::tempdir().expect("tempdir");
    let list = root.path().join("urls.txt");
    let secrets = ["pa ss#w0rd", "q\"u'ote", "ghp_T0KENASUSER", "h1dden"];
    std::fs::write(
        &list,
        format!(
            "# a comment line\n\
             https://u:pa ss#w0rd@h.example/o/r   # a comment after a space\n\
             https://u:q\"u'ote@bad_host/o/r\n\
             http://ghp_T0KENASUSER@127.0.0.1:{port}/alpha.git\n\
             https://u:h1dden@h.example/o/../r\n",
            port = server.port()
        ),
    )
    .expect("write the list");
    let out = run(gitfleet(root.path())
        .args(["mirror", "--json", "--file"])
        .arg(&list));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("\"rejected\""), "{all}");
    assert!(
        all.contains("\"completed\""),
        "the token-as-user mirror: {all}"
    );
    let status = run(gitfleet(root.path()).args(["status", "--json"]));
    let all = format!("{all}{}", text(&status.stdout));
    for secret in secrets {
        assert!(!all.contains(secret), "{secret} shown: {all}");
        for file in all_files(root.path()).iter().filter(|f| **f != list) {
            let content = std::fs::read(file).expect("read");
            assert!(
                !String::from_utf8_lossy(&content).contains(secret),
                "{secret} stored in {}",
                file.display()
            );
        }
    }
}

/// A root an earlier version filled (no markers) keeps syncing: its completed repositories are
/// adopted once, on the first run; after that an unmarked repository is a conflict again.
#[test]
fn repositories_of_an_earlier_version_are_adopted_once() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).args(["mirror", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tasks = status_json(root.path());
    let path = PathBuf::from(task_for(&tasks, "alpha")["path"].as_str().expect("a path"));
    // What an earlier version left: no marker, no adoption yet.
    std::fs::remove_file(path.join("gitfleet-marker")).expect("the marker");
    std::fs::remove_file(root.path().join(".gitfleet/markers-adopted")).expect("the flag");
    let out = run(gitfleet(root.path()).args(["sync"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 repositories of an earlier version"),
        "{}",
        text(&out.stderr)
    );
    assert!(path.join("gitfleet-marker").is_file());

    std::fs::remove_file(path.join("gitfleet-marker")).expect("the marker");
    let out = run(gitfleet(root.path()).args(["sync", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"conflict\""),
        "{}",
        text(&out.stdout)
    );
}

/// Seconds on both bounds: a test waits for the schedule, not for minutes.
const FAST_SCHEDULE: [&str; 4] = ["--min-interval", "1s", "--max-interval", "2s"];

#[test]
fn serve_keeps_mirrors_fresh_quarantines_what_keeps_failing_and_drains() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let missing = daemon.url("missing.git");
    let out = run(gitfleet(root.path())
        .args(["mirror", &alpha, &missing])
        .args(FAST_SCHEDULE));
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let task = task_for(&status_json(root.path()), "alpha").clone();
    assert_eq!(task["freshness"], "fresh", "{task:#}");
    assert!(task["next_sync_at"].is_string(), "{task:#}");

    // Upstream moves on; serve picks it up on schedule, while the missing repository fails
    // again and is quarantined (a failing repository holds nobody up).
    fixtures.mutate("alpha.git");
    let mut serve = gitfleet(root.path())
        .args(["serve", "--quarantine-after", "2"])
        .args(FAST_SCHEDULE)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gitfleet serve");
    let mirror = root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    wait_until(
        Duration::from_secs(60),
        "serve synced the upstream change",
        || refs(&mirror) == refs(&fixtures.repo("alpha.git")),
    );
    // The status of a served root is read from its records while serve runs.
    wait_until(
        Duration::from_secs(60),
        "the missing repository is quarantined",
        || task_for(&status_json(root.path()), "missing")["quarantined"] == true,
    );

    // SIGTERM drains and stops.
    terminate(&mut serve);
    let output = serve.wait_with_output().expect("serve's output");
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "serve: {stderr}");
    assert!(stderr.contains("synced  "), "{stderr}");
    assert!(stderr.contains("quarantined"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    fsck(&mirror).expect("a whole mirror");

    let tasks = status_json(root.path());
    let quarantined = task_for(&tasks, "missing");
    assert_eq!(quarantined["freshness"], "quarantined", "{quarantined:#}");
    assert!(quarantined["next_sync_at"].is_null(), "{quarantined:#}");
    assert_eq!(task_for(&tasks, "alpha")["freshness"], "fresh");

    // Resumed: out of quarantine and due now.
    let out = run(gitfleet(root.path()).args(["resume", &missing]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed = task_for(&status_json(root.path()), "missing").clone();
    assert!(resumed["quarantined"].is_null(), "{resumed:#}");
    assert!(resumed["next_sync_at"].is_string(), "{resumed:#}");
    assert_eq!(resumed["freshness"], "error", "it still failed last");
}

/// The hex HMAC-SHA256 of `body` under `secret`, as GitHub and Gitea sign.
fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn webhooks_sync_pushed_repositories_and_refuse_everything_else() {
    const SECRET: &str = "hook-secret-1";
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    // Long intervals: only webhooks sync here.
    let out = run(gitfleet(root.path()).args(["mirror", &alpha, "--min-interval", "1h"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let port = gitfleet_tests::free_port();
    let mut serve = gitfleet(root.path())
        .args(["serve", "--min-interval", "1h", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("GITFLEET_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gitfleet serve");
    wait_until(Duration::from_secs(60), "serve listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let push = |url: &str| {
        serde_json::json!({"ref": "refs/heads/main", "repository": {
            "clone_url": "https://example.invalid/nobody/alpha.git",
            "git_url": url,
        }})
        .to_string()
        .into_bytes()
    };
    let github = |body: &[u8], sig: &str| {
        http_post(
            port,
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &format!("sha256={sig}")),
            ],
            body,
        )
    };

    // Refused: a wrong signature, no signature, a malformed or oversized body.
    fixtures.mutate("alpha.git");
    let body = push(&alpha);
    let (status, _) = github(&body, &signature("wrong", &body));
    assert_eq!(status, 401);
    let (status, _) = http_post(port, "/hooks/github", &[("X-GitHub-Event", "push")], &body);
    assert_eq!(status, 401);
    let (status, reason) = github(b"{not json", &signature(SECRET, b"{not json"));
    assert_eq!(status, 400, "{reason}");
    let big = vec![b' '; 2 << 20];
    let (status, _) = github(&big, &signature(SECRET, &big));
    assert_eq!(status, 413);
    let (status, _) = http_post(port, "/hooks/gitlab", &[("X-Gitlab-Token", "nope")], &body);
    assert_eq!(status, 401);
    // Nothing was synced by any of them.
    let mirror = root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    assert_ne!(refs(&mirror), refs(&fixtures.repo("alpha.git")));

    // A ping, and a push for a repository that is not tracked: nothing is mirrored.
    let (status, _) = http_post(
        port,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "ping"),
            (
                "X-Hub-Signature-256",
                &format!("sha256={}", signature(SECRET, b"{}")),
            ),
        ],
        b"{}",
    );
    assert_eq!(status, 200);
    let beta = push(&daemon.url("beta.git"));
    let (status, reply) = github(&beta, &signature(SECRET, &beta));
    assert_eq!(status, 202);
    assert!(reply.contains("not tracked"), "{reply}");

    // A signed push syncs the mirror within seconds.
    let (status, reply) = github(&body, &signature(SECRET, &body));
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains("syncing"), "{reply}");
    wait_until(
        Duration::from_secs(30),
        "the pushed repository is synced",
        || refs(&mirror) == refs(&fixtures.repo("alpha.git")),
    );
    // The other formats find the same repository.
    let gitlab = serde_json::json!({"project": {"git_http_url": alpha}}).to_string();
    let (status, reply) = http_post(
        port,
        "/hooks/gitlab",
        &[("X-Gitlab-Token", SECRET), ("X-Gitlab-Event", "Push Hook")],
        gitlab.as_bytes(),
    );
    assert_eq!((status, reply.contains("syncing")), (202, true), "{reply}");
    let gitea_sig = signature(SECRET, &body);
    let (status, reply) = http_post(
        port,
        "/hooks/gitea",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &gitea_sig)],
        &body,
    );
    assert_eq!((status, reply.contains("syncing")), (202, true), "{reply}");
    let plain = serde_json::json!({ "urls": [alpha] }).to_string();
    let bearer = format!("Bearer {SECRET}");
    let (status, reply) = http_post(
        port,
        "/hooks/sync",
        &[("Authorization", &bearer)],
        plain.as_bytes(),
    );
    assert_eq!((status, reply.contains("syncing")), (202, true), "{reply}");
    assert!(
        !root
            .path()
            .join(format!("127.0.0.1_{}/beta.git", daemon.port()))
            .exists(),
        "a webhook added a repository"
    );

    terminate(&mut serve);
    let output = serve.wait_with_output().expect("serve's output");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        !text(&output.stderr).contains(SECRET),
        "the secret was printed"
    );
}

#[test]
fn a_repository_can_be_given_its_own_interval_directly_or_through_serve() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).args(["mirror", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Adaptive after a clone: the default 10 minutes.
    assert_eq!(
        task_for(&status_json(root.path()), "alpha")["interval_s"],
        600
    );

    // No process on the root: the record is changed directly, and a shorter interval takes
    // effect at once.
    let out = run(gitfleet(root.path()).args(["schedule", "--every", "1s", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let task = task_for(&status_json(root.path()), "alpha").clone();
    assert_eq!(task["interval_override_s"], 1, "{task:#}");

    // serve (adaptive bounds of hours) syncs it every second all the same.
    fixtures.mutate("alpha.git");
    let mut serve = gitfleet(root.path())
        .args(["serve", "--min-interval", "1h", "--max-interval", "2h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfleet serve");
    let mirror = root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    wait_until(Duration::from_secs(60), "the change is synced", || {
        refs(&mirror) == refs(&fixtures.repo("alpha.git"))
    });
    // Through the running serve: back to adaptive.
    let out = run(gitfleet(root.path()).args(["schedule", "--adaptive", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(task_for(&status_json(root.path()), "alpha")["interval_override_s"].is_null());
    terminate(&mut serve);
    // Bad input is refused with a reason.
    let out = run(gitfleet(root.path()).args(["schedule", "--every", "soon", &alpha]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a duration"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn commands_on_a_served_root_are_handed_to_serve() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let mut serve = gitfleet(root.path())
        .args(["serve", "--min-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfleet serve");
    let socket = root.path().join(".gitfleet/serve.sock");
    wait_until(Duration::from_secs(60), "serve listens", || socket.exists());
    // A request that is not one is answered with a reason, and serve goes on.
    {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        stream
            .write_all(b"{\"kind\": \"rm -rf\"}\n")
            .expect("write");
        let mut reply = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut reply)
            .expect("a reply");
        assert!(reply.contains("refused"), "{reply}");
    }
    // One serve per root: a second one says why it cannot start.
    let out = run(gitfleet(root.path()).args(["serve"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("another gitfleet process is working"),
        "{}",
        text(&out.stderr)
    );

    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).args([
        "mirror",
        &alpha,
        &daemon.url("beta.git"),
        "ext::sh -c touch% /tmp/gitfleet-pwned",
    ]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("handing the work"), "{stderr}");
    assert!(stderr.contains("2 completed, 1 failed"), "{stderr}");
    let mirror = root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    assert_eq!(refs(&mirror), refs(&fixtures.repo("alpha.git")));

    // A sync of everything, and --json lines, through serve too.
    fixtures.mutate("alpha.git");
    let out = run(gitfleet(root.path()).args(["sync", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "state" && l["task"]["status"]["status_type"] == "completed"),
        "{lines:#?}"
    );
    assert_eq!(refs(&mirror), refs(&fixtures.repo("alpha.git")));
    let out = run(gitfleet(root.path()).args(["init", "team/tools"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(root.path().join("_local/team/tools.git").is_dir());

    terminate(&mut serve);
    assert!(!socket.exists(), "serve left its socket");
    // With serve gone, the root is worked on directly again.
    let out = run(gitfleet(root.path()).args(["sync", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("handing the work"));
}

#[test]
fn a_restarted_serve_keeps_the_schedule_and_runs_what_fell_due() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let (alpha, beta) = (daemon.url("alpha.git"), daemon.url("beta.git"));
    let start_serve = || {
        let serve = gitfleet(root.path())
            .args(["serve", "--min-interval", "1h", "--max-interval", "2h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gitfleet serve");
        let socket = root.path().join(".gitfleet/serve.sock");
        wait_until(Duration::from_secs(60), "serve listens", || socket.exists());
        serve
    };
    let mut serve = start_serve();
    let out = run(gitfleet(root.path()).args(["mirror", &alpha, &beta]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // beta falls due every second from now on; alpha keeps its hour.
    let out = run(gitfleet(root.path()).args(["schedule", "--every", "1s", &beta]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    terminate(&mut serve);
    assert!(
        serve.wait().expect("wait").success(),
        "serve drained and stopped"
    );

    let before = status_json(root.path());
    let alpha_before = task_for(&before, "alpha").clone();
    let beta_before = task_for(&before, "beta").clone();
    assert!(!alpha_before["next_sync_at"].is_null(), "{alpha_before:#}");
    // While nothing serves the root, beta's time passes.
    wait_until(Duration::from_secs(10), "beta is overdue", || {
        let due: jiff::Timestamp = beta_before["next_sync_at"]
            .as_str()
            .expect("scheduled")
            .parse()
            .expect("a time");
        jiff::Timestamp::now() > due
    });

    let mut serve = start_serve();
    // The overdue one is synced by the restarted serve ...
    wait_until(
        Duration::from_secs(60),
        "the overdue beta is synced",
        || {
            task_for(&status_json(root.path()), "beta")["last_success_at"]
                != beta_before["last_success_at"]
        },
    );
    // ... and the one not due keeps its time and its last sync: a restart does not sync
    // everything again.
    let alpha_after = task_for(&status_json(root.path()), "alpha").clone();
    assert_eq!(alpha_after["next_sync_at"], alpha_before["next_sync_at"]);
    assert_eq!(
        alpha_after["last_success_at"],
        alpha_before["last_success_at"]
    );
    terminate(&mut serve);
}

#[test]
fn log_lines_can_be_json_for_log_shippers() {
    let fixtures = Fixtures::new();
    let http = HttpServer::start(&fixtures.root, HttpOptions::default());
    let root = tempfile::tempdir().expect("tempdir");
    let out = run(gitfleet(root.path())
        .args(["--log-format", "json", "mirror", &http.url("beta.git")])
        .env("GITFLEET_LOG", "debug"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logs: Vec<Value> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!logs.is_empty(), "{}", text(&out.stderr));
    assert!(
        logs.iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    // A line about a task names it: its id and its URL.
    let url = http.url("beta.git");
    let about_the_task = logs
        .iter()
        .find(|l| l["fields"]["message"] == "transfer completed")
        .unwrap_or_else(|| panic!("no transfer line in {}", text(&out.stderr)));
    assert_eq!(
        about_the_task["span"]["url"],
        url.as_str(),
        "{about_the_task}"
    );
    assert!(about_the_task["span"]["id"].is_string(), "{about_the_task}");
}

/// One HTTP request as a test receiver got it: lower-cased header names, and the body.
type Received = (std::collections::HashMap<String, String>, String);

/// Accepts requests on `listener` until the test ends, answering 200, recording each.
fn receive(listener: std::net::TcpListener) -> std::sync::Arc<std::sync::Mutex<Vec<Received>>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut headers = std::collections::HashMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // the request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                }
            }
            let length: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(mut got) = record.lock() {
                got.push((headers, String::from_utf8_lossy(&body).into_owned()));
            }
        }
    });
    got
}

#[test]
fn notifications_arrive_once_each_signed_even_after_the_receiver_was_down() {
    use hmac::{Hmac, KeyInit, Mac};
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let events_file = root.path().join("events.jsonl");
    // A port with nothing on it yet: the receiver is down when the events happen.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let secret = "notify-secret";
    let mut serve = gitfleet(root.path())
        .args([
            "serve",
            "--min-interval",
            "1h",
            "--retries",
            "0",
            "--notify-url",
        ])
        .arg(format!("http://127.0.0.1:{port}/events"))
        .arg("--notify-exec")
        .arg(format!("tee -a {}", events_file.display()))
        .env("GITFLEET_NOTIFY_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfleet serve");
    let socket = root.path().join(".gitfleet/serve.sock");
    wait_until(Duration::from_secs(60), "serve listens", || socket.exists());
    let out = run(gitfleet(root.path()).args([
        "mirror",
        &daemon.url("alpha.git"),
        &daemon.url("nope.git"),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // The command got both events at once, the task's record on its standard input.
    wait_until(Duration::from_secs(60), "the command ran twice", || {
        std::fs::read_to_string(&events_file).is_ok_and(|t| t.lines().count() == 2)
    });
    let lines = std::fs::read_to_string(&events_file).expect("events");
    let kinds: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["event"].clone())
        .collect();
    assert!(kinds.contains(&serde_json::json!("completed")), "{lines}");
    assert!(kinds.contains(&serde_json::json!("failed")), "{lines}");

    // The receiver comes up: the queued events arrive, once each, signed.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the port");
    let got = receive(listener);
    wait_until(Duration::from_secs(60), "both events are posted", || {
        got.lock().is_ok_and(|g| g.len() >= 2)
    });
    // Once serve has stopped, nothing more can come: a duplicate would have been sent by now.
    terminate(&mut serve);
    let got = got.lock().expect("received").clone();
    assert_eq!(got.len(), 2, "each event once: {got:?}");
    for (headers, body) in &got {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body.as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            headers["x-gitfleet-signature"],
            format!("sha256={expected}")
        );
        let event: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            headers["x-gitfleet-event"],
            event["event"].as_str().expect("kind")
        );
        assert!(event["task"]["url"].is_string(), "{event}");
    }
}

#[test]
fn du_reports_what_the_mirrors_take_on_disk() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let urls = [daemon.url("alpha.git"), daemon.url("big.git")];
    let out = run(gitfleet(root.path()).arg("mirror").args(&urls));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(gitfleet(root.path()).args(["du", "--json", "-n", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("du --json is JSON");
    // As du counts it, repository by repository.
    let du = |path: &str| -> u64 {
        let out = Command::new("du")
            .args(["-s", "-B1", path])
            .output()
            .expect("du");
        text(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du's total")
    };
    let tasks = status_json(root.path());
    let sizes: Vec<u64> = tasks
        .iter()
        .map(|t| du(t["path"].as_str().expect("path")))
        .collect();
    assert_eq!(report["total_bytes"], sizes.iter().sum::<u64>());
    assert_eq!(
        (
            report["repositories"].as_u64(),
            report["unmeasured"].as_u64()
        ),
        (Some(2), Some(0))
    );
    let largest = report["largest"].as_array().expect("largest");
    assert_eq!(largest.len(), 1);
    assert_eq!(largest[0]["url"], urls[1].as_str());
    assert_eq!(report["nodes"].as_array().map(Vec::len), Some(1));

    let out = run(gitfleet(root.path()).arg("du"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("in 2 repositories of") && table.contains(&urls[1]),
        "{table}"
    );
}

#[test]
fn below_min_free_new_repositories_are_refused_and_existing_ones_sync() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).args(["mirror", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // No file system has all of itself free: 100% refuses every new repository.
    fixtures.mutate("alpha.git");
    let beta = daemon.url("beta.git");
    let out = run(gitfleet(root.path()).args(["mirror", "--min-free", "100%", &beta]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let tasks = status_json(root.path());
    let refused = task_for(&tasks, "beta.git");
    assert_eq!(refused["error_code"], "storage", "{refused:#}");
    let message = refused["status"]["error"].as_str().expect("message");
    assert!(message.contains("--min-free 100%"), "{message}");
    assert!(!Path::new(refused["path"].as_str().expect("path")).exists());

    // What is already held keeps syncing.
    let out = run(gitfleet(root.path()).args(["sync", "--min-free", "100%", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mirror = task_for(&status_json(root.path()), "alpha.git")["path"]
        .as_str()
        .expect("path")
        .to_string();
    assert_eq!(refs(Path::new(&mirror)), refs(&fixtures.repo("alpha.git")));

    let out = run(gitfleet(root.path()).args(["mirror", "--min-free", "50Q", &beta]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("'50Q' is not a size"),
        "{}",
        text(&out.stderr)
    );
}

/// A small tmpfs mounted for one test (the tests run as root, as CI does), unmounted on drop.
struct SmallFileSystem {
    dir: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> SmallFileSystem {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the full-disk test needs root): {}",
            text(&out.stderr)
        );
        SmallFileSystem { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_file_system_mid_clone_loses_nothing_already_held() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    // Room for the small repositories and the task log, not for big.git (4 MiB).
    let disk = SmallFileSystem::mount("1536k");
    let root = disk.path().join("root");
    let alpha = daemon.url("alpha.git");
    let out = run(gitfleet(&root).args(["mirror", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let alpha_path = task_for(&status_json(&root), "alpha.git")["path"]
        .as_str()
        .expect("path")
        .to_string();
    let alpha_refs = refs(Path::new(&alpha_path));

    let big = daemon.url("big.git");
    let out = run(gitfleet(&root).args(["mirror", "--retries", "0", &big]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // The task log still loads, with both records; the failure says why.
    let tasks = status_json(&root);
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    let failed = task_for(&tasks, "big.git");
    assert_eq!(failed["status"]["status_type"], "failed", "{failed:#}");
    assert_eq!(failed["error_code"], "storage", "{failed:#}");
    // Nothing half-written stays: not at the final path, not in the staging area.
    assert!(!Path::new(failed["path"].as_str().expect("path")).exists());
    assert!(staging_is_empty(&root));
    // What was held is intact, and still syncs.
    assert_eq!(refs(Path::new(&alpha_path)), alpha_refs);
    fsck(Path::new(&alpha_path)).expect("fsck of the mirror held");
    fixtures.mutate("alpha.git");
    let out = run(gitfleet(&root).args(["sync", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        refs(Path::new(&alpha_path)),
        refs(&fixtures.repo("alpha.git"))
    );
}

#[test]
fn log_lists_a_mirrors_commits_newest_first_as_printable_text() {
    let fixtures = Fixtures::new();
    // An upstream whose author and subject carry terminal escapes.
    let upstream = fixtures.root.join("hostile-log");
    gitfleet_tests::run_git(&fixtures.root, &["init", "-q", "-b", "main", "hostile-log"]);
    for (i, subject) in ["first", "second \u{1b}[31mred\u{1b}[0m", "third"]
        .iter()
        .enumerate()
    {
        let date = format!("2026-01-0{}T12:00:00Z", i + 1);
        let out = Command::new("git")
            .current_dir(&upstream)
            .args([
                "-c",
                "user.name=Eve \u{1b}]0;x\u{7}",
                "-c",
                "user.email=eve@example.com",
            ])
            .args(["commit", "-q", "--allow-empty", "-m", subject])
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("git commit");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let url = upstream.to_str().expect("utf-8").to_string();
    let root = tempfile::tempdir().expect("tempdir");
    let out = run(gitfleet(root.path()).args(["mirror", &url]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let log = |args: &[&str]| -> Vec<Value> {
        let out = run(gitfleet(root.path())
            .args(["log", "--json", &url])
            .args(args));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("log --json is a JSON array")
    };
    let all = log(&[]);
    let subjects: Vec<&str> = all
        .iter()
        .map(|c| c["subject"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(subjects.len(), 3);
    assert_eq!((subjects[0], subjects[2]), ("third", "first"));
    // Someone else's text is made printable: no escape reaches a terminal.
    assert!(
        !subjects[1].contains('\u{1b}') && subjects[1].contains("red"),
        "{}",
        subjects[1]
    );
    let author = all[0]["author"].as_str().expect("author");
    assert!(
        author.starts_with("Eve") && !author.chars().any(char::is_control),
        "{author}"
    );
    assert_eq!(all[0]["email"], "eve@example.com");
    assert_eq!(all[0]["time"], "2026-01-03T12:00:00Z");
    let head = gitfleet_tests::run_git(&upstream, &["rev-parse", "main"]);
    assert_eq!(all[0]["id"], head.trim());

    assert_eq!(log(&["-n", "1"]).len(), 1);
    assert_eq!(log(&["--since", "2026-01-02T00:00:00Z"]).len(), 2);
    assert!(log(&["--since", "1h"]).is_empty());
    let out = run(gitfleet(root.path()).args(["log", "https://nowhere.example/x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a known repository"));
}

#[test]
fn an_archived_repository_is_kept_and_never_synced_until_unarchived() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let (alpha, beta) = (daemon.url("alpha.git"), daemon.url("beta.git"));
    let out = run(gitfleet(root.path()).args(["mirror", &alpha, &beta]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mirror = root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    let held = refs(&mirror);

    let out = run(gitfleet(root.path()).args(["archive", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = task_for(&status_json(root.path()), "alpha.git").clone();
    assert_eq!(record["archived"], true, "{record:#}");
    assert_eq!(record["freshness"], "archived");
    assert!(record.get("next_sync_at").is_none(), "{record:#}");

    // Upstream moves; no request syncs the archive: not by name, not by mirroring it again,
    // and a sync of everything passes it by.
    fixtures.mutate("alpha.git");
    let out = run(gitfleet(root.path()).args(["sync", &alpha]));
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("is archived"), "{said}");
    let out = run(gitfleet(root.path()).args(["mirror", &alpha]));
    assert_eq!(out.status.code(), Some(1));
    let out = run(gitfleet(root.path()).arg("sync"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(refs(&mirror), held);
    fsck(&mirror).expect("the archive is intact");

    // Through a running serve as well: unarchived, it is due at once and synced.
    let mut serve = gitfleet(root.path())
        .args(["serve", "--min-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfleet serve");
    let socket = root.path().join(".gitfleet/serve.sock");
    wait_until(Duration::from_secs(60), "serve listens", || socket.exists());
    let out = run(gitfleet(root.path()).args(["unarchive", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(
        Duration::from_secs(60),
        "the unarchived mirror synced",
        || refs(&mirror) == refs(&fixtures.repo("alpha.git")),
    );
    let out = run(gitfleet(root.path()).args(["archive", &beta]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = task_for(&status_json(root.path()), "beta.git").clone();
    assert_eq!(record["archived"], true, "{record:#}");
    terminate(&mut serve);
}

#[test]
fn remove_deletes_the_mirror_and_its_record_and_nothing_else() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let (alpha, beta, utils) = (
        daemon.url("alpha.git"),
        daemon.url("beta.git"),
        daemon.url("org-a/utils.git"),
    );
    let out = run(gitfleet(root.path()).args(["mirror", &alpha, &beta, &utils]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path_of = |url: &str| {
        PathBuf::from(
            task_for(
                &status_json(root.path()),
                url.rsplit('/').next().expect("name"),
            )["path"]
                .as_str()
                .expect("path"),
        )
    };
    let (alpha_path, beta_path, utils_path) = (path_of(&alpha), path_of(&beta), path_of(&utils));

    let out = run(gitfleet(root.path()).args(["remove", &alpha]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed"),
        "{}",
        text(&out.stdout)
    );
    assert!(!alpha_path.exists());
    assert!(beta_path.is_dir() && utils_path.is_dir());
    let urls: Vec<String> = status_json(root.path())
        .iter()
        .map(|t| t["url"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!urls.contains(&alpha) && urls.len() == 2, "{urls:?}");
    assert!(staging_is_empty(root.path()));
    // Unknown: a clear error, nothing touched.
    let out = run(gitfleet(root.path()).args(["remove", &alpha]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a known repository"));

    // Through a running serve: it forgets the task first, so that it never syncs it again.
    let mut serve = gitfleet(root.path())
        .args(["serve", "--min-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfleet serve");
    let socket = root.path().join(".gitfleet/serve.sock");
    wait_until(Duration::from_secs(60), "serve listens", || socket.exists());
    let out = run(gitfleet(root.path()).args(["remove", &beta]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!beta_path.exists());
    // A sync of everything through serve syncs what is left, not what was removed.
    let out = run(gitfleet(root.path()).arg("sync"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!beta_path.exists());
    terminate(&mut serve);
    let tasks = status_json(root.path());
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    fsck(&utils_path).expect("the other mirror is intact");

    // A removal cut short leaves its remains in the staging area, which the next run clears.
    let remains = root.path().join(".gitfleet/staging/removed-1-1");
    std::fs::create_dir_all(remains.join("objects")).expect("remains");
    let out = run(gitfleet(root.path()).args(["sync", &utils]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!remains.exists() && staging_is_empty(root.path()));
}

#[test]
fn a_running_task_is_neither_removed_nor_archived() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(1 << 20),
            ..HttpOptions::default()
        },
    );
    let root = tempfile::tempdir().expect("tempdir");
    let url = server.url("big.git");
    let mut child = spawn_mirror(root.path(), &url);
    wait_until_cloning(root.path(), "big");
    // The process cloning it holds the root: the request goes to it, which refuses.
    let out = run(gitfleet(root.path()).args(["remove", &url]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cancel it"),
        "{}",
        text(&out.stderr)
    );
    let out = run(gitfleet(root.path()).args(["archive", &url]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("before archiving"),
        "{}",
        text(&out.stderr)
    );
    // The clone finishes whole; nothing was forgotten, and no request is left to act later.
    assert!(child.wait().expect("wait").success());
    let task = task_for(&status_json(root.path()), "big").clone();
    assert_eq!(task["status"]["status_type"], "completed", "{task:#}");
    assert!(task.get("archived").is_none(), "{task:#}");
    fsck(Path::new(task["path"].as_str().expect("path"))).expect("fsck");
    let requests = root.path().join(".gitfleet/remove");
    assert!(
        std::fs::read_dir(&requests).map_or(true, |mut d| d.next().is_none()),
        "a removal request was left behind"
    );
}

#[test]
fn a_sync_that_leaves_too_many_packs_repacks_the_mirror() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let root = tempfile::tempdir().expect("tempdir");
    let url = daemon.url("alpha.git");
    let out = run(gitfleet(root.path()).arg("mirror").arg(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    fixtures.mutate("alpha.git");
    let out = run(gitfleet(root.path()).args(["sync", "--repack-after", "1", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let tasks = status_json(root.path());
    let mirror = PathBuf::from(
        task_for(&tasks, "alpha.git")["path"]
            .as_str()
            .expect("path"),
    );
    let in_pack_dir = |suffix: &str| {
        std::fs::read_dir(mirror.join("objects/pack"))
            .expect("the pack directory")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    };
    assert_eq!((in_pack_dir(".pack"), in_pack_dir(".bitmap")), (1, 1));
    assert_eq!(refs(&mirror), refs(&fixtures.repo("alpha.git")));
    fsck(&mirror).expect("a whole mirror");
}

#[test]
fn history_keeps_the_last_runs_newest_first_with_what_each_brought() {
    let fixtures = Fixtures::new();
    let upstream = fixtures.root.join("busy");
    gitfleet_tests::run_git(&fixtures.root, &["init", "-q", "-b", "main", "busy"]);
    let commit = |subject: &str| {
        gitfleet_tests::run_git(
            &upstream,
            &[
                "-c",
                "user.name=A",
                "-c",
                "user.email=a@example.com",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                subject,
            ],
        );
    };
    commit("first");
    // Served, so that an upstream that is gone is a run that fails (`not_found` from the
    // server), not a path refused before any run.
    let daemon = GitDaemon::start(&fixtures.root);
    let url = daemon.url("busy");
    let root = tempfile::tempdir().expect("tempdir");
    let gitfleet_ok = |args: &[&str]| {
        let out = run(gitfleet(root.path()).args(args));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    };
    gitfleet_ok(&["mirror", &url]);
    commit("second");
    commit("third");
    gitfleet_ok(&["sync", &url]);
    // Upstream gone for one sync: a failed run, then it is back.
    let away = fixtures.root.join("busy-away");
    std::fs::rename(&upstream, &away).expect("move upstream away");
    let out = run(gitfleet(root.path()).args(["sync", &url]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    std::fs::rename(&away, &upstream).expect("bring upstream back");

    let history = |root: &Path| -> Vec<Value> {
        let out = run(gitfleet(root).args(["history", "--json", &url]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("history --json is a JSON array")
    };
    let runs = history(root.path());
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["operation"], "sync");
    assert!(runs[0]["error_code"].is_string(), "{runs:#?}");
    assert!(runs[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(runs[1]["status"], "completed");
    assert_eq!(runs[1]["operation"], "sync");
    assert_eq!(runs[1]["new_commits"], 2, "the sync brought two commits");
    assert_eq!(runs[1]["refs_updated"], 1, "{runs:#?}");
    assert_eq!(runs[2]["operation"], "mirror");
    assert_eq!(runs[2]["new_commits"], 1);
    assert!(runs[2]["refs_created"].as_u64() >= Some(1));

    // The record keeps the last ten runs, newest first.
    for _ in 0..9 {
        gitfleet_ok(&["sync", &url]);
    }
    let runs = history(root.path());
    assert_eq!(runs.len(), 10);
    let times: Vec<&str> = runs
        .iter()
        .map(|r| r["finished_at"].as_str().expect("a time"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert_eq!(
        runs[9]["status"], "failed",
        "the oldest kept is the failure"
    );
    assert!(runs[..9].iter().all(|r| r["new_commits"] == 0));

    // The human form: a header and a line per run. `status` shows records without history.
    let out = gitfleet_ok(&["history", &url]);
    let shown = text(&out.stdout);
    assert_eq!(shown.lines().count(), 11, "{shown}");
    assert!(
        shown
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("FINISHED"))
    );
    let tasks = status_json(root.path());
    assert!(tasks[0].get("history").is_none(), "{:#}", tasks[0]);
    let out = run(gitfleet(root.path()).args(["history", "https://nowhere.example/x"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
