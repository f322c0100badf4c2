//! Which mode runs a command: the embedded one (`embedded.rs`), or a cluster's client or node
//! (`remote.rs`) when `--nats` is given.

use std::process::ExitCode;

use anyhow::bail;

use crate::cli::{Cli, Command};
use crate::inputs::work_of;
use crate::remote::Cluster;
use crate::{embedded, remote, serve, served};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cluster = cli.nats.clone().map(|url| Cluster {
        url,
        prefix: cli.prefix.clone(),
        auth: cli.nats_auth.auth(),
    });
    let root = cli.root;
    match (cli.command, cluster) {
        (Command::Schema, _) => {
            print!("{}", gitfleet_proto::clone_task_schema());
            Ok(ExitCode::SUCCESS)
        }
        // The cache is this machine's, with or without a cluster; it clones synchronously.
        (Command::Cache(args), _) => tokio::task::spawn_blocking(move || crate::cache::run(args))
            .await
            .map_err(|e| anyhow::anyhow!("the cache command stopped: {e}"))?,
        (Command::Node(args), Some(cluster)) => remote::node(&cluster, &root, args).await,
        (Command::Nodes { json }, Some(cluster)) => remote::nodes(&cluster, json).await,
        (Command::Node(_) | Command::Nodes { .. }, None) => {
            bail!("`node` and `nodes` need a cluster: pass --nats URL (or set GITFLEET_NATS)")
        }
        (
            Command::Status {
                tasks,
                json,
                stale_after,
            },
            None,
        ) => embedded::status(&root, &tasks, json, stale_after),
        (
            Command::Status {
                tasks,
                json,
                stale_after,
            },
            Some(cluster),
        ) => remote::status(&cluster, &tasks, json, stale_after).await,
        (
            Command::Serve {
                run,
                drain_timeout,
                listen,
                notify,
            },
            None,
        ) => {
            let notifications = notify.notifications()?;
            serve::serve(&root, run, drain_timeout, listen.listener(), notifications).await
        }
        (Command::Serve { .. }, Some(_)) => {
            bail!(
                "a cluster keeps its repositories fresh with `gitfleet node`; `serve` is for one root"
            )
        }
        (Command::Remove { tasks }, None) => embedded::remove(&root, &tasks).await,
        (Command::Remove { tasks }, Some(cluster)) => remote::remove(&cluster, &tasks).await,
        (Command::Archive { tasks }, None) => embedded::set_archived(&root, &tasks, true).await,
        (Command::Unarchive { tasks }, None) => embedded::set_archived(&root, &tasks, false).await,
        (Command::Archive { tasks }, Some(cluster)) => {
            remote::set_archived(&cluster, &tasks, true).await
        }
        (Command::Unarchive { tasks }, Some(cluster)) => {
            remote::set_archived(&cluster, &tasks, false).await
        }
        (Command::Resume { tasks }, None) => embedded::resume(&root, &tasks).await,
        (Command::Schedule { tasks, every, .. }, None) => {
            embedded::schedule(&root, &tasks, every).await
        }
        (Command::Resume { tasks }, Some(cluster)) => remote::resume(&cluster, &tasks).await,
        (Command::Schedule { tasks, every, .. }, Some(cluster)) => {
            remote::schedule(&cluster, &tasks, every).await
        }
        (
            Command::Log {
                task,
                since,
                max_count,
                json,
            },
            None,
        ) => embedded::log(&root, &task, since, max_count, json),
        (
            Command::Log {
                task,
                since,
                max_count,
                json,
            },
            Some(cluster),
        ) => remote::log(&cluster, &task, since, max_count, json).await,
        (Command::History { task, json }, None) => embedded::history(&root, &task, json),
        (Command::History { task, json }, Some(cluster)) => {
            remote::history(&cluster, &task, json).await
        }
        (Command::Du { top, json }, None) => embedded::du(&root, top, json),
        (Command::Du { top, json }, Some(cluster)) => remote::du(&cluster, top, json).await,
        (Command::Cancel { tasks }, None) => embedded::cancel(&root, &tasks).await,
        (Command::Cancel { tasks }, Some(cluster)) => remote::cancel(&cluster, &tasks).await,
        (command, cluster) => {
            let Some((work, run)) = work_of(command)? else {
                unreachable!("every other command is work");
            };
            match cluster {
                Some(cluster) => remote::work(&cluster, work, &run).await,
                // A serve holds the root: it does the work.
                None => match served::connect(&root).await {
                    Some(serve) => served::hand_over(serve, work, &run).await,
                    None => embedded::work(&root, work, run).await,
                },
            }
        }
    }
}
