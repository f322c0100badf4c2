//! The whole benchmark: fleet, servers, the side-by-side runs, the control plane, the
//! namespace runs, and the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::runtime::Handle;

use crate::control::{self, ControlSpec};
use crate::fleet::{self, FleetSpec};
use crate::freshness::{self, FreshnessSpec};
use crate::netns::{self, ChildConfig, Topology};
use crate::procs::{KillOnDrop, check_interrupted, run_ok};
use crate::report::{self, Row, Target};
use crate::runs::{Baseline, Cluster, Completed, Embedded, Env, Item, select};
use crate::servers::{AUTH_USER, Servers, WRONG_TOKEN};

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub smoke: bool,
    pub out: Option<PathBuf>,
    pub concurrency: usize,
    pub gitfleet: Option<PathBuf>,
    pub skip_netns: bool,
    pub command_line: String,
}

impl Options {
    pub fn size(&self) -> &'static str {
        if self.smoke {
            "smoke"
        } else if self.quick {
            "quick"
        } else {
            "full"
        }
    }
}

struct Plan {
    fleet: FleetSpec,
    control: ControlSpec,
    freshness: FreshnessSpec,
    clusters: Vec<usize>,
    netns_nodes: Vec<usize>,
    /// Fleet kinds mirrored in the namespace runs.
    netns_kinds: Vec<&'static str>,
    /// Copies of the bulk repositories mirrored in the namespace runs (`netns-mirror-spread`):
    /// enough that placement spreads them evenly over the nodes, each network-bound, so the rows
    /// show what each node's own link adds.
    netns_spread: usize,
    timeout: Duration,
    refs_timeout: Duration,
    /// Small repositories of their own URL mirrored by one command (section E).
    many: usize,
}

fn plan(opts: &Options) -> Plan {
    match opts.size() {
        "smoke" => Plan {
            fleet: FleetSpec::smoke(),
            control: ControlSpec {
                dispatch_mem: 1_000,
                dispatch_file: 200,
                progress_events: 50_000,
                memory_tasks: vec![10_000],
            },
            freshness: FreshnessSpec {
                repos: 5,
                pushed: 2,
                poll_interval: Duration::from_secs(2),
                cost_window: Duration::from_secs(6),
                tracked: 30,
                idle_window: Duration::from_secs(3),
            },
            clusters: vec![1],
            netns_nodes: Vec::new(),
            netns_kinds: Vec::new(),
            netns_spread: 0,
            timeout: Duration::from_secs(60),
            refs_timeout: Duration::from_secs(60),
            many: 30,
        },
        "quick" => Plan {
            fleet: FleetSpec::quick(),
            control: ControlSpec {
                dispatch_mem: 10_000,
                dispatch_file: 1_000,
                progress_events: 200_000,
                memory_tasks: vec![100_000],
            },
            freshness: FreshnessSpec {
                repos: 20,
                pushed: 5,
                poll_interval: Duration::from_secs(5),
                cost_window: Duration::from_secs(15),
                tracked: 300,
                idle_window: Duration::from_secs(10),
            },
            clusters: vec![1, 2, 3],
            netns_nodes: vec![1, 2],
            netns_kinds: vec!["medium"],
            netns_spread: 200,
            timeout: Duration::from_secs(180),
            refs_timeout: Duration::from_secs(120),
            many: 1_000,
        },
        _ => Plan {
            fleet: FleetSpec::full(),
            control: ControlSpec {
                dispatch_mem: 50_000,
                dispatch_file: 5_000,
                progress_events: 1_000_000,
                memory_tasks: vec![100_000, 1_000_000],
            },
            freshness: FreshnessSpec {
                repos: 200,
                pushed: 20,
                poll_interval: Duration::from_secs(10),
                cost_window: Duration::from_secs(30),
                tracked: 3_000,
                idle_window: Duration::from_secs(30),
            },
            clusters: vec![1, 2, 3],
            netns_nodes: vec![1, 2, 3],
            netns_kinds: vec!["small", "medium"],
            netns_spread: 900,
            timeout: Duration::from_secs(900),
            refs_timeout: Duration::from_secs(180),
            many: 10_000,
        },
    }
}

/// `target/` and the profile directory the running binary lives in.
fn target_dirs() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("locating gitfleet-bench")?;
    let profile = exe
        .parent()
        .context("binary without a directory")?
        .to_path_buf();
    let target = profile
        .parent()
        .context("binary outside a target directory")?
        .to_path_buf();
    Ok((target, profile))
}

fn gitfleet_binary(opts: &Options, profile: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = &opts.gitfleet {
        return Ok(path.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "gitfleet", "--bin", "gitfleet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let release = profile.file_name().is_some_and(|n| n == "release");
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "bench: building gitfleet ({}) ...",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p gitfleet failed");
    }
    Ok(profile.join("gitfleet"))
}

/// A mirroring side of the comparison.
enum Runner {
    Baseline(Baseline),
    Embedded(Embedded),
    Cluster(Box<Cluster>),
}

impl Runner {
    fn label(&self) -> String {
        match self {
            Runner::Baseline(_) => "baseline".into(),
            Runner::Embedded(_) => "embedded".into(),
            Runner::Cluster(c) => c.label.clone(),
        }
    }

    fn run(
        &self,
        env: &Env,
        scenario: &str,
        sync: bool,
        items: &[Item],
        timeout: Duration,
    ) -> anyhow::Result<(Row, Completed)> {
        check_interrupted()?;
        let env = Env {
            timeout,
            ..env.clone()
        };
        crate::procs::settle_disk();
        let result = match self {
            Runner::Baseline(b) if sync => b.sync(&env, scenario, items),
            Runner::Baseline(b) => b.mirror(&env, scenario, items),
            Runner::Embedded(e) => {
                e.run(&env, scenario, if sync { "sync" } else { "mirror" }, items)
            }
            Runner::Cluster(c) => c.run(
                &env,
                scenario,
                if sync { "sync" } else { "mirror" },
                items,
                timeout,
            ),
        }?;
        let (row, _) = &result;
        eprintln!(
            "bench: {:<10} {:<16} {:>4} repos: {:>4} ok, {} failed ({} unexpected) in {:.2}s",
            row.mode,
            row.scenario,
            row.repos,
            row.ok,
            row.failed_expected + row.failed_unexpected,
            row.failed_unexpected,
            row.wall_s
        );
        for note in row.notes.iter().take(5) {
            eprintln!("bench:     {note}");
        }
        Ok(result)
    }
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "loadavg_at_end": load.trim(),
        "cpus": cpus,
        "cpu_model": model,
        "git": version("git"),
        "nats_server": version("nats-server"),
    })
}

/// Batches smaller than this are not judged on NATS messages per repository.
const MIN_BATCH_FOR_MSGS: usize = 5;

/// What every part of the suite that mirrors needs: the binary, a work directory, the fleet
/// copied into it, and the servers serving it.
struct Setup {
    out_dir: PathBuf,
    work: tempfile::TempDir,
    fleet: fleet::Fleet,
    env: Env,
    servers: Servers,
}

fn set_up(opts: &Options, plan: &Plan, rt: &Handle) -> anyhow::Result<Setup> {
    let (target, profile) = target_dirs()?;
    let gitfleet = gitfleet_binary(opts, &profile)?;
    let out_dir = opts.out.clone().unwrap_or_else(|| target.join("bench"));
    std::fs::create_dir_all(&out_dir)?;
    let work_parent = target.join("bench-work");
    std::fs::create_dir_all(&work_parent)?;
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&work_parent)
        .context("creating the work directory")?;
    let fleet = fleet::prepare(&target.join("bench-fleet"), work.path(), plan.fleet)?;
    let logs = out_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let env = Env {
        gitfleet,
        work: work.path().to_path_buf(),
        logs,
        concurrency: opts.concurrency,
        timeout: plan.timeout,
        rt: rt.clone(),
    };
    let servers = Servers::start(&fleet.dir, env.log("servers.log")?)?;
    Ok(Setup {
        out_dir,
        work,
        fleet,
        env,
        servers,
    })
}

/// Section E: `plan.many` small repositories of their own URL mirrored by one command, then
/// synced by one command, by git (the baseline), embedded and the 2-node cluster (the largest
/// there is below that, in smaller runs), at the same concurrency.
fn run_many(
    env: &Env,
    fleet: &fleet::Fleet,
    git_url: &dyn Fn(&str) -> String,
    plan: &Plan,
    runners: &[Runner],
) -> anyhow::Result<Vec<Row>> {
    let names = fleet.copies_of("small", plan.many)?;
    let items: Vec<Item> = names
        .iter()
        .map(|name| Item {
            name: name.clone(),
            url: git_url(name),
            expect_fail: false,
        })
        .collect();
    let cluster = runners
        .iter()
        .filter_map(|r| match r {
            Runner::Cluster(c) => Some((c.nodes(), r)),
            _ => None,
        })
        .filter(|(nodes, _)| *nodes <= 2)
        .max_by_key(|(nodes, _)| *nodes)
        .map(|(_, r)| r);
    let sides = runners
        .iter()
        .filter(|r| !matches!(r, Runner::Cluster(_)))
        .chain(cluster);
    // A generous bound: many times what one repository takes at this concurrency.
    let timeout = plan.timeout.max(Duration::from_secs(plan.many as u64));
    eprintln!(
        "bench: many: {} small repositories by one command ...",
        items.len()
    );
    let mut rows = Vec::new();
    for runner in sides {
        let (row, ok) = runner.run(env, "mirror-many", false, &items, timeout)?;
        rows.push(row);
        let synced = select(&items, &ok);
        let (row, _) = runner.run(env, "sync-many", true, &synced, timeout)?;
        rows.push(row);
    }
    Ok(rows)
}

/// Section E alone (`--only many`): its rows on stderr and stdout.
pub fn run_many_only(opts: &Options, rt: &Handle) -> anyhow::Result<()> {
    let plan = plan(opts);
    let setup = set_up(opts, &plan, rt)?;
    let port = setup.servers.daemon_port;
    let git_url = |name: &str| format!("git://127.0.0.1:{port}/{name}");
    let work = setup.work.path();
    let mut runners = vec![
        Runner::Baseline(Baseline {
            root: work.join("baseline"),
        }),
        Runner::Embedded(Embedded {
            root: work.join("embedded"),
        }),
    ];
    let nodes = if opts.smoke { 1 } else { 2 };
    let label = format!("cluster-{nodes}");
    runners.push(Runner::Cluster(Box::new(Cluster::start(
        &setup.env,
        &label,
        &vec![Vec::new(); nodes],
        None,
    )?)));
    let rows = run_many(&setup.env, &setup.fleet, &git_url, &plan, &runners)?;
    println!("{}", report::markdown_table(&rows));
    Ok(())
}

/// The namespace rows alone (`--only netns`): the table and the scaling target on stdout.
pub fn run_netns_only(opts: &Options, rt: &Handle) -> anyhow::Result<()> {
    let plan = plan(opts);
    if plan.netns_nodes.is_empty() {
        bail!("--smoke has no namespace runs: use the default size or --quick");
    }
    let setup = set_up(opts, &plan, rt)?;
    let rows = run_netns(&setup.env, &setup.fleet, &plan, setup.work.path())?;
    let target = scaling_target(&rows);
    let out = setup.out_dir.join("netns.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "target": target.to_json(),
        }))?,
    )?;
    eprintln!("bench: rows written to {}", out.display());
    println!("{}", report::markdown_table(&rows));
    println!(
        "target {}: {} ({})",
        target.name,
        match target.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not judged",
        },
        target.detail
    );
    Ok(())
}

/// The freshness part alone (`--only freshness`): its table on stderr, its JSON on stdout.
pub fn run_freshness(opts: &Options, rt: &Handle) -> anyhow::Result<()> {
    let plan = plan(opts);
    let setup = set_up(opts, &plan, rt)?;
    let port = setup.servers.daemon_port;
    let git_url = |name: &str| format!("git://127.0.0.1:{port}/{name}");
    let result = freshness::run(&setup.env, &setup.fleet, &git_url, plan.freshness)?;
    for (measurement, value) in freshness::summary_rows(&result) {
        eprintln!("bench: {measurement}: {value}");
    }
    for target in freshness::targets(&result) {
        eprintln!(
            "bench: target {}: {:?} ({})",
            target.name, target.met, target.detail
        );
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

pub fn run(opts: &Options, rt: &Handle) -> anyhow::Result<()> {
    let started_at = jiff::Timestamp::now();
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let suite_start = Instant::now();
    let plan = plan(opts);
    let Setup {
        out_dir,
        work,
        fleet,
        env,
        servers,
    } = set_up(opts, &plan, rt)?;
    let gitfleet = env.gitfleet.clone();
    let git_url = |name: &str| format!("git://127.0.0.1:{}/{name}", servers.daemon_port);
    let items_of = |kinds: &[&str]| -> Vec<Item> {
        fleet
            .of_kind(kinds)
            .into_iter()
            .map(|r| Item {
                name: r.name.clone(),
                url: git_url(&r.name),
                expect_fail: false,
            })
            .collect()
    };
    let mut small = items_of(&["small", "empty"]);
    small.extend([
        Item {
            name: "missing/git-nope.git".into(),
            url: git_url("missing/git-nope.git"),
            expect_fail: true,
        },
        Item {
            name: "missing/http-nope.git".into(),
            url: format!(
                "http://127.0.0.1:{}/missing/http-nope.git",
                servers.http_port
            ),
            expect_fail: true,
        },
        Item {
            name: "private/secret.git".into(),
            url: format!(
                "http://{AUTH_USER}:{WRONG_TOKEN}@127.0.0.1:{}/private/secret.git",
                servers.http_auth_port
            ),
            expect_fail: true,
        },
    ]);
    let medium = items_of(&["medium"]);
    let refs = items_of(&["refs"]);
    let mut good: Vec<Item> = small.iter().filter(|i| !i.expect_fail).cloned().collect();
    good.extend(medium.iter().cloned());

    eprintln!(
        "bench: {} run: {} ; concurrency {} ; gitfleet {}",
        opts.size(),
        plan.fleet.describe(),
        opts.concurrency,
        gitfleet.display()
    );
    let mut runners = vec![
        Runner::Baseline(Baseline {
            root: work.path().join("baseline"),
        }),
        Runner::Embedded(Embedded {
            root: work.path().join("embedded"),
        }),
    ];
    let mut rows: Vec<Row> = Vec::new();
    let mut completed: HashMap<String, Completed> = HashMap::new();
    let mut cluster_nodes = Vec::new();

    // A: first mirror of small and medium repositories, then a sync with nothing to do.
    // Baseline and embedded first, then the clusters, started lazily so that idle nodes do
    // not sit beside the runs that come before them.
    let mut order: Vec<Option<usize>> = vec![None, None];
    order.extend(plan.clusters.iter().map(|&n| Some(n)));
    for (i, cluster) in order.iter().enumerate() {
        if let Some(n) = cluster {
            let label = format!("cluster-{n}");
            eprintln!("bench: starting {label} ...");
            let launchers = vec![Vec::new(); *n];
            runners.push(Runner::Cluster(Box::new(Cluster::start(
                &env, &label, &launchers, None,
            )?)));
        }
        let runner = &runners[i];
        let label = runner.label();
        let mut done = Vec::new();
        for (scenario, items) in [("mirror-small", &small), ("mirror-medium", &medium)] {
            let (row, ok) = runner.run(&env, scenario, false, items, plan.timeout)?;
            rows.push(row);
            done.extend(ok);
        }
        let sync_items = select(&good, &done);
        let (row, _) = runner.run(&env, "noop-sync", true, &sync_items, plan.timeout)?;
        rows.push(row);
        completed.insert(label, done);
    }

    // B: a commit on 10% of the repositories upstream, then everyone syncs.
    let changed: Vec<String> = good
        .iter()
        .filter(|i| !i.name.starts_with("empty/"))
        .step_by(10)
        .map(|i| i.name.clone())
        .collect();
    eprintln!(
        "bench: upstream change: one commit on {} of {} repositories",
        changed.len(),
        good.len()
    );
    fleet.mutate(&changed)?;
    for runner in &runners {
        let sync_items = select(&good, &completed[&runner.label()]);
        let (mut row, _) = runner.run(&env, "change-sync", true, &sync_items, plan.timeout)?;
        row.notes
            .push(format!("{} repositories changed upstream", changed.len()));
        rows.push(row);
    }

    // E: many small repositories by one command, then a sync of all of them.
    rows.extend(run_many(&env, &fleet, &git_url, &plan, &runners)?);

    // C: the repository with tens of thousands of refs (last: a cluster may not survive it).
    let mut cluster_refs_stuck: Option<String> = None;
    let mut refs_record_bytes = None;
    for runner in &runners {
        let is_cluster = matches!(runner, Runner::Cluster(_));
        if is_cluster && let Some(first) = &cluster_refs_stuck {
            let mut row = Row {
                scenario: "mirror-refs".into(),
                mode: runner.label(),
                repos: refs.len(),
                skipped: true,
                ..Row::default()
            };
            row.notes.push(format!(
                "skipped: {first} never finished it, and every cluster stores the same record"
            ));
            rows.push(row);
            continue;
        }
        let timeout = if is_cluster {
            plan.refs_timeout
        } else {
            plan.timeout
        };
        let (mut row, ok) = runner.run(&env, "mirror-refs", false, &refs, timeout)?;
        if matches!(runner, Runner::Embedded(_)) {
            // What a mirror of it leaves in its task record (a sync has no refs_created).
            refs_record_bytes = refs_record_size(&env, work.path());
        }
        if is_cluster && ok.is_empty() {
            if let Some(bytes) = refs_record_bytes {
                row.notes.push(format!(
                    "the task record is {bytes} bytes of JSON; NATS' default max_payload is \
                     1048576 (see logs/{}-node-*.log)",
                    runner.label()
                ));
            }
            cluster_refs_stuck = Some(runner.label());
        }
        rows.push(row);
        if ok.is_empty() {
            continue;
        }
        let (row, _) = runner.run(&env, "noop-sync-refs", true, &refs, timeout)?;
        rows.push(row);
    }
    for runner in &runners {
        if let Runner::Cluster(c) = runner {
            cluster_nodes.push(json!({"label": c.label, "nodes": c.describe()}));
        }
    }
    drop(runners);

    // D: gitfleet serve keeping the fleet fresh by itself.
    eprintln!("bench: freshness: gitfleet serve with webhooks, polling, and idle ...");
    let freshness = freshness::run(&env, &fleet, &git_url, plan.freshness)?;
    drop(servers);

    // The control plane alone, in process and then through a real nats-server at scale.
    let control = control::run_all(rt, &plan.control, work.path(), opts.concurrency)?;
    let scale = crate::scale::run(
        rt,
        crate::scale::tasks_for(opts.size()),
        work.path(),
        opts.concurrency,
    )?;

    // Nodes on separate "hosts".
    let (netns_rows, netns_status) = if opts.skip_netns || plan.netns_nodes.is_empty() {
        (
            Vec::new(),
            json!({"ran": false, "why": "skipped for this run size or by --skip-netns"}),
        )
    } else {
        match run_netns(&env, &fleet, &plan, work.path()) {
            Ok(rows) => (rows, json!({"ran": true, "rate": NETNS_RATE})),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("bench: network namespaces not used: {why}");
                eprintln!(
                    "bench: the 1/2/3-node cluster rows above share this machine's {} CPU(s): \
                     they show overhead, not scaling",
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(0)
                );
                (Vec::new(), json!({"ran": false, "why": why}))
            }
        }
    };
    rows.extend(netns_rows);

    let mut targets = evaluate_targets(&rows, &control, opts.size() == "full");
    targets.extend(freshness::targets(&freshness));
    targets.push(crate::scale::target(&scale));
    targets.push(scaling_target(&rows));
    let report = json!({
        "command": opts.command_line,
        "size": opts.size(),
        "started_at": started_at.to_string(),
        "seconds": suite_start.elapsed().as_secs_f64(),
        "machine": machine(),
        "loadavg_at_start": load_at_start.trim(),
        "fleet": {"spec": plan.fleet.describe(), "cache_key": fleet.cache_key},
        "concurrency": opts.concurrency,
        "gitfleet": gitfleet,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "control_plane": control,
        "scale": scale,
        "freshness": freshness,
        "refs_record_bytes": refs_record_bytes,
        "cluster_nodes": cluster_nodes,
        "netns": netns_status,
        "targets": targets.iter().map(Target::to_json).collect::<Vec<_>>(),
    });
    let markdown = render_markdown(opts, &rows, &control, &targets, &report);
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.md"), &markdown)?;
    std::fs::write(
        out_dir.join("command.txt"),
        format!("{}\n", opts.command_line),
    )?;
    println!("{markdown}");
    eprintln!(
        "bench: report written to {} ({:.0}s in all)",
        out_dir.display(),
        suite_start.elapsed().as_secs_f64()
    );
    if opts.size() == "full" {
        update_readme(&markdown)?;
    }
    Ok(())
}

const NETNS_RATE: &str = "20mbit";

/// The namespace batch the scaling target is judged on.
const SPREAD: &str = "netns-mirror-spread";

/// Scaling out: with k nodes, each behind its own link, the spread batch's throughput is at
/// least 0.9 x k times one node's.
fn scaling_target(rows: &[Row]) -> Target {
    let name = "netns: k nodes >= 0.9 x k x one node's throughput (copies of bulk repositories)";
    let Some(one) = find(rows, SPREAD, "netns-cluster-1").filter(|r| r.repos_per_min() > 0.0)
    else {
        return Target {
            name: name.into(),
            met: None,
            detail: "not run (needs root for network namespaces; not in --smoke)".into(),
        };
    };
    if one.timed_out || one.failed_unexpected > 0 {
        return Target {
            name: name.into(),
            met: None,
            detail: "the one-node row did not complete every repository: nothing to compare".into(),
        };
    }
    let mut met = Some(true);
    let mut details = vec![format!(
        "1 node: {:.0} repos/min, {:.2} MB/s",
        one.repos_per_min(),
        one.mb_per_s()
    )];
    for row in rows.iter().filter(|r| r.scenario == SPREAD && !r.skipped) {
        let Some(k) = row
            .mode
            .strip_prefix("netns-cluster-")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| *k > 1)
        else {
            continue;
        };
        let efficiency = row.repos_per_min() / (k as f64 * one.repos_per_min());
        let busiest = row.per_node.values().copied().max().unwrap_or(0);
        details.push(format!(
            "{k} nodes: {efficiency:.2} ({:.0} repos/min, {:.2} MB/s; busiest node held {busiest} \
             of {}, an even share is {:.0})",
            row.repos_per_min(),
            row.mb_per_s(),
            row.ok,
            row.ok as f64 / k as f64
        ));
        if efficiency < 0.9 || row.failed_unexpected > 0 || row.timed_out {
            met = Some(false);
        }
    }
    if details.len() == 1 {
        met = None;
    }
    Target {
        name: name.into(),
        met,
        detail: details.join("; "),
    }
}

fn run_netns(
    env: &Env,
    fleet: &fleet::Fleet,
    plan: &Plan,
    work: &Path,
) -> anyhow::Result<Vec<Row>> {
    let max = plan.netns_nodes.iter().copied().max().unwrap_or(0);
    let topo = Topology::create(max, NETNS_RATE)?;
    let netns_work = work.join("netns");
    std::fs::create_dir_all(&netns_work)?;
    let mut batches: Vec<(String, Vec<String>)> = plan
        .netns_kinds
        .iter()
        .map(|kind| {
            (
                format!("netns-mirror-{kind}"),
                fleet
                    .of_kind(&[kind])
                    .iter()
                    .map(|r| r.name.clone())
                    .collect(),
            )
        })
        .collect();
    if plan.netns_spread > 0 {
        batches.push((
            SPREAD.to_string(),
            fleet.copies_of("bulk", plan.netns_spread)?,
        ));
    }
    let out = netns_work.join("rows.json");
    let config = ChildConfig {
        gitfleet: env.gitfleet.clone(),
        served: fleet.dir.clone(),
        work: netns_work.clone(),
        logs: env.logs.join("netns"),
        concurrency: env.concurrency,
        timeout: plan.timeout,
        node_namespaces: topo.nodes.clone(),
        node_counts: plan.netns_nodes.clone(),
        batches,
        out: out.clone(),
    };
    let config_path = netns_work.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config.to_json())?)?;
    eprintln!(
        "bench: network namespaces: server {} and nodes {:?}, {NETNS_RATE} each",
        topo.server, topo.nodes
    );
    let exe = std::env::current_exe()?;
    let child = Command::new("ip")
        .args(["netns", "exec", &topo.server])
        .arg(exe)
        .arg("netns-child")
        .arg(&config_path)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the namespace run")?;
    let mut child = KillOnDrop(child);
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if check_interrupted().is_err() {
            // Let it stop its servers and nodes.
            let _ = Command::new("kill")
                .args(["-TERM", &child.0.id().to_string()])
                .status();
            let _ = child.0.wait();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!("the run inside the namespaces failed ({status}); see above");
    }
    let rows = netns::read_rows(&out)?;
    drop(topo);
    Ok(rows)
}

/// Bytes of the embedded task record of the many-refs repository (what a cluster must fit into
/// one NATS message).
fn refs_record_size(env: &Env, work: &Path) -> Option<u64> {
    let out = run_ok(
        env.gitfleet()
            .arg("--root")
            .arg(work.join("embedded"))
            .args(["status", "--json"]),
    )
    .ok()?;
    let tasks: Value = serde_json::from_str(&out).ok()?;
    tasks.as_array()?.iter().find_map(|t| {
        t["url"]
            .as_str()?
            .contains("many-refs")
            .then(|| serde_json::to_vec(t).map(|b| b.len() as u64).ok())
            .flatten()
    })
}

fn find<'a>(rows: &'a [Row], scenario: &str, mode: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.mode == mode)
}

fn evaluate_targets(rows: &[Row], control: &Value, full: bool) -> Vec<Target> {
    let mut targets = Vec::new();
    let ratio = |scenario: &str, a: &str, b: &str| -> Option<(f64, f64, f64)> {
        let a = find(rows, scenario, a)?;
        let b = find(rows, scenario, b)?;
        (b.repos_per_min() > 0.0).then(|| {
            (
                a.repos_per_min() / b.repos_per_min(),
                a.repos_per_min(),
                b.repos_per_min(),
            )
        })
    };
    let (met, detail) = match ratio("mirror-small", "embedded", "baseline") {
        Some((r, e, b)) => (
            Some(r >= 2.0),
            format!("{r:.2}x ({e:.0} vs {b:.0} repos/min)"),
        ),
        None => (None, "no rows".into()),
    };
    targets.push(Target {
        name: "embedded >= 2x git baseline repos/min, small repositories".into(),
        met,
        detail,
    });
    let (met, detail) = match ratio("mirror-medium", "embedded", "baseline") {
        Some((r, e, b)) => (
            Some(r >= 1.0),
            format!("{r:.2}x ({e:.0} vs {b:.0} repos/min)"),
        ),
        None => (None, "no rows".into()),
    };
    targets.push(Target {
        name: "embedded not slower than git on medium repositories".into(),
        met,
        detail,
    });
    let mut details = Vec::new();
    let mut all = Some(true);
    for scenario in ["mirror-small", "mirror-medium"] {
        match (
            find(rows, scenario, "cluster-1"),
            find(rows, scenario, "embedded"),
        ) {
            (Some(c), Some(e)) if e.wall_s > 0.0 => {
                let slower = c.wall_s / e.wall_s - 1.0;
                details.push(format!(
                    "{scenario}: {:+.0}% ({:.2}s vs {:.2}s)",
                    slower * 100.0,
                    c.wall_s,
                    e.wall_s
                ));
                if slower > 0.10 {
                    all = Some(false);
                }
            }
            _ => all = None,
        }
    }
    targets.push(Target {
        name: "cluster with 1 node within 10% of embedded".into(),
        met: all,
        detail: details.join("; "),
    });
    // Per repository means over a batch of repositories: a batch of one also carries the batch's
    // request and reply and whatever the cluster sends in the background meanwhile (heartbeats,
    // liveness checks, pull requests), which are per second and per node, not per repository.
    // Those rows are shown, not judged.
    let per_repo = |batches: bool| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|r| r.mode == "cluster-1" && r.scenario.starts_with("mirror-"))
            .filter(|r| (r.repos >= MIN_BATCH_FOR_MSGS) == batches)
            // A batch that never finished has no per-repository figure.
            .filter(|r| !r.timed_out && !r.skipped)
            .filter_map(|r| r.msgs_per_repo().map(|m| (r.scenario.clone(), m)))
            .collect()
    };
    let msgs = per_repo(true);
    let worst = msgs
        .iter()
        .map(|(_, m)| *m)
        .fold(None, |acc: Option<f64>, m| {
            Some(acc.map_or(m, |a| a.max(m)))
        });
    let mut detail: Vec<String> = msgs.iter().map(|(s, m)| format!("{s}: {m:.1}")).collect();
    detail.extend(
        per_repo(false)
            .iter()
            .map(|(s, m)| format!("{s}: {m:.0} (a batch of one: shown, not judged)")),
    );
    targets.push(Target {
        name: "<= 20 NATS messages per repository (cluster-1 mirrors)".into(),
        met: worst.map(|w| w <= 20.0),
        detail: detail.join("; "),
    });
    let (met, detail) = match (
        find(rows, "noop-sync", "embedded"),
        find(rows, "noop-sync", "baseline"),
    ) {
        (Some(e), Some(b)) if e.wall_s > 0.0 => {
            let r = b.wall_s / e.wall_s;
            (
                Some(r >= 3.0),
                format!(
                    "{r:.2}x ({:.2}s gitfleet sync vs {:.2}s git fetch loop, {} repos)",
                    e.wall_s, b.wall_s, e.repos
                ),
            )
        }
        _ => (None, "no rows".into()),
    };
    targets.push(Target {
        name: "no-op sync >= 3x faster than a git fetch --prune loop".into(),
        met,
        detail,
    });
    let watched = control["progress"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["watched"] == json!(true)))
        .and_then(|p| p["events_per_s"].as_f64());
    targets.push(Target {
        name: "Registry >= 100k progress events/s".into(),
        met: watched.map(|r| r >= 100_000.0),
        detail: watched.map_or("-".into(), |r| format!("{r:.0} events/s (one watcher)")),
    });
    let largest = control["memory"].as_array().and_then(|a| {
        a.iter()
            .max_by_key(|m| m["tasks"].as_u64().unwrap_or(0))
            .cloned()
    });
    let (met, detail) = match largest {
        Some(m) => {
            let n = m["tasks"].as_u64().unwrap_or(0);
            let per = m["bytes_per_task"].as_f64().unwrap_or(0.0);
            let met = (full || n >= 1_000_000).then_some(per <= 1024.0);
            (met, format!("{per:.0} B/task at {n} tasks"))
        }
        None => (None, "-".into()),
    };
    targets.push(Target {
        name: "Registry <= 1 KiB per task at 1M tasks".into(),
        met,
        detail,
    });
    targets
}

fn render_markdown(
    opts: &Options,
    rows: &[Row],
    control: &Value,
    targets: &[Target],
    report: &Value,
) -> String {
    let mut md = String::new();
    let m = &report["machine"];
    md.push_str(&format!(
        "Run: `{}` ({} size) on {} CPU(s) ({}), {}, {}; concurrency {}; fleet: {}.\n\n",
        opts.command_line,
        opts.size(),
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?"),
        m["nats_server"].as_str().unwrap_or("?"),
        opts.concurrency,
        report["fleet"]["spec"].as_str().unwrap_or("?"),
    ));
    md.push_str(&report::markdown_table(rows));
    md.push_str("\nControl plane (no-op executor):\n\n| measurement | result |\n|---|---|\n");
    for (measurement, result) in control::summary_rows(control) {
        md.push_str(&format!("| {measurement} | {result} |\n"));
    }
    if let Some(bytes) = report["refs_record_bytes"].as_u64() {
        md.push_str(&format!(
            "| Task record of the many-refs repository after its mirror (JSON) | {bytes} bytes |\n"
        ));
    }
    md.push_str(
        "\nThe cluster's control plane at scale (a real nats-server, one node, no-op executor):\n\n\
         | measurement | result |\n|---|---|\n",
    );
    for (measurement, result) in crate::scale::summary_rows(&report["scale"]) {
        md.push_str(&format!("| {measurement} | {result} |\n"));
    }
    md.push_str("\nFreshness (`gitfleet serve`, the git daemon's CPU not counted):\n\n| measurement | result |\n|---|---|\n");
    for (measurement, result) in freshness::summary_rows(&report["freshness"]) {
        md.push_str(&format!("| {measurement} | {result} |\n"));
    }
    let netns = &report["netns"];
    if netns["ran"] == json!(false) {
        md.push_str(&format!(
            "\nNetwork namespaces: not used ({}).\n",
            netns["why"].as_str().unwrap_or("?")
        ));
    }
    md.push_str("\nTargets (issues 4 and 11):\n\n");
    md.push_str(&report::targets_markdown(targets));
    md
}

const README_BEGIN: &str = "<!-- bench-results:begin -->";
const README_END: &str = "<!-- bench-results:end -->";

fn update_readme(markdown: &str) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).context("reading benches/README.md")?;
    let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!("benches/README.md lacks the result markers");
    };
    let updated = format!(
        "{}{README_BEGIN}\n{markdown}\n{}",
        &text[..begin],
        &text[end..]
    );
    std::fs::write(&path, updated)?;
    eprintln!("bench: updated {}", path.display());
    Ok(())
}
