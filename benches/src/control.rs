//! The control plane alone: the git work replaced by an instant stand-in, so that what is
//! measured is the actors (Supervisor, CloneWorkers, Registry) and the task store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use gitfleet_actors::{
    Executor, Fleet, FleetConfig, Job, Put, Registry, RegistryArgs, RegistryMsg, RetryPolicy,
    StoreFuture, TaskStore, plan,
};
use gitfleet_git::{Control, Layout, Policy, Progress};
use gitfleet_proto::{
    Branch, CloneTask, Operation, Phase, ProgressEvent, SyncResult, TaskError, TaskUpdate,
};
use ractor::{Actor, ActorRef};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Instant git work: a few progress samples, then success.
#[derive(Debug)]
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn execute(
        &self,
        _job: &Job,
        _control: &Control,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncResult, TaskError> {
        for (phase, percent) in [
            (Phase::Connecting, 1),
            (Phase::Receiving, 40),
            (Phase::Resolving, 90),
        ] {
            on_progress(&Progress {
                phase,
                percent,
                bytes_received: u64::from(percent) * 1000,
                bytes_per_sec: 1_000_000,
                objects_received: u64::from(percent),
                objects_total: 100,
            });
        }
        Ok(SyncResult::default())
    }
}

/// Keeps every record in a map: the store cost without the disk.
#[derive(Debug, Default)]
pub struct MemStore {
    tasks: Mutex<HashMap<String, CloneTask>>,
}

impl TaskStore for MemStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        let tasks = self
            .tasks
            .lock()
            .expect("store lock")
            .values()
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(tasks)))
    }

    fn put(&self, task: &CloneTask) -> Put {
        self.tasks
            .lock()
            .expect("store lock")
            .insert(task.id.clone(), task.clone());
        Put::Accepted
    }

    fn remove(&self, id: &str) -> Put {
        self.tasks.lock().expect("store lock").remove(id);
        Put::Accepted
    }
}

/// Forgets everything: the actors' cost alone (and their memory, for the per-task figure).
#[derive(Debug, Default)]
pub struct NullStore;

impl TaskStore for NullStore {
    fn load_all(&self) -> StoreFuture<'_, Vec<CloneTask>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn put(&self, _task: &CloneTask) -> Put {
        Put::Accepted
    }

    fn remove(&self, _id: &str) -> Put {
        Put::Accepted
    }
}

/// Requests through `Fleet` (submit -> queued -> started -> progress -> completed, every
/// transition persisted) per second.
pub async fn dispatch_rate(
    store_name: &str,
    store: Arc<dyn TaskStore>,
    tasks: usize,
    concurrency: usize,
    root: &Path,
) -> anyhow::Result<Value> {
    std::fs::create_dir_all(root)?;
    let layout = Layout::open(root)?;
    let fleet = Fleet::start(
        FleetConfig {
            layout: layout.clone(),
            concurrency,
            retry: RetryPolicy::default(),
            node: "bench".into(),
            executor: Arc::new(NoopExecutor),
            schedule: Default::default(),
            hosts: Default::default(),
        },
        store,
    )
    .await?;
    // A watcher, as the command line's display is.
    let mut updates = fleet.subscribe();
    let seen = Arc::new(AtomicU64::new(0));
    let watcher = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                match updates.recv().await {
                    Ok(_) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        seen.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    };
    let policy = Policy::permissive();
    let jobs = (0..tasks)
        .map(|i| {
            plan(
                &layout,
                &policy,
                &format!("git://git.example.com/org-{}/repo-{i}.git", i % 100),
                Operation::Mirror,
            )
            .map_err(|e| anyhow::anyhow!("planning a job: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    fleet.submit(jobs).await?;
    fleet.wait_idle().await?;
    // A round trip to the Registry: everything sent before is applied and persisted.
    let _ = fleet.get("0000000000000000").await?;
    let seconds = started.elapsed().as_secs_f64();
    let completed = fleet
        .tasks()
        .await?
        .iter()
        .filter(|t| t.status.status_type == gitfleet_proto::StatusType::Completed)
        .count();
    fleet.shutdown().await;
    watcher.abort();
    Ok(json!({
        "store": store_name,
        "tasks": tasks,
        "completed": completed,
        "concurrency": concurrency,
        "seconds": seconds,
        "tasks_per_s": tasks as f64 / seconds,
        "updates_seen": seen.load(Ordering::Relaxed),
    }))
}

fn task(i: usize) -> CloneTask {
    CloneTask::new(
        format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        format!("git://git.example.com:9418/org-{}/repo-{i}.git", i % 1000),
        Operation::Mirror,
        format!(
            "/srv/mirrors/git.example.com_9418/org-{}/repo-{i}.git",
            i % 1000
        ),
        jiff::Timestamp::now(),
    )
}

async fn spawn_registry(
    store: Arc<dyn TaskStore>,
    updates: broadcast::Sender<TaskUpdate>,
) -> anyhow::Result<(ActorRef<RegistryMsg>, tokio::task::JoinHandle<()>)> {
    let (registry, handle) = Actor::spawn(
        None,
        Registry,
        RegistryArgs {
            store,
            updates,
            schedule: Default::default(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("spawning a registry: {e}"))?;
    Ok((registry, handle))
}

async fn round_trip(registry: &ActorRef<RegistryMsg>) -> anyhow::Result<()> {
    ractor::call!(registry, RegistryMsg::Get, String::new())
        .map_err(|e| anyhow::anyhow!("registry call: {e}"))?;
    Ok(())
}

/// Progress events folded into task state (and broadcast) by one Registry, per second, sent by
/// `senders` threads as workers do.
pub async fn progress_rate(
    events: usize,
    tasks: usize,
    senders: usize,
    watched: bool,
) -> anyhow::Result<Value> {
    let (tx, rx) = broadcast::channel(4096);
    let watcher = watched.then(|| {
        let mut rx = rx.resubscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    });
    drop(rx);
    let (registry, handle) = spawn_registry(Arc::new(NullStore), tx).await?;
    let ids: Vec<String> = (0..tasks).map(|i| task(i).id).collect();
    for i in 0..tasks {
        let t = task(i);
        let id = t.id.clone();
        registry.cast(RegistryMsg::Queued(Box::new(t)))?;
        registry.cast(RegistryMsg::Started {
            id,
            attempt: 1,
            node: "bench".into(),
        })?;
    }
    round_trip(&registry).await?;
    let ids = Arc::new(ids);
    let started = Instant::now();
    let per_sender = events / senders.max(1);
    std::thread::scope(|s| {
        for k in 0..senders.max(1) {
            let registry = registry.clone();
            let ids = Arc::clone(&ids);
            s.spawn(move || {
                for n in 0..per_sender {
                    let task_id = ids[(k * per_sender + n) % ids.len()].clone();
                    let _ = registry.cast(RegistryMsg::Progress(ProgressEvent {
                        task_id,
                        attempt: 1,
                        phase: Phase::Receiving,
                        progress: (n % 100) as u8,
                        bytes_received: n as u64,
                        bytes_per_sec: 1_000_000,
                        objects_received: n as u64,
                        objects_total: 1_000_000,
                    }));
                }
            });
        }
    });
    let sent = Instant::now();
    round_trip(&registry).await?;
    let seconds = started.elapsed().as_secs_f64();
    registry.stop(None);
    let _ = handle.await;
    if let Some(w) = watcher {
        w.abort();
    }
    let total = per_sender * senders.max(1);
    Ok(json!({
        "events": total,
        "tasks": tasks,
        "senders": senders,
        "watched": watched,
        "seconds": seconds,
        "send_seconds": sent.duration_since(started).as_secs_f64(),
        "events_per_s": total as f64 / seconds,
    }))
}

/// The result of mirroring one of the fleet's small repositories (benches/fleet/make_fleet.py),
/// as the engine reports it: a few commits on `main`, a second branch and a tag, every ref
/// new, counts and lists both filled. Each task gets its own object ids.
fn small_result(i: usize) -> SyncResult {
    let commit = |k: u128| {
        let x = (i as u128 * 4 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        format!("{x:032x}{:08x}", (x >> 96) as u32 ^ 0x5bd1_e995)
    };
    let main = commit(1);
    let dev = commit(2);
    let commits = 1 + (i % 8) as u64;
    SyncResult {
        num_refs_created: 3,
        num_branches: 2,
        refs_created: vec![
            "refs/heads/dev".into(),
            "refs/heads/main".into(),
            "refs/tags/v1.0".into(),
        ],
        new_commits: commits,
        total_commits: commits,
        default_branch: Some("main".into()),
        head_commit: Some(main.clone()),
        branches: vec![
            Branch {
                name: "dev".into(),
                commit: dev,
            },
            Branch {
                name: "main".into(),
                commit: main,
            },
        ],
        bytes_received: 2_000 + 1_500 * commits + (i % 997) as u64,
        duration_ms: 40 + (i % 200) as u64,
        ..SyncResult::default()
    }
}

/// Resident memory the Registry holds per task, with every task completed as many times as a
/// record keeps runs of (its last result: a small repository's; a full history). Meant for a fresh process (`gitfleet-bench registry-memory N`): an
/// allocator that already holds freed memory would hide the growth.
pub async fn registry_memory(tasks: usize, runs: usize) -> anyhow::Result<Value> {
    let (tx, rx) = broadcast::channel(4096);
    drop(rx);
    let (registry, handle) = spawn_registry(Arc::new(NullStore), tx).await?;
    round_trip(&registry).await?;
    let before = crate::procs::own_rss_kib();
    let started = Instant::now();
    // Messages cast before waiting for the Registry to take them: the mailbox's backlog is
    // not what is measured (it leaves its high-water mark in the resident memory).
    const BACKLOG: usize = 30_000;
    let chunk = (BACKLOG / (2 + runs.max(1))).max(1);
    let mut i = 0;
    while i < tasks {
        for j in i..(i + chunk).min(tasks) {
            let t = task(j);
            let id = t.id.clone();
            registry.cast(RegistryMsg::Queued(Box::new(t)))?;
            registry.cast(RegistryMsg::Started {
                id: id.clone(),
                attempt: 1,
                node: "bench-node".into(),
            })?;
            // A history as long as a record keeps: every task synced that often since.
            for _ in 0..runs.max(1) {
                registry.cast(RegistryMsg::Completed {
                    id: id.clone(),
                    attempt: 1,
                    result: Box::new(small_result(j)),
                })?;
            }
        }
        // Keep the mailbox short: queued messages are not what is measured.
        round_trip(&registry).await?;
        i += chunk;
    }
    let after = crate::procs::own_rss_kib();
    let seconds = started.elapsed().as_secs_f64();
    let listed = ractor::call!(registry, RegistryMsg::Get, task(tasks / 2).id)
        .map_err(|e| anyhow::anyhow!("registry call: {e}"))?;
    anyhow::ensure!(
        listed.is_some_and(|t| t.status.status_type == gitfleet_proto::StatusType::Completed),
        "the registry lost a task"
    );
    let reads = dashboard_reads(&registry, tasks).await?;
    registry.stop(None);
    let _ = handle.await;
    let bytes_per_task = (after.saturating_sub(before) * 1024) as f64 / tasks.max(1) as f64;
    Ok(json!({
        "tasks": tasks,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_task": bytes_per_task,
        "size_of_clone_task": std::mem::size_of::<CloneTask>(),
        "size_of_sync_result": std::mem::size_of::<SyncResult>(),
        "insert_seconds": seconds,
        "runs_per_task": runs.max(1),
        "transitions_per_s": ((2 + runs.max(1)) * tasks) as f64 / seconds,
        "dashboard": reads,
    }))
}

/// What the dashboard's reads cost the Registry at this many tasks (milliseconds, the median
/// of a few): a page of 50 from the start and from the middle, a page filtered by status that
/// matches nothing (the whole table is scanned), one filtered by URL text, and the counts
/// (`/api/summary`, and every `/metrics` scrape).
async fn dashboard_reads(registry: &ActorRef<RegistryMsg>, tasks: usize) -> anyhow::Result<Value> {
    use gitfleet_actors::{TaskPage, TaskQuery};
    let stale_after = std::time::Duration::from_secs(3600);
    let page = async |query: TaskQuery| -> anyhow::Result<(f64, TaskPage)> {
        let mut times = Vec::new();
        let mut last = TaskPage::default();
        for _ in 0..5 {
            let started = Instant::now();
            last = ractor::call!(registry, |reply| RegistryMsg::Page {
                query: query.clone(),
                stale_after,
                reply
            })
            .map_err(|e| anyhow::anyhow!("registry call: {e}"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], last))
    };
    let first = TaskQuery {
        limit: 50,
        ..TaskQuery::default()
    };
    let (first_ms, first_page) = page(first.clone()).await?;
    anyhow::ensure!(
        first_page.tasks.len() == 50.min(tasks) && first_page.matched == tasks as u64,
        "the first page is wrong"
    );
    let (middle_ms, _) = page(TaskQuery {
        after: Some((tasks / 2) as u64),
        ..first.clone()
    })
    .await?;
    let (no_match_ms, none) = page(TaskQuery {
        status: Some(gitfleet_proto::StatusType::Failed),
        ..first.clone()
    })
    .await?;
    anyhow::ensure!(none.matched == 0, "failed tasks in a completed fleet");
    let (text_ms, _) = page(TaskQuery {
        text: Some("repo-4242".into()),
        ..first
    })
    .await?;
    let mut census = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        ractor::call!(registry, RegistryMsg::Census, stale_after)
            .map_err(|e| anyhow::anyhow!("registry call: {e}"))?;
        census.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    census.sort_by(f64::total_cmp);
    Ok(json!({
        "first_page_ms": first_ms,
        "middle_page_ms": middle_ms,
        "no_match_page_ms": no_match_ms,
        "text_page_ms": text_ms,
        "census_ms": census[census.len() / 2],
    }))
}

/// Runs `registry_memory` in a fresh process of this binary.
pub fn registry_memory_subprocess(tasks: usize) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating gitfleet-bench")?;
    let out = crate::procs::run_ok(
        std::process::Command::new(exe)
            .arg("registry-memory")
            .arg(tasks.to_string()),
    )?;
    serde_json::from_str(out.trim()).context("registry-memory printed no JSON")
}

/// Sizes of the control-plane runs.
#[derive(Debug, Clone)]
pub struct ControlSpec {
    pub dispatch_mem: usize,
    pub dispatch_file: usize,
    pub progress_events: usize,
    pub memory_tasks: Vec<usize>,
}

impl ControlSpec {
    // The same sizes as the suite's plans (suite.rs), for `--only control`.
    pub fn smoke() -> ControlSpec {
        ControlSpec {
            dispatch_mem: 1_000,
            dispatch_file: 200,
            progress_events: 50_000,
            memory_tasks: vec![10_000],
        }
    }

    pub fn quick() -> ControlSpec {
        ControlSpec {
            dispatch_mem: 10_000,
            dispatch_file: 1_000,
            progress_events: 200_000,
            memory_tasks: vec![100_000],
        }
    }

    pub fn full() -> ControlSpec {
        ControlSpec {
            dispatch_mem: 50_000,
            dispatch_file: 5_000,
            progress_events: 1_000_000,
            memory_tasks: vec![100_000, 1_000_000],
        }
    }
}

/// The headline numbers of `run_all`'s result as (measurement, result) pairs: the rows of the
/// report's control-plane table and of the `--only control` summary.
pub fn summary_rows(control: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for d in control["dispatch"].as_array().into_iter().flatten() {
        rows.push((
            format!(
                "Fleet dispatch, {} store, {} tasks",
                d["store"].as_str().unwrap_or("?"),
                d["tasks"]
            ),
            format!("{:.0} tasks/s", d["tasks_per_s"].as_f64().unwrap_or(0.0)),
        ));
    }
    for p in control["progress"].as_array().into_iter().flatten() {
        let watcher = if p["watched"] == json!(true) {
            "one watcher"
        } else {
            "no watcher"
        };
        rows.push((
            format!(
                "Registry progress events ({} senders, {watcher})",
                p["senders"]
            ),
            format!("{:.0} events/s", p["events_per_s"].as_f64().unwrap_or(0.0)),
        ));
    }
    for m in control["memory"].as_array().into_iter().flatten() {
        rows.push((
            format!(
                "Registry memory at {} completed tasks ({} runs of history each)",
                m["tasks"],
                m["runs_per_task"].as_u64().unwrap_or(1)
            ),
            format!(
                "{:.0} bytes/task",
                m["bytes_per_task"].as_f64().unwrap_or(0.0)
            ),
        ));
        let d = &m["dashboard"];
        let ms = |key: &str| d[key].as_f64().unwrap_or(f64::NAN);
        rows.push((
            format!("Dashboard reads at {} tasks (page of 50)", m["tasks"]),
            format!(
                "{:.1} ms first, {:.1} ms middle, {:.1} ms filtered (no match), {:.1} ms by URL text; \
                 counts {:.1} ms",
                ms("first_page_ms"),
                ms("middle_page_ms"),
                ms("no_match_page_ms"),
                ms("text_page_ms"),
                ms("census_ms"),
            ),
        ));
    }
    rows
}

/// The headline numbers of `run_all`'s result, one per line on stderr.
pub fn print_summary(control: &Value) {
    for (measurement, result) in summary_rows(control) {
        eprintln!("control: {measurement}: {result}");
    }
}

pub fn run_all(
    rt: &tokio::runtime::Handle,
    spec: &ControlSpec,
    work: &Path,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let mut dispatch = Vec::new();
    eprintln!("bench: control plane: dispatch through Fleet ...");
    dispatch.push(rt.block_on(dispatch_rate(
        "null",
        Arc::new(NullStore),
        spec.dispatch_mem,
        concurrency,
        &work.join("cp-null"),
    ))?);
    dispatch.push(rt.block_on(dispatch_rate(
        "memory",
        Arc::new(MemStore::default()),
        spec.dispatch_mem,
        concurrency,
        &work.join("cp-mem"),
    ))?);
    let file_root = work.join("cp-file");
    std::fs::create_dir_all(&file_root)?;
    let file_store = gitfleet_actors::FileStore::open(&file_root.join(".gitfleet"))?;
    dispatch.push(rt.block_on(dispatch_rate(
        "file",
        Arc::new(file_store),
        spec.dispatch_file,
        concurrency,
        &file_root,
    ))?);
    eprintln!("bench: control plane: registry progress events ...");
    let progress = vec![
        rt.block_on(progress_rate(spec.progress_events, 1000, 8, true))?,
        rt.block_on(progress_rate(spec.progress_events, 1000, 8, false))?,
    ];
    let mut memory = Vec::new();
    for &n in &spec.memory_tasks {
        eprintln!("bench: control plane: registry memory at {n} tasks ...");
        memory.push(registry_memory_subprocess(n)?);
    }
    Ok(json!({
        "dispatch": dispatch,
        "progress": progress,
        "memory": memory,
    }))
}
