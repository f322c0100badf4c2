//! The cluster's task store (JetStream key-value, compare-and-set on revisions) against a real
//! nats-server: what a write costs on the wire, and that a stale cached revision never wins.

use std::time::Duration;

use futures_util::StreamExt;
use gitfleet_actors::TaskStore;
use gitfleet_cluster::{Durability, KvStore, LINGER, Nats, Subjects};
use gitfleet_proto::{CloneStatus, CloneTask, Operation, StatusType};
use gitfleet_tests::NatsServer;

const WAIT: Duration = Duration::from_secs(30);
const ID: &str = "00112233445566aa";

async fn connect(server: &NatsServer) -> (Nats, KvStore) {
    let subjects = Subjects::new("kvtest").expect("a valid prefix");
    let nats = Nats::connect(&server.url(), subjects, "kv-store-test")
        .await
        .expect("connecting to nats-server");
    nats.ensure_resources(Durability::default())
        .await
        .expect("creating the bucket");
    let store = KvStore::new(nats.tasks().await.expect("the task bucket"));
    (nats, store)
}

fn task() -> CloneTask {
    CloneTask::new(
        ID.to_string(),
        "git://127.0.0.1/alpha.git".to_string(),
        Operation::Mirror,
        "127.0.0.1/alpha.git".to_string(),
        jiff::Timestamp::now(),
    )
}

/// Counts every message on the server while `f` runs, as the benchmark does. `writers` are the
/// connections `f` uses: a marker from each, once seen, means everything they sent before it has
/// been seen too.
async fn messages_during<F: std::future::Future<Output = ()>>(
    watcher: &Nats,
    writers: &[&Nats],
    f: F,
) -> usize {
    let mut all = watcher
        .client
        .subscribe(">")
        .await
        .expect("subscribing to >");
    watcher
        .client
        .flush()
        .await
        .expect("flushing the subscription");
    f.await;
    for (i, writer) in writers.iter().enumerate() {
        writer
            .client
            .publish(format!("kvtest-marker.{i}"), "end".into())
            .await
            .expect("publishing a marker");
        writer.client.flush().await.expect("flushing the marker");
    }
    let mut markers = 0;
    let mut count = 0;
    while markers < writers.len() {
        let message = tokio::time::timeout(WAIT, all.next())
            .await
            .expect("the markers arrive")
            .expect("the subscription is open");
        if message.subject.as_str().starts_with("kvtest-marker.") {
            markers += 1;
        } else {
            count += 1;
        }
    }
    count
}

async fn stored(store: &KvStore) -> (CloneTask, u64) {
    store
        .get(ID)
        .await
        .expect("reading the bucket")
        .expect("the task is stored")
}

/// Waits until a deferred intermediate write is due, and a little more.
async fn past_linger() {
    tokio::time::sleep(LINGER + Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_is_one_round_trip_and_a_stale_revision_never_wins() {
    let server = NatsServer::start();
    let (nats, api) = connect(&server).await;
    let (node_nats, node) = connect(&server).await;
    let both = [&nats, &node_nats];

    // The API creates a new task (as api.rs does): nothing is read first.
    let mut t = task();
    // The API names the node that owns the repository.
    t.node = Some("node-1".into());
    let n = messages_during(&nats, &both, async {
        assert!(api.compare_and_set(&t, 0).await.expect("creating"));
    })
    .await;
    assert_eq!(n, 2, "a create is one request and its reply");

    // The node reads it once (when the job arrives), then each of its writes is one
    // compare-and-set.
    let (current, revision) = stored(&node).await;
    node.remember(&current, revision);
    // Its own `queued` (its absolute path, a later time, no node yet: its Registry learns the
    // node when the job starts) says nothing new: never sent, not even later.
    let mut queued = current.clone();
    assert!(queued.node.is_some(), "the API names the owner");
    queued.node = None;
    queued.path = "/srv/gitfleet/127.0.0.1/alpha.git".into();
    queued.updated_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let n = messages_during(&nats, &both, async {
        node.put(&queued).await.expect("queued");
        past_linger().await;
    })
    .await;
    assert_eq!(n, 0, "the node's queued after the API's is not written");
    assert_eq!(stored(&node).await.1, revision);

    // `cloning` resolves at once and is written a little later: one request and its reply.
    t.status = CloneStatus::cloning(0);
    t.attempts = 1;
    t.node = Some("n1".into());
    let n = messages_during(&nats, &both, async {
        node.put(&t).await.expect("cloning");
    })
    .await;
    assert_eq!(n, 0, "an intermediate state waits");
    let n = messages_during(&nats, &both, past_linger()).await;
    assert_eq!(
        n, 2,
        "an update from a known revision is one request and its reply"
    );
    assert_eq!(
        stored(&node).await.0.status.status_type,
        StatusType::Cloning
    );

    // The same record again, only later: nothing to write.
    let before = stored(&node).await.1;
    t.updated_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let n = messages_during(&nats, &both, async {
        node.put(&t).await.expect("the same state");
        past_linger().await;
    })
    .await;
    assert_eq!(n, 0, "a write that changes nothing is not sent");
    assert_eq!(stored(&node).await.1, before);

    // A retry's `queued`, then its `cloning`, then `completed` within the wait: only the final
    // state is written.
    let mut retry = t.clone();
    retry.status = CloneStatus::queued();
    retry.node = None;
    let mut second = t.clone();
    second.attempts = 2;
    let mut done = second.clone();
    done.status = CloneStatus::completed();
    let n = messages_during(&nats, &both, async {
        node.put(&retry).await.expect("queued again");
        node.put(&second).await.expect("cloning again");
        node.put(&done).await.expect("completed");
        past_linger().await;
    })
    .await;
    assert_eq!(n, 2, "a short clone costs its final state alone");
    let (now, _) = stored(&node).await;
    assert_eq!(
        (now.status.status_type, now.attempts),
        (StatusType::Completed, 2)
    );

    // A deferred `cloning` that loses the race to its attempt's final state (written here by
    // another writer) never replaces it.
    let (current, revision) = stored(&node).await;
    let mut again = current.clone();
    again.status = CloneStatus::queued();
    again.attempts = 0;
    assert!(
        api.compare_and_set(&again, revision)
            .await
            .expect("requeued")
    );
    let (current, revision) = stored(&node).await;
    node.remember(&current, revision);
    let mut running = current.clone();
    running.status = CloneStatus::cloning(10);
    running.attempts = 1;
    node.put(&running).await.expect("cloning, deferred");
    let mut cancelled = running.clone();
    cancelled.status = CloneStatus::failed("cancelled on request");
    assert!(
        api.compare_and_set(&cancelled, revision)
            .await
            .expect("cancelled")
    );
    past_linger().await;
    let (now, _) = stored(&node).await;
    assert!(now.status.status_type.is_final(), "{now:?}");

    // Another writer (a takeover: a newer generation on another node) moves the revision on.
    let (current, revision) = stored(&api).await;
    let mut newer = current;
    newer.status = CloneStatus::cloning(0);
    newer.attempts = 3;
    newer.node = Some("n2".into());
    newer.generation += 1;
    assert!(
        api.compare_and_set(&newer, revision)
            .await
            .expect("the newer attempt")
    );
    // The first node's cached revision is stale: its late result must not win.
    let mut late = t.clone();
    late.status = CloneStatus::completed();
    node.put(&late)
        .await
        .expect("a late write is dropped, not an error");
    let (now, _) = stored(&node).await;
    assert_eq!(now.attempts, 3);
    assert_eq!(now.node.as_deref(), Some("n2"));
    assert!(!now.status.status_type.is_final(), "{now:?}");

    // A stale revision of the same attempt is re-read and written.
    let (current, revision) = stored(&node).await;
    node.remember(&current, revision);
    let mut progressed = current.clone();
    progressed.status = CloneStatus::cloning(50);
    assert!(
        api.compare_and_set(&progressed, revision)
            .await
            .expect("another write of the same attempt")
    );
    let mut finished = current;
    finished.status = CloneStatus::completed();
    node.put(&finished).await.expect("a write after a conflict");
    let (now, _) = stored(&node).await;
    assert!(now.status.status_type.is_final(), "{now:?}");
    assert_eq!(now.attempts, 3);
}

/// A new request is a new generation: the late result of the request before it (a node that was
/// slow, or a takeover's presumed-dead owner) never replaces its fresh `queued`, even with a
/// higher attempt number; writes of the current generation go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_of_an_older_generation_never_replaces_a_newer_request() {
    let server = NatsServer::start();
    let (_api_nats, api) = connect(&server).await;
    let (_node_nats, node) = connect(&server).await;
    let mut first = task();
    first.generation = 1;
    first.node = Some("n1".into());
    assert!(
        api.compare_and_set(&first, 0)
            .await
            .expect("the first request")
    );
    let (current, revision) = stored(&node).await;
    node.remember(&current, revision);

    // A second request (say a sync) queues generation 2 while the first is still running.
    let mut second = current.clone();
    second.generation = 2;
    second.attempts = 0;
    second.status = CloneStatus::queued();
    assert!(
        api.compare_and_set(&second, revision)
            .await
            .expect("the second request")
    );

    let mut late = current;
    late.attempts = 5;
    late.status = CloneStatus::completed();
    node.put(&late)
        .await
        .expect("a late write is dropped, not an error");
    let (now, _) = stored(&node).await;
    assert_eq!(now.generation, 2);
    assert_eq!(now.status.status_type, StatusType::Queued, "{now:?}");

    // The second generation's own result is stored.
    let mut done = now;
    done.attempts = 1;
    done.status = CloneStatus::completed();
    node.put(&done)
        .await
        .expect("the current generation's result");
    let (now, _) = stored(&node).await;
    assert_eq!(now.status.status_type, StatusType::Completed);
    assert_eq!(now.generation, 2);
}

/// A record larger than a `list` reply may hold (written before records were bounded) does not
/// end the listing: it is listed without its last result, and the tasks after it still come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_does_not_hide_the_tasks_after_it() {
    let server = NatsServer::start();
    let (nats, store) = connect(&server).await;
    let mut big = task();
    let name = "x".repeat(2_000);
    let mut result = gitfleet_proto::SyncResult::default();
    for list in [
        &mut result.refs_created,
        &mut result.refs_updated,
        &mut result.refs_deleted,
    ] {
        list.extend((0..100).map(|i| format!("refs/heads/{i}-{name}")));
    }
    big.last_sync = Some(result);
    assert!(gitfleet_proto::to_json(&big).len() > 512 << 10);
    assert!(store.compare_and_set(&big, 0).await.expect("a big record"));
    let mut after = task();
    after.id = "ffffffffffffffff".into();
    assert!(
        store
            .compare_and_set(&after, 0)
            .await
            .expect("a later record")
    );

    let ctx = gitfleet_cluster::api::ApiContext {
        nats: nats.clone(),
        store: store.clone(),
        nodes: nats.nodes().await.expect("the nodes bucket"),
        policy: gitfleet_git::Policy::strict(),
    };
    let reply =
        gitfleet_cluster::api::handle(&ctx, "list", b"{}", gitfleet_proto::Encoding::Json).await;
    let reply: gitfleet_proto::ApiReply<gitfleet_proto::ListReply> =
        gitfleet_proto::from_json(&reply.body).expect("a list reply");
    let gitfleet_proto::ApiReply::Ok(list) = reply else {
        panic!("an error: {reply:?}");
    };
    let ids: Vec<&str> = list.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [ID, "ffffffffffffffff"]);
    assert!(list.tasks[0].last_sync.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_state_that_cannot_be_stored_is_reported_until_it_is() {
    let mut server = NatsServer::start();
    let (_nats, store) = connect(&server).await;
    let store = store.with_persist_timeout(Duration::from_secs(1));
    let mut done = task();
    done.status = CloneStatus::completed();
    done.attempts = 1;

    // NATS is gone: the write is retried, then given up, and the task is marked unstored (its
    // node naks the job rather than acknowledge it).
    server.stop();
    let err = tokio::time::timeout(WAIT, store.put(&done))
        .await
        .expect("given up within the retry time and a request timeout")
        .expect_err("nothing can be stored without NATS");
    assert!(store.is_unstored(ID), "{err}");

    // Back again: the same final state is stored, and no longer reported.
    server.restart();
    store.put(&done).await.expect("stored once NATS is back");
    assert!(!store.is_unstored(ID));
    assert_eq!(
        stored(&store).await.0.status.status_type,
        StatusType::Completed
    );
}
