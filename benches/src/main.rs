//! `gitfleet-bench`: gitfleet against `git clone --mirror`, embedded and as a cluster, on a
//! generated fleet served from 127.0.0.1; plus the control plane alone. See benches/README.md.
//!
//! ```text
//! cargo run --release -p gitfleet-benches -- [--quick] [--smoke] [--out DIR] [-j N]
//!     [--gitfleet PATH] [--skip-netns] [--only control|freshness|scale|many|netns]
//! ```

mod control;
mod fleet;
mod freshness;
mod natscount;
mod netns;
mod procs;
mod report;
mod runs;
mod scale;
mod servers;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

const USAGE: &str = "usage: gitfleet-bench [--quick] [--smoke] [--out DIR] [-j|--concurrency N] \
                     [--gitfleet PATH] [--skip-netns] [--only control|freshness|scale|many|netns]

  --quick        a few minutes: 20 small repositories, 2 medium, 2,000 refs (CI smoke run)
  --smoke        smaller still (5 small, 1 medium, 200 refs; no cluster-2/3, no namespaces)
  --out DIR      where report.json, report.md and command.txt go (default target/bench)
  -j N           repositories at once, for git and gitfleet alike (default 8)
  --gitfleet P   the gitfleet binary to measure (default: built with cargo, same profile)
  --skip-netns   do not try network namespaces
  --only control the control plane alone (no git, nats-server or root needed): prints its
                 JSON to stdout; sizes follow --quick/--smoke, -j is the worker count
  --only freshness  gitfleet serve alone (webhook and polling lag, CPU per 1,000 checks, idle
                 cost): needs git and python3; its JSON to stdout
  --only scale   the cluster's control plane at 100,000 tasks (--quick 10,000, --smoke 1,000):
                 nats-server and one node with instant git work; its JSON to stdout
  --only many    10,000 small repositories (--quick 1,000, --smoke 30) mirrored and synced by
                 one command: git, embedded and a 2-node cluster; the table to stdout
  --only netns   the network-namespace rows alone (root): 1, 2, 3 nodes (--quick 1, 2), each
                 behind its own 20 mbit/s link, and the scaling target; the table to stdout";

fn parse(args: &[String]) -> anyhow::Result<suite::Options> {
    let mut opts = suite::Options {
        quick: false,
        smoke: false,
        out: None,
        concurrency: 8,
        gitfleet: None,
        skip_netns: false,
        command_line: String::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--smoke" => opts.smoke = true,
            "--skip-netns" => opts.skip_netns = true,
            "--out" => opts.out = Some(PathBuf::from(it.next().context("--out needs a DIR")?)),
            "--gitfleet" => {
                opts.gitfleet = Some(PathBuf::from(it.next().context("--gitfleet needs a PATH")?))
            }
            "-j" | "--concurrency" => {
                opts.concurrency = it
                    .next()
                    .context("-j needs a number")?
                    .parse()
                    .context("-j needs a number")?;
                if opts.concurrency == 0 {
                    bail!("-j must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    opts.command_line = format!(
        "cargo run{profile} -p gitfleet-benches --{}{}",
        if shown.is_empty() { "" } else { " " },
        shown.join(" ")
    );
    Ok(opts)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Ctrl-C or SIGTERM: every wait loop bails out and the drops stop what was started.
fn watch_signals(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("bench: interrupted; stopping servers, nodes and namespaces ...");
        procs::set_interrupted();
    });
}

fn real_main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // Internal: the git servers, in a process of their own.
        Some("serve") => {
            let dir = args.get(1).context("serve DIR")?;
            return servers::serve_main(std::path::Path::new(dir));
        }
        // Internal: the registry's memory, in a fresh process.
        Some("registry-memory") => {
            let n: usize = args
                .get(1)
                .context("registry-memory N")?
                .parse()
                .context("registry-memory N")?;
            let rt = runtime()?;
            // Runs of history per task: as many as a record keeps unless given.
            let runs: usize = match args.get(2) {
                Some(runs) => runs.parse().context("registry-memory N [RUNS]")?,
                None => gitfleet_proto::RunRecord::KEPT,
            };
            let result = rt.block_on(control::registry_memory(n, runs))?;
            println!("{result}");
            return Ok(());
        }
        // Internal: the scale run's node, its git work instant.
        Some("scale-node") => {
            let rt = runtime()?;
            return scale::node_main(rt.handle(), &args[1..]);
        }
        // Internal: can this namespace reach HOST:PORT?
        Some("probe") => return netns::probe_main(args.get(1).context("probe HOST:PORT")?),
        // Internal: the cluster runs inside the server namespace.
        Some("netns-child") => {
            let rt = runtime()?;
            watch_signals(&rt);
            let config = args.get(1).context("netns-child CONFIG")?;
            return netns::child_main(rt.handle(), std::path::Path::new(config));
        }
        _ => {}
    }
    let (only, args) = only(&args)?;
    let opts = parse(&args)?;
    let rt = runtime()?;
    watch_signals(&rt);
    match only {
        Some(Only::Control) => run_control(&opts, rt.handle()),
        Some(Only::Freshness) => suite::run_freshness(&opts, rt.handle()),
        Some(Only::Scale) => run_scale(&opts, rt.handle()),
        Some(Only::Many) => suite::run_many_only(&opts, rt.handle()),
        Some(Only::Netns) => suite::run_netns_only(&opts, rt.handle()),
        None => suite::run(&opts, rt.handle()),
    }
}

/// A part of the suite run on its own (`--only PART`).
enum Only {
    Control,
    Freshness,
    Scale,
    Many,
    Netns,
}

/// Takes `--only PART` out of `args`.
fn only(args: &[String]) -> anyhow::Result<(Option<Only>, Vec<String>)> {
    let mut rest = Vec::new();
    let mut only = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--only" {
            only = match it.next().map(String::as_str) {
                Some("control") => Some(Only::Control),
                Some("freshness") => Some(Only::Freshness),
                Some("scale") => Some(Only::Scale),
                Some("many") => Some(Only::Many),
                Some("netns") => Some(Only::Netns),
                other => bail!(
                    "--only needs a part: control, freshness, scale, many or netns (got {})\n{USAGE}",
                    other.unwrap_or("nothing")
                ),
            };
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((only, rest))
}

/// The control-plane benchmark alone, in a temporary directory; its JSON goes to stdout.
fn run_control(opts: &suite::Options, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let spec = if opts.smoke {
        control::ControlSpec::smoke()
    } else if opts.quick {
        control::ControlSpec::quick()
    } else {
        control::ControlSpec::full()
    };
    let work = tempfile::Builder::new()
        .prefix("gitfleet-bench-control-")
        .tempdir()
        .context("creating the work directory")?;
    let result = control::run_all(rt, &spec, work.path(), opts.concurrency)?;
    control::print_summary(&result);
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// The cluster's control plane at scale alone; its JSON goes to stdout.
fn run_scale(opts: &suite::Options, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("gitfleet-bench-scale-")
        .tempdir()
        .context("creating the work directory")?;
    let result = scale::run(
        rt,
        scale::tasks_for(opts.size()),
        work.path(),
        opts.concurrency,
    )?;
    for (measurement, result) in scale::summary_rows(&result) {
        eprintln!("scale: {measurement}: {result}");
    }
    let target = scale::target(&result);
    eprintln!("scale: target {}: {}", target.name, target.detail);
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gitfleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
