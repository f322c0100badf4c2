//! What the actors pass around in-process (never serialised: wire types live in gitfleet-proto).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gitfleet_git::{
    Control, CredentialsConfig, Layout, Limits, LocalPaths, Policy, Progress, RepoUrl, Request,
    Target,
};
use gitfleet_proto::{Operation, SyncResult, TaskError};

/// One unit of work for a CloneWorker.
#[derive(Debug, Clone)]
pub struct Job {
    pub task_id: String,
    /// The URL as shown and stored (no credentials); for `init` the repository's name.
    pub display: String,
    pub url: RepoUrl,
    pub operation: Operation,
    pub dest: PathBuf,
    /// 1 for the first attempt of the current request (set by the Supervisor).
    pub attempt: u32,
    /// How many of those attempts met a host's pause (they use up no retry).
    pub paused: u32,
    /// Which request this is (set by the Supervisor): fences retries of superseded requests.
    pub generation: u64,
    /// The cluster's generation of the task record this job was issued for, written into
    /// every state of the task (0 in embedded mode).
    pub fence: u64,
    /// The stored record of the task, whose schedule (successes, failures in a row, interval)
    /// the new request continues when this process's Registry does not know the task yet (a
    /// node that just started).
    pub history: Option<Box<gitfleet_proto::CloneTask>>,
}

impl Job {
    /// The first attempt of `operation` on `target`'s repository below `layout`'s root.
    pub fn new(layout: &Layout, target: &Target, operation: Operation) -> Job {
        let dest = layout.path_of(target);
        let url = match target.url() {
            Some(url) => url.clone(),
            // Init touches no network: a placeholder URL that no transport will see (the new
            // repository's path, which errors then name).
            None => {
                RepoUrl::parse_with(&format!("file://{}", dest.display()), LocalPaths::AsStored)
                    .or_else(|_| RepoUrl::parse_with("file:///init", LocalPaths::AsStored))
                    .expect("a constant, valid url")
            }
        };
        Job {
            task_id: target.id().to_string(),
            display: target.display(),
            url,
            operation,
            dest,
            attempt: 0,
            paused: 0,
            generation: 0,
            fence: 0,
            history: None,
        }
    }
}

impl Job {
    /// The code host this job talks to, as host limits and pauses name it (lowercase; an init
    /// touches none: empty).
    pub fn host(&self) -> String {
        if self.operation == Operation::Init {
            return String::new();
        }
        self.url.host().unwrap_or_default().to_ascii_lowercase()
    }
}

/// Runs a job's git work. The real one is [`GitExecutor`]; benchmarks put an instant stand-in
/// here to measure the control plane alone, and tests one that fails on purpose.
pub trait Executor: Send + Sync + 'static {
    fn execute(
        &self,
        job: &Job,
        control: &Control,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncResult, TaskError>;
}

/// Executes jobs with gitfleet-git.
#[derive(Debug, Clone)]
pub struct GitExecutor {
    pub layout: Layout,
    pub policy: Policy,
    pub credentials: CredentialsConfig,
    pub limits: Limits,
}

impl Executor for GitExecutor {
    fn execute(
        &self,
        job: &Job,
        control: &Control,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SyncResult, TaskError> {
        // Resolving here (not at submit time) keeps DNS off the actor threads; the transfer
        // then connects to the addresses checked here.
        let addresses = if job.operation == Operation::Init {
            None
        } else {
            self.policy
                .check_resolved(&job.url)
                .map_err(|e| TaskError::new(e.code, e.message))?
        };
        let credentials = self.credentials.for_url(&job.url);
        let mut redactor = self.credentials.redactor();
        if let Some(c) = &credentials {
            redactor.add_credentials(c);
        }
        let request = Request {
            url: job.url.clone(),
            operation: job.operation,
            dest: job.dest.clone(),
            credentials,
            limits: self.limits,
            redactor,
            addresses,
        };
        let mut result = gitfleet_git::execute(&request, &self.layout, control, on_progress)?;
        // Every fetch that received something left a pack: past the threshold, repack (in this
        // job, so never while the repository syncs). The sync succeeded whatever this does.
        if result.bytes_received > 0 && job.operation != Operation::Init {
            match gitfleet_git::maintain(&self.layout, &job.dest, &self.limits, control) {
                Ok(Some(_)) => match gitfleet_git::disk_usage(&job.dest) {
                    Ok(bytes) => result.disk_bytes = Some(bytes),
                    Err(e) => tracing::warn!(error = %e, "cannot measure the repacked repository"),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %request.redactor.redact(&e.message), "maintenance failed; the repository is as it was")
                }
            }
        }
        Ok(result)
    }
}

/// Retries of transient failures: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (the product documents' default: 3).
    pub max_retries: u32,
    /// Delay before the first retry (default 60 s; then 120 s, 240 s).
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Up to this fraction of the delay is added at random, so that many tasks failing together
    /// do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        let base = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let jitter = if self.jitter > 0.0 {
            rand::random_range(0.0..self.jitter)
        } else {
            0.0
        };
        base.mul_f64(1.0 + jitter)
    }
}

/// Everything the actors need, chosen by whoever starts them.
#[derive(Clone)]
pub struct FleetConfig {
    pub layout: Layout,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub node: String,
    pub executor: Arc<dyn Executor>,
    /// When each repository is synced next.
    pub schedule: crate::SchedulePolicy,
    /// How much each code host gets (in a cluster: the whole cluster).
    pub hosts: crate::HostLimits,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("root", &self.layout.root())
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("node", &self.node)
            .field("schedule", &self.schedule)
            .field("hosts", &self.hosts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        for (retry, secs) in [(1, 60.0), (2, 120.0), (3, 240.0)] {
            let d = policy.delay(retry).as_secs_f64();
            assert!(d >= secs && d <= secs * 1.1, "retry {retry}: {d}");
        }
        let capped = RetryPolicy {
            max_delay: Duration::from_secs(100),
            jitter: 0.0,
            ..policy
        };
        assert_eq!(capped.delay(5), Duration::from_secs(100));
    }
}
