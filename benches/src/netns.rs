//! Nodes on separate "hosts": one network namespace per node, each linked to a server namespace
//! by a veth pair with a `tc tbf` bandwidth limit on both ends. The bridge lives inside the
//! server namespace, so nothing is added to the host's own network. Everything is deleted on
//! drop, and namespaces left by a benchmark that was killed are removed at the next start.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::procs::{is_root, run_ok};
use crate::report::Row;
use crate::runs::{Cluster, Env, Item};
use crate::servers::{Forwarder, Servers};

const PREFIX: &str = "gfb-";
pub const SERVER_IP: &str = "10.231.0.1";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args(args)).map(|_| ())
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("tc").args(args)).map(|_| ())
}

/// Removes namespaces of benchmark runs whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

#[derive(Debug)]
pub struct Topology {
    pub server: String,
    pub nodes: Vec<String>,
    created: Vec<String>,
}

impl Topology {
    /// A server namespace and `nodes` node namespaces, each node limited to `rate` (tc syntax,
    /// e.g. `20mbit`) in both directions.
    pub fn create(nodes: usize, rate: &str) -> anyhow::Result<Topology> {
        if !is_root() {
            bail!("network namespaces need root (this process is not)");
        }
        remove_stale();
        let pid = std::process::id();
        let mut topo = Topology {
            server: format!("{PREFIX}{pid}-srv"),
            nodes: Vec::new(),
            created: Vec::new(),
        };
        let s = topo.server.clone();
        ip(&["netns", "add", &s]).context("`ip netns add` failed")?;
        topo.created.push(s.clone());
        ip(&["-n", &s, "link", "set", "lo", "up"])?;
        ip(&["-n", &s, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &s, "link", "set", "br0", "up"])?;
        for k in 1..=nodes {
            let n = format!("{PREFIX}{pid}-n{k}");
            ip(&["netns", "add", &n])?;
            topo.created.push(n.clone());
            topo.nodes.push(n.clone());
            let veth = format!("v{k}");
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &s, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &n,
            ])
            .context("creating a veth pair")?;
            ip(&["-n", &s, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &s, "link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("10.231.0.{}/24", 10 + k),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &n, "link", "set", "eth0", "up"])?;
            for (ns, dev) in [(n.as_str(), "eth0"), (s.as_str(), veth.as_str())] {
                tc(&[
                    "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                    "32kbit", "latency", "400ms",
                ])
                .context("`tc qdisc add ... tbf` failed")?;
            }
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// `gitfleet-bench probe HOST:PORT`: exits 0 when a TCP connection succeeds.
pub fn probe_main(addr: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse().context("probe address")?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(())
}

/// What the orchestrator hands to the process it starts inside the server namespace.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub gitfleet: PathBuf,
    pub served: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub concurrency: usize,
    pub timeout: Duration,
    pub node_namespaces: Vec<String>,
    pub node_counts: Vec<usize>,
    /// (scenario, repository names)
    pub batches: Vec<(String, Vec<String>)>,
    pub out: PathBuf,
}

impl ChildConfig {
    pub fn to_json(&self) -> Value {
        json!({
            "gitfleet": self.gitfleet,
            "served": self.served,
            "work": self.work,
            "logs": self.logs,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout.as_secs(),
            "node_namespaces": self.node_namespaces,
            "node_counts": self.node_counts,
            "batches": self.batches.iter().map(|(s, n)| json!({"scenario": s, "names": n})).collect::<Vec<_>>(),
            "out": self.out,
        })
    }

    pub fn from_json(v: &Value) -> ChildConfig {
        let path = |k: &str| PathBuf::from(v[k].as_str().unwrap_or_default());
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ChildConfig {
            gitfleet: path("gitfleet"),
            served: path("served"),
            work: path("work"),
            logs: path("logs"),
            concurrency: v["concurrency"].as_u64().unwrap_or(8) as usize,
            timeout: Duration::from_secs(v["timeout_s"].as_u64().unwrap_or(600)),
            node_namespaces: strings(&v["node_namespaces"]),
            node_counts: v["node_counts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_u64())
                        .map(|n| n as usize)
                        .collect()
                })
                .unwrap_or_default(),
            batches: v["batches"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            (
                                b["scenario"].as_str().unwrap_or_default().to_string(),
                                strings(&b["names"]),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            out: path("out"),
        }
    }
}

/// `gitfleet-bench netns-child CONFIG`: runs inside the server namespace. Serves the fleet,
/// forwards the server address to the loopback-only test servers, starts clusters of 1..N nodes
/// in the node namespaces and mirrors each batch; writes the rows to `out`.
pub fn child_main(
    rt: &tokio::runtime::Handle,
    config_path: &std::path::Path,
) -> anyhow::Result<()> {
    let config = ChildConfig::from_json(&serde_json::from_slice(&std::fs::read(config_path)?)?);
    let env = Env {
        gitfleet: config.gitfleet.clone(),
        work: config.work.clone(),
        logs: config.logs.clone(),
        concurrency: config.concurrency,
        timeout: config.timeout,
        rt: rt.clone(),
    };
    let servers = Servers::start(&config.served, env.log("servers.log")?)?;
    let _daemon = Forwarder::start(SERVER_IP, servers.daemon_port, servers.daemon_port)?;
    // Can the node namespaces reach the server namespace?
    let exe = std::env::current_exe()?;
    for ns in &config.node_namespaces {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .arg("probe")
            .arg(format!("{SERVER_IP}:{}", servers.daemon_port))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "namespace {ns} cannot reach git daemon at {SERVER_IP}:{} through the bridge",
                servers.daemon_port
            );
        }
    }
    let mut rows: Vec<Value> = Vec::new();
    for &n in &config.node_counts {
        let label = format!("netns-cluster-{n}");
        let launchers: Vec<Vec<String>> = config.node_namespaces[..n]
            .iter()
            .map(|ns| vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()])
            .collect();
        eprintln!("bench: {label}: starting {n} node(s) in their namespaces ...");
        let cluster = Cluster::start(&env, &label, &launchers, Some(SERVER_IP))?;
        for (scenario, names) in &config.batches {
            let items: Vec<Item> = names
                .iter()
                .map(|name| Item {
                    name: name.clone(),
                    url: format!("git://{SERVER_IP}:{}/{name}", servers.daemon_port),
                    expect_fail: false,
                })
                .collect();
            crate::procs::settle_disk();
            let (row, _) = cluster.run(&env, scenario, "mirror", &items, env.timeout)?;
            eprintln!(
                "bench: {label} {scenario}: {} ok in {:.1}s",
                row.ok, row.wall_s
            );
            rows.push(row.to_json());
        }
    }
    std::fs::write(&config.out, serde_json::to_vec_pretty(&rows)?)?;
    Ok(())
}

/// Reads the rows a child wrote.
pub fn read_rows(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let v: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    Ok(v.as_array()
        .map(|a| a.iter().map(Row::from_json).collect())
        .unwrap_or_default())
}
