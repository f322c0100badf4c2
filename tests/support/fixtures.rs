//! Deterministic fixture repositories built by `tests/fixtures/make_repos.sh`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::gitcli::{isolate_git_env, spawn_error};

const SCRIPT: &str = include_str!("../fixtures/make_repos.sh");

/// A private copy of the fixture repositories, deleted on drop.
///
/// Layout under `root`: `alpha.git`, `beta.git`, `empty.git`, `big.git`,
/// `org-a/utils.git`, `org-b/utils.git` (see `make_repos.sh` for their contents).
#[derive(Debug)]
pub struct Fixtures {
    _dir: TempDir,
    pub root: PathBuf,
}

impl Fixtures {
    /// A fresh copy of the fixtures. Building them runs ~70 git commands and writes 4 MiB of
    /// random blobs, so the result is built once per script version and copied from then on;
    /// the contents are byte-for-byte what the script produces.
    pub fn new() -> Fixtures {
        let dir = temp_dir("gitfleet-fixtures-");
        let root = dir.path().join("repos");
        copy_dir_all(template(), &root);
        Fixtures { _dir: dir, root }
    }

    /// Runs the script into a new directory, bypassing the template (to test the script).
    pub fn uncached() -> Fixtures {
        let dir = temp_dir("gitfleet-fixtures-");
        let root = dir.path().join("repos");
        run_script(&["init".as_ref(), root.as_os_str()]);
        Fixtures { _dir: dir, root }
    }

    /// Path of the bare repository `name` (e.g. `"alpha.git"`, `"org-a/utils.git"`).
    pub fn repo(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Rewrites `name` (alpha-shaped: needs `feature`, `release/1.0`, `v0.1`; once only):
    /// 2 new commits on main, `feature` force-rewritten, `release/1.0` and tag `v0.1`
    /// deleted, new branch `hotfix` and annotated tag `v2.0`, unreachable objects pruned.
    pub fn mutate(&self, name: &str) {
        run_script(&["mutate".as_ref(), self.root.as_os_str(), name.as_ref()]);
    }

    pub fn script_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make_repos.sh")
    }
}

impl Default for Fixtures {
    fn default() -> Self {
        Self::new()
    }
}

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temporary directory")
}

fn run_script(args: &[&std::ffi::OsStr]) {
    let mut cmd = Command::new("bash");
    isolate_git_env(&mut cmd);
    let out = cmd
        .arg(Fixtures::script_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| spawn_error("bash", e));
    assert!(
        out.status.success(),
        "make_repos.sh {:?} failed with {}:\n{}{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pristine fixtures, shared by every `Fixtures::new` in this process and cached in the
/// target directory across runs, keyed by the script's content so editing it rebuilds.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        SCRIPT.hash(&mut hasher);
        let key = format!("{:016x}", hasher.finish());
        let cache = cache_dir();
        let dest = cache.join(&key);
        if dest.join("alpha.git").is_dir() {
            return dest;
        }
        std::fs::create_dir_all(&cache)
            .unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
        // Built beside its final place and renamed, so a concurrently running test binary
        // never sees a half-written template.
        let staging = tempfile::Builder::new()
            .prefix(&format!("{key}.building-"))
            .tempdir_in(&cache)
            .expect("creating a staging directory for the fixture template");
        let built = staging.path().join("repos");
        run_script(&["init".as_ref(), built.as_os_str()]);
        if std::fs::rename(&built, &dest).is_err() && !dest.join("alpha.git").is_dir() {
            panic!(
                "could not move the fixture template into {}",
                dest.display()
            );
        }
        dest
    })
}

/// `target/gitfleet-fixtures`, found from the test executable (`target/<profile>/deps/`),
/// falling back to the system temp dir for unusual layouts.
fn cache_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            let target = deps.parent()?.parent()?;
            (deps.file_name()? == "deps").then(|| target.join("gitfleet-fixtures"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("gitfleet-fixtures"))
}

fn copy_dir_all(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
        if kind.is_dir() {
            copy_dir_all(&src, &dst);
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
        }
    }
}
