//! The Registry actor: aggregates worker events into CloneTask state, persists transitions, and
//! broadcasts every change to watchers.

use std::collections::HashMap;
use std::sync::Arc;

use gitfleet_proto::{
    CloneStatus, CloneTask, ErrorCode, ProgressEvent, StatusType, SyncResult, TaskError, TaskUpdate,
};
use jiff::Timestamp;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;

use crate::store::TaskStore;

pub enum RegistryMsg {
    /// A new request for a task: queued (replacing any earlier state of the same task).
    Queued(Box<CloneTask>),
    Started {
        id: String,
        attempt: u32,
        node: String,
    },
    Progress(ProgressEvent),
    Completed {
        id: String,
        attempt: u32,
        result: Box<SyncResult>,
    },
    /// A transient failure that will be retried: back to queued.
    Retrying {
        id: String,
        attempt: u32,
        error: TaskError,
    },
    Failed {
        id: String,
        attempt: u32,
        error: TaskError,
    },
    Get(String, RpcReplyPort<Option<CloneTask>>),
    List(RpcReplyPort<Vec<CloneTask>>),
}

pub struct Registry;

pub struct RegistryArgs {
    pub store: Arc<dyn TaskStore>,
    pub updates: broadcast::Sender<TaskUpdate>,
}

pub struct RegistryState {
    tasks: HashMap<String, CloneTask>,
    store: Arc<dyn TaskStore>,
    updates: broadcast::Sender<TaskUpdate>,
}

impl RegistryState {
    /// Applies `change` to task `id` if `attempt` is still its current attempt: a late event
    /// from an attempt that was superseded must not overwrite newer state.
    async fn transition(&mut self, id: &str, attempt: u32, change: impl FnOnce(&mut CloneTask)) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        if attempt != 0 && attempt < task.attempts {
            return;
        }
        change(task);
        task.updated_at = Timestamp::now();
        let task = task.clone();
        if let Err(e) = self.store.put(&task).await {
            tracing::error!(task = %task.id, error = %e, "cannot persist task state");
        }
        let _ = self.updates.send(TaskUpdate::State {
            task: Box::new(task),
        });
    }
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let tasks = args
            .store
            .load_all()
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        Ok(RegistryState {
            tasks,
            store: args.store,
            updates: args.updates,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegistryMsg::Queued(task) => {
                let id = task.id.clone();
                let mut task = *task;
                if let Some(old) = state.tasks.get(&id) {
                    task.created_at = old.created_at;
                    task.last_sync = old.last_sync.clone();
                }
                state.tasks.insert(id.clone(), task);
                state.transition(&id, 0, |_| {}).await;
            }
            RegistryMsg::Started { id, attempt, node } => state.transition(&id, attempt, |t| {
                t.attempts = attempt;
                t.status = CloneStatus::cloning(0);
                t.phase = None;
                t.error_code = None;
                t.node = Some(node);
                t.started_at = Some(Timestamp::now());
                t.finished_at = None;
            }).await,
            RegistryMsg::Progress(event) => {
                let Some(task) = state.tasks.get_mut(&event.task_id) else {
                    return Ok(());
                };
                if task.status.status_type != StatusType::Cloning || event.attempt != task.attempts
                {
                    return Ok(());
                }
                let percent = event.progress.max(task.status.progress.unwrap_or(0));
                task.status = CloneStatus::cloning(percent);
                task.phase = Some(event.phase);
                let _ = state.updates.send(TaskUpdate::Progress(ProgressEvent {
                    progress: percent,
                    ..event
                }));
            }
            RegistryMsg::Completed {
                id,
                attempt,
                result,
            } => state.transition(&id, attempt, |t| {
                t.status = CloneStatus::completed();
                t.phase = None;
                t.error_code = None;
                t.finished_at = Some(Timestamp::now());
                t.last_sync = Some(*result);
            }).await,
            RegistryMsg::Retrying { id, attempt, error } => state.transition(&id, attempt, |t| {
                tracing::info!(task = %t.id, url = %t.url, attempt, error = %error, "will retry");
                t.status = CloneStatus::queued();
                t.phase = None;
                t.error_code = Some(error.code);
            }).await,
            RegistryMsg::Failed { id, attempt, error } => state.transition(&id, attempt, |t| {
                t.status = CloneStatus::failed(error.message.clone());
                t.phase = None;
                t.error_code = Some(error.code);
                t.finished_at = Some(Timestamp::now());
                if error.code == ErrorCode::Cancelled {
                    t.attempts = t.attempts.max(attempt);
                }
            }).await,
            RegistryMsg::Get(id, reply) => {
                let _ = reply.send(state.tasks.get(&id).cloned());
            }
            RegistryMsg::List(reply) => {
                let mut tasks: Vec<CloneTask> = state.tasks.values().cloned().collect();
                tasks.sort_by(|a, b| {
                    a.created_at
                        .cmp(&b.created_at)
                        .then_with(|| a.id.cmp(&b.id))
                });
                let _ = reply.send(tasks);
            }
        }
        Ok(())
    }
}
