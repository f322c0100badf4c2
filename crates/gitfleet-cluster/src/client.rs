//! A typed client of the request API, for the command line and for tests.

use std::time::Duration;

use gitfleet_proto::{
    ApiError, ApiErrorCode, ApiReply, ArchiveRequest, CancelReply, CancelRequest, ChangedReply,
    CloneTask, GetRequest, ListReply, ListRequest, LogReply, LogRequest, NodesReply, RemoveRequest,
    ResumeRequest, ScheduleRequest, SubmitReply, SubmitRequest, SyncRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{MAX_REPOSITORIES, MAX_REQUEST_BYTES};
use crate::auth::NatsAuth;
use crate::infra::{ClusterError, Nats};
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{}: {}", code_str(.0.code), .0.message)]
    Api(ApiError),
}

fn code_str(code: ApiErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Requests in flight at once when reading many tasks.
const CONCURRENT_GETS: usize = 16;

#[derive(Debug, Clone)]
pub struct Client {
    nats: Nats,
    timeout: Duration,
}

impl Client {
    /// Connects anonymously (or with credentials in the URL).
    pub async fn connect(url: &str, prefix: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, prefix, &NatsAuth::default()).await
    }

    pub async fn connect_with(
        url: &str,
        prefix: &str,
        auth: &NatsAuth,
    ) -> Result<Client, ClientError> {
        let subjects = Subjects::new(prefix).map_err(ClusterError::Config)?;
        let nats = Nats::connect_with(url, subjects, "gitfleet-client", auth).await?;
        Ok(Client {
            nats,
            timeout: Duration::from_secs(60),
        })
    }

    pub fn nats(&self) -> &Nats {
        &self.nats
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        operation: &str,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let subject = self.nats.subjects.api(operation);
        let request = async_nats::Request::new()
            .payload(gitfleet_proto::to_json(request).into())
            .timeout(Some(self.timeout));
        // A request the server does not permit is dropped, not failed: its refusal arrives as an
        // event, which ends the wait at once with the server's words.
        let mut refusals = self.nats.refusals.clone();
        // Not connected because the server refused the credentials: say so now, not after the
        // request's timeout.
        let not_connected =
            self.nats.client.connection_state() != async_nats::connection::State::Connected;
        if let Some(why) = refusals.borrow_and_update().clone()
            && not_connected
            && why.contains("authorization")
        {
            return Err(ClusterError::PermissionDenied(format!("{operation}: {why}")).into());
        }
        let sent = self.nats.client.send_request(subject, request);
        let response = tokio::select! {
            response = sent => response.map_err(|e| {
                ClusterError::request(&format!("{operation}; is a gitfleet node running?"), e)
            })?,
            Ok(()) = refusals.changed() => {
                let why = refusals.borrow().clone().unwrap_or_default();
                return Err(ClusterError::PermissionDenied(format!("{operation}: {why}")).into());
            }
        };
        match gitfleet_proto::from_json::<ApiReply<Resp>>(&response.payload) {
            Ok(ApiReply::Ok(v)) => Ok(v),
            Ok(ApiReply::Error(e)) => Err(ClientError::Api(e)),
            Err(e) => {
                Err(ClusterError::request(&format!("{operation}: unreadable reply"), e).into())
            }
        }
    }

    /// Submits any number of repositories: a request over the API's per-request limits
    /// (`MAX_REPOSITORIES`, `MAX_REQUEST_BYTES`) goes as several, answered in order as one.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<SubmitReply, ClientError> {
        let parts = split(&request.repositories);
        if parts.len() <= 1 {
            return self.call("submit", request).await;
        }
        let mut tasks = Vec::with_capacity(request.repositories.len());
        for (i, part) in parts.into_iter().enumerate() {
            let part = SubmitRequest {
                repositories: part.to_vec(),
                operation: request.operation,
                worktree: request.worktree,
                // Each part is a request of its own; retried, it is still the same part.
                idempotency_key: request.idempotency_key.as_ref().map(|k| format!("{k}#{i}")),
            };
            tasks.extend(self.call::<_, SubmitReply>("submit", &part).await?.tasks);
        }
        Ok(SubmitReply { tasks, next: None })
    }

    /// Syncs any number of named repositories, split as `submit` splits; an empty list syncs
    /// every repository, following the API's pages.
    pub async fn sync(&self, request: &SyncRequest) -> Result<SubmitReply, ClientError> {
        if request.repositories.is_empty() {
            let mut tasks = Vec::new();
            let mut page = request.clone();
            loop {
                let reply: SubmitReply = self.call("sync", &page).await?;
                tasks.extend(reply.tasks);
                match reply.next {
                    Some(next) if page.after.as_ref() == Some(&next) => {
                        return Err(stuck("the sync of everything", &next));
                    }
                    Some(next) => page.after = Some(next),
                    None => return Ok(SubmitReply { tasks, next: None }),
                }
            }
        }
        let mut tasks = Vec::with_capacity(request.repositories.len());
        for part in split(&request.repositories) {
            let part = SyncRequest {
                repositories: part.to_vec(),
                after: None,
            };
            tasks.extend(self.call::<_, SubmitReply>("sync", &part).await?.tasks);
        }
        Ok(SubmitReply { tasks, next: None })
    }

    pub async fn get(&self, task: &str) -> Result<CloneTask, ClientError> {
        self.call(
            "get",
            &GetRequest {
                task: task.to_string(),
            },
        )
        .await
    }

    /// Reads many tasks, [`CONCURRENT_GETS`] requests at a time: each id with its answer, in
    /// the order the answers came.
    pub async fn get_many(
        &self,
        ids: Vec<String>,
    ) -> Vec<(String, Result<CloneTask, ClientError>)> {
        use futures_util::StreamExt;
        futures_util::stream::iter(ids)
            .map(|id| async move {
                let answer = self.get(&id).await;
                (id, answer)
            })
            .buffer_unordered(CONCURRENT_GETS)
            .collect()
            .await
    }

    /// The commits of a repository, newest first, read by the node that holds it.
    pub async fn log(&self, request: &LogRequest) -> Result<LogReply, ClientError> {
        self.call("log", request).await
    }

    pub async fn list(&self, request: &ListRequest) -> Result<ListReply, ClientError> {
        self.call("list", request).await
    }

    /// Every task, following pages, by id. A task written while the pages were read comes
    /// again later with its newer state, which is the one kept.
    pub async fn list_all(&self) -> Result<Vec<CloneTask>, ClientError> {
        let mut tasks = std::collections::BTreeMap::new();
        let mut request = ListRequest {
            limit: Some(1000),
            ..ListRequest::default()
        };
        loop {
            let page = self.list(&request).await?;
            for task in page.tasks {
                tasks.insert(task.id.clone(), task);
            }
            match page.next {
                Some(next) if request.after.as_ref() == Some(&next) => {
                    return Err(stuck("the listing", &next));
                }
                Some(next) => request.after = Some(next),
                None => return Ok(tasks.into_values().collect()),
            }
        }
    }

    pub async fn cancel(&self, tasks: Vec<String>) -> Result<CancelReply, ClientError> {
        self.call("cancel", &CancelRequest { tasks }).await
    }

    /// Removes finished tasks (ids or URLs): records and repositories.
    pub async fn remove(&self, tasks: Vec<String>) -> Result<ChangedReply, ClientError> {
        self.call("remove", &RemoveRequest { tasks }).await
    }

    /// Archives tasks (ids or URLs): kept as they are, never synced.
    pub async fn archive(&self, tasks: Vec<String>) -> Result<ChangedReply, ClientError> {
        self.call("archive", &ArchiveRequest { tasks }).await
    }

    /// Brings archived tasks back into the schedule, due now.
    pub async fn unarchive(&self, tasks: Vec<String>) -> Result<ChangedReply, ClientError> {
        self.call("unarchive", &ArchiveRequest { tasks }).await
    }

    /// Takes quarantined tasks back into the schedule, due now.
    pub async fn resume(&self, tasks: Vec<String>) -> Result<ChangedReply, ClientError> {
        self.call("resume", &ResumeRequest { tasks }).await
    }

    /// Syncs tasks every `every` (`None`: adaptively).
    pub async fn schedule(
        &self,
        tasks: Vec<String>,
        every: Option<std::time::Duration>,
    ) -> Result<ChangedReply, ClientError> {
        let every_s = every.map(|e| e.as_secs().max(1));
        self.call("schedule", &ScheduleRequest { tasks, every_s })
            .await
    }

    pub async fn nodes(&self) -> Result<NodesReply, ClientError> {
        self.call("nodes", &serde_json::json!({})).await
    }

    /// Status events of every task (subscribe before submitting, so that none is missed).
    pub async fn watch(&self) -> Result<async_nats::Subscriber, ClientError> {
        self.nats
            .client
            .subscribe(self.nats.subjects.status_all())
            .await
            .map_err(|e| ClusterError::request("status events", e).into())
    }
}

/// A paged request whose cursor does not move: following it would repeat the page forever.
fn stuck(what: &str, cursor: &str) -> ClientError {
    ClientError::Api(gitfleet_proto::ApiError::new(
        gitfleet_proto::ApiErrorCode::Unavailable,
        format!("{what} does not move on from {cursor}"),
    ))
}

/// `repositories` in parts the API takes: at most `MAX_REPOSITORIES` each, and their JSON (each
/// input as a JSON string, plus a comma) below `MAX_REQUEST_BYTES` with room for the rest.
fn split(repositories: &[String]) -> Vec<&[String]> {
    const ROOM: usize = MAX_REQUEST_BYTES - 4096;
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, input) in repositories.iter().enumerate() {
        let size = serde_json::to_string(input).map_or(6 * input.len() + 2, |j| j.len()) + 1;
        if i > start && (i - start == MAX_REPOSITORIES || bytes + size > ROOM) {
            parts.push(&repositories[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < repositories.len() {
        parts.push(&repositories[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_split_within_the_api_limits_and_in_order() {
        let many: Vec<String> = (0..4_500).map(|i| format!("https://h/r{i}")).collect();
        let parts = split(&many);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [MAX_REPOSITORIES, MAX_REPOSITORIES, 500]
        );
        assert_eq!(parts.concat(), many);
        // Long inputs: the byte limit splits first.
        let long: Vec<String> = (0..300)
            .map(|i| format!("{i}{}", "x".repeat(4_000)))
            .collect();
        let parts = split(&long);
        assert!(parts.len() > 1);
        for part in &parts {
            let json = serde_json::to_vec(&SyncRequest {
                repositories: part.to_vec(),
                after: None,
            })
            .expect("json");
            assert!(json.len() < MAX_REQUEST_BYTES, "{}", json.len());
        }
        assert_eq!(parts.concat(), long);
        assert!(split(&[]).is_empty());
    }
}
