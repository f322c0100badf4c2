//! Politeness to code hosts: the Supervisor's queue, one queue per host, served in turn, each
//! host within its limits (transfers at once, transfers started per minute) and not at all
//! while the host asked to be left alone (a 429 or 503 with `Retry-After`).
//!
//! In a cluster the limits are the cluster's: each node takes its share ([`HostQueues::share`],
//! the limit divided by the live nodes, at least 1), and a pause one node meets is sent to the
//! others, which pause the host too.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::job::Job;

/// How much one host gets: `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostLimit {
    /// Transfers to the host at once.
    pub concurrent: Option<u32>,
    /// Transfers started per minute (each is a few requests: refs, then the pack).
    pub per_minute: Option<u32>,
}

/// The limits of every host: `default` for hosts not named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    pub default: HostLimit,
    /// By host name as URLs give it, lowercase (`github.com`, `127.0.0.1`, `[::1]`).
    pub hosts: HashMap<String, HostLimit>,
}

/// Every host's default when the operator names none: 32 transfers at once (so a fleet of the
/// default 8 workers per node needs four nodes to reach it), no rate limit.
pub const DEFAULT_HOST_LIMIT: HostLimit = HostLimit {
    concurrent: Some(32),
    per_minute: None,
};

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            default: DEFAULT_HOST_LIMIT,
            hosts: HashMap::new(),
        }
    }
}

impl HostLimits {
    pub fn for_host(&self, host: &str) -> HostLimit {
        self.hosts.get(host).copied().unwrap_or(self.default)
    }

    /// The limits operator rules give (`HOST=N` or `HOST=N/PER_MINUTE`, `*` for every other
    /// host), over [`DEFAULT_HOST_LIMIT`].
    pub fn from_rules<'a>(rules: impl IntoIterator<Item = &'a str>) -> Result<HostLimits, String> {
        let mut limits = HostLimits::default();
        for rule in rules {
            let (host, limit) = parse_rule(rule)?;
            if host == "*" {
                limits.default = limit;
            } else {
                limits.hosts.insert(host, limit);
            }
        }
        Ok(limits)
    }
}

/// One `HOST=N[/PER_MINUTE]` rule (0: no limit).
pub fn parse_rule(rule: &str) -> Result<(String, HostLimit), String> {
    let bad = |why: &str| {
        format!(
            "invalid host limit '{rule}': {why} (expected HOST=N or HOST=N/PER_MINUTE, e.g. gitlab.example.com=4/60)"
        )
    };
    let (host, value) = rule.split_once('=').ok_or_else(|| bad("no '='"))?;
    let host = host.trim().to_ascii_lowercase();
    let name_ok = host == "*"
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b)));
    if !name_ok {
        return Err(bad("not a host name"));
    }
    let number = |text: &str| {
        text.trim()
            .parse::<u32>()
            .map(|n| (n > 0).then_some(n))
            .map_err(|_| bad("not a number"))
    };
    let (concurrent, per_minute) = match value.split_once('/') {
        Some((c, r)) => (number(c)?, number(r)?),
        None => (number(value)?, None),
    };
    Ok((
        host,
        HostLimit {
            concurrent,
            per_minute,
        },
    ))
}

/// How many pauses one request of a task may wait through without using up retries: past
/// this, a host's refusals count as any transient failure does.
pub const MAX_PAUSES_PER_REQUEST: u32 = 24;

#[derive(Debug, Default)]
struct Host {
    queue: VecDeque<Job>,
    running: u32,
    /// When the transfers of the last minute started (as many as the rate limit counts).
    started: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

/// Jobs waiting for a worker, per host.
#[derive(Debug)]
pub(crate) struct HostQueues {
    limits: HostLimits,
    /// How many nodes share the limits (1 embedded).
    sharers: u32,
    hosts: HashMap<String, Host>,
    /// Hosts with queued jobs, in the order they are served.
    turns: VecDeque<String>,
    queued: usize,
}

impl HostQueues {
    pub(crate) fn new(limits: HostLimits) -> HostQueues {
        HostQueues {
            limits,
            sharers: 1,
            hosts: HashMap::new(),
            turns: VecDeque::new(),
            queued: 0,
        }
    }

    /// `nodes` share the limits from now on.
    pub(crate) fn share(&mut self, nodes: usize) {
        self.sharers = u32::try_from(nodes.max(1)).unwrap_or(u32::MAX);
    }

    /// This process's part of `host`'s limit.
    fn limit_of(&self, host: &str) -> HostLimit {
        if host.is_empty() {
            return HostLimit::default();
        }
        let limit = self.limits.for_host(host);
        let part = |n: u32| (n / self.sharers).max(1);
        HostLimit {
            concurrent: limit.concurrent.map(part),
            per_minute: limit.per_minute.map(part),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub(crate) fn push_back(&mut self, job: Job) {
        self.push(job, false);
    }

    /// Back at the head of its host's queue (a job that met a pause goes first once it ends).
    pub(crate) fn push_front(&mut self, job: Job) {
        self.push(job, true);
    }

    fn push(&mut self, job: Job, front: bool) {
        let key = job.host();
        let host = self.hosts.entry(key.clone()).or_default();
        if host.queue.is_empty() {
            self.turns.push_back(key);
        }
        if front {
            host.queue.push_front(job);
        } else {
            host.queue.push_back(job);
        }
        self.queued += 1;
    }

    /// The next job a host's limits allow now, hosts taking turns.
    pub(crate) fn pop_ready(&mut self, now: Instant) -> Option<Job> {
        for _ in 0..self.turns.len() {
            let key = self.turns.pop_front()?;
            let limit = self.limit_of(&key);
            let host = self
                .hosts
                .get_mut(&key)
                .expect("a host in turn has a queue");
            if !host.open(limit, now) {
                self.turns.push_back(key);
                continue;
            }
            let job = host.queue.pop_front().expect("a host in turn has a job");
            host.running += 1;
            if limit.per_minute.is_some() {
                host.started.push_back(now);
            }
            if !host.queue.is_empty() {
                self.turns.push_back(key);
            }
            self.queued -= 1;
            return Some(job);
        }
        None
    }

    /// A job popped by [`HostQueues::pop_ready`] finished (or never ran).
    pub(crate) fn finished(&mut self, job: &Job) {
        let key = job.host();
        if let Some(host) = self.hosts.get_mut(&key) {
            host.running = host.running.saturating_sub(1);
            self.forget_if_idle(&key);
        }
    }

    /// Nothing is sent to `host` before `until` (a later pause wins).
    pub(crate) fn pause(&mut self, host: &str, until: Instant) {
        let entry = self.hosts.entry(host.to_string()).or_default();
        if entry.paused_until.is_none_or(|t| t < until) {
            entry.paused_until = Some(until);
        }
    }

    /// How much longer `host` is paused, if it is.
    pub(crate) fn paused_for(&self, host: &str, now: Instant) -> Option<Duration> {
        let until = self.hosts.get(host)?.paused_until?;
        (until > now).then(|| until - now)
    }

    /// Takes every queued job of `host` out (none that runs).
    pub(crate) fn take_host(&mut self, host: &str) -> Vec<Job> {
        let Some(entry) = self.hosts.get_mut(host) else {
            return Vec::new();
        };
        let jobs: Vec<Job> = entry.queue.drain(..).collect();
        self.queued -= jobs.len();
        self.turns.retain(|k| k != host);
        self.forget_if_idle(host);
        jobs
    }

    /// Takes a queued job of `task_id` out.
    pub(crate) fn remove(&mut self, task_id: &str) -> Option<Job> {
        let (key, host) = self
            .hosts
            .iter_mut()
            .find(|(_, h)| h.queue.iter().any(|j| j.task_id == task_id))?;
        let pos = host.queue.iter().position(|j| j.task_id == task_id)?;
        let job = host.queue.remove(pos)?;
        let key = key.clone();
        self.queued -= 1;
        if self.hosts.get(&key).is_some_and(|h| h.queue.is_empty()) {
            self.turns.retain(|k| *k != key);
        }
        self.forget_if_idle(&key);
        Some(job)
    }

    /// When a host with queued jobs that waits for time (a pause, the rate) opens next; a host
    /// at its limit of transfers at once opens when one finishes instead.
    pub(crate) fn next_opening(&self, now: Instant) -> Option<Instant> {
        self.turns
            .iter()
            .filter_map(|key| {
                let host = &self.hosts[key];
                let paused = host.paused_until.filter(|t| *t > now);
                // With n allowed a minute, the host opens when the n-th most recent start is a
                // minute old (entries older than a minute are ignored, not yet pruned).
                let rate = self.limit_of(key).per_minute.and_then(|n| {
                    let recent: Vec<&Instant> =
                        host.started.iter().filter(|t| **t + MINUTE > now).collect();
                    let n = n as usize;
                    (recent.len() >= n).then(|| *recent[recent.len() - n] + MINUTE)
                });
                paused.max(rate)
            })
            .min()
    }

    /// Drops what is kept of a host that has nothing queued, running or paused.
    fn forget_if_idle(&mut self, key: &str) {
        let now = Instant::now();
        let idle = self.hosts.get(key).is_some_and(|h| {
            h.queue.is_empty()
                && h.running == 0
                && h.paused_until.is_none_or(|t| t <= now)
                && h.started.back().is_none_or(|t| *t + MINUTE <= now)
        });
        if idle {
            self.hosts.remove(key);
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Host {
    fn open(&mut self, limit: HostLimit, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| t > now) {
            return false;
        }
        if limit.concurrent.is_some_and(|n| self.running >= n) {
            return false;
        }
        while self.started.front().is_some_and(|t| *t + MINUTE <= now) {
            self.started.pop_front();
        }
        limit
            .per_minute
            .is_none_or(|n| self.started.len() < n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_git::{Layout, Policy, Target};
    use gitfleet_proto::Operation;

    fn job(url: &str) -> Job {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::open(root.path()).expect("layout");
        let target = Target::for_url(url, Operation::Mirror, &Policy::permissive()).expect("url");
        Job::new(&layout, &target, Operation::Mirror)
    }

    fn drain(q: &mut HostQueues, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.pop_ready(now))
            .map(|j| j.display)
            .collect()
    }

    #[test]
    fn hosts_take_turns_and_each_stays_within_its_transfers_at_once() {
        let limits = HostLimits {
            default: HostLimit {
                concurrent: Some(2),
                per_minute: None,
            },
            hosts: HashMap::new(),
        };
        let mut q = HostQueues::new(limits);
        for n in 0..4 {
            q.push_back(job(&format!("https://a.example/o/r{n}")));
        }
        q.push_back(job("https://b.example/o/r"));
        let now = Instant::now();
        let first = drain(&mut q, now);
        assert_eq!(
            first,
            [
                "https://a.example/o/r0",
                "https://b.example/o/r",
                "https://a.example/o/r1"
            ]
        );
        assert_eq!(q.next_opening(now), None, "a finish opens a.example");
        q.finished(&job("https://a.example/o/r0"));
        assert_eq!(drain(&mut q, now), ["https://a.example/o/r2"]);
        assert!(!q.is_empty());
    }

    #[test]
    fn a_rate_limit_spreads_starts_over_the_minute_and_says_when() {
        let limits = HostLimits::from_rules(["a.example=0/2"]).expect("a rule");
        let mut q = HostQueues::new(limits);
        for n in 0..3 {
            q.push_back(job(&format!("https://a.example/o/r{n}")));
        }
        let now = Instant::now();
        assert_eq!(drain(&mut q, now).len(), 2);
        assert_eq!(q.next_opening(now), Some(now + MINUTE));
        assert_eq!(drain(&mut q, now + MINUTE).len(), 1);
    }

    #[test]
    fn a_host_at_its_rate_opens_when_a_start_within_the_minute_ages_out() {
        let limits = HostLimits::from_rules(["a.example=0/2"]).expect("a rule");
        let mut q = HostQueues::new(limits);
        let t0 = Instant::now();
        q.push_back(job("https://a.example/o/r0"));
        assert_eq!(drain(&mut q, t0).len(), 1);
        for n in 1..4 {
            q.push_back(job(&format!("https://a.example/o/r{n}")));
        }
        let t50 = t0 + Duration::from_secs(50);
        assert_eq!(drain(&mut q, t50).len(), 1, "one more within the minute");
        // At 65 s the start at 0 s has aged out but was never pruned (no worker looked):
        // the host opens when the start at 50 s does, not at once (that would spin).
        q.push_back(job("https://a.example/o/r9"));
        let t65 = t0 + Duration::from_secs(65);
        assert_eq!(drain(&mut q, t65).len(), 1);
        assert_eq!(q.next_opening(t65), Some(t50 + MINUTE));
    }

    #[test]
    fn a_paused_host_waits_and_others_go_on() {
        let mut q = HostQueues::new(HostLimits::default());
        q.push_back(job("https://a.example/o/r"));
        q.push_back(job("https://b.example/o/r"));
        let now = Instant::now();
        q.pause("a.example", now + Duration::from_secs(30));
        q.pause("a.example", now + Duration::from_secs(10));
        assert_eq!(drain(&mut q, now), ["https://b.example/o/r"]);
        assert_eq!(q.next_opening(now), Some(now + Duration::from_secs(30)));
        let later = now + Duration::from_secs(31);
        assert_eq!(drain(&mut q, later), ["https://a.example/o/r"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_cluster_divides_the_limits_but_every_node_keeps_one() {
        let limits = HostLimits {
            default: HostLimit {
                concurrent: Some(5),
                per_minute: Some(1),
            },
            hosts: HashMap::new(),
        };
        let mut q = HostQueues::new(limits);
        q.share(2);
        assert_eq!(
            q.limit_of("a.example"),
            HostLimit {
                concurrent: Some(2),
                per_minute: Some(1)
            }
        );
        assert_eq!(q.limit_of(""), HostLimit::default(), "init has no host");
    }

    #[test]
    fn rules_name_hosts_or_everyone_and_zero_is_no_limit() {
        let limits = HostLimits::from_rules(["GitLab.example.com=4/60", "*=0", "b.example=2"])
            .expect("rules");
        let both = HostLimit {
            concurrent: Some(4),
            per_minute: Some(60),
        };
        assert_eq!(limits.for_host("gitlab.example.com"), both);
        assert_eq!(limits.for_host("b.example").concurrent, Some(2));
        assert_eq!(limits.for_host("c.example"), HostLimit::default());
        let default = HostLimits::from_rules([]).expect("no rules");
        assert_eq!(default.for_host("c.example"), DEFAULT_HOST_LIMIT);
        for bad in ["github.com", "=3", "a b=1", "h=x", "h=1/y"] {
            let err = HostLimits::from_rules([bad]).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_cancelled_job_leaves_its_host_queue() {
        let mut q = HostQueues::new(HostLimits::default());
        let j = job("https://a.example/o/r");
        let id = j.task_id.clone();
        q.push_back(j);
        assert!(q.remove(&id).is_some());
        assert!(q.is_empty());
        assert_eq!(q.pop_ready(Instant::now()).map(|j| j.display), None);
    }
}
