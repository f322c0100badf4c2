//! Freshness: `gitfleet serve` keeping a fleet fresh by itself (issue 11).
//!
//! Three serve processes, each on a root of its own, against the same git daemon:
//! - **webhooks**: the small repositories tracked with the default schedule (nothing due during
//!   the run), a commit pushed upstream on some of them at once, each followed by its webhook
//!   (`POST /hooks/sync`); the lag is from a webhook's request to the mirror holding the commit.
//! - **polling**: the same repositories with `--min-interval = --max-interval = I`: the CPU that
//!   serve spends per 1,000 scheduled checks of unchanged repositories (serve's own user+system
//!   time, the git daemon not counted, divided by the `synced` lines serve printed meanwhile),
//!   then commits pushed upstream with no webhook, and the lag until the scheduler brings them.
//! - **idle**: many tracked repositories (URLs of their own, served from symlinks to the small
//!   repositories), the default schedule; serve's CPU and memory while nothing is due.
//!
//! The mirrors are read directly (`refs/heads/main`, loose or packed) every few milliseconds:
//! no process is started per look, so the watching costs next to nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gitfleet_tests::{free_port, http_post};
use serde_json::{Value, json};

use crate::fleet::Fleet;
use crate::procs::{KillOnDrop, check_interrupted, peak_rss_kib, process_cpu, run_ok};
use crate::report::{Target, percentile};
use crate::runs::{Env, parse_tasks};

/// How big the freshness runs are.
#[derive(Debug, Clone, Copy)]
pub struct FreshnessSpec {
    /// Small repositories tracked by the webhook and polling runs.
    pub repos: usize,
    /// Of those, how many get a commit upstream at once.
    pub pushed: usize,
    /// The fixed interval of the polling run.
    pub poll_interval: Duration,
    /// How long the polling run's CPU is measured.
    pub cost_window: Duration,
    /// Repositories tracked by the idle run.
    pub tracked: usize,
    /// How long the idle run's CPU is measured.
    pub idle_window: Duration,
}

/// The webhook secret of every serve the runs start.
const SECRET: &str = "bench-webhook-secret";

/// Batches at least this big are judged against the targets; smaller ones are shown.
const MIN_PUSHED_JUDGED: usize = 20;
const MIN_CHECKS_JUDGED: u64 = 500;

/// The three runs; the JSON goes into the report under `freshness`.
pub fn run(
    env: &Env,
    fleet: &Fleet,
    git_url: &dyn Fn(&str) -> String,
    spec: FreshnessSpec,
) -> anyhow::Result<Value> {
    let small: Vec<String> = fleet
        .of_kind(&["small"])
        .into_iter()
        .take(spec.repos)
        .map(|r| r.name.clone())
        .collect();
    if small.is_empty() {
        bail!("the fleet has no small repositories to keep fresh");
    }
    let pushed = every_nth(&small, spec.pushed);

    let webhook = webhook_lag(env, fleet, git_url, &small, &pushed)?;
    let polling = polling(env, fleet, git_url, &small, &pushed, spec)?;
    let idle = idle(env, fleet, git_url, spec)?;
    Ok(json!({"webhook": webhook, "polling": polling, "idle": idle}))
}

/// `n` names spread over `names`.
fn every_nth(names: &[String], n: usize) -> Vec<String> {
    let step = (names.len() / n.max(1)).max(1);
    names.iter().step_by(step).take(n).cloned().collect()
}

fn webhook_lag(
    env: &Env,
    fleet: &Fleet,
    git_url: &dyn Fn(&str) -> String,
    small: &[String],
    pushed: &[String],
) -> anyhow::Result<Value> {
    let serve = Serve::start(env, "fresh-webhook", &[])?;
    let mirrors = serve.mirror(env, small, git_url)?;
    fleet.mutate(pushed)?;
    let expected = upstream_commits(fleet, pushed)?;
    let mut waiting = Vec::new();
    for (name, commit) in pushed.iter().zip(expected) {
        let body = json!({"urls": [git_url(name)]}).to_string();
        let sent = Instant::now();
        let (status, reply) = http_post(
            serve.port,
            "/hooks/sync",
            &[("Authorization", &format!("Bearer {SECRET}"))],
            body.as_bytes(),
        );
        if status != 202 && status != 200 {
            bail!("the webhook for {name} was answered {status}: {reply}");
        }
        waiting.push(Waiting {
            mirror: mirrors.path_of(name)?,
            commit,
            since: sent,
        });
    }
    let lags = wait_for_commits(waiting, env.timeout)?;
    serve.stop()?;
    Ok(json!({
        "tracked": small.len(),
        "pushed": pushed.len(),
        "p50_s": percentile(&lags, 50.0),
        "p99_s": percentile(&lags, 99.0),
        "max_s": lags.iter().copied().fold(0.0, f64::max),
    }))
}

fn polling(
    env: &Env,
    fleet: &Fleet,
    git_url: &dyn Fn(&str) -> String,
    small: &[String],
    pushed: &[String],
    spec: FreshnessSpec,
) -> anyhow::Result<Value> {
    let interval = format!("{}s", spec.poll_interval.as_secs().max(1));
    let serve = Serve::start(
        env,
        "fresh-polling",
        &["--min-interval", &interval, "--max-interval", &interval],
    )?;
    let mirrors = serve.mirror(env, small, git_url)?;

    // The cost of checking unchanged repositories: every sync now finds nothing new.
    let (cpu_before, checks_before) = (serve.cpu()?, serve.synced_lines()?);
    sleep_checked(spec.cost_window)?;
    let (cpu_after, checks_after) = (serve.cpu()?, serve.synced_lines()?);
    let checks = checks_after.saturating_sub(checks_before);
    let cpu = cpu_after - cpu_before;
    let cpu_per_1000 = (checks > 0).then(|| cpu / checks as f64 * 1000.0);

    // Polling lag: commits upstream, no webhook.
    fleet.mutate(pushed)?;
    let pushed_at = Instant::now();
    let waiting = pushed
        .iter()
        .zip(upstream_commits(fleet, pushed)?)
        .map(|(name, commit)| {
            Ok(Waiting {
                mirror: mirrors.path_of(name)?,
                commit,
                since: pushed_at,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lags = wait_for_commits(waiting, env.timeout)?;
    serve.stop()?;
    Ok(json!({
        "tracked": small.len(),
        "interval_s": spec.poll_interval.as_secs_f64(),
        "window_s": spec.cost_window.as_secs_f64(),
        "checks": checks,
        "cpu_s": cpu,
        "cpu_s_per_1000_checks": cpu_per_1000,
        "pushed": pushed.len(),
        "lag_p50_s": percentile(&lags, 50.0),
        "lag_p99_s": percentile(&lags, 99.0),
    }))
}

fn idle(
    env: &Env,
    fleet: &Fleet,
    git_url: &dyn Fn(&str) -> String,
    spec: FreshnessSpec,
) -> anyhow::Result<Value> {
    let tracked = fleet.copies_of("small", spec.tracked)?;
    let serve = Serve::start(env, "fresh-idle", &[])?;
    let started = Instant::now();
    serve.mirror(env, &tracked, git_url)?;
    let mirror_s = started.elapsed().as_secs_f64();
    // Let the last writes and the scheduler's first look settle.
    sleep_checked(Duration::from_secs(2))?;
    let cpu_before = serve.cpu()?;
    sleep_checked(spec.idle_window)?;
    let cpu = serve.cpu()? - cpu_before;
    let rss_kib = serve.rss_kib()?;
    let peak_kib = peak_rss_kib(serve.pid()).unwrap_or(0);
    serve.stop()?;
    Ok(json!({
        "tracked": tracked.len(),
        "mirror_s": mirror_s,
        "window_s": spec.idle_window.as_secs_f64(),
        "cpu_s": cpu,
        "cpu_percent": cpu / spec.idle_window.as_secs_f64() * 100.0,
        "rss_mib": rss_kib as f64 / 1024.0,
        "peak_mib": peak_kib as f64 / 1024.0,
    }))
}

/// One `gitfleet serve` on a root of its own, with webhooks on a free port.
struct Serve {
    child: KillOnDrop,
    root: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Serve {
    fn start(env: &Env, name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let root = env.work.join(name);
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let log_name = format!("{name}-serve.log");
        let mut cmd = env.gitfleet();
        cmd.arg("--root")
            .arg(&root)
            .args(["serve", "-j", &env.concurrency.to_string()])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("GITFLEET_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(env.log(&log_name)?);
        let child = KillOnDrop(
            cmd.spawn()
                .with_context(|| format!("starting gitfleet serve for {name}"))?,
        );
        let mut serve = Serve {
            child,
            root,
            port,
            log: env.logs.join(log_name),
        };
        let socket = serve.root.join(".gitfleet/serve.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            check_interrupted()?;
            if let Some(status) = serve.child.0.try_wait()? {
                bail!("gitfleet serve for {name} exited with {status}; see logs/{name}-serve.log");
            }
            if Instant::now() > deadline {
                bail!("gitfleet serve for {name} did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(serve)
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn cpu(&self) -> anyhow::Result<f64> {
        process_cpu(self.pid()).context("reading serve's CPU time")
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("reading serve's resident memory")
    }

    /// Syncs serve finished (one `synced` line each on its standard error).
    fn synced_lines(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(&self.log)?;
        Ok(text.lines().filter(|l| l.starts_with("synced ")).count() as u64)
    }

    /// `gitfleet mirror` on the served root (handed to serve over its socket); every one must
    /// complete.
    fn mirror(
        &self,
        env: &Env,
        names: &[String],
        git_url: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<Mirrors> {
        let list = self.root.with_extension("txt");
        let text: String = names.iter().map(|n| format!("{}\n", git_url(n))).collect();
        std::fs::write(&list, text)?;
        let out = run_ok(
            env.gitfleet()
                .arg("--root")
                .arg(&self.root)
                .args(["mirror", "--file"])
                .arg(&list)
                .stderr(Stdio::null()),
        )
        .context("mirroring through gitfleet serve")?;
        drop(out);
        let status = run_ok(
            env.gitfleet()
                .arg("--root")
                .arg(&self.root)
                .args(["status", "--json"]),
        )?;
        let tasks = parse_tasks(&status)?;
        let mut paths = Vec::new();
        for name in names {
            let url = git_url(name);
            let task = tasks
                .iter()
                .find(|t| t["url"] == json!(url))
                .with_context(|| format!("no task for {url}"))?;
            if task["status"]["status_type"] != json!("completed") {
                bail!("{url} did not mirror: {}", task["status"]);
            }
            let path = Path::new(task["path"].as_str().unwrap_or_default());
            paths.push((name.clone(), self.root.join(path)));
        }
        Ok(Mirrors { paths })
    }

    /// SIGTERM, and the drain must end.
    fn stop(mut self) -> anyhow::Result<()> {
        run_ok(Command::new("kill").args(["-TERM", &self.pid().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                if !status.success() {
                    bail!("gitfleet serve ended with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gitfleet serve did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where each mirrored repository is.
struct Mirrors {
    paths: Vec<(String, PathBuf)>,
}

impl Mirrors {
    fn path_of(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.paths
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("{name} was not mirrored"))
    }
}

/// A mirror that should come to hold `commit` on main; `since` is when that became possible.
struct Waiting {
    mirror: PathBuf,
    commit: String,
    since: Instant,
}

/// Seconds each waiting mirror took, in no particular order.
fn wait_for_commits(mut waiting: Vec<Waiting>, timeout: Duration) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + timeout;
    let mut lags = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        check_interrupted()?;
        waiting.retain(|w| {
            let arrived = main_commit(&w.mirror).is_some_and(|c| c == w.commit);
            if arrived {
                lags.push(w.since.elapsed().as_secs_f64());
            }
            !arrived
        });
        if Instant::now() > deadline {
            bail!(
                "{} mirror(s) never got their new commit, e.g. {}",
                waiting.len(),
                waiting[0].mirror.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(lags)
}

/// The commit on main of each upstream repository.
fn upstream_commits(fleet: &Fleet, names: &[String]) -> anyhow::Result<Vec<String>> {
    names
        .iter()
        .map(|name| {
            main_commit(&fleet.dir.join(name))
                .with_context(|| format!("{name} has no main branch upstream"))
        })
        .collect()
}

/// `refs/heads/main` of a bare repository, loose or packed.
fn main_commit(repo: &Path) -> Option<String> {
    if let Ok(loose) = std::fs::read_to_string(repo.join("refs/heads/main")) {
        return Some(loose.trim().to_string());
    }
    let packed = std::fs::read_to_string(repo.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        l.strip_suffix(" refs/heads/main")
            .map(|id| id.trim().to_string())
    })
}

fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    Ok(())
}

/// Issue 11's targets, judged on batches big enough to mean something.
pub fn targets(freshness: &Value) -> Vec<Target> {
    let webhook = &freshness["webhook"];
    let pushed = webhook["pushed"].as_u64().unwrap_or(0) as usize;
    let p99 = webhook["p99_s"].as_f64();
    let polling = &freshness["polling"];
    let checks = polling["checks"].as_u64().unwrap_or(0);
    let per_1000 = polling["cpu_s_per_1000_checks"].as_f64();
    vec![
        Target {
            name: "webhook lag p99 <= 2 s (20 of 200 pushed at once)".into(),
            met: p99
                .filter(|_| pushed >= MIN_PUSHED_JUDGED)
                .map(|p| p <= 2.0),
            detail: p99.map_or("-".into(), |p| {
                format!(
                    "p99 {p:.2}s, p50 {:.2}s ({pushed} pushed of {}{})",
                    webhook["p50_s"].as_f64().unwrap_or(0.0),
                    webhook["tracked"],
                    if pushed >= MIN_PUSHED_JUDGED {
                        ""
                    } else {
                        "; too few to judge"
                    }
                )
            }),
        },
        Target {
            name: "<= 1.5 CPU s per 1,000 unchanged repositories checked".into(),
            met: per_1000
                .filter(|_| checks >= MIN_CHECKS_JUDGED)
                .map(|c| c <= 1.5),
            detail: per_1000.map_or("-".into(), |c| {
                format!(
                    "{c:.2} s ({checks} checks in {:.0}s at a {:.0}s interval{})",
                    polling["window_s"].as_f64().unwrap_or(0.0),
                    polling["interval_s"].as_f64().unwrap_or(0.0),
                    if checks >= MIN_CHECKS_JUDGED {
                        ""
                    } else {
                        "; too few to judge"
                    }
                )
            }),
        },
    ]
}

/// The rows of the report's freshness table.
pub fn summary_rows(freshness: &Value) -> Vec<(String, String)> {
    let w = &freshness["webhook"];
    let p = &freshness["polling"];
    let i = &freshness["idle"];
    let s = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.2}"));
    vec![
        (
            format!(
                "Webhook lag, {} of {} tracked pushed at once, each followed by its webhook (p50 / p99)",
                w["pushed"], w["tracked"]
            ),
            format!("{} s / {} s", s(&w["p50_s"]), s(&w["p99_s"])),
        ),
        (
            format!(
                "Polling lag, no webhooks, {} pushed, interval {} s (p50 / p99)",
                p["pushed"], p["interval_s"]
            ),
            format!("{} s / {} s", s(&p["lag_p50_s"]), s(&p["lag_p99_s"])),
        ),
        (
            format!(
                "serve CPU per 1,000 unchanged repositories checked ({} checks of {} repositories)",
                p["checks"], p["tracked"]
            ),
            format!("{} s", s(&p["cpu_s_per_1000_checks"])),
        ),
        (
            format!(
                "serve idle between passes, {} tracked repositories ({} s window)",
                i["tracked"], i["window_s"]
            ),
            format!(
                "{} % CPU, {} MiB resident (peak {} MiB while mirroring them)",
                s(&i["cpu_percent"]),
                s(&i["rss_mib"]),
                s(&i["peak_mib"])
            ),
        ),
    ]
}
