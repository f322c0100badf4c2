//! Counts every message published on a NATS server: a raw subscriber to `>` (which also sees
//! JetStream API calls, key-value writes, acknowledgements and replies, all of which are plain
//! subjects of the account), grouped by subject family.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::runtime::Handle;

#[derive(Debug)]
pub struct Counter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
    rt: Handle,
}

/// The family of a subject: `$JS.API.CONSUMER.MSG.NEXT.x.y` -> `$JS.API.CONSUMER`,
/// `$KV.GITFLEET_TASKS.key` -> `$KV.GITFLEET_TASKS`, `gitfleet.status.id` -> `gitfleet.status`,
/// `_INBOX.abc.def` -> `_INBOX`, `$JS.ACK...` -> `$JS.ACK`.
pub fn family(subject: &str) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    let take = match tokens.first().copied() {
        Some("_INBOX") => 1,
        Some("$JS") if tokens.get(1) == Some(&"API") => 3,
        _ => 2,
    };
    tokens[..take.min(tokens.len())].join(".")
}

impl Counter {
    pub fn start(rt: &Handle, url: &str) -> anyhow::Result<Counter> {
        let (client, mut sub) = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name("gitfleet-bench-counter")
                .subscription_capacity(1 << 20)
                .connect(url)
                .await
                .with_context(|| format!("connecting the message counter to {url}"))?;
            let sub = client.subscribe(">").await.context("subscribing to >")?;
            client.flush().await.context("flushing the counter")?;
            anyhow::Ok((client, sub))
        })?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let task = {
            let counts = Arc::clone(&counts);
            rt.spawn(async move {
                while let Some(message) = sub.next().await {
                    let mut c = counts.lock().expect("counter lock");
                    *c.entry(family(message.subject.as_str())).or_insert(0) += 1;
                }
            })
        };
        Ok(Counter {
            counts,
            task,
            client,
            rt: rt.clone(),
        })
    }

    /// Counts so far, by family; waits for a round trip first so that what the server already
    /// routed has been counted.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let _ = self.rt.block_on(self.client.flush());
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.counts.lock().expect("counter lock").clone()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `after - before`, by family, dropping families that did not move.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::family;

    #[test]
    fn families() {
        assert_eq!(family("$JS.API.CONSUMER.MSG.NEXT.A.B"), "$JS.API.CONSUMER");
        assert_eq!(family("$KV.GITFLEET_TASKS.abc"), "$KV.GITFLEET_TASKS");
        assert_eq!(family("gitfleet.status.abc"), "gitfleet.status");
        assert_eq!(family("_INBOX.x.y"), "_INBOX");
        assert_eq!(family("single"), "single");
    }
}
