//! `gitfleet du`: what the repositories take on disk, from their records (each measured after
//! its clone and after every sync that received something), in total, per node and the
//! largest; the same in the embedded and the cluster mode.

use std::collections::BTreeMap;

use gitfleet_proto::CloneTask;
use serde::Serialize;

use crate::report::human_bytes;

/// The disk usage of a set of tasks.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct DiskReport {
    pub total_bytes: u64,
    pub repositories: u64,
    /// Repositories whose size is not known yet (never measured: not cloned, or cloned by an
    /// earlier version and quiet since).
    pub unmeasured: u64,
    /// Per node (embedded: the host), largest first.
    pub nodes: Vec<NodeUsage>,
    /// The largest repositories, largest first.
    pub largest: Vec<RepositoryUsage>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct NodeUsage {
    pub node: String,
    pub repositories: u64,
    pub bytes: u64,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct RepositoryUsage {
    pub id: String,
    pub url: String,
    pub path: String,
    pub node: Option<String>,
    pub bytes: u64,
}

impl DiskReport {
    /// The report over `tasks`, with the `top` largest repositories.
    pub fn of(tasks: &[CloneTask], top: usize) -> DiskReport {
        let mut report = DiskReport::default();
        let mut nodes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut sized = Vec::new();
        for task in tasks {
            report.repositories += 1;
            let Some(bytes) = task.last_sync.as_ref().and_then(|r| r.disk_bytes) else {
                report.unmeasured += 1;
                continue;
            };
            report.total_bytes = report.total_bytes.saturating_add(bytes);
            let node = nodes
                .entry(task.node.as_deref().unwrap_or("-"))
                .or_default();
            node.0 += 1;
            node.1 = node.1.saturating_add(bytes);
            sized.push((bytes, task));
        }
        report.nodes = nodes
            .into_iter()
            .map(|(node, (repositories, bytes))| NodeUsage {
                node: node.to_string(),
                repositories,
                bytes,
            })
            .collect();
        report.nodes.sort_by_key(|n| std::cmp::Reverse(n.bytes));
        sized.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        report.largest = sized
            .into_iter()
            .take(top)
            .map(|(bytes, task)| RepositoryUsage {
                id: task.id.clone(),
                url: task.url.clone(),
                path: task.path.clone(),
                node: task.node.clone(),
                bytes,
            })
            .collect();
        report
    }

    /// The report as a table (or JSON) on standard output; `place` names the root or cluster.
    pub fn print(&self, json: bool, place: &str) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        println!(
            "{} in {} repositories of {place}{}",
            human_bytes(self.total_bytes),
            self.repositories - self.unmeasured,
            if self.unmeasured > 0 {
                format!(" ({} not measured yet)", self.unmeasured)
            } else {
                String::new()
            }
        );
        if !self.nodes.is_empty() {
            println!("\n{:>10}  {:>12}  NODE", "SIZE", "REPOSITORIES");
            for node in &self.nodes {
                println!(
                    "{:>10}  {:>12}  {}",
                    human_bytes(node.bytes),
                    node.repositories,
                    node.node
                );
            }
        }
        if !self.largest.is_empty() {
            println!("\n{:>10}  LARGEST", "SIZE");
            for repo in &self.largest {
                println!(
                    "{:>10}  {}  ({})",
                    human_bytes(repo.bytes),
                    repo.url,
                    repo.path
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gitfleet_proto::{Operation, SyncResult};

    fn task(id: &str, node: &str, bytes: Option<u64>) -> CloneTask {
        let mut task = CloneTask::new(
            id.into(),
            format!("https://h/{id}"),
            Operation::Mirror,
            format!("/m/{id}.git"),
            jiff::Timestamp::now(),
        );
        task.node = Some(node.into());
        task.last_sync = bytes.map(|disk_bytes| SyncResult {
            disk_bytes: Some(disk_bytes),
            ..SyncResult::default()
        });
        task
    }

    #[test]
    fn totals_per_node_and_the_largest_first() {
        let tasks = [
            task("a", "n1", Some(100)),
            task("b", "n2", Some(5_000)),
            task("c", "n1", Some(300)),
            task("d", "n2", None),
        ];
        let report = DiskReport::of(&tasks, 2);
        assert_eq!(report.total_bytes, 5_400);
        assert_eq!((report.repositories, report.unmeasured), (4, 1));
        let nodes: Vec<(&str, u64, u64)> = report
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.repositories, n.bytes))
            .collect();
        assert_eq!(nodes, [("n2", 1, 5_000), ("n1", 2, 400)]);
        let largest: Vec<&str> = report.largest.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(largest, ["b", "c"]);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
