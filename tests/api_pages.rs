//! The cluster API with more tasks than one reply could carry, against a real nats-server: a
//! sync of everything, `list` and the client's full listing go a bounded page at a time, meet
//! every task once, and never send a reply near NATS' payload limit.

use std::collections::{BTreeSet, HashMap};

use gitfleet_cluster::api::{self, ApiContext};
use gitfleet_cluster::{Client, Durability, KvStore, Nats, Subjects};
use gitfleet_git::{Policy, Target};
use gitfleet_proto::{
    ApiReply, CloneStatus, CloneTask, Encoding, ListReply, NodeInfo, Operation, StatusType,
    SubmitReply, SyncRequest,
};
use gitfleet_tests::NatsServer;

const PREFIX: &str = "pages";
/// More tasks than one sync reply (about 70 bytes a task) fits in NATS' 1 MiB payload limit.
const TASKS: usize = 16_000;
/// The failed ones among them, for a filtered listing.
const FAILED: usize = 3;
/// NATS' default payload limit.
const PAYLOAD_LIMIT: usize = 1 << 20;

async fn context(server: &NatsServer) -> ApiContext {
    let subjects = Subjects::new(PREFIX).expect("a valid prefix");
    let nats = Nats::connect(&server.url(), subjects, "api-pages-test")
        .await
        .expect("connecting to nats-server");
    nats.ensure_resources(Durability::default())
        .await
        .expect("creating the streams and buckets");
    ApiContext {
        store: KvStore::new(nats.tasks().await.expect("the task bucket")),
        nodes: nats.nodes().await.expect("the nodes bucket"),
        nats,
        policy: Policy::strict(),
    }
}

/// A completed mirror of `url`, as a node would have recorded it.
fn completed(url: &str) -> CloneTask {
    let target = Target::for_url(url, Operation::Mirror, &Policy::strict()).expect("a valid url");
    let mut task = CloneTask::new(
        target.id().to_string(),
        target.display(),
        Operation::Mirror,
        target.relative().to_string_lossy().into_owned(),
        jiff::Timestamp::now(),
    );
    task.status = CloneStatus::completed();
    task.node = Some("node-a".into());
    task.generation = 1;
    task
}

/// Writes `TASKS` completed records (the last `FAILED` of them failed) straight into the bucket.
async fn fill(ctx: &ApiContext) -> Vec<String> {
    let urls: Vec<String> = (0..TASKS)
        .map(|i| format!("https://git.example/org/repo-{i}"))
        .collect();
    let mut ids = Vec::new();
    let mut writes = tokio::task::JoinSet::new();
    for (i, chunk) in urls.chunks(TASKS / 16).enumerate() {
        let (store, chunk) = (ctx.store.clone(), chunk.to_vec());
        writes.spawn(async move {
            let mut ids = Vec::new();
            for (j, url) in chunk.iter().enumerate() {
                let mut task = completed(url);
                if i * (TASKS / 16) + j >= TASKS - FAILED {
                    task.status = CloneStatus::failed("not found");
                }
                assert!(store.compare_and_set(&task, 0).await.expect("a write"));
                ids.push(task.id);
            }
            ids
        });
    }
    while let Some(written) = writes.join_next().await {
        ids.extend(written.expect("a writer"));
    }
    ids.sort();
    ids
}

/// Announces node `node-a` (for a heartbeat's lifetime): nobody consumes its jobs, which stay
/// in the stream, counted.
async fn announce_node(ctx: &ApiContext) {
    let node = NodeInfo {
        node_id: "node-a".into(),
        running: 0,
        concurrency: 8,
        repositories_owned: 0,
        started_at: jiff::Timestamp::now(),
        last_seen: jiff::Timestamp::now(),
    };
    ctx.nodes
        .put("node-a", gitfleet_proto::to_json(&node).into())
        .await
        .expect("announcing a node");
}

/// One request through the API's own handler: the reply's size on the wire and its body.
async fn call<T: serde::de::DeserializeOwned>(
    ctx: &ApiContext,
    operation: &str,
    request: &impl serde::Serialize,
) -> (usize, T) {
    let answer = api::handle(
        ctx,
        operation,
        &gitfleet_proto::to_json(request),
        Encoding::Json,
    )
    .await;
    match gitfleet_proto::from_json::<ApiReply<T>>(&answer.body).expect("a reply") {
        ApiReply::Ok(reply) => (answer.body.len(), reply),
        ApiReply::Error(e) => panic!("{operation}: {e:?}"),
    }
}

/// Every page of a listing, with the largest reply.
async fn list_pages(ctx: &ApiContext, status: Option<&str>) -> (Vec<CloneTask>, usize, usize) {
    let (mut tasks, mut largest, mut pages) = (Vec::new(), 0, 0);
    let mut after: Option<String> = None;
    loop {
        let request = serde_json::json!({ "limit": 1000, "after": after, "status": status });
        let (size, page): (usize, ListReply) = call(ctx, "list", &request).await;
        largest = largest.max(size);
        pages += 1;
        tasks.extend(page.tasks);
        match page.next {
            Some(next) => after = Some(next),
            None => return (tasks, largest, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_everything_and_list_go_by_pages_far_below_the_payload_limit() {
    let server = NatsServer::start();
    let ctx = context(&server).await;
    let ids = fill(&ctx).await;
    assert_eq!(ids.len(), TASKS);

    // `list`: every task once, in pages no larger than the API's bound.
    let (listed, largest, pages) = list_pages(&ctx, None).await;
    let listed_ids: BTreeSet<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(listed.len(), TASKS, "each task once");
    assert_eq!(listed_ids.len(), TASKS);
    assert!(
        largest < PAYLOAD_LIMIT / 2,
        "largest list page {largest} bytes"
    );
    assert!(pages >= TASKS.div_ceil(api::MAX_PAGE), "{pages} pages");

    // A rare status: a bounded number of records examined per page, every match found.
    let (failed, _, pages) = list_pages(&ctx, Some("failed")).await;
    assert_eq!(failed.len(), FAILED, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|t| t.status.status_type == StatusType::Failed)
    );
    assert!(pages > 1, "a filtered listing is paged too ({pages})");

    // A cursor the API did not give is refused, clearly.
    let answer = api::handle(&ctx, "list", br#"{"after":"zz"}"#, Encoding::Json).await;
    let body = String::from_utf8_lossy(&answer.body);
    assert!(answer.error && body.contains("bad_request"), "{body}");
    assert!(body.contains("previous page's next"), "{body}");

    // A list's cursor is not a sync's: without where the sync ends, it would meet again the
    // records it queued itself.
    announce_node(&ctx).await;
    let answer = api::handle(&ctx, "sync", br#"{"after":"5"}"#, Encoding::Json).await;
    let body = String::from_utf8_lossy(&answer.body);
    assert!(answer.error && body.contains("bad_request"), "{body}");
    ctx.nodes.purge("node-a").await.expect("the node leaves");

    // With no live node, a sync of everything is one clear error, not a page of them.
    let answer = api::handle(&ctx, "sync", b"{}", Encoding::Json).await;
    let body = String::from_utf8_lossy(&answer.body);
    assert!(answer.error && body.contains("no_nodes"), "{body}");

    // A sync of everything, page by page through the handler: each page's reply is bounded,
    // together they name every task once, with no error.
    let (mut synced, mut largest) = (Vec::new(), 0);
    let mut request = SyncRequest::default();
    announce_node(&ctx).await;
    loop {
        let (size, reply): (usize, SubmitReply) = call(&ctx, "sync", &request).await;
        largest = largest.max(size);
        synced.extend(reply.tasks);
        match reply.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    let whole = gitfleet_proto::to_json(&SubmitReply {
        tasks: synced.clone(),
        next: None,
    });
    assert!(
        whole.len() > PAYLOAD_LIMIT,
        "the test is meaningful: one reply would have been {} bytes",
        whole.len()
    );
    assert!(
        largest < PAYLOAD_LIMIT / 2,
        "largest sync page {largest} bytes"
    );
    assert_eq!(synced.len(), TASKS, "each task once, none met again");
    assert!(synced.iter().all(|s| s.error.is_none() && !s.duplicate));
    let synced_ids: BTreeSet<&str> = synced.iter().filter_map(|s| s.task_id.as_deref()).collect();
    assert_eq!(synced_ids.len(), TASKS);
    // Each record requested once: one new generation, queued on the node that owns it.
    let mut generations: HashMap<u64, usize> = HashMap::new();
    ctx.store
        .scan_all(|task, _| {
            assert_eq!(task.status.status_type, StatusType::Queued, "{}", task.id);
            *generations.entry(task.generation).or_default() += 1;
        })
        .await
        .expect("reading the bucket");
    assert_eq!(generations, HashMap::from([(2, TASKS)]));
    let mut jobs = ctx
        .nats
        .jetstream
        .get_stream(ctx.nats.subjects.jobs_stream())
        .await
        .expect("the jobs stream");
    let jobs = jobs.info().await.expect("its state").state.messages;
    assert_eq!(jobs, TASKS as u64, "one job per task");

    // Again, through the client, while the tasks are being written (as nodes do while a
    // sync runs): the client follows the pages, and its full listing keeps each task once,
    // in its newest state.
    let serving = tokio::spawn(api::serve(ctx.clone(), "node-a"));
    let client = Client::connect(&server.url(), PREFIX)
        .await
        .expect("a client");
    let writer = {
        let (store, ids) = (ctx.store.clone(), ids.clone());
        tokio::spawn(async move {
            for id in ids.iter().step_by(7) {
                let (mut task, revision) = store.get(id).await.expect("read").expect("a task");
                task.status = CloneStatus::completed();
                assert!(store.compare_and_set(&task, revision).await.expect("write"));
            }
        })
    };
    let listed = client.list_all().await.expect("every task");
    writer.await.expect("the writer");
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "each task once, by id"
    );
    announce_node(&ctx).await;
    let reply = client
        .sync(&SyncRequest::default())
        .await
        .expect("a sync of everything");
    // Completed since: queued again; still queued: joined, not queued twice.
    assert_eq!(reply.tasks.len(), TASKS);
    let again = reply.tasks.iter().filter(|t| !t.duplicate).count();
    assert_eq!(
        again,
        TASKS.div_ceil(7),
        "the completed ones are synced again"
    );
    serving.abort();
}
