//! The benchmark fleet: built by `fleet/make_fleet.py`, cached under the target directory keyed
//! by a hash of the script and the sizes, and copied for each run (the run mutates its copy).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::procs::run_ok;

const SCRIPT: &[u8] = include_bytes!("../fleet/make_fleet.py");

pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet/make_fleet.py")
}

/// How big a fleet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSpec {
    pub small: usize,
    pub medium: usize,
    pub medium_commits: usize,
    pub refs: usize,
    /// Network-bound repositories (`bulk/bN.git`): seeds for the scaling rows' copies.
    pub bulk: usize,
    pub bulk_kib: usize,
}

impl FleetSpec {
    pub fn full() -> Self {
        FleetSpec {
            small: 200,
            medium: 5,
            medium_commits: 300,
            refs: 20_000,
            bulk: 4,
            bulk_kib: BULK_KIB,
        }
    }

    pub fn quick() -> Self {
        FleetSpec {
            small: 20,
            medium: 2,
            medium_commits: 300,
            refs: 2_000,
            bulk: 2,
            bulk_kib: BULK_KIB,
        }
    }

    pub fn smoke() -> Self {
        FleetSpec {
            small: 5,
            medium: 1,
            medium_commits: 60,
            refs: 200,
            bulk: 1,
            bulk_kib: BULK_KIB,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--small".into(),
            self.small.to_string(),
            "--medium".into(),
            self.medium.to_string(),
            "--medium-commits".into(),
            self.medium_commits.to_string(),
            "--refs".into(),
            self.refs.to_string(),
            "--bulk".into(),
            self.bulk.to_string(),
            "--bulk-kib".into(),
            self.bulk_kib.to_string(),
            "--seed".into(),
            SEED.into(),
        ]
    }

    pub fn describe(&self) -> String {
        format!(
            "{} small, {} medium ({} commits each), {} bulk ({} KiB each), 1 with {} refs, 1 empty",
            self.small, self.medium, self.medium_commits, self.bulk, self.bulk_kib, self.refs
        )
    }
}

const SEED: &str = "gitfleet-bench-1";

/// Size of a bulk repository: a transfer of one takes about 0.1 s behind a 20 mbit/s link, its
/// packing and indexing a few milliseconds of CPU.
const BULK_KIB: usize = 256;

/// One repository of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// Relative path below the fleet directory, e.g. `small/s001.git`.
    pub name: String,
    /// small, medium, bulk, refs, empty, private
    pub kind: String,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    /// The directory the servers serve (a private copy: the run mutates it).
    pub dir: PathBuf,
    pub repos: Vec<Repo>,
    pub cache_key: String,
}

impl Fleet {
    /// `n` repositories of their own URL, cheap at any number: `copies/KIND/cNNNNN.git`, each a
    /// symlink (on the server side) to one of the repositories of `kind`, in turn. Each is a
    /// separate mirror for gitfleet and for git.
    pub fn copies_of(&self, kind: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let seeds = self.of_kind(&[kind]);
        if seeds.is_empty() {
            anyhow::bail!("the fleet has no {kind} repositories to copy");
        }
        let dir = self.dir.join("copies").join(kind);
        std::fs::create_dir_all(&dir)?;
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("c{i:05}.git");
            let link = dir.join(&name);
            if !link.exists() {
                let target = Path::new("../..").join(&seeds[i % seeds.len()].name);
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(|e| anyhow::anyhow!("linking {}: {e}", link.display()))?;
            }
            names.push(format!("copies/{kind}/{name}"));
        }
        Ok(names)
    }

    pub fn of_kind(&self, kinds: &[&str]) -> Vec<&Repo> {
        self.repos
            .iter()
            .filter(|r| kinds.contains(&r.kind.as_str()))
            .collect()
    }

    /// One new commit on main of each repository named (relative paths).
    pub fn mutate(&self, names: &[String]) -> anyhow::Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        run_ok(
            Command::new("python3")
                .arg(script_path())
                .arg("mutate")
                .arg(&self.dir)
                .args(names),
        )?;
        Ok(())
    }
}

/// FNV-1a, stable across Rust versions (the std hasher is not).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xffu8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The cached pristine fleet for `spec`, built on first use.
fn cached(cache_root: &Path, spec: FleetSpec) -> anyhow::Result<(PathBuf, String)> {
    let args = spec.args().join(" ");
    let key = format!("{:016x}", fnv64(&[SCRIPT, args.as_bytes()]));
    let dest = cache_root.join(&key);
    if dest.join("manifest.json").is_file() {
        return Ok((dest, key));
    }
    std::fs::create_dir_all(cache_root)
        .with_context(|| format!("creating {}", cache_root.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!("{key}.building-"))
        .tempdir_in(cache_root)
        .context("creating a staging directory for the fleet")?;
    let built = staging.path().join("fleet");
    eprintln!("bench: generating the fleet ({}) ...", spec.describe());
    let started = std::time::Instant::now();
    run_ok(
        Command::new("python3")
            .arg(script_path())
            .arg("init")
            .arg(&built)
            .args(spec.args()),
    )
    .context("the fleet generator failed (needs python3 and git)")?;
    eprintln!(
        "bench: fleet generated in {:.1}s, cached in {}",
        started.elapsed().as_secs_f64(),
        dest.display()
    );
    if std::fs::rename(&built, &dest).is_err() && !dest.join("manifest.json").is_file() {
        bail!("could not move the fleet into {}", dest.display());
    }
    Ok((dest, key))
}

/// A private copy of the fleet in `work` (served, and mutated by the run).
pub fn prepare(cache_root: &Path, work: &Path, spec: FleetSpec) -> anyhow::Result<Fleet> {
    let (pristine, cache_key) = cached(cache_root, spec)?;
    let dir = work.join("served");
    run_ok(Command::new("cp").arg("-a").arg(&pristine).arg(&dir))?;
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).context("reading the fleet manifest")?,
    )?;
    let repos = manifest["repos"]
        .as_array()
        .context("manifest without repos")?
        .iter()
        .map(|r| Repo {
            name: r["name"].as_str().unwrap_or_default().to_string(),
            kind: r["kind"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    Ok(Fleet {
        dir,
        repos,
        cache_key,
    })
}
