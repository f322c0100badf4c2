//! The cache against real servers (git daemon, smart HTTP with auth) and real directories.

use std::path::Path;
use std::time::Duration;

use gitfleet_cache::{Cache, CacheConfig, CacheError, CacheStatus, CacheType};
use gitfleet_tests::{Fixtures, GitDaemon, HttpOptions, HttpServer, run_git};

fn head(repo: &Path) -> String {
    run_git(repo, &["rev-parse", "HEAD"]).trim().to_string()
}

fn upstream_main(fixtures: &Fixtures, name: &str) -> String {
    run_git(&fixtures.repo(name), &["rev-parse", "main"])
        .trim()
        .to_string()
}

fn cache_at(dir: &Path) -> Cache {
    Cache::open(CacheConfig::new(dir.join("cache"))).expect("open the cache")
}

#[test]
fn a_git_source_is_cached_as_a_working_tree_and_listed() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());

    let entry = cache.add(&daemon.url("alpha.git"), None).expect("cached");
    assert_eq!(entry.entry.name, "alpha");
    assert_eq!(entry.entry.cache_type, CacheType::Git);
    assert_eq!(entry.status, CacheStatus::Fresh);
    assert_eq!(entry.cache_path, cache.root().join("alpha"));
    assert_eq!(
        head(&entry.cache_path),
        upstream_main(&fixtures, "alpha.git")
    );
    assert!(entry.cache_path.join(".git").is_dir());
    assert!(entry.entry.size_bytes > 0);
    assert_eq!(run_git(&entry.cache_path, &["status", "--porcelain"]), "");

    // Cached again while fresh: the same copy, nothing fetched.
    let again = cache.add(&daemon.url("alpha.git"), None).expect("again");
    assert_eq!(again.entry.generation, entry.entry.generation);

    let stats = cache.stats().expect("stats");
    assert_eq!(stats.total_entries, 1);
    assert_eq!(stats.by_status["FRESH"], 1);
    assert_eq!(stats.by_type["git"], 1);
    assert_eq!(stats.total_size_bytes, entry.entry.size_bytes);
    // The index is persisted: another handle (another process) sees the entry.
    let other = cache_at(dir.path());
    assert_eq!(
        other.get("alpha").expect("listed").entry.source,
        daemon.url("alpha.git")
    );
    assert_eq!(cache.path("alpha").expect("path"), entry.cache_path);
}

#[test]
fn default_names_that_clash_are_refused_naming_both() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    let a = daemon.url("org-a/utils.git");
    let b = daemon.url("org-b/utils.git");
    cache.add(&a, None).expect("first utils");
    let err = cache.add(&b, None).expect_err("a clash");
    assert_eq!(err.code(), "name_clash");
    let message = err.to_string();
    assert!(message.contains(&a) && message.contains(&b), "{message}");
    // The first entry is untouched, and the second goes under a name of its own.
    assert_eq!(cache.get("utils").expect("kept").entry.source, a);
    let named = cache.add(&b, Some("utils-b")).expect("named");
    assert!(named.cache_path.join("utils.txt").is_file());
    assert_eq!(cache.list().expect("list").len(), 2);
}

#[test]
fn a_stale_entry_is_refreshed_and_follows_upstream() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = CacheConfig::new(dir.path().join("cache"));
    config.timeout = Duration::ZERO;
    let cache = Cache::open(config).expect("open");
    let url = daemon.url("alpha.git");
    let first = cache.add(&url, None).expect("cached");
    // With no timeout, it is stale as soon as any time has passed since.
    gitfleet_tests::wait_until(Duration::from_secs(10), "alpha is stale", || {
        cache
            .get("alpha")
            .is_ok_and(|e| e.status == CacheStatus::Stale)
    });
    assert_eq!(
        cache.get("alpha").expect("entry").status,
        CacheStatus::Stale
    );

    // Nothing moved upstream: the refresh keeps the copy (one fetch, no clone).
    let unchanged = cache.refresh("alpha").expect("refreshed");
    assert_eq!(unchanged.entry.generation, first.entry.generation);

    fixtures.mutate("alpha.git");
    let moved = cache.add(&url, None).expect("stale: refreshed by add");
    assert!(moved.entry.generation > first.entry.generation);
    assert_eq!(
        head(&moved.cache_path),
        upstream_main(&fixtures, "alpha.git")
    );
    // The old copy is gone; only the current one is kept.
    let copies = std::fs::read_dir(cache.root().join(".gitfleet-cache/copies"))
        .expect("copies")
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn a_failed_refresh_keeps_the_previous_good_copy() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    let entry = cache.add(&daemon.url("beta.git"), None).expect("cached");
    let before = head(&entry.cache_path);
    drop(daemon);

    let err = cache.refresh("beta").expect_err("the server is gone");
    assert!(err.to_string().starts_with("Caching failed: "), "{err}");
    let after = cache.get("beta").expect("still listed");
    assert_eq!(after.status, CacheStatus::Error);
    assert!(after.entry.error.is_some());
    assert_eq!(head(&after.cache_path), before);
    assert_eq!(
        cache.path("beta").expect("the copy is still there"),
        after.cache_path
    );
}

#[test]
fn failures_say_what_happened_and_never_show_the_token() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let token = "t0ken-for-the-cache";
    let http = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            auth: Some(("alice".into(), token.into())),
            ..HttpOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());

    let missing = cache
        .add(&daemon.url("nope.git"), None)
        .expect_err("not found");
    assert!(
        missing.to_string().starts_with("Repository not found: "),
        "{missing}"
    );
    assert_eq!(missing.code(), "not_found");
    assert_eq!(
        cache.get("nope").expect("recorded").status,
        CacheStatus::Error
    );

    let denied = cache
        .add(&http.url("alpha.git"), None)
        .expect_err("no credentials");
    assert!(
        denied.to_string().starts_with("Authentication failed: "),
        "{denied}"
    );
    cache.add_credentials("127.0.0.1", "alice", "wrong");
    let wrong = cache.refresh("alpha").expect_err("wrong token");
    assert_eq!(wrong.code(), "auth_failed");
    cache.add_credentials("127.0.0.1", "alice", token);
    let ok = cache.refresh("alpha").expect("the right token");
    assert_eq!(ok.status, CacheStatus::Fresh);

    for path in walk(cache.root()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds the token",
            path.display()
        );
    }

    let bad = cache
        .add("https://example.invalid/x.git", Some("../up"))
        .expect_err("name");
    assert!(matches!(bad, CacheError::InvalidName { .. }), "{bad}");
    assert_eq!(
        cache.remove("nothing").expect_err("unknown").code(),
        "not_found"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            out.extend(walk(&entry.path()));
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn a_local_directory_is_copied_without_following_symlinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("my-project");
    std::fs::create_dir_all(project.join("src")).expect("mkdir");
    std::fs::write(project.join("src/main.txt"), "v1").expect("write");
    std::fs::write(dir.path().join("secret.txt"), "outside").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), project.join("link")).expect("ln");
    let cache = cache_at(dir.path());

    let entry = cache
        .add(project.to_str().expect("utf-8"), None)
        .expect("copied");
    assert_eq!(entry.entry.name, "my-project");
    assert_eq!(entry.entry.cache_type, CacheType::Local);
    assert_eq!(
        std::fs::read_to_string(entry.cache_path.join("src/main.txt")).expect("read"),
        "v1"
    );
    let link = entry.cache_path.join("link");
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    // Only the link was copied, not what it points at.
    assert_eq!(entry.entry.size_bytes, 2);

    std::fs::write(project.join("src/main.txt"), "v2").expect("write");
    let refreshed = cache.refresh("my-project").expect("copied again");
    assert_eq!(
        std::fs::read_to_string(refreshed.cache_path.join("src/main.txt")).expect("read"),
        "v2"
    );

    let inside = cache.add(cache.root().to_str().expect("utf-8"), Some("self"));
    assert_eq!(
        inside.expect_err("the cache itself").code(),
        "invalid_source"
    );
}

#[test]
fn missing_files_are_missing_until_refreshed() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    let entry = cache.add(&daemon.url("beta.git"), None).expect("cached");
    let real = std::fs::canonicalize(&entry.cache_path).expect("resolve");
    std::fs::remove_dir_all(&real).expect("rm");
    assert_eq!(
        cache.get("beta").expect("entry").status,
        CacheStatus::Missing
    );
    assert_eq!(cache.path("beta").expect_err("no files").code(), "missing");
    let back = cache.refresh("beta").expect("re-made");
    assert_eq!(back.status, CacheStatus::Fresh);
    assert!(back.cache_path.join(".git").is_dir());
}

#[test]
fn the_size_limit_evicts_the_least_recently_used_never_the_newest() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = CacheConfig::new(dir.path().join("cache"));
    config.max_bytes = 1;
    let cache = Cache::open(config).expect("open");
    cache.add(&daemon.url("alpha.git"), None).expect("alpha");
    let beta = cache.add(&daemon.url("beta.git"), None).expect("beta");
    // beta alone is over the limit, and is kept: it was just cached.
    let names: Vec<String> = cache
        .list()
        .expect("list")
        .into_iter()
        .map(|e| e.entry.name)
        .collect();
    assert_eq!(names, ["beta"]);
    assert!(beta.cache_path.join(".git").is_dir());
    assert!(!cache.root().join("alpha").exists());
}

#[test]
fn two_handles_at_once_both_land_in_the_index() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let urls = [daemon.url("alpha.git"), daemon.url("beta.git")];
    std::thread::scope(|s| {
        for url in &urls {
            let root = root.clone();
            s.spawn(move || cache_at(&root).add(url, None).expect("cached"));
        }
    });
    let cache = cache_at(&root);
    assert_eq!(cache.list().expect("list").len(), 2);
    assert_eq!(cache.clear().expect("cleared"), 2);
    assert!(cache.list().expect("list").is_empty());
    assert!(!cache.root().join("alpha").exists());
}

#[test]
fn a_long_clone_does_not_hold_up_other_operations() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    // big.git is 4 MiB: at 512 KiB/s its clone takes seconds.
    let slow = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(512 * 1024),
            ..HttpOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let big_url = slow.url("big.git");
    std::thread::scope(|s| {
        let big = s.spawn(|| cache_at(&root).add(&big_url, None));
        let cache = cache_at(&root);
        gitfleet_tests::wait_until(Duration::from_secs(60), "the big clone to start", || {
            cache.get("big").is_ok()
        });
        let beta = cache.add(&daemon.url("beta.git"), None).expect("beta");
        assert_eq!(beta.status, CacheStatus::Fresh);
        assert!(
            !big.is_finished(),
            "beta waited for big's clone: operations took turns"
        );
        assert_eq!(cache.list().expect("list").len(), 2);
        let big = big.join().expect("thread").expect("big cached");
        assert_eq!(big.status, CacheStatus::Fresh);
    });
}

#[test]
fn two_refreshes_of_one_entry_leave_one_good_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("a.txt"), "a").expect("write");
    let root = dir.path().to_path_buf();
    cache_at(&root)
        .add(project.to_str().expect("utf-8"), None)
        .expect("cached");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| cache_at(&root).refresh("project")))
            .collect();
        for h in handles {
            h.join().expect("thread").expect("refreshed");
        }
    });
    let cache = cache_at(&root);
    let entry = cache.get("project").expect("entry");
    assert_eq!(entry.status, CacheStatus::Fresh);
    assert_eq!(
        std::fs::read_to_string(entry.cache_path.join("a.txt")).expect("read"),
        "a"
    );
    let copies = std::fs::read_dir(cache.root().join(".gitfleet-cache/copies"))
        .expect("copies")
        .count();
    assert_eq!(copies, 1, "the copy that lost the race is gone");
}

#[test]
fn a_copy_behind_what_was_fetched_is_made_again() {
    // A fetch moved the copy's remote-tracking branch but its working tree stayed (a re-clone
    // that failed, or someone's `git fetch`): the next refresh must not call it current.
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    let entry = cache.add(&daemon.url("alpha.git"), None).expect("cached");
    fixtures.mutate("alpha.git");
    run_git(&entry.cache_path, &["fetch", "-q", "origin"]);
    let refreshed = cache.refresh("alpha").expect("refreshed");
    assert!(refreshed.entry.generation > entry.entry.generation);
    assert_eq!(
        head(&refreshed.cache_path),
        upstream_main(&fixtures, "alpha.git")
    );
}

#[test]
fn a_token_in_the_url_is_not_kept_and_refreshes_use_the_hosts_credentials() {
    let fixtures = Fixtures::new();
    let token = "t0ken-in-the-url";
    let http = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            auth: Some(("alice".into(), token.into())),
            ..HttpOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    let entry = cache
        .add(&http.url_with_credentials("beta.git", "alice", token), None)
        .expect("cached with the URL's token");
    assert_eq!(entry.entry.source, http.url("beta.git"));
    // The same repository named without the token is the same entry, not a clash.
    cache
        .add(&http.url("beta.git"), None)
        .expect("the same entry");
    cache.add_credentials("127.0.0.1", "alice", token);
    cache
        .refresh("beta")
        .expect("refreshed with the host's credentials");
}

#[test]
fn an_index_naming_paths_outside_the_cache_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_at(dir.path());
    drop(cache);
    let index = dir.path().join("cache/.gitfleet-cache/index.json");
    std::fs::write(
        &index,
        r#"{"entries": {"../../x": {"name": "../../x", "source": "/tmp", "cache_type": "local",
            "created_at": "2026-01-01T00:00:00Z", "last_updated": null,
            "last_used": "2026-01-01T00:00:00Z", "size_bytes": 1, "error": null,
            "error_code": null, "generation": 1, "inner": ""}}}"#,
    )
    .expect("write");
    let err = Cache::open(CacheConfig::new(dir.path().join("cache"))).expect_err("refused");
    assert_eq!(err.code(), "storage");
    assert!(
        err.to_string().contains("invalid cache entry name"),
        "{err}"
    );
}
