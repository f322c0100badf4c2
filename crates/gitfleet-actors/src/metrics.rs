//! Prometheus metrics of a fleet (`GET /metrics` on `serve` and `node`): counters and histograms
//! fed by the Registry's broadcast, and gauges of the tasks as they are, counted by the Registry
//! at each scrape (`Census`) without building a task record.
//!
//! Cardinality is bounded: labels are operation kinds, results, error codes, statuses and
//! freshness values; never a repository.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gitfleet_proto::{CloneTask, ErrorCode, Freshness, StatusType, TaskUpdate, Timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ractor::ActorRef;
use tokio::sync::broadcast::error::RecvError;

use crate::transitions::{Change, Transitions};
use crate::{FleetError, RegistryMsg};

/// The tasks of a Registry, counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    pub by_status: HashMap<StatusType, u64>,
    pub by_freshness: HashMap<Freshness, u64>,
    /// The oldest last successful sync among tasks that had one.
    pub oldest_success: Option<Timestamp>,
    /// Bytes on disk of the repositories, as last measured.
    pub disk_bytes: u64,
}

impl Census {
    pub(crate) fn add(
        &mut self,
        status: StatusType,
        freshness: Freshness,
        success: Option<Timestamp>,
        disk_bytes: Option<u64>,
    ) {
        self.disk_bytes = self.disk_bytes.saturating_add(disk_bytes.unwrap_or(0));
        *self.by_status.entry(status).or_default() += 1;
        *self.by_freshness.entry(freshness).or_default() += 1;
        if let Some(at) = success {
            self.oldest_success = Some(self.oldest_success.map_or(at, |o| o.min(at)));
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FreshnessLabels {
    freshness: &'static str,
}

/// What the metrics read, at each scrape, of a node's connection to its cluster (the NATS
/// client counts; this crate does not know NATS).
pub trait Connection: Send + Sync {
    fn connected(&self) -> bool;
    /// Times the connection was lost.
    fn disconnects(&self) -> u64;
    /// Times it was made again after a loss.
    fn reconnects(&self) -> u64;
}

/// The connection's metrics, with what they read.
struct ConnectionMetrics {
    source: Arc<dyn Connection>,
    connected: Gauge,
    disconnects: Counter,
    reconnects: Counter,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry, source: Arc<dyn Connection>) -> ConnectionMetrics {
        let connected = Gauge::default();
        registry.register(
            "nats_connected",
            "Whether the node is connected to its NATS server (1) or not (0)",
            connected.clone(),
        );
        let disconnects = Counter::default();
        registry.register(
            "nats_disconnects",
            "Times the node lost its NATS connection",
            disconnects.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "nats_reconnects",
            "Times the node connected again after losing its NATS connection",
            reconnects.clone(),
        );
        ConnectionMetrics {
            source,
            connected,
            disconnects,
            reconnects,
        }
    }

    /// Brings the values up to the source's.
    fn read(&self) {
        self.connected.set(i64::from(self.source.connected()));
        let disconnects = self.source.disconnects();
        self.disconnects
            .inc_by(disconnects.saturating_sub(self.disconnects.get()));
        let reconnects = self.source.reconnects();
        self.reconnects
            .inc_by(reconnects.saturating_sub(self.reconnects.get()));
    }
}

/// A fleet's metrics. `watch` feeds it from a fleet; `render` is one scrape.
pub struct FleetMetrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    failures: Family<CodeLabels, Counter>,
    retries: Counter,
    durations: Family<KindLabels, Histogram>,
    bytes: Counter,
    tasks: Family<StatusLabels, Gauge>,
    freshness: Family<FreshnessLabels, Gauge>,
    oldest_success_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    disk_used: Gauge,
    missed_updates: Counter,
    notifications_dropped: Counter,
    /// A node's connection to its cluster.
    connection: Option<ConnectionMetrics>,
    /// Which state changes end work (transitions.rs).
    transitions: Mutex<Transitions>,
    registry_actor: OnceLock<ActorRef<RegistryMsg>>,
    stale_after: Duration,
}

impl std::fmt::Debug for FleetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetMetrics").finish_non_exhaustive()
    }
}

impl FleetMetrics {
    /// Metrics whose freshness gauges count a task stale after `stale_after` without a success.
    pub fn new(stale_after: Duration) -> Arc<FleetMetrics> {
        Self::build(stale_after, None)
    }

    /// A node's metrics: also its `connection` to the cluster.
    pub fn with_connection(
        stale_after: Duration,
        connection: Arc<dyn Connection>,
    ) -> Arc<FleetMetrics> {
        Self::build(stale_after, Some(connection))
    }

    fn build(stale_after: Duration, connection: Option<Arc<dyn Connection>>) -> Arc<FleetMetrics> {
        let mut registry = Registry::with_prefix("gitfleet");
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Operations that ended, by kind (mirror, bare, checkout, init, sync) and result",
            operations.clone(),
        );
        let failures = Family::<CodeLabels, Counter>::default();
        registry.register(
            "failures",
            "Operations that failed, by error code",
            failures.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Attempts started again after a transient failure",
            retries.clone(),
        );
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        registry.register(
            "operation_duration_seconds",
            "How long operations took, from start to their end, by kind",
            durations.clone(),
        );
        let bytes = Counter::default();
        registry.register(
            "received_bytes",
            "Bytes received by completed transfers",
            bytes.clone(),
        );
        let tasks = Family::<StatusLabels, Gauge>::default();
        registry.register("tasks", "Tasks by status", tasks.clone());
        let freshness = Family::<FreshnessLabels, Gauge>::default();
        registry.register(
            "tasks_by_freshness",
            "Tasks by freshness (fresh, stale, error, quarantined)",
            freshness.clone(),
        );
        let oldest_success_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "oldest_successful_sync_age_seconds",
            "Age of the oldest last successful sync among the tasks (NaN: none succeeded yet)",
            oldest_success_age.clone(),
        );
        let disk_used = Gauge::default();
        registry.register_with_unit(
            "disk_used",
            "Bytes the tracked repositories take on disk, as last measured (after each clone and \
             each sync that received something)",
            prometheus_client::registry::Unit::Bytes,
            disk_used.clone(),
        );
        let notifications_dropped = Counter::default();
        registry.register(
            "notifications_dropped",
            "Notifications dropped because their queue was full",
            notifications_dropped.clone(),
        );
        let missed_updates = Counter::default();
        registry.register(
            "metrics_missed_updates",
            "State changes the metrics fell too far behind to count",
            missed_updates.clone(),
        );
        let connection =
            connection.map(|source| ConnectionMetrics::register(&mut registry, source));
        Arc::new(FleetMetrics {
            connection,
            registry,
            operations,
            failures,
            retries,
            durations,
            bytes,
            tasks,
            freshness,
            oldest_success_age,
            disk_used,
            missed_updates,
            notifications_dropped,
            transitions: Mutex::new(Transitions::default()),
            registry_actor: OnceLock::new(),
            stale_after,
        })
    }

    /// Feeds these metrics from `fleet` until it stops (a task on the current runtime). One
    /// fleet per metrics.
    pub fn watch(self: &Arc<Self>, fleet: &crate::Fleet) {
        let _ = self.registry_actor.set(fleet.registry_ref());
        let mut updates = fleet.subscribe();
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                match updates.recv().await {
                    Ok(TaskUpdate::State { task }) => metrics.observe(&task),
                    Ok(TaskUpdate::Progress(_)) => {}
                    Err(RecvError::Lagged(missed)) => metrics.missed(missed),
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// Updates were lost (the watcher fell behind the broadcast): what they ended is not
    /// counted, and the tasks in flight are forgotten rather than kept forever (they are seen
    /// again at their next state).
    fn missed(&self, updates: u64) {
        self.missed_updates.inc_by(updates);
        if let Ok(mut transitions) = self.transitions.lock() {
            transitions.forget();
        }
    }

    /// A notification did not fit its queue.
    pub fn notification_dropped(&self) {
        self.notifications_dropped.inc();
    }

    /// Counts what a state change says happened.
    pub fn observe(&self, task: &CloneTask) {
        let Ok(mut transitions) = self.transitions.lock() else {
            return;
        };
        let change = transitions.observe(task);
        drop(transitions);
        match change {
            Change::Retried => {
                self.retries.inc();
                return;
            }
            Change::InFlight | Change::Repeated => return,
            Change::Ended => {}
        }
        let status = task.status.status_type;
        let operation = task.operation.as_str();
        let result = if status == StatusType::Completed {
            "completed"
        } else {
            "failed"
        };
        self.operations
            .get_or_create(&OperationLabels { operation, result })
            .inc();
        if status == StatusType::Failed {
            let code = task.error_code.unwrap_or(ErrorCode::Internal).as_str();
            self.failures.get_or_create(&CodeLabels { code }).inc();
        }
        if let Some(sync) = &task.last_sync
            && status == StatusType::Completed
        {
            self.bytes.inc_by(sync.bytes_received);
        }
        if let (Some(started), Some(finished)) = (task.started_at, task.finished_at)
            && let Ok(took) = Duration::try_from(finished.duration_since(started))
        {
            self.durations
                .get_or_create(&KindLabels { operation })
                .observe(took.as_secs_f64());
        }
    }

    /// One scrape: the gauges counted now, then everything in the text format.
    pub async fn render(&self) -> Result<String, FleetError> {
        let census = match self.registry_actor.get() {
            Some(registry) => ractor::call!(registry, RegistryMsg::Census, self.stale_after)
                .map_err(|_| FleetError::Gone("registry"))?,
            None => Census::default(),
        };
        for status in StatusType::ALL {
            let n = census.by_status.get(&status).copied().unwrap_or(0);
            self.tasks
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for freshness in Freshness::ALL {
            let n = census.by_freshness.get(&freshness).copied().unwrap_or(0);
            self.freshness
                .get_or_create(&FreshnessLabels {
                    freshness: freshness.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let age = census.oldest_success.map_or(f64::NAN, |at| {
            Timestamp::now().duration_since(at).as_secs_f64().max(0.0)
        });
        self.oldest_success_age.set(age);
        self.disk_used
            .set(i64::try_from(census.disk_bytes).unwrap_or(i64::MAX));
        if let Some(connection) = &self.connection {
            connection.read();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|_| FleetError::Spawn("cannot encode the metrics".into()))?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_proto::{CloneStatus, Operation};

    fn state(id: &str, status: StatusType, attempts: u32) -> CloneTask {
        let mut task = CloneTask::new(
            id.to_string(),
            format!("https://h/{id}.git"),
            Operation::Mirror,
            "p".to_string(),
            Timestamp::now(),
        );
        task.status = CloneStatus {
            status_type: status,
            progress: None,
            error: None,
        };
        task.attempts = attempts;
        if status.is_final() {
            task.finished_at = Some(Timestamp::now());
        }
        task
    }

    #[tokio::test]
    async fn transitions_are_counted_once_and_repeats_not_at_all() {
        let metrics = FleetMetrics::new(Duration::from_secs(60));
        // a: queued, running, a transient failure and a second attempt, then done.
        for (status, attempt) in [
            (StatusType::Queued, 0),
            (StatusType::Cloning, 1),
            (StatusType::Queued, 1),
            (StatusType::Cloning, 2),
            (StatusType::Completed, 2),
        ] {
            metrics.observe(&state("a", status, attempt));
        }
        // b: fails for good; its final state broadcast again later (a resume) counts nothing.
        let mut failed = state("b", StatusType::Failed, 1);
        failed.error_code = Some(ErrorCode::AuthFailed);
        metrics.observe(&state("b", StatusType::Queued, 0));
        metrics.observe(&state("b", StatusType::Cloning, 1));
        metrics.observe(&failed);
        metrics.observe(&failed);
        // c: finished before the metrics started (a resume of old work broadcasts it): nothing.
        let mut old = state("c", StatusType::Completed, 1);
        old.finished_at = Timestamp::from_second(0).ok();
        metrics.observe(&old);
        let text = metrics.render().await.expect("render");
        for line in [
            "gitfleet_operations_total{operation=\"mirror\",result=\"completed\"} 1",
            "gitfleet_operations_total{operation=\"mirror\",result=\"failed\"} 1",
            "gitfleet_failures_total{code=\"auth_failed\"} 1",
            "gitfleet_retries_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
