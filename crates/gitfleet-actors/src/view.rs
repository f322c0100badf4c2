//! What a reader outside the actors (the dashboard) sees of a fleet: counts, pages of tasks and
//! the live updates, through a handle that does not keep the fleet alive.

use std::time::Duration;

use gitfleet_proto::{CloneTask, Freshness, StatusType, TaskUpdate};
use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::{Census, FleetError, RegistryMsg};

/// The tasks a page shows: every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<StatusType>,
    pub freshness: Option<Freshness>,
    /// Part of the URL (case-insensitive).
    pub text: Option<String>,
    /// Where the previous page ended ([`TaskPage::next`]); the first page without one. Stable
    /// while tasks are added; removing one moves the last task into its place.
    pub after: Option<u64>,
    pub limit: usize,
}

/// The largest page a query gets.
pub const MAX_PAGE: usize = 500;

/// One page of tasks, in the order they were first tracked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskPage {
    /// With their freshness filled in.
    pub tasks: Vec<CloneTask>,
    /// How many tasks match the filters in all.
    pub matched: u64,
    /// How many of them come before this page (its first task is number `before + 1`).
    pub before: u64,
    /// The cursor of the next page, when there is one.
    pub next: Option<u64>,
}

/// A handle on a fleet's Registry and updates for readers: cloned freely, and gone quietly
/// (errors, no updates) once the fleet stops.
#[derive(Clone)]
pub struct FleetView {
    registry: ActorRef<RegistryMsg>,
    updates: broadcast::WeakSender<TaskUpdate>,
}

impl std::fmt::Debug for FleetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetView").finish_non_exhaustive()
    }
}

impl FleetView {
    pub(crate) fn new(
        registry: ActorRef<RegistryMsg>,
        updates: &broadcast::Sender<TaskUpdate>,
    ) -> FleetView {
        FleetView {
            registry,
            updates: updates.downgrade(),
        }
    }

    /// The tasks counted by status and by freshness.
    pub async fn census(&self, stale_after: Duration) -> Result<Census, FleetError> {
        ractor::call!(self.registry, RegistryMsg::Census, stale_after)
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// The page of tasks `query` asks for (at most [`MAX_PAGE`]).
    pub async fn page(
        &self,
        mut query: TaskQuery,
        stale_after: Duration,
    ) -> Result<TaskPage, FleetError> {
        query.limit = query.limit.clamp(1, MAX_PAGE);
        query.text = query.text.filter(|t| !t.is_empty());
        ractor::call!(self.registry, |reply| RegistryMsg::Page {
            query,
            stale_after,
            reply
        })
        .map_err(|_| FleetError::Gone("registry"))
    }

    pub async fn get(&self, task_id: &str) -> Result<Option<CloneTask>, FleetError> {
        ractor::call!(self.registry, RegistryMsg::Get, task_id.to_string())
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Forgets a finished task (its repository is being removed): `Ok(false)` for an unknown
    /// task, an error for a queued or running one.
    pub async fn forget(&self, task_id: &str) -> Result<Result<bool, String>, FleetError> {
        ractor::call!(self.registry, RegistryMsg::Remove, task_id.to_string())
            .map_err(|_| FleetError::Gone("registry"))
    }

    /// Every state transition and progress sample from now on, while the fleet runs.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<TaskUpdate>> {
        self.updates.upgrade().map(|sender| sender.subscribe())
    }
}
