//! A cluster sandbox: `gitfleet node` processes on a real nats-server, each with a root of its
//! own, the command line run against them, and waits that poll with a deadline (never a fixed
//! sleep).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitfleet_cluster::Client;
use gitfleet_proto::{CloneTask, Operation, StatusType, SubmitRequest};

use crate::NatsServer;

/// How long the waits below wait before they fail the test.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(120);

/// Runs the `gitfleet` binary (`env!("CARGO_BIN_EXE_gitfleet")` in the binary's own tests)
/// against one nats-server.
pub struct Sandbox<'a> {
    pub nats: &'a NatsServer,
    bin: PathBuf,
}

/// A `gitfleet node` process, killed when dropped.
pub struct NodeProcess {
    pub id: String,
    child: Child,
    pub root: tempfile::TempDir,
}

impl NodeProcess {
    /// Kills the node (SIGKILL: no goodbye), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl<'a> Sandbox<'a> {
    pub fn new(bin: &Path, nats: &'a NatsServer) -> Sandbox<'a> {
        Sandbox {
            nats,
            bin: bin.to_path_buf(),
        }
    }

    /// A node named `id` with a new root.
    pub fn start_node(&self, id: &str) -> NodeProcess {
        self.start_node_in(id, tempfile::tempdir().expect("tempdir"))
    }

    /// A node named `id` on `root` (a node restarted on its root keeps its repositories).
    pub fn start_node_in(&self, id: &str, root: tempfile::TempDir) -> NodeProcess {
        self.start_node_with(id, root, &[])
    }

    /// A node with extra environment (credentials, for example). Loopback addresses are
    /// allowed (the test servers are there), two jobs run at once, retries come quickly.
    pub fn start_node_with(
        &self,
        id: &str,
        root: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> NodeProcess {
        self.start_node_full(id, root, env, &[])
    }

    /// A node with extra environment and extra options of `gitfleet node`.
    pub fn start_node_full(
        &self,
        id: &str,
        root: tempfile::TempDir,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> NodeProcess {
        let child = Command::new(&self.bin)
            .args(["--nats", &self.nats.url(), "--root"])
            .arg(root.path())
            .args([
                "node",
                "--node-id",
                id,
                "--allow-private",
                "--concurrency",
                "2",
                "--retry-delay",
                "0.2",
            ])
            .args(args)
            .env_remove("GITFLEET_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gitfleet node");
        NodeProcess {
            id: id.to_string(),
            child,
            root,
        }
    }

    /// `gitfleet --nats URL ARGS...`: its exit code, standard output and standard error.
    pub fn run_cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(&self.bin)
            .args(["--nats", &self.nats.url()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run gitfleet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Polls `check` until it returns a value, with growing pauses; fails the test, naming `what`,
/// after `timeout`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits until exactly `n` nodes are live.
pub async fn wait_for_nodes(client: &Client, n: usize) {
    eventually(CLUSTER_WAIT, &format!("{n} nodes are live"), || async {
        client
            .nodes()
            .await
            .is_ok_and(|r| r.nodes.len() == n)
            .then_some(())
    })
    .await;
}

/// Waits until every task of `ids` is final; their records, in that order.
pub async fn wait_final(client: &Client, ids: &[String]) -> Vec<CloneTask> {
    eventually(CLUSTER_WAIT, &format!("{ids:?} are final"), || async {
        let mut done = Vec::new();
        for id in ids {
            match client.get(id).await {
                Ok(t) if t.status.status_type.is_final() => done.push(t),
                _ => return None,
            }
        }
        Some(done)
    })
    .await
}

/// Mirrors `urls` through the cluster (every one accepted) and returns their final tasks, in
/// order.
pub async fn mirror_all(client: &Client, urls: Vec<String>) -> Vec<CloneTask> {
    let reply = client
        .submit(&SubmitRequest {
            repositories: urls,
            operation: Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let ids: Vec<String> = reply
        .tasks
        .iter()
        .map(|t| t.task_id.clone().expect("accepted"))
        .collect();
    wait_final(client, &ids).await
}

/// Mirrors `url` through the cluster and returns its completed task.
pub async fn mirror_one(client: &Client, url: &str) -> CloneTask {
    let task = mirror_all(client, vec![url.to_string()]).await.remove(0);
    assert_eq!(task.status.status_type, StatusType::Completed, "{task:?}");
    task
}
