//! The three ways of mirroring a batch of repositories side by side: `git clone --mirror` /
//! `git fetch --prune` at a fixed parallelism (what `xargs -P` does), the embedded `gitfleet`
//! process, and a cluster of `gitfleet node` processes driven by the `gitfleet --nats` client.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gitfleet_tests::{NatsServer, git_command};
use jiff::Timestamp;
use serde_json::Value;
use tokio::runtime::Handle;

use crate::natscount::{self, Counter};
use crate::procs::{
    child_pids_matching, dir_bytes, peak_rss_kib, process_cpu, reaped_children_cpu, run_ok,
    run_watched,
};
use crate::report::{Row, percentile};
use crate::servers::Forwarder;

/// What every run needs.
#[derive(Debug, Clone)]
pub struct Env {
    pub gitfleet: PathBuf,
    /// Roots and URL lists go here.
    pub work: PathBuf,
    /// Logs of every process started (kept after the run).
    pub logs: PathBuf,
    pub concurrency: usize,
    pub timeout: Duration,
    pub rt: Handle,
}

impl Env {
    pub fn gitfleet(&self) -> Command {
        let mut cmd = Command::new(&self.gitfleet);
        for var in [
            "GITFLEET_ROOT",
            "GITFLEET_NATS",
            "GITFLEET_PREFIX",
            "GITFLEET_TOKEN",
            "GITFLEET_USERNAME",
            "GITFLEET_LOG",
            "GITFLEET_NODE_ID",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn log(&self, name: &str) -> anyhow::Result<File> {
        let dir = &self.logs;
        std::fs::create_dir_all(dir)?;
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .with_context(|| format!("opening log {name}"))
    }

    /// Keeps `text` beside the logs (the task records of each batch, for a closer look).
    pub fn keep(&self, name: &str, text: &str) {
        if std::fs::create_dir_all(&self.logs).is_ok() {
            let _ = std::fs::write(self.logs.join(name), text);
        }
    }

    fn url_list(&self, label: &str, items: &[Item]) -> anyhow::Result<PathBuf> {
        let dir = self.work.join("lists");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{label}.txt"));
        let text: String = items.iter().map(|i| format!("{}\n", i.url)).collect();
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// One repository URL of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Relative path, unique in the fleet (`small/s001.git`, `missing/git-nope.git`).
    pub name: String,
    pub url: String,
    /// Not found, wrong token: failing is the right outcome.
    pub expect_fail: bool,
}

/// Names of the items a row's run completed.
pub type Completed = Vec<String>;

fn finish_row(row: &mut Row, latencies: &[f64]) {
    row.p50_s = percentile(latencies, 50.0);
    row.p99_s = percentile(latencies, 99.0);
}

// ---------------------------------------------------------------------------------------------
// Baseline: git itself.

#[derive(Debug)]
pub struct Baseline {
    pub root: PathBuf,
}

impl Baseline {
    pub fn mirror(
        &self,
        env: &Env,
        scenario: &str,
        items: &[Item],
    ) -> anyhow::Result<(Row, Completed)> {
        self.batch(env, scenario, items, |item| {
            let mut cmd = git_command();
            cmd.args(["clone", "--mirror", "--quiet", &item.url])
                .arg(self.root.join(&item.name));
            cmd
        })
    }

    pub fn sync(
        &self,
        env: &Env,
        scenario: &str,
        items: &[Item],
    ) -> anyhow::Result<(Row, Completed)> {
        self.batch(env, scenario, items, |item| {
            let mut cmd = git_command();
            cmd.arg("-C")
                .arg(self.root.join(&item.name))
                .args(["fetch", "--prune", "--quiet", "origin"]);
            cmd
        })
    }

    fn batch(
        &self,
        env: &Env,
        scenario: &str,
        items: &[Item],
        command: impl Fn(&Item) -> Command + Sync,
    ) -> anyhow::Result<(Row, Completed)> {
        std::fs::create_dir_all(&self.root)?;
        let queue = Mutex::new(items.iter().collect::<VecDeque<_>>());
        let results = Mutex::new(Vec::new());
        let bytes_before = dir_bytes(&self.root);
        let cpu_before = reaped_children_cpu();
        let start = Instant::now();
        let deadline = start + env.timeout;
        let log_name = format!("baseline-{scenario}.log");
        std::thread::scope(|s| {
            for _ in 0..env.concurrency.max(1) {
                s.spawn(|| {
                    loop {
                        let Some(item) = queue.lock().expect("queue lock").pop_front() else {
                            return;
                        };
                        let mut cmd = command(item);
                        cmd.stdin(Stdio::null()).stdout(Stdio::null());
                        if let Ok(log) = env.log(&log_name) {
                            cmd.stderr(log);
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        let outcome = run_watched(&mut cmd, left);
                        let ok = matches!(&outcome, Ok(o) if o.status.is_some_and(|s| s.success()));
                        let timed_out = matches!(&outcome, Ok(o) if o.timed_out());
                        results.lock().expect("results lock").push((
                            item.clone(),
                            ok,
                            timed_out,
                            start.elapsed().as_secs_f64(),
                        ));
                    }
                });
            }
        });
        let wall = start.elapsed().as_secs_f64();
        crate::procs::check_interrupted()?;
        let mut row = Row {
            scenario: scenario.into(),
            mode: "baseline".into(),
            repos: items.len(),
            wall_s: wall,
            cpu_s: reaped_children_cpu() - cpu_before,
            bytes: dir_bytes(&self.root).saturating_sub(bytes_before),
            ..Row::default()
        };
        let mut latencies = Vec::new();
        let mut completed = Vec::new();
        for (item, ok, timed_out, end) in results.into_inner().expect("results lock") {
            row.timed_out |= timed_out;
            match (ok, item.expect_fail) {
                (true, false) => {
                    row.ok += 1;
                    latencies.push(end);
                    completed.push(item.name.clone());
                }
                (false, true) => row.failed_expected += 1,
                (true, true) => {
                    row.failed_unexpected += 1;
                    row.notes
                        .push(format!("{} succeeded but should have failed", item.name));
                }
                (false, false) => {
                    row.failed_unexpected += 1;
                    row.notes.push(format!(
                        "{} failed (see logs/{log_name}){}",
                        item.name,
                        if timed_out { ", timed out" } else { "" }
                    ));
                }
            }
        }
        finish_row(&mut row, &latencies);
        Ok((row, completed))
    }
}

// ---------------------------------------------------------------------------------------------
// Task records: what gitfleet says happened (embedded and cluster alike).

fn timestamp(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| Timestamp::from_str(s).ok())
}

/// Folds the task records of a batch into `row`: the tasks that finished after `launch`.
/// Submit -> completed is `finished_at - max(created_at, launch)`: a task that existed before
/// (a sync) keeps its original `created_at`.
fn evaluate(row: &mut Row, tasks: &[Value], launch: Timestamp, items: &[Item]) -> Completed {
    let mut latencies = Vec::new();
    let mut completed = Vec::new();
    let mut seen = 0usize;
    for task in tasks {
        let Some(finished) = timestamp(&task["finished_at"]) else {
            continue;
        };
        if finished < launch {
            continue;
        }
        let url = task["url"].as_str().unwrap_or_default();
        let Some(item) = items
            .iter()
            .find(|i| url.ends_with(&format!("/{}", i.name)))
        else {
            continue;
        };
        seen += 1;
        let attempts = task["attempts"].as_u64().unwrap_or(1);
        row.retries += attempts.saturating_sub(1);
        let status = task["status"]["status_type"].as_str().unwrap_or_default();
        match (status == "completed", item.expect_fail) {
            (true, false) => {
                row.ok += 1;
                completed.push(item.name.clone());
                if let Some(node) = task["node"].as_str() {
                    *row.per_node.entry(node.to_string()).or_default() += 1;
                }
                let created = timestamp(&task["created_at"]).unwrap_or(launch).max(launch);
                let span = finished.duration_since(created);
                latencies.push(span.as_secs_f64());
            }
            (false, true) => row.failed_expected += 1,
            (true, true) => {
                row.failed_unexpected += 1;
                row.notes
                    .push(format!("{} succeeded but should have failed", item.name));
            }
            (false, false) => {
                row.failed_unexpected += 1;
                row.notes.push(format!(
                    "{} failed [{}]: {}",
                    item.name,
                    task["error_code"].as_str().unwrap_or("?"),
                    task["status"]["error"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    let missing = items.len().saturating_sub(seen);
    if missing > 0 {
        row.failed_unexpected += missing;
        row.notes.push(format!(
            "{missing} repositories never reached a final state"
        ));
    }
    finish_row(row, &latencies);
    completed
}

pub fn parse_tasks(json: &str) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(json).context("status --json is not JSON")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Embedded: one gitfleet process per batch.

#[derive(Debug)]
pub struct Embedded {
    pub root: PathBuf,
}

impl Embedded {
    /// `verb`: mirror or sync.
    pub fn run(
        &self,
        env: &Env,
        scenario: &str,
        verb: &str,
        items: &[Item],
    ) -> anyhow::Result<(Row, Completed)> {
        let list = env.url_list(&format!("embedded-{scenario}"), items)?;
        let bytes_before = dir_bytes(&self.root);
        let cpu_before = reaped_children_cpu();
        let launch = Timestamp::now();
        let mut cmd = env.gitfleet();
        cmd.arg("--root")
            .arg(&self.root)
            .args([
                verb,
                "-j",
                &env.concurrency.to_string(),
                "--retry-delay",
                "1",
            ])
            .arg("--file")
            .arg(&list)
            .stdout(Stdio::null())
            .stderr(env.log(&format!("embedded-{scenario}.log"))?);
        let outcome = run_watched(&mut cmd, env.timeout)?;
        let mut row = Row {
            scenario: scenario.into(),
            mode: "embedded".into(),
            repos: items.len(),
            wall_s: outcome.wall.as_secs_f64(),
            cpu_s: reaped_children_cpu() - cpu_before,
            bytes: dir_bytes(&self.root).saturating_sub(bytes_before),
            peak_mib: Some(outcome.peak_kib as f64 / 1024.0),
            timed_out: outcome.timed_out(),
            ..Row::default()
        };
        let status = run_ok(
            env.gitfleet()
                .arg("--root")
                .arg(&self.root)
                .args(["status", "--json"]),
        )?;
        env.keep(&format!("embedded-{scenario}-status.json"), &status);
        let completed = evaluate(&mut row, &parse_tasks(&status)?, launch, items);
        Ok((row, completed))
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster: nats-server, N node processes, the --nats client.

#[derive(Debug)]
struct Node {
    id: String,
    child: Child,
    root: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start node number `i` (a command prefix such as `ip netns exec NS`).
pub type Launcher = Vec<String>;

#[derive(Debug)]
pub struct Cluster {
    pub label: String,
    // Dropped in this order: nodes, counter, forwarder, server.
    nodes: Vec<Node>,
    counter: Counter,
    _forwarder: Option<Forwarder>,
    _nats: NatsServer,
    nats_pid: Option<u32>,
    pub client_url: String,
    work: PathBuf,
}

impl Cluster {
    /// `node_host`: the address nodes reach NATS at (None: 127.0.0.1, the server's own).
    pub fn start(
        env: &Env,
        label: &str,
        launchers: &[Launcher],
        node_host: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        let nats = NatsServer::start();
        let server_dir = nats
            .store_dir()
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nats_pid = child_pids_matching(&server_dir).first().copied();
        let client_url = nats.url();
        let (node_url, forwarder) = match node_host {
            Some(host) => (
                format!("nats://{host}:{}", nats.port()),
                Some(Forwarder::start(host, nats.port(), nats.port())?),
            ),
            None => (client_url.clone(), None),
        };
        let counter = Counter::start(&env.rt, &client_url)?;
        let mut nodes = Vec::new();
        for (i, launcher) in launchers.iter().enumerate() {
            let id = format!("node-{}", i + 1);
            let root = env.work.join(format!("{label}/{id}"));
            std::fs::create_dir_all(&root)?;
            let mut cmd = match launcher.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(&env.gitfleet);
                    c
                }
                None => Command::new(&env.gitfleet),
            };
            for var in ["GITFLEET_ROOT", "GITFLEET_NATS", "GITFLEET_TOKEN"] {
                cmd.env_remove(var);
            }
            cmd.args(["--nats", &node_url, "--root"])
                .arg(&root)
                .args([
                    "node",
                    "--node-id",
                    &id,
                    "--allow-private",
                    "--concurrency",
                    &env.concurrency.to_string(),
                    "--retry-delay",
                    "1",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(env.log(&format!("{label}-{id}.log"))?);
            // Its own process group: a Ctrl-C reaches only the benchmark, which stops it.
            cmd.process_group(0);
            let child = cmd.spawn().context("starting a gitfleet node")?;
            nodes.push(Node { id, child, root });
        }
        let mut cluster = Cluster {
            label: label.to_string(),
            nodes,
            counter,
            _forwarder: forwarder,
            _nats: nats,
            nats_pid,
            client_url,
            work: env.work.clone(),
        };
        cluster.wait_for_nodes(env)?;
        Ok(cluster)
    }

    fn wait_for_nodes(&mut self, env: &Env) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            crate::procs::check_interrupted()?;
            for node in &mut self.nodes {
                // A node that exited will never join.
                if let Ok(Some(status)) = node.child.try_wait() {
                    bail!(
                        "node {} of {} exited with {status}; see logs/{}-{}.log",
                        node.id,
                        self.label,
                        self.label,
                        node.id
                    );
                }
            }
            // The counter's `>` subscription answers for every subject as far as NATS'
            // no-responders check goes, so a request sent before the node subscribed waits for
            // the client's whole timeout: bound each attempt.
            let answer = self.work_file("nodes.json");
            let mut cmd = env.gitfleet();
            cmd.args(["--nats", &self.client_url, "nodes", "--json"])
                .stdout(File::create(&answer)?)
                .stderr(Stdio::null());
            let outcome = run_watched(&mut cmd, Duration::from_secs(3))?;
            last = std::fs::read_to_string(&answer).unwrap_or_default();
            if outcome.status.is_some_and(|s| s.success())
                && serde_json::from_str::<Value>(&last)
                    .ok()
                    .and_then(|v| v.as_array().map(Vec::len))
                    == Some(self.nodes.len())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "{}: {} nodes did not join within 60s (last answer: {last})",
            self.label,
            self.nodes.len()
        )
    }

    fn work_file(&self, name: &str) -> PathBuf {
        self.work.join(format!("{}-{name}", self.label))
    }

    fn cpu(&self) -> f64 {
        let nodes: f64 = self
            .nodes
            .iter()
            .filter_map(|n| process_cpu(n.child.id()))
            .sum();
        nodes + self.nats_pid.and_then(process_cpu).unwrap_or(0.0)
    }

    fn bytes(&self) -> u64 {
        self.nodes.iter().map(|n| dir_bytes(&n.root)).sum()
    }

    /// Largest peak resident memory of a node so far, MiB.
    pub fn peak_node_mib(&self) -> Option<f64> {
        self.nodes
            .iter()
            .filter_map(|n| peak_rss_kib(n.child.id()))
            .max()
            .map(|k| k as f64 / 1024.0)
    }

    pub fn run(
        &self,
        env: &Env,
        scenario: &str,
        verb: &str,
        items: &[Item],
        timeout: Duration,
    ) -> anyhow::Result<(Row, Completed)> {
        let list = env.url_list(&format!("{}-{scenario}", self.label), items)?;
        let bytes_before = self.bytes();
        let cpu_before = self.cpu() + reaped_children_cpu();
        let msgs_before = self.counter.snapshot();
        let launch = Timestamp::now();
        let mut cmd = env.gitfleet();
        cmd.args(["--nats", &self.client_url, verb, "--file"])
            .arg(&list)
            .stdout(Stdio::null())
            .stderr(env.log(&format!("{}-{scenario}-client.log", self.label))?);
        let outcome = run_watched(&mut cmd, timeout)?;
        let cpu_after = self.cpu() + reaped_children_cpu();
        let msgs = natscount::delta(&msgs_before, &self.counter.snapshot());
        let mut row = Row {
            scenario: scenario.into(),
            mode: self.label.clone(),
            repos: items.len(),
            wall_s: outcome.wall.as_secs_f64(),
            cpu_s: cpu_after - cpu_before,
            bytes: self.bytes().saturating_sub(bytes_before),
            peak_mib: self.peak_node_mib(),
            nats_msgs: Some(msgs.values().sum()),
            nats_by_family: msgs,
            timed_out: outcome.timed_out(),
            ..Row::default()
        };
        if outcome.timed_out() {
            row.notes.push(format!(
                "the client did not finish within {}s",
                timeout.as_secs()
            ));
        }
        let status = run_ok(
            env.gitfleet()
                .args(["--nats", &self.client_url, "status", "--json"]),
        )?;
        env.keep(&format!("{}-{scenario}-status.json", self.label), &status);
        let completed = evaluate(&mut row, &parse_tasks(&status)?, launch, items);
        Ok((row, completed))
    }

    /// How many nodes it runs.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node CPU seconds by node id (for the JSON report).
    pub fn describe(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for n in &self.nodes {
            out.insert(
                n.id.clone(),
                serde_json::json!({
                    "cpu_s": process_cpu(n.child.id()),
                    "peak_mib": peak_rss_kib(n.child.id()).map(|k| k as f64 / 1024.0),
                }),
            );
        }
        out
    }
}

/// Items by name, for picking the completed ones of an earlier batch.
pub fn select(items: &[Item], names: &[String]) -> Vec<Item> {
    let wanted: HashMap<&str, ()> = names.iter().map(|n| (n.as_str(), ())).collect();
    items
        .iter()
        .filter(|i| wanted.contains_key(i.name.as_str()))
        .cloned()
        .collect()
}
