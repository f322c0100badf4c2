//! The benchmark works: the smallest suite (`--quick --smoke`: 5 small repositories, one
//! medium, 200 refs; baseline, embedded and a one-node cluster; no namespaces) runs to the end
//! and reports every side with no failure other than the URLs that must fail. No timing is
//! asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The gitfleet binary of this profile (`cargo test --workspace` has built it already for the
/// CLI tests; otherwise it is built here).
fn gitfleet() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_gitfleet-bench"));
    let profile = bench.parent().expect("bench binary has a directory");
    let release = profile.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "gitfleet", "--bin", "gitfleet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build -p gitfleet");
    assert!(status.success(), "cargo build -p gitfleet failed");
    profile.join("gitfleet")
}

fn rows(report: &Value) -> &Vec<Value> {
    report["rows"].as_array().expect("report has rows")
}

fn row<'a>(report: &'a Value, scenario: &str, mode: &str) -> &'a Value {
    rows(report)
        .iter()
        .find(|r| r["scenario"] == scenario && r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {scenario} row for {mode}: {report:#}"))
}

fn read_report(out: &Path) -> Value {
    let bytes = std::fs::read(out.join("report.json")).expect("report.json written");
    serde_json::from_slice(&bytes).expect("report.json is JSON")
}

#[test]
fn the_smoke_suite_reports_every_side_without_unexpected_failures() {
    let out = tempfile::tempdir().expect("tempdir");
    let gitfleet = gitfleet();
    let status = Command::new(env!("CARGO_BIN_EXE_gitfleet-bench"))
        .args(["--quick", "--smoke", "--out"])
        .arg(out.path())
        .arg("--gitfleet")
        .arg(&gitfleet)
        // The report is read from --out; progress and diagnostics stay on stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running gitfleet-bench");
    assert!(status.success(), "gitfleet-bench failed with {status}");

    let report = read_report(out.path());
    assert_eq!(report["size"], "smoke");
    for mode in ["baseline", "embedded", "cluster-1"] {
        let small = row(&report, "mirror-small", mode);
        // 5 small + the empty repository, and 3 URLs that must fail (2 not found, wrong token).
        assert_eq!(small["repos"], 9, "{small:#}");
        assert_eq!(small["ok"], 6, "{small:#}");
        assert_eq!(small["failed_expected"], 3, "{small:#}");
        // Section E: 30 small repositories of their own URL, mirrored and synced by one command.
        for scenario in ["mirror-many", "sync-many"] {
            let r = row(&report, scenario, mode);
            assert_eq!((&r["repos"], &r["ok"]), (&30.into(), &30.into()), "{r:#}");
        }
        for scenario in ["mirror-medium", "noop-sync", "change-sync", "mirror-refs"] {
            let r = row(&report, scenario, mode);
            assert!(r["ok"].as_u64().expect("ok count") > 0, "{r:#}");
        }
    }
    for r in rows(&report) {
        assert_eq!(
            r["failed_unexpected"], 0,
            "unexpected failures in {} / {}: {:#}",
            r["scenario"], r["mode"], r["notes"]
        );
        assert_eq!(r["timed_out"], false, "{r:#}");
    }
    let cluster = row(&report, "mirror-small", "cluster-1");
    assert!(
        cluster["nats_msgs"]
            .as_u64()
            .expect("cluster rows count messages")
            > 0,
        "{cluster:#}"
    );
    let control = &report["control_plane"];
    assert_eq!(control["dispatch"].as_array().map(Vec::len), Some(3));
    assert!(control["progress"][0]["events_per_s"].as_f64() > Some(0.0));
    assert!(control["memory"][0]["bytes_per_task"].as_f64() > Some(0.0));
    // gitfleet serve kept the fleet fresh: every pushed commit arrived, by webhook and by the
    // scheduler alone, and the checks of unchanged repositories were counted.
    let freshness = &report["freshness"];
    assert_eq!(freshness["webhook"]["pushed"], 2, "{freshness:#}");
    assert!(
        freshness["webhook"]["p99_s"].as_f64() > Some(0.0),
        "{freshness:#}"
    );
    assert!(
        freshness["polling"]["lag_p99_s"].as_f64() > Some(0.0),
        "{freshness:#}"
    );
    assert!(
        freshness["polling"]["checks"].as_u64() > Some(0),
        "{freshness:#}"
    );
    assert_eq!(freshness["idle"]["tracked"], 30, "{freshness:#}");
    assert!(
        freshness["idle"]["rss_mib"].as_f64() > Some(0.0),
        "{freshness:#}"
    );
    let scale = &report["scale"];
    assert_eq!(scale["tasks"], 1_000, "{scale:#}");
    for key in [
        "node_bytes_per_task",
        "bucket_bytes_per_task",
        "list_first_page_ms",
    ] {
        assert!(scale[key].as_f64() > Some(0.0), "{key}: {scale:#}");
    }
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(11));
    // No namespace rows in a smoke run: the scaling target is shown, not judged.
    let scaling = report["targets"]
        .as_array()
        .and_then(|t| {
            t.iter().find(|t| {
                t["target"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("netns:"))
            })
        })
        .expect("the scaling target");
    assert_eq!(scaling["met"], serde_json::Value::Null, "{scaling:#}");
    let markdown = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(
        markdown.contains("| mirror-small | cluster-1 |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("Freshness (`gitfleet serve`"),
        "{markdown}"
    );
    assert!(
        markdown.contains("The cluster's control plane at scale"),
        "{markdown}"
    );
    let command = std::fs::read_to_string(out.path().join("command.txt")).expect("command.txt");
    assert!(command.contains("--smoke"), "{command}");
}
