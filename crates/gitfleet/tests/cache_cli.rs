//! `gitfleet cache` end to end: the command against a real git daemon.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use gitfleet_tests::{Fixtures, GitDaemon, run_git};
use serde_json::Value;

fn cache(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gitfleet"))
        .arg("cache")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("GITFLEET_TOKEN")
        .env_remove("GITFLEET_CACHE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run gitfleet cache")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn add_ls_path_refresh_stats_and_rm() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");

    let added = json(&cache(
        &cache_dir,
        &[
            "add",
            "--json",
            &daemon.url("alpha.git"),
            &daemon.url("org-a/utils.git"),
        ],
    ));
    assert_eq!(added.as_array().map(Vec::len), Some(2), "{added:#}");
    assert_eq!(added[0]["name"], "alpha");
    assert_eq!(added[0]["status"], "FRESH");
    assert_eq!(added[0]["cache_type"], "git");

    // A second `utils` is refused, naming both sources, and nothing changes.
    let clash = cache(&cache_dir, &["add", &daemon.url("org-b/utils.git")]);
    assert_eq!(clash.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert!(stderr.contains("[name_clash]"), "{stderr}");
    assert!(
        stderr.contains("org-a/utils.git") && stderr.contains("org-b/utils.git"),
        "{stderr}"
    );

    let path = cache(&cache_dir, &["path", "alpha"]);
    assert!(path.status.success());
    let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
    assert_eq!(
        run_git(Path::new(&path), &["rev-parse", "HEAD"]).trim(),
        run_git(&fixtures.repo("alpha.git"), &["rev-parse", "main"]).trim()
    );

    let listed = json(&cache(&cache_dir, &["ls", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["alpha", "utils"]);
    let table = cache(&cache_dir, &["ls"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("FRESH"), "{table}");

    let refreshed = json(&cache(&cache_dir, &["refresh", "--json", "alpha"]));
    assert_eq!(refreshed[0]["status"], "FRESH");

    let stats = json(&cache(&cache_dir, &["stats", "--json"]));
    assert_eq!(stats["total_entries"], 2);
    assert_eq!(stats["by_type"]["git"], 2);

    let missing = cache(&cache_dir, &["add", &daemon.url("nope.git")]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("Repository not found: "), "{stderr}");

    assert!(
        cache(&cache_dir, &["rm", "alpha", "utils", "nope"])
            .status
            .success()
    );
    assert_eq!(
        json(&cache(&cache_dir, &["ls", "--json"])),
        serde_json::json!([])
    );
    assert!(!cache_dir.join("alpha").exists());
    assert_eq!(cache(&cache_dir, &["rm", "alpha"]).status.code(), Some(1));
}
