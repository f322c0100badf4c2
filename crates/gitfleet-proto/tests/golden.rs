//! Pins the wire encodings of the task model. A failure here means a stored record or a message
//! of an older (or newer) gitfleet would be read differently: change the golden files only on
//! purpose, with `GITFLEET_BLESS=1 cargo test -p gitfleet-proto`.

use std::path::{Path, PathBuf};

use gitfleet_proto::{
    Branch, CloneStatus, CloneTask, ErrorCode, Freshness, Operation, Phase, RunRecord, StatusType,
    SyncResult, from_json, from_msgpack, to_json, to_msgpack,
};

fn sample_task() -> CloneTask {
    let created: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().expect("valid timestamp");
    let updated: jiff::Timestamp = "2026-01-02T03:04:09.5Z".parse().expect("valid timestamp");
    let mut task = CloneTask::new(
        "0123456789abcdef".into(),
        "https://git.example.com/acme/widgets".into(),
        Operation::Mirror,
        "/srv/mirrors/git.example.com/acme/widgets.git".into(),
        created,
    );
    task.status = CloneStatus::completed();
    task.attempts = 2;
    task.updated_at = updated;
    task.started_at = Some(created);
    task.finished_at = Some(updated);
    task.node = Some("node-a".into());
    task.last_sync = Some(SyncResult {
        num_refs_created: 2,
        num_refs_updated: 0,
        num_refs_deleted: 0,
        num_branches: 1,
        refs_created: vec!["refs/heads/main".into(), "refs/tags/v1.0".into()],
        refs_updated: vec![],
        refs_deleted: vec![],
        new_commits: 5,
        total_commits: 5,
        default_branch: Some("main".into()),
        head_commit: Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904".into()),
        branches: vec![Branch {
            name: "main".into(),
            commit: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
        }],
        bytes_received: 1234,
        duration_ms: 4500,
        disk_bytes: Some(20480),
    });
    let earlier: jiff::Timestamp = "2026-01-01T03:04:09Z".parse().expect("valid timestamp");
    task.record_run(RunRecord::failed(
        Operation::Sync,
        Some(earlier),
        "2026-01-01T03:04:10.25Z".parse().expect("valid timestamp"),
        ErrorCode::Network,
        "connection refused",
    ));
    task.record_run(RunRecord::completed(
        Operation::Mirror,
        updated,
        task.last_sync.as_ref().expect("a result"),
    ));
    task.last_success_at = Some(updated);
    task.last_change_at = Some(updated);
    task.next_sync_at = Some("2026-01-02T03:14:09.5Z".parse().expect("valid timestamp"));
    task.interval_s = 600;
    task
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("GITFLEET_BLESS").is_some() {
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e} (bless with GITFLEET_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "{} changed", path.display());
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(32) {
        for b in chunk {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

#[test]
fn json_encoding_is_pinned() {
    let json = String::from_utf8(to_json(&sample_task())).expect("utf-8");
    check_golden(&golden_dir().join("clone_task.json"), &(json + "\n"));
}

#[test]
fn msgpack_encoding_is_pinned_and_named() {
    let bytes = to_msgpack(&sample_task()).expect("encode");
    check_golden(&golden_dir().join("clone_task.msgpack.hex"), &hex(&bytes));
    // Named encoding: field names are in the bytes, so reordering fields cannot break readers.
    let needle = b"status_type";
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn both_encodings_round_trip() {
    let task = sample_task();
    assert_eq!(from_json::<CloneTask>(&to_json(&task)).expect("json"), task);
    assert_eq!(
        from_msgpack::<CloneTask>(&to_msgpack(&task).expect("mp")).expect("mp"),
        task
    );
}

#[test]
fn status_fields_follow_the_product_documents() {
    let mut task = sample_task();
    task.status = CloneStatus::cloning(42);
    task.phase = Some(Phase::Receiving);
    let value: serde_json::Value = serde_json::from_slice(&to_json(&task)).expect("json");
    assert_eq!(value["status"]["status_type"], "cloning");
    assert_eq!(value["status"]["progress"], 42);
    // `error` is present and null, as the documents promise, not missing.
    assert!(
        value["status"]
            .as_object()
            .expect("object")
            .contains_key("error")
    );
    assert!(value["status"]["error"].is_null());

    task.status = CloneStatus::failed("not found: https://git.example.com/acme/widgets");
    task.error_code = Some(ErrorCode::NotFound);
    let value: serde_json::Value = serde_json::from_slice(&to_json(&task)).expect("json");
    assert_eq!(value["status"]["status_type"], "failed");
    assert!(value["status"]["progress"].is_null());
    assert_eq!(value["error_code"], "not_found");
}

#[test]
fn old_readers_ignore_new_fields_and_new_readers_accept_old_records() {
    // A record from a newer gitfleet with a field this one does not know.
    let mut value: serde_json::Value =
        serde_json::from_slice(&to_json(&sample_task())).expect("json");
    value["priority"] = serde_json::json!(7);
    value["status"]["eta_seconds"] = serde_json::json!(12);
    let task: CloneTask = serde_json::from_value(value).expect("unknown fields are ignored");
    assert_eq!(task.status.status_type, StatusType::Completed);

    // A minimal record, as the first version would have written it.
    let old = r#"{"id":"00000000000000aa","url":"git://h/o/r","operation":"bare",
        "status":{"status_type":"queued","progress":null,"error":null},
        "path":"/m/h/o/r.git","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
    let task: CloneTask = from_json(old.as_bytes()).expect("old record");
    assert_eq!(task.attempts, 0);
    assert!(task.last_sync.is_none());
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    let bytes = to_msgpack(&sample_task()).expect("encode");
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let err = from_msgpack::<CloneTask>(&bytes[..cut]).expect_err("truncated");
        assert!(err.to_string().contains("MessagePack"), "{err}");
    }
    let json = to_json(&sample_task());
    let err = from_json::<CloneTask>(&json[..json.len() / 2]).expect_err("truncated");
    assert!(err.to_string().starts_with("malformed JSON"), "{err}");
}

#[test]
fn published_json_schema_is_current() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/clone-task.schema.json");
    check_golden(&path, &gitfleet_proto::clone_task_schema());
    let schema: serde_json::Value =
        serde_json::from_str(&gitfleet_proto::clone_task_schema()).expect("schema is JSON");
    assert!(schema["properties"]["status"].is_object());
    assert!(schema["properties"]["freshness"].is_object());
}

#[test]
fn freshness_follows_the_record() {
    let task = sample_task();
    let at = |text: &str| text.parse::<jiff::Timestamp>().expect("valid timestamp");
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(
        task.freshness_at(at("2026-01-02T03:30:00Z"), hour, true),
        Freshness::Fresh
    );
    assert_eq!(
        task.freshness_at(at("2026-01-02T05:00:00Z"), hour, true),
        Freshness::Stale
    );
    assert_eq!(
        task.freshness_at(at("2026-01-02T03:30:00Z"), hour, false),
        Freshness::Missing
    );
    let mut failed = task.clone();
    failed.status = CloneStatus::failed("not found");
    assert_eq!(
        failed.freshness_at(at("2026-01-02T03:30:00Z"), hour, true),
        Freshness::Error
    );
    failed.quarantined = true;
    assert_eq!(
        failed.freshness_at(at("2026-01-02T03:30:00Z"), hour, true),
        Freshness::Quarantined
    );
    let never = CloneTask::new(
        "0123456789abcdef".into(),
        "https://git.example.com/acme/widgets".into(),
        Operation::Mirror,
        "/x".into(),
        at("2026-01-02T03:04:05Z"),
    );
    assert_eq!(
        never.freshness_at(at("2026-01-02T03:04:06Z"), hour, false),
        Freshness::Stale,
        "a repository never cloned is stale, not missing"
    );
}

#[test]
fn a_new_request_keeps_the_schedule_of_the_record_before() {
    let older = sample_task();
    let mut queued = CloneTask::new(
        older.id.clone(),
        older.url.clone(),
        Operation::Sync,
        older.path.clone(),
        older.created_at,
    );
    assert!(!queued.has_schedule());
    queued.inherit_schedule(&older);
    assert_eq!(queued.last_success_at, older.last_success_at);
    assert_eq!(queued.next_sync_at, older.next_sync_at);
    assert_eq!(queued.interval_s, older.interval_s);
    // A record with a schedule of its own keeps it.
    let mut own = older.clone();
    own.consecutive_failures = 3;
    own.next_sync_at = None;
    own.inherit_schedule(&sample_task());
    assert_eq!(own.consecutive_failures, 3);
    assert_eq!(own.next_sync_at, None);
}
