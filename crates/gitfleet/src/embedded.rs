//! The embedded mode: actors in this process, state in files under the root.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gitfleet_actors::{CancelRequests, FileStore, Fleet, Job, RootLock, Submitted, plan_from_task};
use gitfleet_git::{Layout, LocalPaths, Policy, RepoUrl, Scheme, Target, scrub_userinfo};
use gitfleet_proto::{CloneStatus, CloneTask, ErrorCode, Operation, StatusType, TaskError};

use crate::cli::{Cli, Command, RunArgs, Sources};
use crate::display::Display;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(url) = cli.nats.clone() {
        let cluster = crate::remote::Cluster {
            url,
            prefix: cli.prefix.clone(),
            auth: cli.nats_auth.auth(),
        };
        return remote(&cluster, &cli.root, cli.command).await;
    }
    match cli.command {
        Command::Node(_) | Command::Nodes { .. } => {
            bail!("`node` and `nodes` need a cluster: pass --nats URL (or set GITFLEET_NATS)")
        }
        Command::Schema => {
            print!("{}", gitfleet_proto::clone_task_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { tasks, json } => status(&cli.root, &tasks, json),
        Command::Cancel { tasks } => cancel(&cli.root, &tasks).await,
        Command::Mirror { sources, bare, run } => {
            let op = if bare {
                Operation::Bare
            } else {
                Operation::Mirror
            };
            work(&cli.root, Work::Clone(sources, op), run).await
        }
        Command::Clone { sources, run } => {
            work(&cli.root, Work::Clone(sources, Operation::Checkout), run).await
        }
        Command::Init {
            names,
            worktree,
            run,
        } => work(&cli.root, Work::Init(names, worktree), run).await,
        Command::Sync { sources, run } => work(&cli.root, Work::Sync(sources), run).await,
    }
}

async fn remote(
    cluster: &crate::remote::Cluster,
    root: &std::path::Path,
    command: Command,
) -> anyhow::Result<ExitCode> {
    use crate::remote::{self, RemoteWork};
    let nats = cluster;
    match command {
        Command::Schema => {
            print!("{}", gitfleet_proto::clone_task_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(args) => remote::node(nats, root, args).await,
        Command::Nodes { json } => remote::nodes(nats, json).await,
        Command::Status { tasks, json } => remote::status(nats, &tasks, json).await,
        Command::Cancel { tasks } => remote::cancel(nats, &tasks).await,
        Command::Mirror { sources, bare, run } => {
            let op = if bare {
                Operation::Bare
            } else {
                Operation::Mirror
            };
            remote::work(nats, RemoteWork::Submit(sources, op), &run).await
        }
        Command::Clone { sources, run } => {
            remote::work(nats, RemoteWork::Submit(sources, Operation::Checkout), &run).await
        }
        Command::Init {
            names,
            run,
            worktree,
        } => remote::work(nats, RemoteWork::Init(names, worktree), &run).await,
        Command::Sync { sources, run } => remote::work(nats, RemoteWork::Sync(sources), &run).await,
    }
}

enum Work {
    Clone(Sources, Operation),
    Init(Vec<String>, bool),
    Sync(Sources),
}

pub fn read_sources(sources: &Sources) -> anyhow::Result<Vec<String>> {
    let mut urls = sources.urls.clone();
    if let Some(path) = &sources.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot read url list {}", path.display()))?,
            ))
        };
        for line in reader.lines() {
            let line = line.with_context(|| format!("cannot read url list {}", path.display()))?;
            let line = strip_comment(&line).trim();
            if !line.is_empty() {
                urls.push(line.to_string());
            }
        }
    }
    Ok(urls)
}

/// A URL list line without its comment: `#` at the start of the line or after white space (a `#`
/// inside a URL, as in a password, is part of it).
fn strip_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..i];
        }
        previous = c;
    }
    line
}

fn policy(run: &RunArgs) -> anyhow::Result<Policy> {
    let mut policy = Policy::permissive();
    if !run.allow_schemes.is_empty() {
        policy.allowed_schemes = run
            .allow_schemes
            .iter()
            .map(|s| {
                Scheme::parse(s).with_context(|| format!("unknown scheme '{s}' in --allow-scheme"))
            })
            .collect::<anyhow::Result<BTreeSet<_>>>()?;
    }
    policy.allowed_hosts = run.allow_hosts.clone();
    policy.allow_local = !run.deny_local;
    policy.allow_private = !run.deny_private;
    Ok(policy)
}

fn open_layout(root: &std::path::Path) -> anyhow::Result<Layout> {
    Layout::open(root).with_context(|| format!("cannot use {} as the storage root", root.display()))
}

async fn work(root: &std::path::Path, work: Work, run: RunArgs) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let Some(_lock) = RootLock::try_acquire(&layout.state_dir())? else {
        bail!(
            "another gitfleet process is working in {}; wait for it or cancel its tasks with `gitfleet cancel`",
            layout.root().display()
        );
    };
    let removed = layout
        .clean_staging()
        .context("cannot clean the staging directory")?;
    if removed > 0 {
        tracing::info!(removed, "removed staging directories of an interrupted run");
    }
    let policy = policy(&run)?;
    let store = Arc::new(FileStore::open(&layout.state_dir())?);
    let mut display = Display::new(run.json);
    let mut jobs: Vec<Job> = Vec::new();
    let mut rejected = 0usize;
    let mut reject = |display: &mut Display, input: &str, e: TaskError| {
        rejected += 1;
        display.rejected(input, &e);
    };
    let known = store.load_all_sync()?;
    // Repositories an earlier version made carry no marker: once, adopt those that this root's
    // own records say it finished, so that they keep syncing.
    let adopted = layout
        .adopt_once(&known)
        .context("cannot adopt the repositories of an earlier version")?;
    if adopted > 0 {
        eprintln!("gitfleet: {adopted} repositories of an earlier version marked as this root's");
    }
    let known_by_id: HashMap<&str, &CloneTask> = known.iter().map(|t| (t.id.as_str(), t)).collect();
    // A new request for a stored task must name the same source (a task's URL never changes
    // silently).
    let new_job = |target: Result<Target, TaskError>, operation: Operation| {
        let target = target?;
        if let Some(stored) = known_by_id.get(target.id()) {
            target.check_stored(stored)?;
        }
        Ok::<Job, TaskError>(Job::new(&layout, &target, operation))
    };
    match work {
        Work::Clone(sources, op) => {
            let urls = read_sources(&sources)?;
            if urls.is_empty() {
                bail!("no repositories given: name URLs or use --file LIST");
            }
            for input in urls {
                match new_job(Target::for_url(&input, op, &policy), op) {
                    Ok(job) => jobs.push(job),
                    Err(e) => reject(&mut display, &input, e),
                }
            }
        }
        Work::Init(names, worktree) => {
            for name in names {
                match new_job(Target::for_init(&name, worktree), Operation::Init) {
                    Ok(job) => jobs.push(job),
                    Err(e) => reject(&mut display, &name, e),
                }
            }
        }
        Work::Sync(sources) => {
            let urls = read_sources(&sources)?;
            if urls.is_empty() {
                for task in known.iter().filter(|t| t.status.status_type.is_final()) {
                    match plan_from_task(&layout, &policy, task) {
                        Ok(job) => jobs.push(job),
                        Err(e) => reject(&mut display, &task.url, e),
                    }
                }
                if jobs.is_empty() && known.iter().all(|t| t.status.status_type.is_final()) {
                    eprintln!("gitfleet: nothing to sync in {}", layout.root().display());
                }
            }
            for input in urls {
                match find_task(&layout, &policy, &known, &input) {
                    Ok(task) => match plan_from_task(&layout, &policy, task) {
                        Ok(job) => jobs.push(job),
                        Err(e) => reject(&mut display, &input, e),
                    },
                    Err(e) => reject(&mut display, &input, e),
                }
            }
        }
    }

    // GITFLEET_TOKEN goes (without --token-host) to the hosts of the repositories the user
    // named: in this run, and in earlier runs on this root.
    let named_hosts: Vec<String> = jobs
        .iter()
        .map(|j| j.url.clone())
        .chain(
            known
                .iter()
                .filter_map(|t| RepoUrl::parse_with(&t.url, LocalPaths::AsStored).ok()),
        )
        // As host patterns match them: an IPv6 address without its brackets.
        .filter_map(|url| {
            url.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let credentials = crate::credentials::load(&run.work, Some(&named_hosts))?;
    run.work.transport_settings()?;
    let config = run.work.fleet_config(
        &layout,
        policy.clone(),
        credentials,
        run.concurrency,
        hostname(),
    );
    let fleet = Fleet::start(config, store.clone()).await?;
    let mut updates = fleet.subscribe();
    let _cancels = fleet.watch_cancel_requests(CancelRequests::open(&layout.state_dir())?);
    let resumed = fleet.resume_unfinished(&policy).await?;
    if !resumed.is_empty() {
        eprintln!(
            "gitfleet: resuming {} unfinished task(s) from an earlier run",
            resumed.len()
        );
        display.track(resumed.iter().map(|t| t.id.clone()));
    }

    let started = Instant::now();
    // Track before submitting: the first updates can arrive before `submit` returns.
    display.track(jobs.iter().map(|j| j.task_id.clone()));
    let submitted = fleet.submit(jobs).await?;
    let ids: Vec<String> = submitted
        .iter()
        .map(|s| match s {
            Submitted::Accepted(id) | Submitted::Duplicate(id) => id.clone(),
        })
        .chain(resumed.iter().map(|t| t.id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    display.track(ids.iter().cloned());

    let interrupted = {
        let idle = fleet.wait_idle();
        tokio::pin!(idle);
        loop {
            tokio::select! {
                result = &mut idle => { result?; break false; }
                update = updates.recv() => match update {
                    Ok(update) => display.update(&update),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break false,
                },
                _ = tokio::signal::ctrl_c() => break true,
            }
        }
    };
    // A round trip to the Registry: every event sent before the idle reply is processed after it.
    let _ = fleet.tasks().await?;
    while let Ok(update) = updates.try_recv() {
        display.update(&update);
    }
    display.finish();
    if interrupted {
        eprintln!("gitfleet: interrupted; unfinished tasks resume on the next run");
        return Ok(ExitCode::from(130));
    }

    let mut completed = 0usize;
    let mut failed = Vec::new();
    for id in &ids {
        match fleet.get(id).await? {
            Some(task) if task.status.status_type == StatusType::Completed => completed += 1,
            Some(task) => failed.push(task),
            None => {}
        }
    }
    fleet.shutdown().await;
    let failed_count = failed.len() + rejected;
    if !run.json {
        eprintln!(
            "gitfleet: {completed} completed, {failed_count} failed in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        for task in &failed {
            eprintln!(
                "  {} [{}]: {}",
                task.url,
                code_of(task),
                task.status.error.as_deref().unwrap_or("unfinished")
            );
        }
    }
    Ok(if failed_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn code_of(task: &CloneTask) -> &'static str {
    task.error_code.map_or("unknown", |c| c.as_str())
}

/// The stored task for a URL or a task id.
fn find_task<'a>(
    layout: &Layout,
    policy: &Policy,
    known: &'a [CloneTask],
    input: &str,
) -> Result<&'a CloneTask, TaskError> {
    let candidates = Target::lookup_ids(input, policy);
    known
        .iter()
        .find(|t| candidates.contains(&t.id))
        .ok_or_else(|| {
            TaskError::new(
                ErrorCode::NotFound,
                format!(
                    "{} is not a known repository in {}",
                    scrub_userinfo(input),
                    layout.root().display()
                ),
            )
        })
}

fn status(root: &std::path::Path, filter: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let store = FileStore::open(&layout.state_dir())?;
    let mut tasks = store.load_all_sync()?;
    if !filter.is_empty() {
        let policy = Policy::permissive();
        let mut wanted = Vec::new();
        for input in filter {
            let task = find_task(&layout, &policy, &tasks, input)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            wanted.push(task.clone());
        }
        tasks = wanted;
    }
    print_tasks(&tasks, json, &layout.root().display().to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The task table of `status` (or a JSON array).
pub fn print_tasks(tasks: &[CloneTask], json: bool, place: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    if tasks.is_empty() {
        println!("no tasks in {place}");
        return Ok(());
    }
    println!(
        "{:<16}  {:<9}  {:>4}  {:<8}  URL / PATH / ERROR",
        "ID", "STATUS", "PCT", "OP"
    );
    for t in tasks {
        let pct = t
            .status
            .progress
            .map(|p| format!("{p}%"))
            .unwrap_or_default();
        println!(
            "{:<16}  {:<9}  {:>4}  {:<8}  {}",
            t.id, t.status.status_type, pct, t.operation, t.url
        );
        println!("{:<16}  {:<9}  {:>4}  {:<8}  {}", "", "", "", "", t.path);
        if let Some(error) = &t.status.error {
            println!(
                "{:<16}  {:<9}  {:>4}  {:<8}  [{}] {error}",
                "",
                "",
                "",
                "",
                code_of(t)
            );
        }
    }
    Ok(())
}

async fn cancel(root: &std::path::Path, inputs: &[String]) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let store = FileStore::open(&layout.state_dir())?;
    let known = store.load_all_sync()?;
    let policy = Policy::permissive();
    let mut ids = Vec::new();
    for input in inputs {
        let task =
            find_task(&layout, &policy, &known, input).map_err(|e| anyhow::anyhow!(e.message))?;
        ids.push(task.id.clone());
    }
    let mut exit = ExitCode::SUCCESS;
    if let Some(_lock) = RootLock::try_acquire(&layout.state_dir())? {
        // No process is working here: mark unfinished tasks cancelled so no run resumes them.
        for id in ids {
            let Some(mut task) = store.get(&id)? else {
                continue;
            };
            if task.status.status_type.is_final() {
                println!("{} is already {}", task.url, task.status.status_type);
                continue;
            }
            task.status = CloneStatus::failed("cancelled on request");
            task.error_code = Some(ErrorCode::Cancelled);
            task.updated_at = jiff::Timestamp::now();
            store.put_sync(&task)?;
            println!("cancelled {}", task.url);
        }
        return Ok(exit);
    }
    let requests = CancelRequests::open(&layout.state_dir())?;
    for id in &ids {
        requests.request(id)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let task = store.get(&id)?;
            match task {
                Some(t) if t.status.status_type.is_final() => {
                    println!("{} is {}", t.url, t.status.status_type);
                    break;
                }
                _ if Instant::now() >= deadline => {
                    eprintln!("gitfleet: {id} has not stopped yet");
                    exit = ExitCode::from(1);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(exit)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}
