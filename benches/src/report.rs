//! Result rows, the Markdown table and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

/// One measured batch: a scenario (what was done) by a mode (who did it).
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// mirror-small, mirror-medium, mirror-refs, noop-sync, change-sync, noop-sync-refs,
    /// netns-mirror-small, ...
    pub scenario: String,
    /// baseline, embedded, cluster-N, netns-cluster-N
    pub mode: String,
    /// Repositories (URLs) in the batch.
    pub repos: usize,
    pub ok: usize,
    pub failed_expected: usize,
    pub failed_unexpected: usize,
    pub retries: u64,
    pub wall_s: f64,
    /// Growth of the mirrors on disk (packs and loose objects written): what was received.
    pub bytes: u64,
    /// Submit -> completed, per repository.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// CPU of everything on the mirroring side (git / gitfleet / nodes + client + nats-server).
    pub cpu_s: f64,
    /// Peak resident memory: the gitfleet process, or the largest node.
    pub peak_mib: Option<f64>,
    pub nats_msgs: Option<u64>,
    pub nats_by_family: BTreeMap<String, u64>,
    /// Repositories completed by each node (clusters; from the task records' `node`).
    pub per_node: BTreeMap<String, usize>,
    pub timed_out: bool,
    /// Not run (the reason is in the notes).
    pub skipped: bool,
    pub notes: Vec<String>,
}

impl Row {
    pub fn repos_per_min(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.ok as f64 / self.wall_s * 60.0
        } else {
            0.0
        }
    }

    pub fn mb_per_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.bytes as f64 / 1e6 / self.wall_s
        } else {
            0.0
        }
    }

    pub fn cpu_per_repo(&self) -> f64 {
        self.cpu_s / self.repos.max(1) as f64
    }

    pub fn msgs_per_repo(&self) -> Option<f64> {
        self.nats_msgs.map(|m| m as f64 / self.repos.max(1) as f64)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "mode": self.mode,
            "repos": self.repos,
            "ok": self.ok,
            "failed_expected": self.failed_expected,
            "failed_unexpected": self.failed_unexpected,
            "retries": self.retries,
            "wall_s": self.wall_s,
            "bytes": self.bytes,
            "repos_per_min": self.repos_per_min(),
            "mb_per_s": self.mb_per_s(),
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
            "cpu_s": self.cpu_s,
            "cpu_s_per_repo": self.cpu_per_repo(),
            "peak_mib": self.peak_mib,
            "nats_msgs": self.nats_msgs,
            "nats_msgs_per_repo": self.msgs_per_repo(),
            "nats_by_family": self.nats_by_family,
            "per_node": self.per_node,
            "timed_out": self.timed_out,
            "skipped": self.skipped,
            "notes": self.notes,
        })
    }

    pub fn from_json(v: &Value) -> Row {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Row {
            scenario: s("scenario"),
            mode: s("mode"),
            repos: u("repos") as usize,
            ok: u("ok") as usize,
            failed_expected: u("failed_expected") as usize,
            failed_unexpected: u("failed_unexpected") as usize,
            retries: u("retries"),
            wall_s: f("wall_s"),
            bytes: u("bytes"),
            p50_s: v["p50_s"].as_f64(),
            p99_s: v["p99_s"].as_f64(),
            cpu_s: f("cpu_s"),
            peak_mib: v["peak_mib"].as_f64(),
            nats_msgs: v["nats_msgs"].as_u64(),
            nats_by_family: v["nats_by_family"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
            per_node: v["per_node"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0) as usize))
                        .collect()
                })
                .unwrap_or_default(),
            timed_out: v["timed_out"].as_bool().unwrap_or(false),
            skipped: v["skipped"].as_bool().unwrap_or(false),
            notes: v["notes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Percentile (nearest rank) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | mode | repos | ok | failed (expected/unexpected) | retries | wall s | repos/min | MB/s | p50 s | p99 s | CPU s/repo | peak MiB | NATS msgs/repo |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        if r.skipped {
            let _ = writeln!(
                out,
                "| {} | {} | {} | - | - | - | skipped | - | - | - | - | - | - | - |",
                r.scenario, r.mode, r.repos
            );
            continue;
        }
        let wall = if r.timed_out {
            format!("{:.1} (timeout)", r.wall_s)
        } else {
            format!("{:.2}", r.wall_s)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}/{} | {} | {} | {:.0} | {:.2} | {} | {} | {:.3} | {} | {} |",
            r.scenario,
            r.mode,
            r.repos,
            r.ok,
            r.failed_expected,
            r.failed_unexpected,
            r.retries,
            wall,
            r.repos_per_min(),
            r.mb_per_s(),
            opt(r.p50_s, 2),
            opt(r.p99_s, 2),
            r.cpu_per_repo(),
            opt(r.peak_mib, 0),
            opt(r.msgs_per_repo(), 1),
        );
    }
    let flagged: Vec<&Row> = rows
        .iter()
        .filter(|r| r.skipped || r.timed_out || r.failed_unexpected > 0)
        .collect();
    if !flagged.is_empty() {
        out.push_str("\nNotes:\n");
        for r in flagged {
            let _ = writeln!(out, "- {} / {}: {}", r.scenario, r.mode, r.notes.join("; "));
        }
    }
    out
}

/// One target of issue 4 and whether this run met it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
    pub detail: String,
}

impl Target {
    pub fn to_json(&self) -> Value {
        json!({"target": self.name, "met": self.met, "detail": self.detail})
    }
}

pub fn targets_markdown(targets: &[Target]) -> String {
    let mut out = String::from("| target | result | numbers |\n|---|---|---|\n");
    for t in targets {
        let result = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {} |", t.name, result, t.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rows_round_trip_through_json() {
        let row = Row {
            scenario: "mirror-small".into(),
            mode: "embedded".into(),
            repos: 3,
            ok: 2,
            p50_s: Some(0.5),
            nats_msgs: Some(7),
            notes: vec!["x".into()],
            ..Row::default()
        };
        let back = Row::from_json(&row.to_json());
        assert_eq!(back.to_json(), row.to_json());
    }
}
