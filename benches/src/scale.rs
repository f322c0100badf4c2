//! The cluster's control plane at scale (issue 13): a real nats-server, one node in a process of
//! its own whose git work is the no-op executor, and a client that submits N repositories, syncs
//! all of them and lists them. Measured: submit and completion rates, the latency of `list`
//! pages at the start, middle and end of the bucket and of a filtered page, a full read of the
//! bucket (what a node does at start), the node's resident memory per task it tracks, and the
//! bucket's bytes per task.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use gitfleet_actors::{FleetConfig, RetryPolicy};
use gitfleet_cluster::{Client, Durability, KvStore, Nats, NodeOptions, Subjects, run_node};
use gitfleet_proto::{ListRequest, Operation, StatusType, SubmitRequest, SyncRequest, TaskUpdate};
use serde_json::{Value, json};

use crate::control::NoopExecutor;
use crate::procs::{KillOnDrop, check_interrupted, rss_kib};

const PREFIX: &str = "gitfleet";
const NODE_ID: &str = "scale-node";
/// How long the run waits for progress before it gives up.
const STALL: Duration = Duration::from_secs(120);

/// Internal (`gitfleet-bench scale-node NATS_URL ROOT J`): a node whose git work is instant,
/// until killed.
pub fn node_main(rt: &tokio::runtime::Handle, args: &[String]) -> anyhow::Result<()> {
    let [url, root, concurrency] = args else {
        anyhow::bail!("scale-node NATS_URL ROOT CONCURRENCY");
    };
    let concurrency: usize = concurrency.parse().context("scale-node CONCURRENCY")?;
    let layout = gitfleet_git::Layout::open(Path::new(root))?;
    rt.block_on(async {
        let nats = Nats::connect(url, subjects()?, NODE_ID).await?;
        let options = NodeOptions {
            node_id: NODE_ID.into(),
            durability: Durability::default(),
            policy: gitfleet_git::Policy::strict(),
            watchers: Vec::new(),
        };
        let config = FleetConfig {
            layout,
            concurrency,
            retry: RetryPolicy::default(),
            node: NODE_ID.into(),
            executor: Arc::new(NoopExecutor),
            schedule: Default::default(),
            hosts: Default::default(),
        };
        run_node(nats, options, config, std::future::pending()).await?;
        anyhow::Ok(())
    })
}

fn subjects() -> anyhow::Result<Subjects> {
    Subjects::new(PREFIX).map_err(anyhow::Error::msg)
}

/// Waits until `want` distinct tasks have been seen completed on `events`, or the bucket says
/// so (events are best effort): the seconds it took from `since`.
async fn wait_completed(
    client: &Client,
    events: &mut async_nats::Subscriber,
    want: usize,
    since: Instant,
) -> anyhow::Result<f64> {
    let mut done = HashSet::new();
    let mut last_progress = Instant::now();
    while done.len() < want {
        check_interrupted()?;
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(message)) => {
                if let Ok(TaskUpdate::State { task }) =
                    gitfleet_proto::from_json::<TaskUpdate>(&message.payload)
                    && task.status.status_type == StatusType::Completed
                    && done.insert(task.id.clone())
                {
                    last_progress = Instant::now();
                }
            }
            Ok(None) => anyhow::bail!("the status subscription ended"),
            Err(_) => {
                // Quiet for a while: ask the bucket (events may have been dropped).
                let completed = client
                    .list_all()
                    .await?
                    .iter()
                    .filter(|t| t.status.status_type == StatusType::Completed)
                    .count();
                if completed >= want {
                    break;
                }
                anyhow::ensure!(
                    last_progress.elapsed() < STALL,
                    "no progress for {STALL:?}: {completed} of {want} completed"
                );
            }
        }
    }
    Ok(since.elapsed().as_secs_f64())
}

/// One `list` page's latency in milliseconds (the median of three), and its `next`.
async fn timed_page(
    client: &Client,
    request: &ListRequest,
) -> anyhow::Result<(f64, Option<String>)> {
    let mut times = Vec::new();
    let mut next = None;
    for _ in 0..3 {
        let started = Instant::now();
        let page = client.list(request).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        next = page.next;
    }
    times.sort_by(f64::total_cmp);
    Ok((times[1], next))
}

/// Tasks of the scale run for a suite size (`smoke`, `quick` or `full`).
pub fn tasks_for(size: &str) -> usize {
    match size {
        "smoke" => 1_000,
        "quick" => 10_000,
        _ => 100_000,
    }
}

/// The node's memory target, judged at 100,000 tasks or more.
pub fn target(scale: &Value) -> crate::report::Target {
    let n = scale["tasks"].as_u64().unwrap_or(0);
    let per = scale["node_bytes_per_task"].as_f64();
    crate::report::Target {
        name: "node <= 2 KiB per tracked repository at 100k tasks".into(),
        met: per.filter(|_| n >= 100_000).map(|per| per <= 2048.0),
        detail: per.map_or("-".into(), |per| format!("{per:.0} B/task at {n} tasks")),
    }
}

pub fn run(
    rt: &tokio::runtime::Handle,
    tasks: usize,
    work: &Path,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let nats = gitfleet_tests::NatsServer::start();
    let root = work.join("scale-node");
    std::fs::create_dir_all(&root)?;
    let exe = std::env::current_exe().context("locating gitfleet-bench")?;
    let log = std::fs::File::create(work.join("scale-node.log"))?;
    let node = KillOnDrop(
        Command::new(exe)
            .args(["scale-node", &nats.url(), &root.to_string_lossy()])
            .arg(concurrency.to_string())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the scale node")?,
    );
    let pid = node.0.id();
    rt.block_on(async {
        let client = Client::connect(&nats.url(), PREFIX).await?;
        let started = Instant::now();
        while client.nodes().await.map_or(true, |r| r.nodes.is_empty()) {
            check_interrupted()?;
            anyhow::ensure!(started.elapsed() < STALL, "the scale node did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Settled: the node's memory before it tracks anything.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = rss_kib(pid);
        let mut events = client.watch().await?;

        let repositories: Vec<String> = (0..tasks)
            .map(|i| format!("https://git.example/org-{}/repo-{i}", i % 100))
            .collect();
        eprintln!("bench: scale: submitting {tasks} repositories ...");
        let started = Instant::now();
        let reply = client
            .submit(&SubmitRequest {
                repositories,
                operation: Operation::Mirror,
                worktree: false,
                idempotency_key: None,
            })
            .await?;
        let submit_s = started.elapsed().as_secs_f64();
        let refused = reply.tasks.iter().filter(|t| t.error.is_some()).count();
        anyhow::ensure!(refused == 0, "{refused} repositories refused");
        let mirror_s = wait_completed(&client, &mut events, tasks, started).await?;
        // Settled again: what the node holds for N tracked repositories.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(pid);

        eprintln!("bench: scale: syncing all {tasks} ...");
        let started = Instant::now();
        let synced = client.sync(&SyncRequest::default()).await?;
        let sync_request_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            synced.tasks.len() == tasks && synced.tasks.iter().all(|t| t.error.is_none()),
            "a sync of everything named {} of {tasks} tasks (or refused some)",
            synced.tasks.len()
        );
        let sync_s = wait_completed(&client, &mut events, tasks, started).await?;

        eprintln!("bench: scale: listing ...");
        let page = ListRequest {
            limit: Some(gitfleet_cluster::api::MAX_PAGE),
            ..ListRequest::default()
        };
        let (first_ms, mut next) = timed_page(&client, &page).await?;
        // Follow the cursor to the middle of the bucket, then time a page there.
        let pages = tasks.div_ceil(gitfleet_cluster::api::MAX_PAGE);
        for _ in 1..pages / 2 {
            next = client
                .list(&ListRequest {
                    after: next.clone(),
                    ..page.clone()
                })
                .await?
                .next;
        }
        let (middle_ms, _) = timed_page(
            &client,
            &ListRequest {
                after: next,
                ..page.clone()
            },
        )
        .await?;
        let (filtered_ms, _) = timed_page(
            &client,
            &ListRequest {
                status: Some(StatusType::Failed),
                ..page.clone()
            },
        )
        .await?;
        let started = Instant::now();
        let listed = client.list_all().await?.len();
        let list_all_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(listed == tasks, "listed {listed} of {tasks}");

        // What a node reads when it starts (its schedules), and what the bucket stores.
        let reader = Nats::connect(&nats.url(), subjects()?, "scale-reader").await?;
        let store = KvStore::new(reader.tasks().await?);
        let started = Instant::now();
        let mut read = 0usize;
        store.scan_all(|_, _| read += 1).await?;
        let scan_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(read == tasks, "a full read met {read} of {tasks}");
        let bucket_bytes = store.stored_bytes().await?;

        let per_task = |kib: u64| (kib * 1024) as f64 / tasks.max(1) as f64;
        Ok(json!({
            "tasks": tasks,
            "concurrency": concurrency,
            "submit_s": submit_s,
            "submit_per_s": tasks as f64 / submit_s,
            "mirror_completed_s": mirror_s,
            "mirror_per_s": tasks as f64 / mirror_s,
            "sync_all_request_s": sync_request_s,
            "sync_all_completed_s": sync_s,
            "sync_per_s": tasks as f64 / sync_s,
            "list_first_page_ms": first_ms,
            "list_middle_page_ms": middle_ms,
            "list_filtered_page_ms": filtered_ms,
            "list_all_s": list_all_s,
            "full_read_s": scan_s,
            "node_rss_before_kib": rss_before,
            "node_rss_after_kib": rss_after,
            "node_bytes_per_task": per_task(rss_after.saturating_sub(rss_before)),
            "bucket_bytes_per_task": bucket_bytes as f64 / tasks.max(1) as f64,
        }))
    })
}

/// The headline numbers of `run`'s result as (measurement, result) pairs.
pub fn summary_rows(scale: &Value) -> Vec<(String, String)> {
    if scale.is_null() {
        return Vec::new();
    }
    let n = &scale["tasks"];
    let f = |key: &str| scale[key].as_f64().unwrap_or(f64::NAN);
    vec![
        (
            format!("Submit {n} repositories through the API (one command)"),
            format!(
                "{:.0} tasks/s accepted; all completed in {:.1} s ({:.0} tasks/s)",
                f("submit_per_s"),
                f("mirror_completed_s"),
                f("mirror_per_s")
            ),
        ),
        (
            format!("Sync of everything at {n} tasks"),
            format!(
                "requests {:.1} s (pages of 1,000); all completed in {:.1} s ({:.0} tasks/s)",
                f("sync_all_request_s"),
                f("sync_all_completed_s"),
                f("sync_per_s")
            ),
        ),
        (
            format!("`list` page of 200 at {n} tasks"),
            format!(
                "{:.1} ms first, {:.1} ms middle, {:.1} ms filtered (no match); every task in {:.1} s",
                f("list_first_page_ms"),
                f("list_middle_page_ms"),
                f("list_filtered_page_ms"),
                f("list_all_s")
            ),
        ),
        (
            format!("Full read of the task bucket (a node's start) at {n} tasks"),
            format!("{:.2} s", f("full_read_s")),
        ),
        (
            format!("Node memory per tracked repository at {n} tasks"),
            format!(
                "{:.0} bytes/task ({} KiB -> {} KiB resident)",
                f("node_bytes_per_task"),
                scale["node_rss_before_kib"],
                scale["node_rss_after_kib"]
            ),
        ),
        (
            format!("Task bucket size at {n} tasks"),
            format!("{:.0} bytes/task", f("bucket_bytes_per_task")),
        ),
    ]
}
