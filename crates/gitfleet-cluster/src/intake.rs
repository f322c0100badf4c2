//! A node's job intake: its consumer on its own jobs subject, the jobs it holds (unacknowledged
//! while they run), how a job from the wire becomes work for the actors or is refused, and when
//! it is acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::{AckKind, Message, consumer};
use futures_util::StreamExt;
use gitfleet_actors::{Fleet, Job, TaskStore};
use gitfleet_git::{Layout, Policy, Target};
use gitfleet_proto::{CloneStatus, CloneTask, JobMessage, Operation, TaskError};

use crate::api;
use crate::infra::{ClusterError, Nats};
use crate::kv_store::KvStore;

/// A job is redelivered when its node has not acknowledged it (or said it is still working) for
/// this long.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The longest a job of a paused host waits in the stream before this node looks again.
const PAUSED_RECHECK: Duration = Duration::from_secs(60);
/// When a job whose final state could not be stored comes back.
const UNSTORED_RETRY: Duration = Duration::from_secs(30);

/// The jobs placed on this node, from arrival to acknowledgement.
pub(crate) struct JobIntake<'a> {
    fleet: &'a Fleet,
    store: KvStore,
    nats: Nats,
    layout: Layout,
    policy: Policy,
    /// The jobs stream, and this node's consumer on it.
    stream: async_nats::jetstream::stream::Stream,
    config: consumer::pull::Config,
    jobs: consumer::pull::Stream,
    /// The message of every job the actors are running, by task id.
    held: HashMap<String, Message>,
}

impl<'a> JobIntake<'a> {
    /// Creates (or finds) this node's consumer. A takeover that died half-way leaves
    /// `takeover-<node>`, which filters the node's subject: a work queue stream allows one
    /// consumer per subject, so the node's could not be created. It is removed first, which
    /// releases what it held to the node.
    pub(crate) async fn open(
        fleet: &'a Fleet,
        store: KvStore,
        nats: Nats,
        layout: Layout,
        policy: Policy,
        node_id: &str,
        concurrency: usize,
    ) -> Result<JobIntake<'a>, ClusterError> {
        let stream = nats
            .jetstream
            .get_stream(nats.subjects.jobs_stream())
            .await
            .map_err(|e| ClusterError::setup("jobs stream", e))?;
        let leftover = format!("takeover-{node_id}");
        if stream.consumer_info(&leftover).await.is_ok() {
            tracing::warn!(consumer = %leftover, "removing a takeover consumer left on our jobs");
            let _ = stream.delete_consumer(&leftover).await;
        }
        let config = consumer::pull::Config {
            durable_name: Some(nats.subjects.node_consumer(node_id)),
            filter_subject: nats.subjects.jobs(node_id),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: i64::try_from(concurrency.saturating_mul(4).max(16)).unwrap_or(64),
            ..Default::default()
        };
        let jobs = messages(&stream, &config).await?;
        Ok(JobIntake {
            fleet,
            store,
            nats,
            layout,
            policy,
            stream,
            config,
            jobs,
            held: HashMap::new(),
        })
    }

    /// How many jobs the actors are running.
    pub(crate) fn running(&self) -> usize {
        self.held.len()
    }

    /// The next job from the consumer.
    pub(crate) async fn next_job(&mut self) -> Option<Result<Message, MessagesError>> {
        self.jobs.next().await
    }

    /// Takes what [`Self::next_job`] returned: a job is accepted or refused; a consumer that
    /// was removed (this node was silent long enough to be taken for dead, and its jobs were
    /// moved) is created again.
    pub(crate) async fn take(
        &mut self,
        next: Option<Result<Message, MessagesError>>,
    ) -> Result<(), ClusterError> {
        match next {
            Some(Ok(message)) => self.accept(message).await,
            Some(Err(e)) if e.kind() != MessagesErrorKind::ConsumerDeleted => {
                tracing::warn!(error = %e, "job stream error");
            }
            _ => {
                tracing::warn!("job consumer gone; recreating it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.jobs = messages(&self.stream, &self.config).await?;
            }
        }
        Ok(())
    }

    /// Long clones: tells JetStream the node is still at it, so that it does not redeliver.
    pub(crate) async fn keep_alive(&self) {
        for message in self.held.values() {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }

    /// A task reached a final state: its job may go. The result is in the task bucket (the
    /// Registry persists before it broadcasts). A plain ack (no confirmation round trip): if it
    /// is lost, the job comes back after the ack wait and is found finished and acknowledged
    /// then. A final state that could not be stored (a long NATS outage) is not acknowledged:
    /// the job comes back after a while and runs again.
    pub(crate) async fn settle(&mut self, task: &CloneTask) {
        let Some(message) = self.held.remove(&task.id) else {
            return;
        };
        self.hand_over(task, &message).await;
        let acked = if self.store.is_unstored(&task.id) {
            tracing::warn!(task = %task.id, "final state not stored; the job will run again");
            message.ack_with(AckKind::Nak(Some(UNSTORED_RETRY))).await
        } else {
            message.ack().await
        };
        if let Err(e) = acked {
            tracing::warn!(task = %task.id, error = %e, "cannot acknowledge a finished job");
        }
    }

    /// `host` was paused for `pause`: the jobs of it this node holds but does not run go back to
    /// the stream, so that they keep no place in this node's window from other hosts' jobs.
    pub(crate) async fn hand_back(&mut self, host: &str, pause: Duration) {
        let Ok(ids) = self.fleet.withdraw_queued(host).await else {
            return;
        };
        for id in ids {
            if let Some(message) = self.held.remove(&id) {
                let _ = message
                    .ack_with(AckKind::Nak(Some(pause.min(PAUSED_RECHECK))))
                    .await;
            }
        }
    }

    /// A repository placement moved here is complete: the node that held it before deletes its
    /// copy (told before the job is acknowledged; a lost notice leaves a copy, never loses one).
    async fn hand_over(&self, task: &CloneTask, message: &Message) {
        if task.status.status_type != gitfleet_proto::StatusType::Completed
            || self.store.is_unstored(&task.id)
        {
            return;
        }
        let Ok(job) = gitfleet_proto::from_json::<JobMessage>(&message.payload) else {
            return;
        };
        let Some(from) = job.previous_node else {
            return;
        };
        let notice = gitfleet_proto::HandoverNotice {
            task: task.clone(),
            from,
        };
        let payload = gitfleet_proto::to_json(&notice);
        if let Err(e) = self
            .nats
            .client
            .publish(self.nats.subjects.handovers(), payload.into())
            .await
        {
            tracing::warn!(task = %task.id, error = %e, "cannot tell the former holder to delete its copy");
        }
    }

    /// A job from the wire: handed to the actors, or acknowledged, terminated or retried later
    /// without running.
    async fn accept(&mut self, message: Message) {
        let job: JobMessage = match gitfleet_proto::from_json(&message.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a malformed job");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        if self.held.contains_key(&job.task_id) {
            // A redelivery of a job we are running.
            let _ = message.ack_with(AckKind::Progress).await;
            return;
        }
        // The job's repository, derived from its URL and operation here: a path or id from the wire
        // is never used. A job whose id does not match what its URL derives to, or whose task is not
        // in the bucket with the same source, was not made by the API: it is dropped, nothing written.
        let shape_of = |op: Operation| match op {
            Operation::Sync if job.path.ends_with(".git") => Operation::Mirror,
            Operation::Sync => Operation::Checkout,
            op => op,
        };
        let target = Target::of_parts(&job.task_id, &job.url, shape_of(job.operation), &job.path);
        let stored = self.store.get(&job.task_id).await;
        let (target, task) = match (target, stored) {
            (Ok(target), Ok(Some((task, revision)))) if target.check_stored(&task).is_ok() => {
                // The base of this node's first write of the task: no read before it.
                self.store.remember(&task, revision);
                (target, task)
            }
            (_, Err(e)) => {
                tracing::warn!(task = %job.task_id, error = %e, "cannot read a job's task; retrying later");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                return;
            }
            (target, _) => {
                let why = target.err().map_or_else(
                    || "no task of that source in the bucket".to_string(),
                    |e| e.message,
                );
                tracing::warn!(task = %job.task_id, why = %why, "dropping a job that does not match its task");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Cancelled (or finished) before it reached us, or superseded by a later request or a
        // takeover: nothing to do, and running it again would be harmless but wasteful.
        if task.status.status_type.is_final() || job.generation < task.generation {
            let _ = message.ack().await;
            return;
        }
        if job.generation > task.generation {
            tracing::warn!(task = %job.task_id, "dropping a job of a generation its task never had");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
        let mut operation = job.operation;
        if operation == Operation::Sync && !self.layout.path_of(&target).exists() {
            // This node was not the owner when the repository was cloned: clone it here.
            operation = shape_of(operation);
        }
        let planned = match target.url() {
            Some(url) => self
                .policy
                .check(url)
                .map(|()| Job::new(&self.layout, &target, operation))
                .map_err(|e| TaskError::new(e.code, e.message)),
            None => Ok(Job::new(&self.layout, &target, operation)),
        };
        let planned = planned.map(|mut job| {
            job.fence = task.generation;
            job.history = Some(Box::new(task.clone()));
            job
        });
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => {
                let mut task = task;
                task.status = CloneStatus::failed(error.message.clone());
                task.error_code = Some(error.code);
                task.updated_at = jiff::Timestamp::now();
                if self.store.put(&task).await.is_ok() {
                    api::publish_state(&self.nats, &task).await;
                }
                let _ = message.double_ack().await;
                return;
            }
        };
        // A paused host's job waits in the stream, not in this node's window of unacknowledged
        // jobs, where it would keep other hosts' jobs from being pulled.
        if let Ok(Some(left)) = self.fleet.host_paused_for(&planned.host()).await {
            let _ = message
                .ack_with(AckKind::Nak(Some(left.min(PAUSED_RECHECK))))
                .await;
            return;
        }
        match self.fleet.submit(vec![planned]).await {
            Ok(_) => {
                self.held.insert(job.task_id, message);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot hand a job to the actors");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }
}

/// The messages of the consumer `config` describes, created if it does not exist.
async fn messages(
    stream: &async_nats::jetstream::stream::Stream,
    config: &consumer::pull::Config,
) -> Result<consumer::pull::Stream, ClusterError> {
    let name = config.durable_name.clone().unwrap_or_default();
    stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .map_err(|e| ClusterError::setup("node consumer", e))?
        .messages()
        .await
        .map_err(|e| ClusterError::setup("node consumer", e))
}
