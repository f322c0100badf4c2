//! A node answers requests for the commits of the repositories it holds
//! (`<prefix>.control.log.<node>`, which the API's `log` forwards to): the repository is the one
//! the task's record names, found from its URL below this node's root, never from a path a
//! message carries, and read only if this root's gitfleet made it.

use futures_util::StreamExt;
use gitfleet_git::{Layout, Target, recent_commits};
use gitfleet_proto::{ApiError, ApiErrorCode, ApiReply, ErrorCode, LogReply, LogRequest};

use crate::api::{MAX_LOG, MAX_REPLY_BYTES};
use crate::infra::{ClusterError, Nats};
use crate::kv_store::KvStore;

/// Requests answered at once (each a short walk of a repository's history on a blocking thread).
const CONCURRENT_READS: usize = 4;

/// Answers this node's log requests until the subscription ends.
pub(crate) async fn answer_log_requests(
    nats: Nats,
    store: KvStore,
    layout: Layout,
    me: String,
) -> Result<(), ClusterError> {
    let requests = nats
        .client
        .subscribe(nats.subjects.node_log(&me))
        .await
        .map_err(|e| ClusterError::request("log requests", e))?;
    let (nats, store, layout, me) = (&nats, &store, &layout, me.as_str());
    requests
        .for_each_concurrent(CONCURRENT_READS, |message| async move {
            let Some(reply_to) = message.reply.clone() else {
                return;
            };
            let reply = match answer(store, layout, me, &message.payload).await {
                Ok(reply) => ApiReply::Ok(reply),
                Err(e) => ApiReply::Error(e),
            };
            if let Err(e) = nats
                .client
                .publish(reply_to, gitfleet_proto::to_json(&reply).into())
                .await
            {
                tracing::warn!(error = %e, "cannot answer a log request");
            }
        })
        .await;
    Ok(())
}

async fn answer(
    store: &KvStore,
    layout: &Layout,
    me: &str,
    payload: &[u8],
) -> Result<LogReply, ApiError> {
    let request: LogRequest = gitfleet_proto::from_json(payload)
        .map_err(|e| ApiError::new(ApiErrorCode::BadRequest, e.to_string()))?;
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::new(ApiErrorCode::Unavailable, e.to_string());
    let Some((task, _)) = store
        .get(&request.task)
        .await
        .map_err(|e| unavailable(&e))?
    else {
        return Err(ApiError::new(
            ApiErrorCode::NotFound,
            format!("no task {}", request.task.escape_debug()),
        ));
    };
    if task.node.as_deref() != Some(me) {
        return Err(ApiError::new(
            ApiErrorCode::NotFound,
            format!("{} is not held by node {me}", task.url),
        ));
    }
    let target = Target::of_task(&task).map_err(|e| unavailable(&e.message))?;
    let dir = layout.path_of(&target);
    let (layout, since) = (layout.clone(), request.since);
    let limit = request.max_count.unwrap_or(MAX_LOG).min(MAX_LOG);
    let commits = tokio::task::spawn_blocking(move || recent_commits(&layout, &dir, since, limit))
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| {
            // The node's own paths stay in its log, not in a reply.
            if e.code == ErrorCode::NotFound {
                return ApiError::new(
                    ApiErrorCode::NotFound,
                    format!("{} is not cloned (yet)", task.url),
                );
            }
            tracing::warn!(task = %task.id, error = %e.message, "cannot read a repository's commits");
            ApiError::new(
                ApiErrorCode::Unavailable,
                format!("node {me} cannot read {} ({})", task.url, e.code),
            )
        })?;
    // Bounded by count and, for the reply's sake, by size (names and subjects are cut, but a
    // thousand long ones still add up): the newest that fit.
    let mut bytes = 0;
    let commits = commits
        .into_iter()
        .take_while(|commit| {
            bytes += gitfleet_proto::to_json(commit).len() + 1;
            bytes <= MAX_REPLY_BYTES
        })
        .collect();
    Ok(LogReply {
        commits,
        node: me.to_string(),
    })
}
