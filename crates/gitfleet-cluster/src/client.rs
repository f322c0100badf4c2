//! A typed client of the request API, for the command line and for tests.

use std::time::Duration;

use gitfleet_proto::{
    ApiError, ApiErrorCode, ApiReply, CancelReply, CancelRequest, ChangedReply, CloneTask,
    GetRequest, ListReply, ListRequest, NodesReply, ResumeRequest, ScheduleRequest, SubmitReply,
    SubmitRequest, SyncRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

    pub async fn submit(&self, request: &SubmitRequest) -> Result<SubmitReply, ClientError> {
        self.call("submit", request).await
    }

    pub async fn sync(&self, request: &SyncRequest) -> Result<SubmitReply, ClientError> {
        self.call("sync", request).await
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

    pub async fn list(&self, request: &ListRequest) -> Result<ListReply, ClientError> {
        self.call("list", request).await
    }

    /// Every task, following pages.
    pub async fn list_all(&self) -> Result<Vec<CloneTask>, ClientError> {
        let mut out = Vec::new();
        let mut request = ListRequest {
            limit: Some(1000),
            ..ListRequest::default()
        };
        loop {
            let page = self.list(&request).await?;
            out.extend(page.tasks);
            match page.next {
                Some(next) => request.after = Some(next),
                None => return Ok(out),
            }
        }
    }

    pub async fn cancel(&self, tasks: Vec<String>) -> Result<CancelReply, ClientError> {
        self.call("cancel", &CancelRequest { tasks }).await
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
