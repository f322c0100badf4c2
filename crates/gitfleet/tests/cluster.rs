//! The cluster end to end: a real nats-server, several `gitfleet node` processes, script-built
//! repositories served by git daemon on 127.0.0.1, and clients talking NATS.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_cluster::Client;
use gitfleet_proto::{
    ApiErrorCode, ApiReply, HostPauseNotice, StatusType, SubmitRequest, TaskUpdate,
};
use gitfleet_tests::{
    CLUSTER_WAIT, Fixtures, GitDaemon, HttpOptions, HttpServer, NatsServer, NodeProcess, Refusal,
    Sandbox, eventually, fsck, mirror_all, mirror_one, refs, wait_final, wait_for_nodes,
};

/// Where the node that ran `task` (a mirror of `alpha.git` on `daemon`) keeps it.
fn mirror_on_owner(
    nodes: &[NodeProcess],
    task: &gitfleet_proto::CloneTask,
    daemon: &GitDaemon,
) -> std::path::PathBuf {
    let owner = nodes
        .iter()
        .find(|n| Some(n.id.as_str()) == task.node.as_deref())
        .expect("the task ran on a node");
    owner
        .root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()))
}

/// The sandbox of this test's `gitfleet` binary on `nats`.
fn sandbox(nats: &NatsServer) -> Sandbox<'_> {
    Sandbox::new(Path::new(env!("CARGO_BIN_EXE_gitfleet")), nats)
}

const REPOS: [&str; 6] = [
    "alpha.git",
    "beta.git",
    "big.git",
    "empty.git",
    "org-a/utils.git",
    "org-b/utils.git",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_is_mirrored_across_three_nodes() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let _nodes: Vec<NodeProcess> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| sandbox(&nats).start_node(id))
        .collect();
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 3).await;

    // An independent subscriber, as any NATS client would be.
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let mut events = raw.subscribe("gitfleet.status.>").await.expect("subscribe");

    let mut repositories: Vec<String> = REPOS.iter().map(|r| daemon.url(r)).collect();
    // Twenty more small repositories, so that placement has something to spread.
    for i in 0..20 {
        let dir = fixtures.root.join(format!("many/r{i}.git"));
        gitfleet_tests::run_git(
            &fixtures.root,
            &["init", "-q", "--bare", dir.to_str().expect("utf-8")],
        );
        gitfleet_tests::run_git(
            &fixtures.root,
            &[
                "--git-dir",
                dir.to_str().expect("utf-8"),
                "fetch",
                "-q",
                fixtures.repo("beta.git").to_str().expect("utf-8"),
                "+refs/heads/*:refs/heads/*",
            ],
        );
        repositories.push(daemon.url(&format!("many/r{i}.git")));
    }
    repositories.push("ext::sh -c true".into());
    let reply = client
        .submit(&SubmitRequest {
            repositories: repositories.clone(),
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let rejected = reply.tasks.iter().filter(|t| t.error.is_some()).count();
    assert_eq!(rejected, 1, "{reply:#?}");
    let ids: Vec<String> = reply
        .tasks
        .iter()
        .filter_map(|t| t.task_id.clone())
        .collect();
    assert_eq!(ids.len(), 26);

    // The same repository twice in one request, and again while pending: one task.
    let again = client
        .submit(&SubmitRequest {
            repositories: vec![
                daemon.url("many/r0.git"),
                daemon.url("many/r0"),
                daemon.url("many/r0.git"),
            ],
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit again");
    let first = again.tasks[0].task_id.clone().expect("task");
    assert!(
        again
            .tasks
            .iter()
            .all(|t| t.task_id.as_ref() == Some(&first)),
        "{again:#?}"
    );
    assert!(
        again.tasks[1].duplicate && again.tasks[2].duplicate,
        "{again:#?}"
    );
    let tasks = wait_final(&client, &ids).await;

    let nodes_used: HashSet<String> = tasks.iter().filter_map(|t| t.node.clone()).collect();
    assert!(nodes_used.len() >= 2, "work was not spread: {nodes_used:?}");
    for task in &tasks {
        assert_eq!(task.status.status_type, StatusType::Completed, "{task:#?}");
        assert!(task.status.progress.is_none());
        let path = Path::new(&task.path);
        assert!(path.is_absolute() && path.exists(), "{task:#?}");
        fsck(path).expect("fsck");
    }
    let alpha = tasks
        .iter()
        .find(|t| t.url.ends_with("/alpha.git"))
        .expect("alpha");
    assert_eq!(
        refs(Path::new(&alpha.path)),
        refs(&fixtures.repo("alpha.git"))
    );

    // The independent subscriber saw every task queued and completed, each completion once,
    // and nothing of a task after its completion (a late progress sample would say it is still
    // cloning).
    let mut seen_queued = HashSet::new();
    let mut seen_completed = HashSet::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), events.next()).await
    {
        let update = gitfleet_proto::from_json::<TaskUpdate>(&message.payload).expect("an update");
        let id = match &update {
            TaskUpdate::State { task } => task.id.clone(),
            TaskUpdate::Progress(p) => p.task_id.clone(),
        };
        assert!(
            !seen_completed.contains(&id),
            "an event after the completion of {id}: {update:?}"
        );
        if let TaskUpdate::State { task } = &update {
            match task.status.status_type {
                StatusType::Queued => {
                    seen_queued.insert(id);
                }
                StatusType::Completed => {
                    seen_completed.insert(id);
                }
                _ => {}
            }
        }
    }
    assert_eq!(seen_queued.len(), ids.len(), "queued events missing");
    assert_eq!(seen_completed.len(), ids.len(), "status events missing");

    let nodes = client.nodes().await.expect("nodes");
    let owned: u64 = nodes.nodes.iter().map(|n| n.repositories_owned).sum();
    assert_eq!(owned, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_unknown_requests_get_error_replies() {
    let nats = NatsServer::start();
    let _node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let raw = async_nats::connect(nats.url()).await.expect("raw client");

    let ask = |subject: &'static str, body: Vec<u8>| {
        let raw = raw.clone();
        async move {
            let reply = raw
                .request(subject, body.into())
                .await
                .expect("a reply, not silence");
            gitfleet_proto::from_json::<ApiReply<serde_json::Value>>(&reply.payload)
                .expect("structured reply")
        }
    };
    let code = |reply: ApiReply<serde_json::Value>| match reply {
        ApiReply::Error(e) => e.code,
        ApiReply::Ok(v) => panic!("expected an error, got {v}"),
    };
    assert_eq!(
        code(ask("gitfleet.api.submit", b"{not json".to_vec()).await),
        ApiErrorCode::BadRequest
    );
    assert_eq!(
        code(ask("gitfleet.api.submit", b"{\"repositories\":".to_vec()).await),
        ApiErrorCode::BadRequest
    );
    assert_eq!(
        code(ask("gitfleet.api.frobnicate", b"{}".to_vec()).await),
        ApiErrorCode::UnknownSubject
    );
    assert_eq!(
        code(
            ask(
                "gitfleet.api.get",
                b"{\"task\":\"0000000000000000\"}".to_vec()
            )
            .await
        ),
        ApiErrorCode::NotFound
    );
    // Over the API's byte limit (below NATS' own), and over its repository limit.
    let big = format!("{{\"repositories\":[\"{}\"]}}", "x".repeat(600 << 10));
    assert_eq!(
        code(ask("gitfleet.api.submit", big.into_bytes()).await),
        ApiErrorCode::TooLarge
    );
    let many = format!("{{\"repositories\":[{}]}}", vec!["\"x\""; 12_000].join(","));
    assert_eq!(
        code(ask("gitfleet.api.submit", many.into_bytes()).await),
        ApiErrorCode::TooLarge
    );
    // Private addresses are refused by default on nodes: URLs come from other people.
    let reply = client
        .submit(&SubmitRequest {
            repositories: vec!["file:///etc".into()],
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    assert!(reply.tasks[0].error.is_some(), "{reply:#?}");

    // MessagePack when asked for.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    let body = gitfleet_proto::to_msgpack(&gitfleet_proto::ListRequest::default()).expect("encode");
    let reply = raw
        .request_with_headers("gitfleet.api.list", headers, body.into())
        .await
        .expect("reply");
    let decoded: ApiReply<gitfleet_proto::ListReply> =
        gitfleet_proto::from_msgpack(&reply.payload).expect("msgpack reply");
    assert!(matches!(decoded, ApiReply::Ok(_)));

    // And the node still serves.
    assert_eq!(client.nodes().await.expect("nodes").nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_clone_has_its_work_taken_over() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(512 << 10),
            ..HttpOptions::default()
        },
    );
    let nats = NatsServer::start();
    let mut nodes: Vec<NodeProcess> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| sandbox(&nats).start_node(id))
        .collect();
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 3).await;

    let repositories: Vec<String> = REPOS.iter().map(|r| server.url(r)).collect();
    let reply = client
        .submit(&SubmitRequest {
            repositories,
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let ids: Vec<String> = reply
        .tasks
        .iter()
        .filter_map(|t| t.task_id.clone())
        .collect();
    let big_id = reply
        .tasks
        .iter()
        .find(|t| t.input.ends_with("/big.git"))
        .and_then(|t| t.task_id.clone())
        .expect("big");

    // Wait until big.git is being received (progress events are not stored: watch them), then
    // kill the node doing it.
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let mut events = raw
        .subscribe(format!("gitfleet.status.{big_id}"))
        .await
        .expect("subscribe");
    let mut victim = None;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(60), events.next()).await
    {
        if let Ok(TaskUpdate::Progress(p)) =
            gitfleet_proto::from_json::<TaskUpdate>(&message.payload)
            && p.progress >= 10
        {
            victim = client.get(&big_id).await.ok().and_then(|t| t.node);
            break;
        }
    }
    let victim = victim.expect("big.git started cloning");
    let index = nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("victim is one of ours");
    let mut dead = nodes.remove(index);
    dead.kill();

    let tasks = wait_final(&client, &ids).await;
    for task in &tasks {
        assert_eq!(task.status.status_type, StatusType::Completed, "{task:#?}");
        fsck(Path::new(&task.path)).expect("fsck");
    }
    let big = tasks.iter().find(|t| t.id == big_id).expect("big task");
    assert_ne!(big.node.as_deref(), Some(victim.as_str()), "{big:#?}");
    assert_eq!(refs(Path::new(&big.path)), refs(&fixtures.repo("big.git")));
    // The killed node left no half-written mirror: only its private staging area has leftovers.
    let rel = Path::new(&big.path)
        .strip_prefix(
            nodes
                .iter()
                .map(|n| n.root.path())
                .find(|r| Path::new(&big.path).starts_with(r))
                .expect("big is on a live node"),
        )
        .expect("relative");
    assert!(
        !dead.root.path().join(rel).exists(),
        "half-written mirror on the killed node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_nothing() {
    let fixtures = Fixtures::new();
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(512 << 10),
            ..HttpOptions::default()
        },
    );
    let mut nats = NatsServer::start();
    // node-a's metrics tell of the lost connection.
    let port = gitfleet_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _nodes: Vec<NodeProcess> = vec![
        sandbox(&nats).start_node_full(
            "node-a",
            tempfile::tempdir().expect("tempdir"),
            &[],
            &["--listen", &listen],
        ),
        sandbox(&nats).start_node("node-b"),
    ];
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 2).await;
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let mut events = raw.subscribe("gitfleet.status.>").await.expect("subscribe");

    let repositories: Vec<String> = REPOS.iter().map(|r| server.url(r)).collect();
    let reply = client
        .submit(&SubmitRequest {
            repositories,
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let ids: Vec<String> = reply
        .tasks
        .iter()
        .filter_map(|t| t.task_id.clone())
        .collect();
    assert_eq!(ids.len(), REPOS.len());
    // Restart the server while big.git is being received.
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(60), events.next()).await
    {
        if let Ok(TaskUpdate::Progress(p)) =
            gitfleet_proto::from_json::<TaskUpdate>(&message.payload)
            && p.progress >= 10
        {
            break;
        }
    }
    nats.restart();

    let tasks = wait_final(&client, &ids).await;
    for task in &tasks {
        assert_eq!(task.status.status_type, StatusType::Completed, "{task:#?}");
        fsck(Path::new(&task.path)).expect("fsck");
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let (status, text) = gitfleet_tests::http_get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(metric(&text, "gitfleet_nats_connected"), 1.0);
    // Every loss of the connection was recovered from.
    let lost = metric(&text, "gitfleet_nats_disconnects_total");
    assert!(lost >= 1.0, "{text}");
    assert_eq!(metric(&text, "gitfleet_nats_reconnects_total"), lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_stable_across_restarts_and_a_new_node_takes_about_a_share() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let mut nodes: Vec<NodeProcess> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| sandbox(&nats).start_node(id))
        .collect();
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 3).await;
    let mut repositories = Vec::new();
    for i in 0..24 {
        let dir = fixtures.root.join(format!("p/r{i}.git"));
        gitfleet_tests::run_git(
            &fixtures.root,
            &["init", "-q", "--bare", dir.to_str().expect("utf-8")],
        );
        repositories.push(daemon.url(&format!("p/r{i}.git")));
    }
    let first = mirror_all(&client, repositories).await;
    let ids: Vec<String> = first.iter().map(|t| t.id.clone()).collect();
    let before: Vec<Option<String>> = first.into_iter().map(|t| t.node).collect();

    // Every node restarts (same ids): every repository is synced where it lives.
    let restarted = jiff::Timestamp::now();
    for node in &mut nodes {
        node.kill();
    }
    let roots: Vec<tempfile::TempDir> = nodes
        .drain(..)
        .map(|mut n| {
            let root = std::mem::replace(&mut n.root, tempfile::tempdir().expect("tempdir"));
            drop(n);
            root
        })
        .collect();
    let nodes: Vec<NodeProcess> = ["node-a", "node-b", "node-c"]
        .iter()
        .zip(roots)
        .map(|(id, root)| sandbox(&nats).start_node_in(id, root))
        .collect();
    // The new processes, not the heartbeats the killed ones left (on a slow machine a node
    // that is not up before those expire would have its jobs taken over).
    eventually(CLUSTER_WAIT, "the restarted nodes are live", || async {
        client
            .nodes()
            .await
            .is_ok_and(|r| r.nodes.len() == 3 && r.nodes.iter().all(|n| n.started_at >= restarted))
            .then_some(())
    })
    .await;
    let reply = client
        .sync(&gitfleet_proto::SyncRequest::default())
        .await
        .expect("sync");
    assert!(reply.tasks.iter().all(|t| t.error.is_none()), "{reply:#?}");
    let after: Vec<Option<String>> = wait_final(&client, &ids)
        .await
        .into_iter()
        .map(|t| t.node)
        .collect();
    assert_eq!(before, after, "placement changed across a restart");

    // A fourth node: the repositories that move, move to it, and only some move.
    let node_d = sandbox(&nats).start_node("node-d");
    wait_for_nodes(&client, 4).await;
    client
        .sync(&gitfleet_proto::SyncRequest::default())
        .await
        .expect("sync");
    let with_d: Vec<Option<String>> = wait_final(&client, &ids)
        .await
        .into_iter()
        .map(|t| t.node)
        .collect();
    let moved: Vec<_> = before
        .iter()
        .zip(&with_d)
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a.clone())
        .collect();
    assert!(
        moved.iter().all(|n| n.as_deref() == Some("node-d")),
        "{moved:?}"
    );
    assert!(
        !moved.is_empty() && moved.len() < ids.len() / 2,
        "{} of {} moved",
        moved.len(),
        ids.len()
    );

    // Once node-d completed what moved to it, the former owners delete their copies: every
    // repository is held by its owner and by no other node.
    let root_of = |node: &str| {
        nodes
            .iter()
            .chain(std::iter::once(&node_d))
            .find(|n| n.id == node)
            .map(|n| n.root.path().to_path_buf())
            .expect("a node of the test")
    };
    let holders = |i: usize| -> Vec<String> {
        ["node-a", "node-b", "node-c", "node-d"]
            .into_iter()
            .filter(|node| {
                root_of(node)
                    .join(format!("127.0.0.1_{}/p/r{i}.git", daemon.port()))
                    .exists()
            })
            .map(str::to_string)
            .collect()
    };
    eventually(CLUSTER_WAIT, "no copies left behind", || async {
        (0..ids.len())
            .all(|i| holders(i) == [with_d[i].clone().expect("an owner")])
            .then_some(())
    })
    .await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_talks_to_the_cluster() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let _node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let cli = |args: &[&str]| sandbox(&nats).run_cli(args);
    let (code, stdout, stderr) = cli(&[
        "mirror",
        "--json",
        &daemon.url("alpha.git"),
        &daemon.url("nope.git"),
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|l| l.contains("\"completed\"")),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&["status", "--json"]);
    assert_eq!(code, Some(0));
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.iter().any(|t| t["error_code"] == "not_found"),
        "{stdout}"
    );
    let (code, stdout, _) = cli(&["nodes"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("solo"), "{stdout}");
    let (code, _, stderr) = cli(&["sync", &daemon.url("alpha.git")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("1 completed, 0 failed"), "{stderr}");
    // The record keeps both runs (the node carries the history across requests), newest
    // first; `status` and the state events go without it.
    let (code, stdout, stderr) = cli(&["history", "--json", &daemon.url("alpha.git")]);
    assert_eq!(code, Some(0), "{stderr}");
    let runs: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    let ops: Vec<&str> = runs
        .iter()
        .filter_map(|r| r["operation"].as_str())
        .collect();
    assert_eq!(ops, ["sync", "mirror"], "{stdout}");
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{stdout}");
    assert!(
        tasks.iter().all(|t| t.get("history").is_none()),
        "{tasks:#?}"
    );
    let (code, stdout, _) = cli(&["history", &daemon.url("nope.git")]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("[not_found]"), "{stdout}");
    // `log` is read by the node that holds the repository, through the API.
    let (code, stdout, stderr) = cli(&["log", "--json", "-n", "2", &daemon.url("alpha.git")]);
    assert_eq!(code, Some(0), "{stderr}");
    let commits: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    assert_eq!(commits.len(), 2, "{stdout}");
    let newest = gitfleet_tests::run_git(
        &fixtures.root,
        &[
            "--git-dir",
            "alpha.git",
            "log",
            "--branches",
            "-n",
            "2",
            "--format=%H",
        ],
    );
    let ids: Vec<&str> = commits.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, newest.lines().collect::<Vec<_>>(), "{stdout}");
    let (code, _, stderr) = cli(&["log", &daemon.url("nope.git")]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("not cloned"), "{stderr}");
    assert!(
        !stderr.contains(&std::env::temp_dir().display().to_string()),
        "{stderr}"
    );

    // An idempotency key makes a retried request harmless, even after the task finished.
    let keyed = |key: Option<&str>| SubmitRequest {
        repositories: vec![daemon.url("beta.git")],
        operation: gitfleet_proto::Operation::Mirror,
        worktree: false,
        idempotency_key: key.map(str::to_string),
    };
    let first = client.submit(&keyed(Some("req-1"))).await.expect("submit");
    let id = first.tasks[0].task_id.clone().expect("task");
    assert!(!first.tasks[0].duplicate);
    wait_final(&client, std::slice::from_ref(&id)).await;
    let retried = client.submit(&keyed(Some("req-1"))).await.expect("submit");
    assert!(retried.tasks[0].duplicate, "{retried:#?}");
    let fresh = client.submit(&keyed(Some("req-2"))).await.expect("submit");
    assert!(!fresh.tasks[0].duplicate, "{fresh:#?}");
    let task = wait_final(&client, &[id]).await.remove(0);
    assert_eq!(task.status.status_type, StatusType::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_with_more_repositories_than_a_request_takes_handles_every_one() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let _node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    // More inputs than one request may carry (the API answers `too_large` to such a request):
    // refused ones first (no transfer, cheap), then two real repositories past the limit.
    let limit = gitfleet_cluster::api::MAX_REPOSITORIES;
    let mut lines: Vec<String> = (0..limit)
        .map(|i| format!("ftp://127.0.0.1/refused-{i}.git"))
        .collect();
    lines.push(daemon.url("alpha.git"));
    lines.push(daemon.url("beta.git"));
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list.txt");
    std::fs::write(&list, lines.join("\n")).expect("write the list");
    let (code, stdout, stderr) =
        sandbox(&nats).run_cli(&["mirror", "--file", list.to_str().expect("utf-8")]);
    // The refused inputs fail the command; every one is reported, and the rest is done.
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("too_large"), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("rejected "))
            .count(),
        limit,
        "every refusal is reported"
    );
    assert!(stderr.contains("2 completed"), "{stderr}");
    for repo in ["alpha.git", "beta.git"] {
        let task = client.get(&daemon.url(repo)).await.expect("a task");
        assert_eq!(task.status.status_type, StatusType::Completed, "{repo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_a_nats_service_with_per_operation_stats() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let _node = sandbox(&nats).start_node("svc-node");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    mirror_one(&client, &daemon.url("beta.git")).await;
    // An error reply is counted as one.
    assert!(client.get("0000000000000000").await.is_err());
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let ask = |subject: &'static str| {
        let raw = raw.clone();
        async move {
            let reply = raw
                .request(subject, "".into())
                .await
                .expect("a service reply");
            serde_json::from_slice::<serde_json::Value>(&reply.payload).expect("JSON")
        }
    };
    let ping = ask("$SRV.PING.gitfleet").await;
    assert_eq!(ping["name"], "gitfleet", "{ping}");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"), "{ping}");
    assert_eq!(ping["metadata"]["node"], "svc-node", "{ping}");
    let info = ask("$SRV.INFO.gitfleet").await;
    let names: Vec<&str> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for operation in gitfleet_cluster::subjects::API_OPERATIONS {
        assert!(names.contains(&operation), "{operation} in {info}");
    }
    let stats = ask("$SRV.STATS.gitfleet").await;
    let endpoint = |name: &str| {
        stats["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(
        endpoint("submit")["num_requests"].as_u64() >= Some(1),
        "{stats}"
    );
    assert!(
        endpoint("get")["data"]["error_replies"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_notifies_what_its_tasks_did() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let notify = format!("tee -a {}", events.display());
    let _node = sandbox(&nats).start_node_full(
        "notifier",
        tempfile::tempdir().expect("tempdir"),
        &[],
        &["--notify-exec", &notify, "--notify-on", "completed"],
    );
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    // A failure is not among the kinds asked for. It ends first: had it been told, its line
    // would come before the completion's (one queue, in order).
    let failing = client
        .submit(&SubmitRequest {
            repositories: vec![daemon.url("nope.git")],
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let failing = failing.tasks[0].task_id.clone().expect("a task");
    let failed = wait_final(&client, &[failing]).await.remove(0);
    assert_eq!(failed.status.status_type, StatusType::Failed);
    let task = mirror_one(&client, &daemon.url("beta.git")).await;
    eventually(CLUSTER_WAIT, "the completion is told", || async {
        std::fs::read_to_string(&events)
            .ok()
            .filter(|t| t.lines().count() == 1)
    })
    .await;
    let line = std::fs::read_to_string(&events).expect("events");
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON");
    assert_eq!(event["event"], "completed", "{event}");
    assert_eq!(event["task"]["id"], task.id.as_str(), "{event}");
    assert_eq!(event["task"]["node"], "notifier", "{event}");
}

/// A job published straight onto a node's subject by any NATS client that can, naming another
/// task's id, gitfleet's own directory or a task that does not exist: the node derives the path
/// from the job's URL itself and checks the task in the bucket, so nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_jobs_write_nothing() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let alpha = mirror_one(&client, &daemon.url("alpha.git")).await;
    let alpha_id = alpha.id.clone();
    let alpha_dir = Path::new(&alpha.path).to_path_buf();
    let alpha_refs = refs(&alpha_dir);

    let beta_url = daemon.url("beta.git");
    let beta = gitfleet_git::Target::for_url(
        &beta_url,
        gitfleet_proto::Operation::Mirror,
        &gitfleet_git::Policy::permissive(),
    )
    .expect("a target");
    let alpha_relative = alpha_dir
        .strip_prefix(node.root.path().canonicalize().expect("root"))
        .expect("below the root")
        .to_string_lossy()
        .into_owned();
    let forged = [
        // Another repository into alpha's path, under alpha's id.
        gitfleet_proto::JobMessage {
            task_id: alpha_id.clone(),
            url: beta_url.clone(),
            operation: gitfleet_proto::Operation::Mirror,
            path: alpha_relative.clone(),
            generation: alpha.generation,
            previous_node: None,
        },
        // Into gitfleet's own directory.
        gitfleet_proto::JobMessage {
            task_id: beta.id().to_string(),
            url: beta_url.clone(),
            operation: gitfleet_proto::Operation::Mirror,
            path: ".gitfleet/evil.git".into(),
            generation: 1,
            previous_node: None,
        },
        // A well-formed job for a task nobody submitted.
        gitfleet_proto::JobMessage {
            task_id: beta.id().to_string(),
            url: beta_url.clone(),
            operation: gitfleet_proto::Operation::Mirror,
            path: beta.relative().to_string_lossy().into_owned(),
            generation: 1,
            previous_node: None,
        },
    ];
    let raw = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(raw);
    for job in &forged {
        jetstream
            .publish("gitfleet.jobs.solo", gitfleet_proto::to_json(job).into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    // A real request after them: once it is done, the node has been through the forged jobs.
    mirror_one(&client, &daemon.url("org-a/utils.git")).await;

    let root = node.root.path();
    assert!(!root.join(".gitfleet/evil.git").exists());
    assert!(!root.join(beta.relative()).exists(), "a forged job ran");
    assert_eq!(refs(&alpha_dir), alpha_refs, "alpha's mirror changed");
    let alpha_now = client.get(&alpha_id).await.expect("alpha");
    assert_eq!(alpha_now.url, alpha.url);
    assert_eq!(alpha_now.status.status_type, StatusType::Completed);
    assert!(client.get(beta.id()).await.is_err(), "a task was made up");
}

/// `init --worktree` keeps its working tree in cluster mode, `status` finds it by name, and a
/// request for a stored repository over another scheme is a conflict, not a re-pointing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_worktree_and_a_changed_scheme_over_the_cluster() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let cli = |args: &[&str]| sandbox(&nats).run_cli(args);
    let (code, stdout, stderr) = cli(&["init", "--worktree", "team/tools"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = cli(&["status", "--json", "team/tools"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    assert_eq!(tasks.len(), 1, "{stdout}");
    let path = tasks[0]["path"].as_str().expect("a path");
    assert!(path.ends_with("_local/team/tools"), "{path}");
    assert!(node.root.path().join("_local/team/tools/.git").is_dir());

    let (code, stdout, stderr) = cli(&["mirror", &daemon.url("alpha.git")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let over_http = daemon.url("alpha.git").replacen("git://", "http://", 1);
    let reply = client
        .submit(&SubmitRequest {
            repositories: vec![over_http],
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: None,
        })
        .await
        .expect("submit");
    let error = reply.tasks[0].error.as_ref().expect("refused");
    assert_eq!(error.code, ApiErrorCode::Rejected, "{error:?}");
    assert_eq!(
        error.task_error,
        Some(gitfleet_proto::ErrorCode::Conflict),
        "{error:?}"
    );
    let (_, stdout, _) = cli(&["status", "--json", &daemon.url("alpha.git")]);
    assert!(
        stdout.contains("git://"),
        "the stored url changed: {stdout}"
    );
}

/// The NATS users of deploy/nats/authorization.conf on a real nats-server: a submitter may use
/// the request API, but cannot publish a job, a heartbeat or a status event, nor cancel, and is
/// told so at once; without credentials nothing connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_cannot_act_as_a_node() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let users = [
        ("GITFLEET_NODE_PASSWORD", "node-pw-1"),
        ("GITFLEET_SUBMITTER_PASSWORD", "submitter-pw-2"),
        ("GITFLEET_ADMIN_PASSWORD", "admin-pw-3"),
    ];
    let nats = NatsServer::start_with(gitfleet_tests::NatsOptions {
        include: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/authorization.conf"),
        ),
        env: users
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    let node = sandbox(&nats).start_node_with(
        "solo",
        tempfile::tempdir().expect("tempdir"),
        &[
            ("GITFLEET_NATS_USER", "gitfleet-node"),
            ("GITFLEET_NATS_PASSWORD", "node-pw-1"),
        ],
    );
    let as_user = |user: &str, password: &str| gitfleet_cluster::NatsAuth {
        user: Some(user.into()),
        password: Some(gitfleet_git::Secret::new(password)),
        ..Default::default()
    };
    let submitter = Client::connect_with(
        &nats.url(),
        "gitfleet",
        &as_user("gitfleet-submitter", "submitter-pw-2"),
    )
    .await
    .expect("connect");
    wait_for_nodes(&submitter, 1).await;

    // The request API works.
    let task = mirror_one(&submitter, &daemon.url("alpha.git")).await;
    let id = task.id.clone();

    // Cancel is for admins: refused at once, with the server's words.
    let started = std::time::Instant::now();
    let err = submitter
        .cancel(vec![id.clone()])
        .await
        .expect_err("a submitter may not cancel");
    assert!(
        err.to_string()
            .to_ascii_lowercase()
            .contains("permissions violation"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refusal took {:?}",
        started.elapsed()
    );
    let admin = Client::connect_with(
        &nats.url(),
        "gitfleet",
        &as_user("gitfleet-admin", "admin-pw-3"),
    )
    .await
    .expect("connect");
    admin
        .cancel(vec![id.clone()])
        .await
        .expect("an admin may cancel");

    // A job, a heartbeat and a status event from a submitter are refused by the server.
    let (refused_tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let raw = async_nats::ConnectOptions::new()
        .user_and_password("gitfleet-submitter".into(), "submitter-pw-2".into())
        .event_callback(move |event| {
            let refused_tx = refused_tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = refused_tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .expect("connect");
    let beta = gitfleet_proto::JobMessage {
        task_id: "0123456789abcdef".into(),
        url: daemon.url("beta.git"),
        operation: gitfleet_proto::Operation::Mirror,
        path: "beta.git".into(),
        generation: 1,
        previous_node: None,
    };
    for subject in [
        "gitfleet.jobs.solo".to_string(),
        "$KV.GITFLEET_NODES.intruder".to_string(),
        format!("gitfleet.status.{id}"),
        "$JS.API.STREAM.INFO.GITFLEET_JOBS".to_string(),
    ] {
        raw.publish(subject.clone(), gitfleet_proto::to_json(&beta).into())
            .await
            .expect("publish");
        raw.flush().await.expect("flush");
        let why = tokio::time::timeout(Duration::from_secs(10), refused.recv())
            .await
            .unwrap_or_else(|_| panic!("no refusal for {subject}"))
            .expect("a refusal");
        assert!(
            why.to_ascii_lowercase().contains("permissions violation"),
            "{subject}: {why}"
        );
    }
    assert_eq!(submitter.nodes().await.expect("nodes").nodes.len(), 1);
    assert!(!node.root.path().join("127.0.0.1_").exists());

    // No credentials, no connection.
    let anonymous = tokio::time::timeout(
        Duration::from_secs(20),
        Client::connect(&nats.url(), "gitfleet"),
    )
    .await;
    match anonymous {
        Ok(Ok(client)) => {
            let err = client
                .nodes()
                .await
                .expect_err("anonymous requests are refused");
            assert!(err.to_string().contains("authorization"), "{err}");
        }
        Ok(Err(e)) => assert!(e.to_string().to_ascii_lowercase().contains("author"), "{e}"),
        Err(_) => panic!("an anonymous connect hung"),
    }
}

/// A takeover consumer left on a node's subject does not keep that node from starting; jobs
/// waiting for a node that is gone, with no consumer at all, are moved; an overlong
/// idempotency key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_takeover_and_jobs_for_a_ghost_are_handled() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let _first = sandbox(&nats).start_node("node-a");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let raw = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(raw);
    let stream = jetstream
        .get_stream("GITFLEET_JOBS")
        .await
        .expect("the jobs stream");
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("takeover-node-b".into()),
            filter_subject: "gitfleet.jobs.node-b".into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("a leftover takeover consumer");
    let _second = sandbox(&nats).start_node("node-b");
    wait_for_nodes(&client, 2).await;
    let repositories: Vec<String> = REPOS.iter().map(|r| daemon.url(r)).collect();
    let done = mirror_all(&client, repositories).await;
    // node-b made its own consumer (the leftover is gone) and ran what it owns.
    assert!(stream.consumer_info("node-node-b").await.is_ok());
    assert!(stream.consumer_info("takeover-node-b").await.is_err());
    let live = ["node-a".to_string(), "node-b".to_string()];
    for task in &done {
        let owner = gitfleet_cluster::placement::owner(&task.id, &live).expect("an owner");
        assert_eq!(task.node.as_ref(), Some(owner), "{task:#?}");
    }
    assert!(
        done.iter()
            .all(|t| t.status.status_type == StatusType::Completed),
        "{done:#?}"
    );

    // A job for a node that never was: moved to a live one (which finds the task finished).
    let task = &done[0];
    let job = gitfleet_proto::JobMessage {
        task_id: task.id.clone(),
        url: task.url.clone(),
        operation: gitfleet_proto::Operation::Sync,
        path: gitfleet_git::Target::of_task(task)
            .expect("a target")
            .relative()
            .to_string_lossy()
            .into_owned(),
        generation: task.generation,
        previous_node: None,
    };
    jetstream
        .publish("gitfleet.jobs.ghost", gitfleet_proto::to_json(&job).into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let waiting = || async {
        let mut subjects = stream
            .info_with_subjects("gitfleet.jobs.ghost")
            .await
            .expect("subjects");
        let mut count = 0;
        while let Some(entry) = subjects.next().await {
            count += entry.expect("a subject").1;
        }
        count
    };
    assert_eq!(waiting().await, 1);
    eventually(CLUSTER_WAIT, "the ghost's job is moved", || async {
        (waiting().await == 0).then_some(())
    })
    .await;

    let err = client
        .submit(&SubmitRequest {
            repositories: vec![daemon.url("alpha.git")],
            operation: gitfleet_proto::Operation::Mirror,
            worktree: false,
            idempotency_key: Some("k".repeat(10_000)),
        })
        .await
        .expect_err("an overlong key");
    assert!(err.to_string().contains("idempotency_key"), "{err}");
}

/// A node whose root an earlier version filled (no markers) adopts, once, the repositories the
/// task bucket says it completed, and keeps syncing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_adopts_the_repositories_of_an_earlier_version() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let node = sandbox(&nats).start_node("solo");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("connect");
    wait_for_nodes(&client, 1).await;
    let task = mirror_one(&client, &daemon.url("alpha.git")).await;
    let id = task.id.clone();

    // Stop the node and make its root look like an earlier version's.
    let mut node = node;
    node.kill();
    let root = std::mem::replace(&mut node.root, tempfile::tempdir().expect("tempdir"));
    let repo = Path::new(&task.path).to_path_buf();
    std::fs::remove_file(repo.join("gitfleet-marker")).expect("the marker");
    std::fs::remove_file(root.path().join(".gitfleet/markers-adopted")).expect("the flag");
    let _node = sandbox(&nats).start_node_in("solo", root);
    wait_for_nodes(&client, 1).await;
    let reply = client
        .sync(&gitfleet_proto::SyncRequest {
            repositories: vec![id.clone()],
            after: None,
        })
        .await
        .expect("sync");
    assert!(reply.tasks[0].error.is_none(), "{reply:?}");
    let synced = wait_final(&client, &[id]).await.remove(0);
    assert_eq!(
        synced.status.status_type,
        StatusType::Completed,
        "{synced:?}"
    );
    assert!(repo.join("gitfleet-marker").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_the_repositories_they_own_fresh() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let sandbox = sandbox(&nats);
    let fast = ["--min-interval", "1s", "--max-interval", "2s"];
    let nodes: Vec<NodeProcess> = ["node-a", "node-b"]
        .iter()
        .map(|id| sandbox.start_node_full(id, tempfile::tempdir().expect("tempdir"), &[], &fast))
        .collect();
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("client");
    wait_for_nodes(&client, 2).await;
    let task = mirror_one(&client, &daemon.url("alpha.git")).await;
    assert!(task.next_sync_at.is_some(), "{task:?}");
    let mirror = mirror_on_owner(&nodes, &task, &daemon);

    // Upstream moves on; nobody asks: the owner syncs it on schedule.
    fixtures.mutate("alpha.git");
    let upstream = refs(&fixtures.repo("alpha.git"));
    eventually(CLUSTER_WAIT, "the owner synced the change", || async {
        (refs(&mirror) == upstream).then_some(())
    })
    .await;
    let synced = client.get(&task.id).await.expect("the task");
    assert!(
        synced.generation > task.generation,
        "a scheduled sync is a new request of the task: {synced:?}"
    );
    assert!(synced.last_change_at >= task.last_change_at);

    // The owner goes away: the other node now owns the repository and keeps it fresh (a
    // node that never held it clones it first).
    let mut nodes = nodes;
    let owner_at = nodes
        .iter()
        .position(|n| Some(n.id.as_str()) == task.node.as_deref())
        .expect("the owner");
    let mut gone = nodes.remove(owner_at);
    gone.kill();
    let heir = &nodes[0];
    let inherited = heir
        .root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));
    eventually(
        CLUSTER_WAIT,
        "the other node took the repository over",
        || async { (inherited.exists() && refs(&inherited) == upstream).then_some(()) },
    )
    .await;
    fsck(&inherited).expect("a whole mirror");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_any_node_syncs_the_repository_where_it_lives() {
    const SECRET: &str = "cluster-hook-secret";
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let sandbox = sandbox(&nats);
    let port = gitfleet_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    // Hours between scheduled syncs: only the webhook syncs here.
    let slow = ["--min-interval", "1h"];
    let with_hooks = ["--min-interval", "1h", "--listen", &listen];
    let env = [("GITFLEET_WEBHOOK_SECRET", SECRET)];
    let nodes = [
        sandbox.start_node_full(
            "node-a",
            tempfile::tempdir().expect("tempdir"),
            &env,
            &with_hooks,
        ),
        sandbox.start_node_full("node-b", tempfile::tempdir().expect("tempdir"), &[], &slow),
    ];
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("client");
    wait_for_nodes(&client, 2).await;
    let alpha = daemon.url("alpha.git");
    let task = mirror_one(&client, &alpha).await;
    let mirror = mirror_on_owner(&nodes, &task, &daemon);

    fixtures.mutate("alpha.git");
    let upstream = refs(&fixtures.repo("alpha.git"));
    let body = serde_json::json!({ "urls": [alpha] }).to_string();
    let bearer = format!("Bearer {SECRET}");
    let (status, reply) = gitfleet_tests::http_post(
        port,
        "/hooks/sync",
        &[("Authorization", &bearer)],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains(&task.id), "{reply}");
    eventually(
        CLUSTER_WAIT,
        "the owner synced the pushed change",
        || async { (refs(&mirror) == upstream).then_some(()) },
    )
    .await;
    // Unsigned: refused.
    let (status, _) = gitfleet_tests::http_post(port, "/hooks/sync", &[], body.as_bytes());
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_an_interval_and_resumes_through_the_api() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let nats = NatsServer::start();
    let sandbox = sandbox(&nats);
    let node = sandbox.start_node_full(
        "solo",
        tempfile::tempdir().expect("tempdir"),
        &[],
        &["--min-interval", "1h"],
    );
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("client");
    wait_for_nodes(&client, 1).await;
    let alpha = daemon.url("alpha.git");
    let task = mirror_one(&client, &alpha).await;
    let mirror = node
        .root
        .path()
        .join(format!("127.0.0.1_{}/alpha.git", daemon.port()));

    // An interval of its own, set through the API: the owner hears of it and syncs on it.
    fixtures.mutate("alpha.git");
    let upstream = refs(&fixtures.repo("alpha.git"));
    let (code, out, err) = sandbox.run_cli(&["schedule", "--every", "1s", &alpha]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&task.id), "{out}");
    eventually(
        CLUSTER_WAIT,
        "the owner synced on the new interval",
        || async { (refs(&mirror) == upstream).then_some(()) },
    )
    .await;
    let record = client.get(&task.id).await.expect("the task");
    assert_eq!(record.interval_override_s, Some(1), "{record:?}");

    let (code, out, err) = sandbox.run_cli(&["resume", &alpha]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("resumed"), "{out}");
    let (code, _, _) = sandbox.run_cli(&["resume", &daemon.url("nothing-here.git")]);
    assert_eq!(code, Some(1));
}

/// What a node that met a refusal of 127.0.0.1 tells the others: pause it for `secs`.
async fn pause_loopback_from_elsewhere(raw: &async_nats::Client, secs: u64) {
    let pause = HostPauseNotice {
        host: "127.0.0.1".into(),
        pause_secs: secs,
        node: "node-elsewhere".into(),
    };
    raw.publish(
        "gitfleet.control.pause",
        gitfleet_proto::to_json(&pause).into(),
    )
    .await
    .expect("publish");
    raw.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_slows_one_node_down_pauses_every_node() {
    let fixtures = Fixtures::new();
    // The first request gets 429 with Retry-After: 2.
    let server = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            refuse_first: Some(Refusal {
                count: 1,
                status: 429,
                headers: vec![("Retry-After".into(), "2".into())],
                body: "slow down\n".into(),
            }),
            ..HttpOptions::default()
        },
    );
    let nats = NatsServer::start();
    let sandbox = sandbox(&nats);
    let _nodes: Vec<NodeProcess> = ["node-a", "node-b"]
        .iter()
        .map(|id| sandbox.start_node(id))
        .collect();
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("client");
    wait_for_nodes(&client, 2).await;
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let mut notices = raw
        .subscribe("gitfleet.control.pause")
        .await
        .expect("subscribe");

    // The node that meets the 429 waits as asked (no retry used) and tells the others.
    let task = mirror_one(&client, &server.url("alpha.git")).await;
    assert_eq!(task.status.status_type, StatusType::Completed, "{task:?}");
    let notice = tokio::time::timeout(CLUSTER_WAIT, notices.next())
        .await
        .expect("a pause notice in time")
        .expect("the subscription is open");
    let notice: HostPauseNotice =
        gitfleet_proto::from_json(&notice.payload).expect("a pause notice");
    assert_eq!(
        (
            notice.host.as_str(),
            notice.pause_secs,
            Some(notice.node.as_str())
        ),
        ("127.0.0.1", 2, task.node.as_deref())
    );
    let log = server.request_log();
    assert!(
        log[1].received >= log[0].received + Duration::from_secs(2),
        "{log:#?}"
    );

    // A pause another node announces holds on every node (the notice names neither of them):
    // nothing reaches the host for its time.
    let before = server.request_log().len();
    let announced = std::time::Instant::now();
    pause_loopback_from_elsewhere(&raw, 3).await;
    let urls = [
        "beta.git",
        "empty.git",
        "org-a/utils.git",
        "org-b/utils.git",
    ]
    .map(|name| server.url(name));
    let done = mirror_all(&client, urls.to_vec()).await;
    assert!(
        done.iter()
            .all(|t| t.status.status_type == StatusType::Completed),
        "{done:#?}"
    );
    for request in &server.request_log()[before..] {
        assert!(
            request.received >= announced + Duration::from_secs(3),
            "a request within the announced pause: {request:?}"
        );
    }
}

/// A command line waiting for hundreds of tasks that nothing reports on for a while (their host
/// is paused) reads them from the bucket sparingly: a bounded number of `get`s a second, not
/// every waiting task every round, and each task less often the longer it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_command_line_reads_a_bounded_number_of_tasks_a_second() {
    const TASKS: usize = 300;
    const PAUSE_S: u64 = 8;
    let fixtures = Fixtures::new();
    // Repositories of their own URL: symlinks to alpha.git.
    let copies = fixtures.root.join("copies");
    std::fs::create_dir_all(&copies).expect("copies directory");
    let mut list = String::new();
    let daemon = GitDaemon::start(&fixtures.root);
    for i in 0..TASKS {
        std::os::unix::fs::symlink("../alpha.git", copies.join(format!("c{i:03}.git")))
            .expect("symlink");
        list.push_str(&daemon.url(&format!("copies/c{i:03}.git")));
        list.push('\n');
    }
    let file = fixtures.root.join("list.txt");
    std::fs::write(&file, list).expect("list");
    let nats = NatsServer::start();
    let sandbox = sandbox(&nats);
    let _node = sandbox.start_node("node-a");
    let client = Client::connect(&nats.url(), "gitfleet")
        .await
        .expect("client");
    wait_for_nodes(&client, 1).await;

    // Every read a client makes, with when it came.
    let raw = async_nats::connect(nats.url()).await.expect("raw client");
    let mut gets = raw.subscribe("gitfleet.api.get").await.expect("subscribe");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let counter = {
        let seen = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(_get) = gets.next().await {
                seen.lock().expect("reads").push(std::time::Instant::now());
            }
        })
    };
    // The host is paused: the tasks wait queued, nothing is said of them meanwhile.
    pause_loopback_from_elsewhere(&raw, PAUSE_S).await;

    let started = std::time::Instant::now();
    let list = file.to_str().expect("utf-8").to_string();
    let (code, out, err) = {
        let sandbox_bin = Path::new(env!("CARGO_BIN_EXE_gitfleet")).to_path_buf();
        let url = nats.url();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(sandbox_bin)
                .args(["--nats", &url, "mirror", "--file", &list])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run gitfleet");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("the command line")
    };
    let waited = started.elapsed();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains(&format!("{TASKS} completed, 0 failed")),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(PAUSE_S),
        "the pause held: {waited:?}"
    );
    counter.abort();
    let at = seen.lock().expect("reads").clone();

    // Tasks nothing reports on are read...
    let per_round = gitfleet_cluster::follow::READS_PER_ROUND;
    assert!(at.len() >= per_round, "{} reads in all", at.len());
    // ...but a round of at most 64 a second: the client that read every waiting task every
    // round sent all 300 at once. (A window of one second may hold parts of a few rounds when
    // this machine stalls; 300 at once it never holds.)
    let busiest = at
        .iter()
        .map(|from| {
            at.iter()
                .filter(|t| **t >= *from && **t < *from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 3 * per_round && busiest < TASKS,
        "{busiest} reads within one second; {} in all",
        at.len()
    );
    let rounds = usize::try_from(waited.as_secs()).unwrap_or(usize::MAX) + 2;
    assert!(at.len() <= per_round * rounds, "{} reads in all", at.len());
}
