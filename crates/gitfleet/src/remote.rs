//! Cluster mode: `gitfleet node`, and the client side of mirror/clone/init/sync/status/cancel/
//! nodes when `--nats` is given.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gitfleet_cluster::{Client, Durability, Follow, Nats, NodeOptions, Subjects, run_node};
use gitfleet_proto::{
    ApiError, CloneTask, ErrorCode, Operation, SubmitReply, SubmitRequest, SyncRequest, TaskError,
    WorkRequest,
};

use crate::cli::{NodeArgs, RunArgs};
use crate::display::Display;
use crate::report::{Summary, print_tasks};
use gitfleet_actors::hostname;

pub async fn node(
    cluster: &Cluster,
    root: &std::path::Path,
    args: NodeArgs,
) -> anyhow::Result<ExitCode> {
    let node_id = args.node_id.clone().unwrap_or_else(hostname);
    let (layout, _lock) = gitfleet_actors::claim(root, "a node needs a root of its own")?;
    let policy = args.policy();
    let credentials = crate::credentials::load(&args.work.auth, None)?;
    args.work.transport_settings()?;
    let config = args.work.fleet_config(
        &layout,
        policy.clone(),
        credentials,
        args.concurrency,
        node_id.clone(),
    );
    let subjects = Subjects::new(&cluster.prefix).map_err(anyhow::Error::msg)?;
    let nats = Nats::connect_with(
        &cluster.url,
        subjects,
        &format!("gitfleet-node-{node_id}"),
        &cluster.auth,
    )
    .await?;
    eprintln!(
        "gitfleet: node {node_id} joining the cluster at {}",
        cluster.shown_url()
    );
    let metrics = gitfleet_actors::FleetMetrics::with_connection(
        args.work.stale_after(),
        nats.connection.clone(),
    );
    let notifications = args.notify.notifications()?;
    let view = std::sync::Arc::new(std::sync::OnceLock::new());
    if let Some(listen) = args.listen.listener() {
        let context = {
            let (nats, policy) = (nats.clone(), policy.clone());
            move || {
                let (nats, policy) = (nats.clone(), policy.clone());
                async move {
                    Ok::<_, anyhow::Error>(gitfleet_cluster::api::ApiContext {
                        store: gitfleet_cluster::KvStore::new(nats.tasks().await?),
                        nodes: nats.nodes().await?,
                        nats,
                        policy,
                    })
                }
            }
        };
        let sync: crate::hooks::SyncUrls = std::sync::Arc::new({
            let context = context.clone();
            move |urls| {
                let context = context();
                Box::pin(async move {
                    let tasks = match context.await {
                        Ok(context) => gitfleet_cluster::api::sync_tracked(&context, &urls).await,
                        Err(_) => Vec::new(),
                    };
                    crate::hooks::Synced { tasks }
                })
            }
        });
        let controls: crate::dashboard::Controls = std::sync::Arc::new({
            let context = context.clone();
            move |control, id| {
                let context = context();
                Box::pin(async move {
                    use crate::dashboard::Control;
                    let context = context.await?;
                    let tasks = vec![id];
                    let done = match control {
                        Control::Sync => gitfleet_cluster::api::sync(
                            &context,
                            gitfleet_proto::SyncRequest {
                                repositories: tasks,
                                after: None,
                            },
                        )
                        .await
                        .map(|r| r.tasks.iter().any(|t| t.task_id.is_some())),
                        Control::Resume => gitfleet_cluster::api::resume(
                            &context,
                            gitfleet_proto::ResumeRequest { tasks },
                        )
                        .await
                        .map(|r| !r.changed.is_empty()),
                        Control::Cancel => gitfleet_cluster::api::cancel(
                            &context,
                            gitfleet_proto::CancelRequest { tasks },
                        )
                        .await
                        .map(|r| !r.cancelled.is_empty()),
                    };
                    done.map_err(|e| anyhow::anyhow!(e.message))
                })
            }
        });
        let nodes: crate::dashboard::NodeLoads = std::sync::Arc::new({
            let nats = nats.clone();
            move || {
                let nats = nats.clone();
                Box::pin(async move {
                    match nats.nodes().await {
                        Ok(nodes) => gitfleet_cluster::api::node_loads(&nodes)
                            .await
                            .unwrap_or_default(),
                        Err(_) => Vec::new(),
                    }
                })
            }
        });
        let endpoints = crate::listener::Endpoints {
            sync,
            metrics: metrics.clone(),
            dashboard: crate::dashboard::Dashboard {
                mode: "node",
                name: node_id.clone(),
                view: view.clone(),
                stale_after: args.work.stale_after(),
                controls,
                nodes: Some(nodes),
            },
        };
        let stop = crate::signals::stop_signal();
        crate::listener::listen(listen, endpoints, stop).await?;
    }
    let shutdown = crate::signals::stop_signal();
    run_node(
        nats,
        NodeOptions {
            node_id,
            durability: Durability {
                replicas: args.replicas,
            },
            policy,
            watchers: vec![Box::new(move |fleet: &gitfleet_actors::Fleet| {
                let _ = view.set(fleet.view());
                metrics.watch(fleet);
                crate::notify::start(notifications, fleet, Some(metrics.clone()));
            })],
        },
        config,
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Where the cluster is and who this process is to it.
pub struct Cluster {
    pub url: String,
    pub prefix: String,
    pub auth: gitfleet_cluster::NatsAuth,
}

impl Cluster {
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with(&self.url, &self.prefix, &self.auth).await?)
    }

    /// The NATS URL without the password it may hold.
    fn shown_url(&self) -> String {
        gitfleet_git::scrub_userinfo(&self.url)
    }
}

fn rejected_error(e: &ApiError) -> TaskError {
    TaskError::new(
        e.task_error.unwrap_or(ErrorCode::InvalidUrl),
        e.message.clone(),
    )
}

pub async fn work(cluster: &Cluster, work: WorkRequest, run: &RunArgs) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let mut display = Display::new(run.json);
    let mut events = client.watch().await?;
    let started = Instant::now();
    let reply: SubmitReply = match work {
        WorkRequest::Clone { inputs, operation } => {
            client
                .submit(&SubmitRequest {
                    repositories: inputs,
                    operation,
                    worktree: false,
                    idempotency_key: None,
                })
                .await?
        }
        WorkRequest::Init { names, worktree } => {
            client
                .submit(&SubmitRequest {
                    repositories: names,
                    operation: Operation::Init,
                    worktree,
                    idempotency_key: None,
                })
                .await?
        }
        WorkRequest::Sync { inputs } => {
            client
                .sync(&SyncRequest {
                    repositories: inputs,
                    after: None,
                })
                .await?
        }
    };
    let mut failed_inputs = 0usize;
    let mut ids = BTreeSet::new();
    for item in &reply.tasks {
        match (&item.task_id, &item.error) {
            (Some(id), None) => {
                ids.insert(id.clone());
            }
            (_, Some(e)) => {
                failed_inputs += 1;
                display.rejected(&item.input, &rejected_error(e));
            }
            (None, None) => {}
        }
    }
    display.track(ids.iter().cloned());
    // Events were subscribed to before the submit: the bucket is read only for the tasks no
    // event has finished after a quiet spell, a bounded number at a time.
    let mut follow = Follow::new(
        Follow::accepted(&reply),
        tokio::time::Instant::now() + gitfleet_cluster::follow::QUIET,
    );
    tokio::select! {
        () = follow.run(&client, &mut events, |update| display.update(update)) => {}
        _ = tokio::signal::ctrl_c() => {
            display.finish();
            eprintln!("gitfleet: stopped watching; the cluster keeps working");
            return Ok(ExitCode::from(130));
        }
    }
    display.finish();
    let mut summary = Summary {
        rejected: failed_inputs,
        ..Summary::default()
    };
    let (removed, waited): (Vec<&String>, Vec<&String>) =
        ids.iter().partition(|id| follow.is_gone(id));
    summary.removed = removed.into_iter().cloned().collect();
    let mut finished = follow.into_finished();
    for id in waited {
        let task = match finished.remove(id) {
            Some(task) => task,
            None => client.get(id).await?,
        };
        summary.add(task);
    }
    Ok(summary.finish(run.json, started.elapsed()))
}

/// The cluster's tasks; freshness from the records alone (whether a repository is still on its
/// node's disk is not known here).
pub async fn status(
    cluster: &Cluster,
    filter: &[String],
    json: bool,
    stale_after: Duration,
) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let tasks = if filter.is_empty() {
        client.list_all().await?
    } else {
        let mut tasks = Vec::new();
        for input in filter {
            tasks.push(client.get(input).await?);
        }
        tasks
    };
    let now = jiff::Timestamp::now();
    let tasks: Vec<CloneTask> = tasks
        .into_iter()
        .map(|mut task| {
            task.freshness = Some(task.freshness_at(now, stale_after, true));
            task
        })
        .collect();
    print_tasks(&tasks, json, &cluster.shown_url())?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet log` on a cluster: read by the node that holds the repository.
pub async fn log(
    cluster: &Cluster,
    input: &str,
    since: Option<jiff::Timestamp>,
    max_count: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reply = cluster
        .client()
        .await?
        .log(&gitfleet_proto::LogRequest {
            task: input.to_string(),
            since,
            max_count: Some(max_count),
        })
        .await?;
    crate::report::print_commits(&reply.commits, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet history` on a cluster: the runs the task's record keeps.
pub async fn history(cluster: &Cluster, input: &str, json: bool) -> anyhow::Result<ExitCode> {
    let task = cluster.client().await?.get(input).await?;
    crate::report::print_history(&task, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `gitfleet du` on a cluster: from every task's record (read page by page).
pub async fn du(cluster: &Cluster, top: usize, json: bool) -> anyhow::Result<ExitCode> {
    let tasks = cluster.client().await?.list_all().await?;
    crate::usage::DiskReport::of(&tasks, top).print(json, &cluster.shown_url())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(cluster: &Cluster, tasks: &[String]) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let reply = client.cancel(tasks.to_vec()).await?;
    for id in &reply.cancelled {
        println!("cancelling {id}");
    }
    Ok(if reply.cancelled.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `gitfleet remove` on a cluster: records purged, repositories deleted by their nodes.
pub async fn remove(cluster: &Cluster, tasks: &[String]) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let reply = client.remove(tasks.to_vec()).await?;
    if reply.changed.len() < tasks.len() {
        eprintln!(
            "gitfleet: {} of {} not removed (unknown, or queued or running: cancel it first)",
            tasks.len() - reply.changed.len(),
            tasks.len()
        );
    }
    Ok(changed(
        "removed (its node deletes the repository)",
        &reply.changed,
    ))
}

/// `gitfleet archive` / `unarchive` on a cluster.
pub async fn set_archived(
    cluster: &Cluster,
    tasks: &[String],
    archived: bool,
) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    Ok(if archived {
        changed("archived", &client.archive(tasks.to_vec()).await?.changed)
    } else {
        changed(
            "unarchived",
            &client.unarchive(tasks.to_vec()).await?.changed,
        )
    })
}

pub async fn resume(cluster: &Cluster, tasks: &[String]) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let reply = client.resume(tasks.to_vec()).await?;
    Ok(changed("resumed", &reply.changed))
}

pub async fn schedule(
    cluster: &Cluster,
    tasks: &[String],
    every: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let reply = client.schedule(tasks.to_vec(), every).await?;
    Ok(changed("scheduled", &reply.changed))
}

/// Names the tasks a request changed; 1 when it changed none.
fn changed(what: &str, ids: &[String]) -> ExitCode {
    for id in ids {
        println!("{what} {id}");
    }
    if ids.is_empty() {
        eprintln!("gitfleet: no such task in the cluster");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub async fn nodes(cluster: &Cluster, json: bool) -> anyhow::Result<ExitCode> {
    let client = cluster.client().await?;
    let reply = client.nodes().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24}  {:>7}  {:>11}  {:>6}  LAST SEEN",
        "NODE", "RUNNING", "CONCURRENCY", "OWNED"
    );
    for n in &reply.nodes {
        println!(
            "{:<24}  {:>7}  {:>11}  {:>6}  {}",
            n.node_id, n.running, n.concurrency, n.repositories_owned, n.last_seen
        );
    }
    Ok(ExitCode::SUCCESS)
}
