use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Instants are RFC 3339 strings on the wire (`2026-01-02T03:04:05Z`).
pub type Timestamp = jiff::Timestamp;

/// What a task does to its repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Bare clone with every ref, as `git clone --mirror`.
    Mirror,
    /// Bare clone of branches and tags, as `git clone --bare`.
    Bare,
    /// Clone with a working tree, as `git clone`.
    Checkout,
    /// A new, empty repository (bare unless it was asked for with a working tree).
    Init,
    /// Fetch into the existing repository and prune refs deleted upstream.
    Sync,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Mirror => "mirror",
            Operation::Bare => "bare",
            Operation::Checkout => "checkout",
            Operation::Init => "init",
            Operation::Sync => "sync",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four states of the product documents' `CloneStatus.status_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusType {
    Queued,
    Cloning,
    Completed,
    Failed,
}

impl StatusType {
    /// Every status, in the order a task goes through them.
    pub const ALL: [StatusType; 4] = [
        StatusType::Queued,
        StatusType::Cloning,
        StatusType::Completed,
        StatusType::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusType::Queued => "queued",
            StatusType::Cloning => "cloning",
            StatusType::Completed => "completed",
            StatusType::Failed => "failed",
        }
    }

    /// Completed and failed are final until the task is submitted again.
    pub fn is_final(self) -> bool {
        matches!(self, StatusType::Completed | StatusType::Failed)
    }
}

impl std::fmt::Display for StatusType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CloneStatus` with the field names of the product documents. `progress` and `error` are
/// always present on the wire, `null` when they do not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CloneStatus {
    pub status_type: StatusType,
    /// 0-100 while `cloning`, null otherwise.
    pub progress: Option<u8>,
    /// What went wrong when `failed`, null otherwise.
    pub error: Option<String>,
}

impl CloneStatus {
    pub fn queued() -> Self {
        CloneStatus {
            status_type: StatusType::Queued,
            progress: None,
            error: None,
        }
    }

    pub fn cloning(percent: u8) -> Self {
        CloneStatus {
            status_type: StatusType::Cloning,
            progress: Some(percent.min(100)),
            error: None,
        }
    }

    pub fn completed() -> Self {
        CloneStatus {
            status_type: StatusType::Completed,
            progress: None,
            error: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CloneStatus {
            status_type: StatusType::Failed,
            progress: None,
            error: Some(message.into()),
        }
    }
}

/// The phase a running clone or fetch is in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Connecting,
    Negotiating,
    Receiving,
    Resolving,
    CheckingOut,
    Finishing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Negotiating => "negotiating",
            Phase::Receiving => "receiving",
            Phase::Resolving => "resolving",
            Phase::CheckingOut => "checking_out",
            Phase::Finishing => "finishing",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A commit of a mirror, as `gitfleet log` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommitInfo {
    pub id: String,
    pub author: String,
    pub email: String,
    /// When it was authored.
    #[schemars(with = "String")]
    pub time: Timestamp,
    /// The first line of its message.
    pub subject: String,
}

/// A branch and the commit it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Branch {
    pub name: String,
    pub commit: String,
}

/// What a clone or sync changed, and what the repository looks like afterwards. The ref and
/// branch lists hold at most [`SyncResult::MAX_LISTED`] names each (a repository with tens of
/// thousands of refs must not make every record and message megabytes long); the `num_*` fields
/// count them all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SyncResult {
    #[serde(default)]
    pub num_refs_created: u64,
    #[serde(default)]
    pub num_refs_updated: u64,
    #[serde(default)]
    pub num_refs_deleted: u64,
    #[serde(default)]
    pub num_branches: u64,
    /// Full names of refs that did not exist before.
    #[serde(default)]
    pub refs_created: Vec<String>,
    /// Full names of refs that moved (fast-forward or forced).
    #[serde(default)]
    pub refs_updated: Vec<String>,
    /// Full names of refs removed because they no longer exist upstream.
    #[serde(default)]
    pub refs_deleted: Vec<String>,
    /// Commits reachable now that were not reachable before.
    #[serde(default)]
    pub new_commits: u64,
    /// Commits reachable from any ref.
    #[serde(default)]
    pub total_commits: u64,
    /// Short name of the default branch (where HEAD points), if any.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// Commit the default branch points to.
    #[serde(default)]
    pub head_commit: Option<String>,
    /// Every local branch.
    #[serde(default)]
    pub branches: Vec<Branch>,
    /// Pack bytes received from the remote.
    #[serde(default)]
    pub bytes_received: u64,
    /// Wall-clock duration of the operation.
    #[serde(default)]
    pub duration_ms: u64,
    /// Bytes the repository takes on disk (allocated blocks, as `du` counts them), measured
    /// after a clone or a sync that received something; a sync that found nothing new carries
    /// the earlier measurement over. Absent until first measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl SyncResult {
    /// Names kept in each list.
    pub const MAX_LISTED: usize = 100;
}

/// One finished run of a task, as its record's `history` keeps it: what a sync brought, or why
/// it failed (the product documents' SyncTask: time, refs changed, commits synced, duration,
/// error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunRecord {
    #[schemars(with = "String")]
    pub finished_at: Timestamp,
    pub operation: Operation,
    /// `completed` or `failed`.
    pub status: StatusType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// Why it failed (at most [`RunRecord::MAX_ERROR`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub refs_created: u64,
    #[serde(default)]
    pub refs_updated: u64,
    #[serde(default)]
    pub refs_deleted: u64,
    /// Commits reachable afterwards that were not before.
    #[serde(default)]
    pub new_commits: u64,
    #[serde(default)]
    pub bytes_received: u64,
    #[serde(default)]
    pub duration_ms: u64,
}

impl RunRecord {
    /// Runs a record keeps.
    pub const KEPT: usize = 10;
    /// The longest error message kept, in bytes.
    pub const MAX_ERROR: usize = 256;

    /// Puts this run first in `history`, which keeps the last [`RunRecord::KEPT`].
    pub fn add_to(self, history: &mut Vec<RunRecord>) {
        history.insert(0, self);
        history.truncate(Self::KEPT);
    }

    /// A run that succeeded with `result`.
    pub fn completed(operation: Operation, finished_at: Timestamp, result: &SyncResult) -> Self {
        RunRecord {
            finished_at,
            operation,
            status: StatusType::Completed,
            error_code: None,
            error: None,
            refs_created: result.num_refs_created,
            refs_updated: result.num_refs_updated,
            refs_deleted: result.num_refs_deleted,
            new_commits: result.new_commits,
            bytes_received: result.bytes_received,
            duration_ms: result.duration_ms,
        }
    }

    /// A run that failed with `code` and `message` after running since `started_at`.
    pub fn failed(
        operation: Operation,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        code: ErrorCode,
        message: &str,
    ) -> Self {
        let mut end = message.len().min(Self::MAX_ERROR);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let duration_ms = started_at
            .and_then(|started| finished_at.duration_since(started).try_into().ok())
            .map_or(0, |d: std::time::Duration| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            });
        RunRecord {
            finished_at,
            operation,
            status: StatusType::Failed,
            error_code: Some(code),
            error: Some(message[..end].to_string()),
            refs_created: 0,
            refs_updated: 0,
            refs_deleted: 0,
            new_commits: 0,
            bytes_received: 0,
            duration_ms,
        }
    }
}

/// One repository and what gitfleet last did to it. The id is derived from where the repository
/// lives on disk, so the same repository named in different spellings is one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CloneTask {
    /// Stable id: 16 lowercase hex digits.
    pub id: String,
    /// The repository URL, normalised and without credentials.
    pub url: String,
    pub operation: Operation,
    pub status: CloneStatus,
    /// The phase while `cloning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Stable code of `status.error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// Where the repository is stored.
    pub path: String,
    /// Attempts started for the current request (1 on the first try).
    #[serde(default)]
    pub attempts: u32,
    #[schemars(with = "String")]
    pub created_at: Timestamp,
    #[schemars(with = "String")]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub finished_at: Option<Timestamp>,
    /// The node that ran the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The idempotency key of the request that queued the task (cluster API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Which request of the task this record belongs to (cluster): the API counts it up with
    /// every request, a takeover with every move to another node, and a node's write of an
    /// older generation never replaces a newer one. 0 in embedded mode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The result of the latest successful clone or sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<SyncResult>,
    /// The last [`RunRecord::KEPT`] finished runs (clones, syncs, failures), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
    /// When a clone or sync of it last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_success_at: Option<Timestamp>,
    /// When a clone or sync last changed it (created, moved or deleted a ref).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_change_at: Option<Timestamp>,
    /// When the service (`gitfleet serve`, a node) syncs it next; none while it is not
    /// scheduled (made by `init`, quarantined, archived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub next_sync_at: Option<Timestamp>,
    /// Requests that failed in a row since the last success (cancelled ones do not count).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub consecutive_failures: u32,
    /// The time between two scheduled syncs, in seconds, as the schedule last set it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval_s: u64,
    /// An interval the operator set for this repository, in seconds: used instead of the
    /// adaptive one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_override_s: Option<u64>,
    /// No scheduled syncs after repeated permanent failures, until it is resumed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub quarantined: bool,
    /// Kept and readable, never synced (on schedule, by a webhook or on request) until it is
    /// unarchived.
    #[serde(default, skip_serializing_if = "is_false")]
    pub archived: bool,
    /// How fresh the repository is, derived when a task is shown (never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
}

/// How fresh a repository is: the product documents' cache statuses FRESH, STALE, MISSING and
/// ERROR, and quarantined or archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// Synced successfully within the stale-after time.
    Fresh,
    /// Not synced successfully for longer (or never).
    Stale,
    /// Its record says it was cloned, but the repository is gone (the next sync clones it
    /// again).
    Missing,
    /// The latest attempt failed.
    Error,
    /// Repeated permanent failures: not synced on schedule until resumed.
    Quarantined,
    /// Archived by an operator: kept, never synced until unarchived.
    Archived,
}

impl Freshness {
    /// Every freshness value.
    pub const ALL: [Freshness; 6] = [
        Freshness::Fresh,
        Freshness::Stale,
        Freshness::Missing,
        Freshness::Error,
        Freshness::Quarantined,
        Freshness::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::Stale => "stale",
            Freshness::Missing => "missing",
            Freshness::Error => "error",
            Freshness::Quarantined => "quarantined",
            Freshness::Archived => "archived",
        }
    }
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CloneTask {
    /// A freshly queued task.
    pub fn new(
        id: String,
        url: String,
        operation: Operation,
        path: String,
        now: Timestamp,
    ) -> Self {
        CloneTask {
            id,
            url,
            operation,
            status: CloneStatus::queued(),
            phase: None,
            error_code: None,
            path,
            attempts: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            node: None,
            idempotency_key: None,
            generation: 0,
            last_sync: None,
            history: Vec::new(),
            last_success_at: None,
            last_change_at: None,
            next_sync_at: None,
            consecutive_failures: 0,
            interval_s: 0,
            interval_override_s: None,
            quarantined: false,
            archived: false,
            freshness: None,
        }
    }

    /// When the service should sync it next, if at all: not while a request of it is queued or
    /// running, never when quarantined, archived or made by `init`; a record of an earlier
    /// version (no schedule) is due at once.
    pub fn due_at(&self) -> Option<Timestamp> {
        if self.quarantined
            || self.archived
            || self.operation == Operation::Init
            || !self.status.status_type.is_final()
        {
            return None;
        }
        Some(self.next_sync_at.unwrap_or(Timestamp::UNIX_EPOCH))
    }

    /// Out of quarantine, failures forgotten, due at `now`.
    pub fn resume(&mut self, now: Timestamp) {
        self.quarantined = false;
        self.consecutive_failures = 0;
        self.next_sync_at = Some(now);
    }

    /// Archived: kept as it is, never synced, out of the schedule.
    pub fn archive(&mut self) {
        self.archived = true;
        self.next_sync_at = None;
    }

    /// Back from the archive: due at `now`.
    pub fn unarchive(&mut self, now: Timestamp) {
        self.archived = false;
        self.next_sync_at = Some(now);
    }

    /// Synced every `every` from now on instead of the adaptive interval (`None`: adaptive
    /// again). A shorter interval takes effect at once, not after the next sync.
    pub fn set_interval(&mut self, every: Option<std::time::Duration>, now: Timestamp) {
        self.interval_override_s = every.map(|e| e.as_secs().max(1));
        let Some(every) = every else { return };
        let sooner = jiff::SignedDuration::try_from(every)
            .ok()
            .and_then(|d| now.checked_add(d).ok());
        if let (Some(next), Some(sooner)) = (self.next_sync_at, sooner)
            && sooner < next
        {
            self.next_sync_at = Some(sooner);
        }
    }

    /// Whether the record says anything of its schedule (a record of a new request, made
    /// before its first result, does not).
    pub fn has_schedule(&self) -> bool {
        self.last_success_at.is_some()
            || self.next_sync_at.is_some()
            || self.consecutive_failures > 0
            || self.quarantined
            || self.archived
    }

    /// Takes the schedule of `older` (an earlier record of the same task) when this record has
    /// none of its own: a new request must not make a repository forget its history.
    pub fn inherit_schedule(&mut self, older: &CloneTask) {
        if self.has_schedule() {
            return;
        }
        self.last_success_at = older.last_success_at;
        self.last_change_at = older.last_change_at;
        self.next_sync_at = older.next_sync_at;
        self.consecutive_failures = older.consecutive_failures;
        self.interval_s = older.interval_s;
        self.quarantined = older.quarantined;
        self.archived = older.archived;
        if self.interval_override_s.is_none() {
            self.interval_override_s = older.interval_override_s;
        }
    }

    /// Cancelled before it ran (by an operator, where no worker runs it): failed with
    /// `cancelled`, and the run recorded.
    pub fn cancel_unstarted(&mut self, now: Timestamp) {
        const WHY: &str = "cancelled on request";
        self.status = CloneStatus::failed(WHY);
        self.error_code = Some(ErrorCode::Cancelled);
        self.updated_at = now;
        self.record_run(RunRecord::failed(
            self.operation,
            None,
            now,
            ErrorCode::Cancelled,
            WHY,
        ));
    }

    /// Records a finished run: newest first, the last [`RunRecord::KEPT`] kept.
    pub fn record_run(&mut self, run: RunRecord) {
        run.add_to(&mut self.history);
    }

    /// Adds the runs `other` (another copy of this task's record, written meanwhile) holds and
    /// this one does not: newest first, the last [`RunRecord::KEPT`] kept.
    pub fn merge_history(&mut self, other: &CloneTask) {
        for run in &other.history {
            if !self.history.contains(run) {
                self.history.push(run.clone());
            }
        }
        self.history
            .sort_by_key(|run| std::cmp::Reverse(run.finished_at));
        self.history.truncate(RunRecord::KEPT);
    }

    /// How fresh the repository is at `now`: a success within `stale_after` is fresh.
    /// `present`: whether the repository is where the record says (the caller looks).
    pub fn freshness_at(
        &self,
        now: Timestamp,
        stale_after: std::time::Duration,
        present: bool,
    ) -> Freshness {
        Freshness::of(
            self.archived,
            self.quarantined,
            self.status.status_type,
            self.last_success_at,
            FreshnessAt {
                now,
                stale_after,
                present,
            },
        )
    }
}

/// When, and against what, freshness is judged.
#[derive(Debug, Clone, Copy)]
pub struct FreshnessAt {
    pub now: Timestamp,
    /// A success within this long is fresh.
    pub stale_after: std::time::Duration,
    /// Whether the repository is where its record says (the caller looks).
    pub present: bool,
}

impl Freshness {
    /// The freshness of a task in this state: archived, quarantined, then missing (it
    /// succeeded once and is gone), then error (the latest attempt failed), then fresh or stale
    /// by its last success. The one rule, for records and for compact ones alike.
    pub fn of(
        archived: bool,
        quarantined: bool,
        status: StatusType,
        last_success_at: Option<Timestamp>,
        at: FreshnessAt,
    ) -> Freshness {
        if archived {
            return Freshness::Archived;
        }
        if quarantined {
            return Freshness::Quarantined;
        }
        if last_success_at.is_some() && !at.present {
            return Freshness::Missing;
        }
        if status == StatusType::Failed {
            return Freshness::Error;
        }
        let fresh = last_success_at.is_some_and(|success| {
            at.now
                .duration_since(success)
                .try_into()
                .is_ok_and(|age: std::time::Duration| age <= at.stale_after)
        });
        if fresh {
            Freshness::Fresh
        } else {
            Freshness::Stale
        }
    }
}

/// The JSON Schema of [`CloneTask`], as published in `docs/schema/clone-task.schema.json`.
pub fn clone_task_schema() -> String {
    let schema = schemars::schema_for!(CloneTask);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(second: i64) -> RunRecord {
        RunRecord::completed(
            Operation::Sync,
            Timestamp::from_second(second).expect("a valid time"),
            &SyncResult::default(),
        )
    }

    #[test]
    fn a_history_keeps_the_newest_runs_of_both_copies_once_each() {
        let mut task = CloneTask::new(
            "0123456789abcdef".into(),
            "https://h.example/o/r".into(),
            Operation::Mirror,
            "h.example/o/r.git".into(),
            Timestamp::UNIX_EPOCH,
        );
        let mut other = task.clone();
        for second in [1, 3, 5] {
            task.record_run(run(second));
        }
        for second in [2, 3, 4] {
            other.record_run(run(second));
        }
        task.merge_history(&other);
        let seconds: Vec<i64> = task
            .history
            .iter()
            .map(|r| r.finished_at.as_second())
            .collect();
        assert_eq!(seconds, [5, 4, 3, 2, 1]);
        for second in 10..30 {
            other.record_run(run(second));
        }
        task.merge_history(&other);
        assert_eq!(task.history.len(), RunRecord::KEPT);
        assert_eq!(task.history[0].finished_at.as_second(), 29);
        assert_eq!(task.history[9].finished_at.as_second(), 20);
        // A failure's message is cut at a character boundary, within the bound.
        let failed = RunRecord::failed(
            Operation::Sync,
            None,
            Timestamp::UNIX_EPOCH,
            ErrorCode::Network,
            &"ü".repeat(RunRecord::MAX_ERROR),
        );
        let error = failed.error.expect("a message");
        assert!(error.len() <= RunRecord::MAX_ERROR && error.len() >= RunRecord::MAX_ERROR - 1);
    }
}
