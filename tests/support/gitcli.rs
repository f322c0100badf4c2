//! The real git CLI as the reference implementation tests compare gitfleet against.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A `git` command that sees none of the caller's configuration or environment.
///
/// Tests may run inside a git hook (GIT_DIR set) or on a machine with credential helpers,
/// url rewrites or `protocol.version` in the global config; any of these would silently
/// change what the reference CLI does. Prompts are disabled so a 401 fails instead of
/// hanging the test on a terminal read.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    isolate_git_env(&mut cmd);
    cmd
}

pub(crate) fn isolate_git_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("SSH_ASKPASS")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
}

/// Fails the test loudly when git itself is missing, instead of letting it look like a
/// gitfleet failure.
pub(crate) fn spawn_error(what: &str, err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::NotFound {
        panic!(
            "`{what}` could not be started because it is not installed: the end-to-end tests \
             need git with its daemon and http-backend programs (e.g. `apt-get install git`, \
             python3 and bash for the fixtures): {err}"
        );
    }
    panic!("`{what}` could not be started: {err}");
}

/// Runs `git ARGS` in `dir` and returns its raw output whatever the exit status.
pub fn git_output<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    git_command()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| spawn_error("git", e))
}

fn describe<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    let args: Vec<_> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("git {} (in {})", args.join(" "), dir.display())
}

/// Runs `git ARGS` in `dir`; stdout on success, a description with stderr otherwise.
pub fn try_git<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Result<String, String> {
    let out = git_output(dir, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed with {}:\n{}{}",
            describe(dir, args),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        ))
    }
}

/// Runs `git ARGS` in `dir` and returns stdout; panics with stderr if git fails.
pub fn run_git<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    try_git(dir, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Every ref (not HEAD) mapped to the object it points at; annotated tags map to the tag
/// object, not the peeled commit.
pub fn refs(repo: &Path) -> BTreeMap<String, String> {
    run_git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .map(|line| {
            let (name, oid) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("unexpected for-each-ref line {line:?}"));
            (name.to_owned(), oid.to_owned())
        })
        .collect()
}

/// The ref HEAD points at symbolically (e.g. `refs/heads/main`), `None` when detached.
pub fn head_target(repo: &Path) -> Option<String> {
    let out = git_output(repo, &["symbolic-ref", "-q", "HEAD"]);
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        // Exit code 1 with -q is git's "HEAD is not a symbolic ref".
        Some(1) => None,
        _ => panic!(
            "git symbolic-ref HEAD in {} failed: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Ids of every object stored in the repository, reachable or not.
pub fn objects(repo: &Path) -> BTreeSet<String> {
    run_git(
        repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname)",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// `git fsck --strict`: object validity and connectivity of every ref.
pub fn fsck(repo: &Path) -> Result<(), String> {
    try_git(repo, &["fsck", "--strict", "--no-progress"]).map(drop)
}

/// The reference result: what `git clone --mirror URL DEST` produces.
pub fn mirror_clone(url: &str, dest: &Path) {
    try_mirror_clone(url, dest, &[]).unwrap_or_else(|e| panic!("{e}"));
}

/// `git [-c CONFIG]... clone --mirror URL DEST`, reporting failure instead of panicking
/// (for tests that expect the clone to be refused or to time out).
pub fn try_mirror_clone(url: &str, dest: &Path, config: &[&str]) -> Result<(), String> {
    let mut args: Vec<&OsStr> = Vec::new();
    for c in config {
        args.push(OsStr::new("-c"));
        args.push(OsStr::new(c));
    }
    args.extend([
        OsStr::new("clone"),
        OsStr::new("--mirror"),
        OsStr::new("--"),
        OsStr::new(url),
        dest.as_os_str(),
    ]);
    let cwd = std::env::temp_dir();
    try_git(&cwd, &args).map(drop)
}

/// All `remote.*.url` and `remote.*.pushurl` values, to check no credentials were persisted.
pub fn remote_urls(repo: &Path) -> Vec<String> {
    let out = git_output(
        repo,
        &["config", "--get-regexp", r"^remote\..*\.(url|pushurl)$"],
    );
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, url)| url.to_owned()))
            .collect(),
        // No matching key.
        Some(1) => Vec::new(),
        _ => panic!(
            "git config --get-regexp in {} failed: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A port that was free a moment ago; callers must cope with losing the race for it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// Polls `f` until it returns true; panics naming `what` if `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
