//! Taking over the jobs of a node that is gone.
//!
//! A node's jobs wait on `<prefix>.jobs.<node>` for its durable consumer. When its heartbeat
//! expires, the live node with the smallest id deletes that consumer (which releases the jobs the
//! dead node held but never acknowledged), drains the subject, and republishes every job to the
//! repository's new owner. Work is idempotent (a clone that finds its repository syncs it), so a
//! node that was only slow, not dead, costs a repeated transfer, never a wrong result.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer;
use futures_util::{StreamExt, TryStreamExt};
use gitfleet_proto::{JobMessage, StatusType};

use crate::infra::{ClusterError, Nats};
use crate::kv_store::KvStore;
use crate::placement;

fn err(what: &str, e: impl Into<crate::infra::Cause>) -> ClusterError {
    ClusterError::request(&format!("takeover: {what}"), e)
}

/// If `me` is the smallest live node, moves the jobs of every node that has a consumer but no
/// heartbeat to their new owners. Returns how many jobs moved.
pub async fn take_over_dead_nodes(
    nats: &Nats,
    store: &KvStore,
    nodes: &async_nats::jetstream::kv::Store,
    me: &str,
    live: &[String],
) -> Result<usize, ClusterError> {
    if live.first().map(String::as_str) != Some(me) {
        return Ok(0);
    }
    let stream = nats
        .jetstream
        .get_stream(nats.subjects.jobs_stream())
        .await
        .map_err(|e| err("stream", e))?;
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| err("consumers", e))?;
    let mut moved = 0;
    for name in &names {
        let Some(node) = name.strip_prefix("node-") else {
            continue;
        };
        if live.iter().any(|n| n == node) {
            continue;
        }
        // A node announces itself before it creates its consumer, but our list of live nodes
        // may predate that: only a consumer older than a heartbeat's lifetime whose node is
        // still silent now is an orphan.
        let mut candidate: consumer::PullConsumer = stream
            .get_consumer(name)
            .await
            .map_err(|e| err("consumer", e))?;
        let created = candidate
            .info()
            .await
            .map_err(|e| err("consumer info", e))?
            .created
            .unix_timestamp();
        let age = jiff::Timestamp::now().as_second().saturating_sub(created);
        if age < i64::try_from(crate::infra::NODE_TTL.as_secs() * 2).unwrap_or(i64::MAX) {
            continue;
        }
        if nodes
            .get(node)
            .await
            .map_err(|e| err("heartbeat", e))?
            .is_some()
        {
            continue;
        }
        tracing::warn!(node, "node is gone; taking over its jobs");
        stream
            .delete_consumer(name)
            .await
            .map_err(|e| err("delete consumer", e))?;
        moved += drain(nats, store, &stream, node, live).await?;
    }
    // Jobs published to a node after its takeover (the publisher's list of live nodes predated
    // its departure), or to a node that died before it made its consumer, wait on a subject
    // nobody consumes: move those too.
    let prefix = nats.subjects.jobs("");
    let mut pending: Vec<String> = Vec::new();
    let mut subjects = stream
        .info_with_subjects(nats.subjects.jobs_all())
        .await
        .map_err(|e| err("stream subjects", e))?;
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(|e| err("stream subjects", e))?;
        if let Some(node) = subject.strip_prefix(&prefix)
            && count > 0
            && !live.iter().any(|n| n == node)
            && !names.contains(&nats.subjects.node_consumer(node))
        {
            pending.push(node.to_string());
        }
    }
    for node in pending {
        if nodes
            .get(&node)
            .await
            .map_err(|e| err("heartbeat", e))?
            .is_some()
        {
            continue;
        }
        tracing::warn!(node = %node, "jobs wait for a node that is gone; moving them");
        moved += drain(nats, store, &stream, &node, live).await?;
    }
    Ok(moved)
}

async fn drain(
    nats: &Nats,
    store: &KvStore,
    stream: &async_nats::jetstream::stream::Stream,
    dead: &str,
    live: &[String],
) -> Result<usize, ClusterError> {
    let name = format!("takeover-{dead}");
    let drainer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: nats.subjects.jobs(dead),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err("drain consumer", e))?;
    let mut moved = 0;
    loop {
        let mut batch = drainer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| err("fetch", e))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| err("fetch", e))?;
            got += 1;
            let Ok(job) = gitfleet_proto::from_json::<JobMessage>(&message.payload) else {
                let _ = message.ack().await;
                continue;
            };
            let Some(owner) = placement::owner(&job.task_id, live) else {
                break;
            };
            // The move is a new generation of the task: whatever the node presumed dead still
            // writes (it may only have been slow) no longer counts. A job its task has moved
            // past (finished, a later request) is dropped.
            let Some(job) = next_generation(store, job, owner).await? else {
                message.double_ack().await.map_err(|e| err("ack", e))?;
                continue;
            };
            let mut headers = HeaderMap::new();
            let sequence = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or_default();
            headers.insert(
                "Nats-Msg-Id",
                format!("{}:takeover:{sequence}:{}", job.task_id, job.generation).as_str(),
            );
            let ack = nats
                .jetstream
                .publish_with_headers(
                    nats.subjects.jobs(owner),
                    headers,
                    gitfleet_proto::to_json(&job).into(),
                )
                .await
                .map_err(|e| err("republish", e))?;
            ack.await.map_err(|e| err("republish", e))?;
            message.double_ack().await.map_err(|e| err("ack", e))?;
            tracing::info!(task = %job.task_id, from = dead, to = %owner, "job moved");
            moved += 1;
        }
        if got == 0 {
            break;
        }
    }
    stream
        .delete_consumer(&name)
        .await
        .map_err(|e| err("delete drain consumer", e))?;
    Ok(moved)
}

/// Moves `job`'s task to the next generation, queued for `owner`, and returns the job for it;
/// `None` when the task is gone, finished, or already of a later generation.
async fn next_generation(
    store: &KvStore,
    mut job: JobMessage,
    owner: &str,
) -> Result<Option<JobMessage>, ClusterError> {
    for _ in 0..8 {
        let Some((mut task, revision)) =
            store.get(&job.task_id).await.map_err(|e| err("read", e))?
        else {
            return Ok(None);
        };
        // This move, made before by a takeover that failed to republish: republish it.
        if task.generation == job.generation + 1
            && task.node.as_deref() == Some(owner)
            && task.status.status_type == StatusType::Queued
        {
            job.generation = task.generation;
            return Ok(Some(job));
        }
        if task.status.status_type.is_final() || task.generation != job.generation {
            return Ok(None);
        }
        task.generation += 1;
        task.status = gitfleet_proto::CloneStatus::queued();
        task.phase = None;
        task.attempts = 0;
        task.node = Some(owner.to_string());
        task.updated_at = jiff::Timestamp::now();
        if store
            .compare_and_set(&task, revision)
            .await
            .map_err(|e| err("write", e))?
        {
            job.generation = task.generation;
            return Ok(Some(job));
        }
    }
    Err(err("write", "the task is being updated concurrently"))
}
