//! Notifications of `serve`: a command (`--notify-exec`) and a URL (`--notify-url`) told of
//! completed work that changed something, failures and quarantines, each with the task's record
//! as JSON.
//!
//! The mirroring never waits for them: events go into a bounded queue (what does not fit is
//! dropped and counted in the metrics) that one task delivers in order. The command is started
//! without a shell (its words as given, the record on standard input) and killed after
//! [`EXEC_TIMEOUT`]; a POST that fails is tried again with backoff until it is delivered (or
//! serve stops), so a receiver that is down for a while loses nothing that was queued. With a
//! secret, `X-Gitfleet-Signature: sha256=<hex>` is the HMAC-SHA256 of the body.

use std::sync::Arc;
use std::time::Duration;

use gitfleet_actors::{Change, Fleet, FleetMetrics, Transitions};
use gitfleet_git::Secret;
use gitfleet_proto::{CloneTask, Operation, StatusType, TaskUpdate};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// Events waiting for delivery at most.
const QUEUE: usize = 1024;
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the command may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

/// Where notifications go.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    pub url: Option<reqwest::Url>,
    /// Program and arguments.
    pub exec: Vec<String>,
    pub secret: Option<Secret>,
    /// Event kinds to send (`completed`, `failed`, `quarantined`); empty: all.
    pub kinds: Vec<String>,
}

impl Notifications {
    pub fn is_empty(&self) -> bool {
        self.url.is_none() && self.exec.is_empty()
    }

    fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }
}

/// The kind of event a state change is, if it is one to notify.
fn kind_of(task: &CloneTask) -> Option<&'static str> {
    match task.status.status_type {
        StatusType::Failed if task.quarantined => Some("quarantined"),
        StatusType::Failed => Some("failed"),
        // A clone (or init) always made something; a sync only when it moved a ref.
        StatusType::Completed if task.operation != Operation::Sync => Some("completed"),
        StatusType::Completed => {
            let changed = task
                .last_sync
                .as_ref()
                .is_some_and(|r| r.num_refs_created + r.num_refs_updated + r.num_refs_deleted > 0);
            changed.then_some("completed")
        }
        StatusType::Queued | StatusType::Cloning => None,
    }
}

/// One event to deliver.
type Event = (&'static str, Arc<String>);

/// Watches `fleet` and delivers its events until the fleet stops: the command and the URL each
/// from a queue of their own, so that a receiver that is down holds up nothing else.
pub fn start(notifications: Notifications, fleet: &Fleet, metrics: Option<Arc<FleetMetrics>>) {
    if notifications.is_empty() {
        return;
    }
    let mut queues: Vec<mpsc::Sender<Event>> = Vec::new();
    if !notifications.exec.is_empty() {
        let (queue, mut events) = mpsc::channel::<Event>(QUEUE);
        queues.push(queue);
        let exec = notifications.exec.clone();
        tokio::spawn(async move {
            while let Some((_, body)) = events.recv().await {
                run(&exec, &body).await;
            }
        });
    }
    if let Some(url) = notifications.url.clone() {
        let (queue, mut events) = mpsc::channel::<Event>(QUEUE);
        queues.push(queue);
        let secret = notifications.secret.clone();
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(POST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
            {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = %e, "cannot make the notification client");
                    return;
                }
            };
            while let Some((kind, body)) = events.recv().await {
                post(&client, &url, kind, &body, secret.as_ref()).await;
            }
        });
    }
    let mut updates = fleet.subscribe();
    tokio::spawn(async move {
        let mut transitions = Transitions::default();
        loop {
            let task = match updates.recv().await {
                Ok(TaskUpdate::State { task }) => task,
                Ok(TaskUpdate::Progress(_)) => continue,
                Err(RecvError::Lagged(_)) => {
                    transitions.forget();
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            if transitions.observe(&task) != Change::Ended {
                continue;
            }
            let Some(kind) = kind_of(&task).filter(|k| notifications.wants(k)) else {
                continue;
            };
            let body = Arc::new(serde_json::json!({ "event": kind, "task": task }).to_string());
            for queue in &queues {
                if queue.try_send((kind, body.clone())).is_err() {
                    tracing::warn!("notification queue full: an event is dropped");
                    if let Some(metrics) = &metrics {
                        metrics.notification_dropped();
                    }
                }
            }
        }
    });
}

/// The command, with `body` on its standard input; its exit is logged, never waited past
/// [`EXEC_TIMEOUT`].
async fn run(exec: &[String], body: &str) {
    let Some((program, args)) = exec.split_first() else {
        return;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(program = %program, error = %e, "cannot start the notification command");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // One line of JSON, ended (a command appending events to a file keeps one per line).
        let _ = stdin.write_all(body.as_bytes()).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(EXEC_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(%status, "the notification command failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the notification command failed"),
        Err(_) => tracing::warn!("the notification command took too long and was killed"),
    }
}

/// POSTs `body` until a 2xx answer, with backoff between attempts.
async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    kind: &str,
    body: &str,
    secret: Option<&Secret>,
) {
    let signature = secret
        .and_then(|secret| Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok())
        .map(|mut mac| {
            mac.update(body.as_bytes());
            let digest: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256={digest}")
        });
    let mut delay = FIRST_RETRY;
    loop {
        let mut request = client
            .post(url.clone())
            .header("Content-Type", "application/json")
            .header("X-Gitfleet-Event", kind)
            .body(body.to_string());
        if let Some(signature) = &signature {
            request = request.header("X-Gitfleet-Signature", signature);
        }
        match request.send().await {
            Ok(reply) if reply.status().is_success() => return,
            Ok(reply) => {
                tracing::warn!(status = %reply.status(), "the notification URL refused an event; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the notification URL; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LONGEST_RETRY);
    }
}
