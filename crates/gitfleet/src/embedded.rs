//! The embedded mode: actors in this process, state in files under the root.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gitfleet_actors::{
    FileStore, Fleet, OpenRoot, Planned, RequestDirs, Requests, RootLock, Submitted, find_task,
    open_layout, plan_work,
};
use gitfleet_git::{Layout, LocalPaths, Policy, RepoUrl};
use gitfleet_proto::{CloneTask, WorkRequest};

use crate::cli::RunArgs;
use crate::display::Display;
use crate::report::{Summary, print_tasks};

/// Opens `root` for a working command: locked, records read, earlier repositories adopted.
pub fn open_root(root: &std::path::Path) -> anyhow::Result<OpenRoot> {
    let open = OpenRoot::open(
        root,
        "wait for it or cancel its tasks with `gitfleet cancel`",
    )?;
    if open.adopted > 0 {
        eprintln!(
            "gitfleet: {} repositories of an earlier version marked as this root's",
            open.adopted
        );
    }
    Ok(open)
}

/// Starts the actors on an opened root: credentials (GITFLEET_TOKEN goes, without
/// --token-host, to the hosts of `named` and of the repositories this root knows),
/// transport settings, cancel requests from other processes, and unfinished tasks of an
/// earlier run resumed (returned).
pub async fn start_fleet(
    open: &OpenRoot,
    run: &RunArgs,
    policy: &Policy,
    named: &[RepoUrl],
) -> anyhow::Result<Started> {
    let named_hosts: Vec<String> = named
        .iter()
        .cloned()
        .chain(
            open.known
                .iter()
                .filter_map(|t| RepoUrl::parse_with(&t.url, LocalPaths::AsStored).ok()),
        )
        .filter_map(|url| url.credential_host().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let credentials = crate::credentials::load(&run.work.auth, Some(&named_hosts))?;
    run.work.transport_settings()?;
    let config = run.work.fleet_config(
        &open.layout,
        policy.clone(),
        credentials,
        run.concurrency,
        gitfleet_actors::hostname(),
    );
    let fleet = Fleet::start(config, open.store.clone()).await?;
    // Before anything is submitted: the first updates can come at once.
    let updates = fleet.subscribe();
    // Stops with the fleet.
    drop(fleet.watch_requests(RequestDirs::open(&open.layout.state_dir())?));
    let resumed = fleet.resume_unfinished(policy).await?;
    if !resumed.is_empty() {
        eprintln!(
            "gitfleet: resuming {} unfinished task(s) from an earlier run",
            resumed.len()
        );
    }
    Ok(Started {
        fleet,
        updates,
        resumed,
    })
}

/// The actors running on an open root.
pub struct Started {
    pub fleet: Fleet,
    pub updates: tokio::sync::broadcast::Receiver<gitfleet_proto::TaskUpdate>,
    /// The unfinished tasks of an earlier run, submitted again.
    pub resumed: Vec<CloneTask>,
}

pub async fn work(
    root: &std::path::Path,
    work: WorkRequest,
    run: RunArgs,
) -> anyhow::Result<ExitCode> {
    let open = open_root(root)?;
    let policy = run.policy()?;
    let mut display = Display::new(run.json);
    let Planned {
        jobs,
        rejected,
        nothing_to_sync,
    } = plan_work(&open.layout, &policy, &open.known, &work);
    for (input, e) in &rejected {
        display.rejected(input, e);
    }
    let rejected = rejected.len();
    if nothing_to_sync {
        eprintln!(
            "gitfleet: nothing to sync in {}",
            open.layout.root().display()
        );
    }
    let named: Vec<RepoUrl> = jobs.iter().map(|j| j.url.clone()).collect();
    let Started {
        fleet,
        mut updates,
        resumed,
    } = start_fleet(&open, &run, &policy, &named).await?;
    display.track(resumed.iter().map(|t| t.id.clone()));

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

    let mut summary = Summary {
        rejected,
        ..Summary::default()
    };
    for id in &ids {
        if let Some(task) = fleet.get(id).await? {
            summary.add(task);
        }
    }
    fleet.shutdown().await;
    Ok(summary.finish(run.json, started.elapsed()))
}

pub fn status(
    root: &std::path::Path,
    filter: &[String],
    json: bool,
    stale_after: Duration,
) -> anyhow::Result<ExitCode> {
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
    let now = jiff::Timestamp::now();
    for task in &mut tasks {
        let present = std::path::Path::new(&task.path).exists();
        task.freshness = Some(task.freshness_at(now, stale_after, present));
    }
    print_tasks(&tasks, json, &layout.root().display().to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet history`: the last runs of one repository of the root, newest first.
pub fn history(root: &std::path::Path, input: &str, json: bool) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let tasks = FileStore::open(&layout.state_dir())?.load_all_sync()?;
    let task = find_task(&layout, &Policy::permissive(), &tasks, input)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    crate::report::print_history(task, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet log`: the commits of one repository of the root, newest first.
pub fn log(
    root: &std::path::Path,
    input: &str,
    since: Option<jiff::Timestamp>,
    max_count: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let tasks = FileStore::open(&layout.state_dir())?.load_all_sync()?;
    let task = find_task(&layout, &Policy::permissive(), &tasks, input)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let commits =
        gitfleet_git::recent_commits(&layout, std::path::Path::new(&task.path), since, max_count)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    crate::report::print_commits(&commits, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet du`: the disk usage of the root's repositories, from their records.
pub fn du(root: &std::path::Path, top: usize, json: bool) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let tasks = FileStore::open(&layout.state_dir())?.load_all_sync()?;
    crate::usage::DiskReport::of(&tasks, top).print(json, &layout.root().display().to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet resume`: out of quarantine, failures forgotten, due now.
pub async fn resume(root: &std::path::Path, inputs: &[String]) -> anyhow::Result<ExitCode> {
    change_records(
        root,
        inputs,
        |task| task.resume(jiff::Timestamp::now()),
        |requests, id| requests.resumes.request(id),
        |task| !task.quarantined,
        "resumed",
    )
    .await
}

/// `gitfleet remove`: each repository's record is forgotten, then its directory removed (moved
/// out of the way in one rename first). A queued or running task is not removed.
pub async fn remove(root: &std::path::Path, inputs: &[String]) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let store = FileStore::open(&layout.state_dir())?;
    let tasks = known_tasks(&layout, &store, inputs)?;
    let mut exit = ExitCode::SUCCESS;
    let lock = RootLock::try_acquire(&layout.state_dir())?;
    let requests = match &lock {
        Some(_) => None,
        None => Some(RequestDirs::open(&layout.state_dir())?),
    };
    for task in tasks {
        if !task.status.status_type.is_final() {
            eprintln!(
                "gitfleet: {} is {}: cancel it (or wait for it) first",
                task.url, task.status.status_type
            );
            exit = ExitCode::from(1);
            continue;
        }
        // Where the repository is follows from what the task is (not from the path its record
        // holds), and it is checked before anything is forgotten.
        let path = gitfleet_git::Target::of_task(&task)
            .map(|target| layout.path_of(&target))
            .and_then(|path| layout.holds_repository(&path).map(|_| path))
            .map_err(|e| anyhow::anyhow!(e.message))?;
        match &requests {
            // No process works on the root: its records are this one's to change.
            None => store.remove_sync(&task.id)?,
            // The process working on the root forgets it, so that it starts no sync of it.
            Some(requests) => {
                requests.removes.request(&task.id)?;
                if !forgotten(&store, &task.id).await? {
                    // Not left to act later, when nobody expects it.
                    requests.removes.withdraw(&task.id)?;
                    eprintln!(
                        "gitfleet: {} was not removed by the process working on the root (is it \
                         running?)",
                        task.url
                    );
                    exit = ExitCode::from(1);
                    continue;
                }
            }
        }
        layout
            .remove_repository(&path)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        println!("removed {}", task.url);
    }
    drop(lock);
    Ok(exit)
}

/// Whether the record of `id` is gone within a while.
async fn forgotten(store: &FileStore, id: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get(id)?.is_some() {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(true)
}

/// `gitfleet archive` (`archived`) or `gitfleet unarchive`: kept as it is and never synced, or
/// back in the schedule, due now.
pub async fn set_archived(
    root: &std::path::Path,
    inputs: &[String],
    archived: bool,
) -> anyhow::Result<ExitCode> {
    let (value, what) = if archived {
        ("archive", "archived")
    } else {
        ("unarchive", "unarchived")
    };
    if archived {
        // A queued or running job would still run: only finished tasks are archived.
        let layout = open_layout(root)?;
        let store = FileStore::open(&layout.state_dir())?;
        for task in known_tasks(&layout, &store, inputs)? {
            anyhow::ensure!(
                task.status.status_type.is_final(),
                "{} is {}: cancel it (or wait for it) before archiving it",
                task.url,
                task.status.status_type
            );
        }
    }
    change_records(
        root,
        inputs,
        |task| {
            if archived {
                task.archive();
            } else {
                task.unarchive(jiff::Timestamp::now());
            }
        },
        |requests, id| requests.archives.request_with(id, value),
        |task| task.archived == archived,
        what,
    )
    .await
}

/// `gitfleet schedule`: sync every `every` instead of the adaptive interval (`None`: adaptive).
pub async fn schedule(
    root: &std::path::Path,
    inputs: &[String],
    every: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let seconds = every.map(|e| e.as_secs().max(1));
    let value = seconds.map_or_else(|| "adaptive".to_string(), |s| s.to_string());
    change_records(
        root,
        inputs,
        |task| task.set_interval(every, jiff::Timestamp::now()),
        |requests, id| requests.intervals.request_with(id, &value),
        |task| task.interval_override_s == seconds,
        "scheduled",
    )
    .await
}

/// Changes the records of the tasks `inputs` name: directly when no process works on the root,
/// otherwise by asking the one that does (`serve`) and waiting until the records show `done`.
async fn change_records(
    root: &std::path::Path,
    inputs: &[String],
    change: impl Fn(&mut CloneTask),
    ask: impl Fn(&RequestDirs, &str) -> std::io::Result<()>,
    done: impl Fn(&CloneTask) -> bool,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let store = FileStore::open(&layout.state_dir())?;
    // No process works on the root: its records, read once under the lock, are the truth.
    if let Some(_lock) = RootLock::try_acquire(&layout.state_dir())? {
        for mut task in known_tasks(&layout, &store, inputs)? {
            change(&mut task);
            task.updated_at = jiff::Timestamp::now();
            store.put_sync(&task)?;
            println!("{what} {}", task.url);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ids = ids_of(&known_tasks(&layout, &store, inputs)?);
    let requests = RequestDirs::open(&layout.state_dir())?;
    for id in &ids {
        ask(&requests, id)?;
    }
    let not_done = format!("was not {what} by the process working on the root");
    wait_for_records(
        &store,
        ids,
        done,
        |t| println!("{what} {}", t.url),
        &not_done,
    )
    .await
}

/// The stored tasks `inputs` (ids or URLs) name, from one read of the records; an error names
/// an unknown one.
fn known_tasks(
    layout: &Layout,
    store: &FileStore,
    inputs: &[String],
) -> anyhow::Result<Vec<CloneTask>> {
    let known = store.load_all_sync()?;
    let policy = Policy::permissive();
    inputs
        .iter()
        .map(|input| {
            find_task(layout, &policy, &known, input)
                .cloned()
                .map_err(|e| anyhow::anyhow!(e.message))
        })
        .collect()
}

fn ids_of(tasks: &[CloneTask]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

pub async fn cancel(root: &std::path::Path, inputs: &[String]) -> anyhow::Result<ExitCode> {
    let layout = open_layout(root)?;
    let store = FileStore::open(&layout.state_dir())?;
    if let Some(_lock) = RootLock::try_acquire(&layout.state_dir())? {
        // No process is working here: mark unfinished tasks cancelled so no run resumes them.
        for mut task in known_tasks(&layout, &store, inputs)? {
            if task.status.status_type.is_final() {
                println!("{} is already {}", task.url, task.status.status_type);
                continue;
            }
            task.cancel_unstarted(jiff::Timestamp::now());
            store.put_sync(&task)?;
            println!("cancelled {}", task.url);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ids = ids_of(&known_tasks(&layout, &store, inputs)?);
    let requests = Requests::cancels(&layout.state_dir())?;
    for id in &ids {
        requests.request(id)?;
    }
    wait_for_records(
        &store,
        ids,
        |t| t.status.status_type.is_final(),
        |t| println!("{} is {}", t.url, t.status.status_type),
        "has not stopped yet",
    )
    .await
}

/// Waits (up to 30 s) until the record of every task of `ids` is `done`, as the process
/// working on the root writes it; `report`s each. 1 when one was not done in time.
async fn wait_for_records(
    store: &FileStore,
    ids: Vec<String>,
    done: impl Fn(&CloneTask) -> bool,
    report: impl Fn(&CloneTask),
    not_done: &str,
) -> anyhow::Result<ExitCode> {
    let mut exit = ExitCode::SUCCESS;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            match store.get(&id)? {
                Some(t) if done(&t) => {
                    report(&t);
                    break;
                }
                _ if Instant::now() >= deadline => {
                    eprintln!("gitfleet: {id} {not_done}");
                    exit = ExitCode::from(1);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(exit)
}
