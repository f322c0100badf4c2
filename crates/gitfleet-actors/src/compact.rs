//! The Registry's in-memory form of its tasks. A `CloneTask` with its last `SyncResult` takes
//! well over a kilobyte of heap (a 448-byte struct, a dozen small strings, three lists); the
//! Registry of a node with a million repositories keeps one per repository. Here a task is a
//! fixed-size [`Record`] in one vector (small enums, timestamps as integers, URL and path in one
//! allocation, the node interned) indexed by its id (the usual 16 hex digits as a `u64`), and its
//! last result is one byte string (see [`encode_sync`]). A `CloneTask` is built only when one is
//! asked for, and converting one into a record and back gives the same task.

use std::collections::HashMap;
use std::sync::Arc;

use gitfleet_proto::{
    Branch, CloneStatus, CloneTask, ErrorCode, Operation, Phase, RunRecord, StatusType, SyncResult,
};
use jiff::Timestamp;

/// Which timestamp of a record.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Time {
    Created = 0,
    Updated = 1,
    Started = 2,
    Finished = 3,
    LastSuccess = 4,
    LastChange = 5,
    NextSync = 6,
}

/// How many timestamps a record holds; the first [`PRECISE`] to the nanosecond, the schedule's
/// to the second (all a schedule needs, and 12 bytes less per task).
const TIMES: usize = 7;
const PRECISE: usize = 4;
/// `seconds` of a schedule timestamp that is not set.
const UNSET_SECONDS: i64 = i64::MIN;

/// The timestamps of the schedule, which a new request of a task keeps.
const SCHEDULE_TIMES: [Time; 3] = [Time::LastSuccess, Time::LastChange, Time::NextSync];

/// `nanos` of a timestamp that is not set (a real one is within ±999,999,999).
const UNSET: i32 = i32::MIN;

/// One task, compactly. The setters mirror the fields of `CloneTask`.
#[derive(Debug)]
pub(crate) struct Record {
    /// The id, when it is 16 lowercase hex digits (otherwise it is in `extra`).
    hex_id: u64,
    /// The URL followed by the path.
    text: Box<str>,
    url_len: usize,
    /// The last result and the runs of the history, in one allocation ([`Results`]).
    results: Option<Box<[u8]>>,
    /// What most tasks do not have.
    extra: Option<Box<Extra>>,
    seconds: [i64; TIMES],
    nanos: [i32; PRECISE],
    attempts: u32,
    consecutive_failures: u32,
    /// Seconds (saturating).
    interval_s: u32,
    quarantined: bool,
    archived: bool,
    /// 0: none; otherwise 1 + the node's index in the table's interned names.
    node: u32,
    operation: Operation,
    status: StatusType,
    progress: Option<u8>,
    phase: Option<Phase>,
    error_code: Option<ErrorCode>,
}

#[derive(Debug, Default)]
struct Extra {
    /// An id that is not 16 lowercase hex digits.
    id: Option<Box<str>>,
    /// `status.error`.
    error: Option<Box<str>>,
    idempotency_key: Option<Box<str>>,
    /// The cluster's request generation (0 in embedded mode).
    generation: u64,
    /// The operator's interval for this repository, in seconds.
    interval_override_s: Option<u64>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.error.is_none()
            && self.idempotency_key.is_none()
            && self.generation == 0
            && self.interval_override_s.is_none()
    }
}

/// The `u64` of an id of exactly 16 lowercase hex digits (so that formatting it with `{:016x}`
/// gives the same id back).
fn hex_id(id: &str) -> Option<u64> {
    if id.len() != 16 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

impl Record {
    pub(crate) fn url(&self) -> &str {
        &self.text[..self.url_len]
    }

    fn path(&self) -> &str {
        &self.text[self.url_len..]
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts;
    }

    pub(crate) fn status_type(&self) -> StatusType {
        self.status
    }

    pub(crate) fn progress(&self) -> Option<u8> {
        self.progress
    }

    pub(crate) fn set_status(&mut self, status: CloneStatus) {
        self.status = status.status_type;
        self.progress = status.progress;
        let error = status.error.map(String::into_boxed_str);
        if let Some(extra) = self.extra.as_mut() {
            extra.error = error;
            if extra.is_empty() {
                self.extra = None;
            }
        } else if error.is_some() {
            self.extra = Some(Box::new(Extra {
                error,
                ..Extra::default()
            }));
        }
    }

    pub(crate) fn set_phase(&mut self, phase: Option<Phase>) {
        self.phase = phase;
    }

    pub(crate) fn set_error_code(&mut self, code: Option<ErrorCode>) {
        self.error_code = code;
    }

    /// Sets a timestamp (one of the schedule's: cut to the second).
    pub(crate) fn set_time(&mut self, which: Time, at: Option<Timestamp>) {
        let i = which as usize;
        if i >= PRECISE {
            self.seconds[i] = at.map_or(UNSET_SECONDS, Timestamp::as_second);
            return;
        }
        let (seconds, nanos) = at.map_or((0, UNSET), |t| (t.as_second(), t.subsec_nanosecond()));
        self.seconds[i] = seconds;
        self.nanos[i] = nanos;
    }

    pub(crate) fn time(&self, which: Time) -> Option<Timestamp> {
        let i = which as usize;
        if i >= PRECISE {
            let seconds = self.seconds[i];
            return (seconds != UNSET_SECONDS)
                .then(|| Timestamp::from_second(seconds).ok())
                .flatten();
        }
        let nanos = self.nanos[i];
        if nanos == UNSET {
            return None;
        }
        // Both parts came from a valid timestamp.
        Timestamp::new(self.seconds[i], nanos).ok()
    }

    fn results(&self) -> Results<'_> {
        Results::of(self.results.as_deref())
    }

    pub(crate) fn last_sync(&self) -> Option<SyncResult> {
        self.results().last_sync.map(|bytes| {
            decode_sync(bytes).unwrap_or_else(|| {
                tracing::error!("undecodable last result in the registry (a bug)");
                SyncResult::default()
            })
        })
    }

    pub(crate) fn set_last_sync(&mut self, result: Option<&SyncResult>) {
        let encoded = result.map(encode_sync);
        self.results = self.results().with_last_sync(encoded.as_deref());
    }

    pub(crate) fn history(&self) -> Vec<RunRecord> {
        let runs = self.results().history;
        if runs.is_empty() {
            return Vec::new();
        }
        decode_history(runs).unwrap_or_else(|| {
            tracing::error!("undecodable history in the registry (a bug)");
            Vec::new()
        })
    }

    fn set_history(&mut self, runs: &[RunRecord]) {
        self.results = self.results().with_history(&encode_history(runs));
    }

    /// Records a finished run (newest first, the last `RunRecord::KEPT` kept).
    pub(crate) fn record_run(&mut self, run: RunRecord) {
        let results = self.results();
        match history_with(results.history, &run, RunRecord::KEPT) {
            Some(history) => self.results = results.with_history(&history),
            None => {
                tracing::error!("undecodable history in the registry (a bug)");
                self.set_history(&[run]);
            }
        }
    }

    /// The repository's size on disk as the last result measured it.
    pub(crate) fn disk_bytes(&self) -> Option<u64> {
        self.results().last_sync.and_then(encoded_disk_bytes)
    }

    pub(crate) fn operation(&self) -> Operation {
        self.operation
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn set_consecutive_failures(&mut self, failures: u32) {
        self.consecutive_failures = failures;
    }

    pub(crate) fn set_interval(&mut self, interval: std::time::Duration) {
        self.interval_s = u32::try_from(interval.as_secs()).unwrap_or(u32::MAX);
    }

    pub(crate) fn quarantined(&self) -> bool {
        self.quarantined
    }

    pub(crate) fn archived(&self) -> bool {
        self.archived
    }

    pub(crate) fn set_quarantined(&mut self, quarantined: bool) {
        self.quarantined = quarantined;
    }

    pub(crate) fn interval_override(&self) -> Option<std::time::Duration> {
        self.extra
            .as_ref()
            .and_then(|e| e.interval_override_s)
            .map(std::time::Duration::from_secs)
    }
}

/// Every task of a Registry.
#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    records: Vec<Record>,
    /// Slots of records by hex id.
    by_hex: HashMap<u64, u32>,
    /// Slots of records whose id is not 16 lowercase hex digits.
    by_name: HashMap<Box<str>, u32>,
    /// Node names (a few per cluster, shared by every task they ran).
    nodes: Vec<Arc<str>>,
    node_index: HashMap<Arc<str>, u32>,
}

/// Where a task is in a [`TaskTable`].
pub(crate) type Slot = usize;

impl TaskTable {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn find(&self, id: &str) -> Option<Slot> {
        let slot = match hex_id(id) {
            Some(hex) => self.by_hex.get(&hex),
            None => self.by_name.get(id),
        };
        slot.map(|&s| s as Slot)
    }

    pub(crate) fn record(&self, slot: Slot) -> &Record {
        &self.records[slot]
    }

    pub(crate) fn record_mut(&mut self, slot: Slot) -> &mut Record {
        &mut self.records[slot]
    }

    /// Adds `task`, or replaces the task with its id.
    pub(crate) fn insert(&mut self, task: CloneTask) -> Slot {
        let slot = self.find(&task.id);
        let record = self.make_record(task);
        self.put_record(slot, record)
    }

    /// A new request for `task`: replaces any task with its id, but keeps when that one was
    /// created and its last result.
    pub(crate) fn requeue(&mut self, task: CloneTask) -> Slot {
        let Some(slot) = self.find(&task.id) else {
            return self.insert(task);
        };
        let mut record = self.make_record(task);
        let old = &mut self.records[slot];
        let created = Time::Created as usize;
        record.seconds[created] = old.seconds[created];
        record.nanos[created] = old.nanos[created];
        // The last result always, the runs unless the new task brings its own.
        let kept = Results::of(old.results.as_deref());
        let mine = Results::of(record.results.as_deref());
        let history = if mine.history.is_empty() {
            kept.history
        } else {
            mine.history
        };
        record.results = Results {
            last_sync: kept.last_sync,
            history,
        }
        .encode();
        // The schedule goes on across requests.
        for which in SCHEDULE_TIMES {
            record.seconds[which as usize] = old.seconds[which as usize];
        }
        record.consecutive_failures = old.consecutive_failures;
        record.interval_s = old.interval_s;
        record.quarantined = old.quarantined;
        record.archived = old.archived;
        if record.interval_override().is_none()
            && let Some(interval) = old.interval_override()
        {
            record
                .extra
                .get_or_insert_with(Box::default)
                .interval_override_s = Some(interval.as_secs());
        }
        self.put_record(Some(slot), record)
    }

    fn put_record(&mut self, slot: Option<Slot>, record: Record) -> Slot {
        if let Some(slot) = slot {
            self.records[slot] = record;
            return slot;
        }
        let slot = self.records.len();
        // More than 4 billion tasks do not fit in memory anyway.
        let key = u32::try_from(slot).unwrap_or(u32::MAX);
        match record.extra.as_ref().and_then(|e| e.id.as_ref()) {
            Some(name) => self.by_name.insert(name.clone(), key),
            None => self.by_hex.insert(record.hex_id, key),
        };
        self.records.push(record);
        slot
    }

    /// Forgets the task in `slot`. The last record takes its slot: a page cursor at or after
    /// it may then show that one task twice or not at all.
    pub(crate) fn remove(&mut self, slot: Slot) {
        let record = self.records.swap_remove(slot);
        match record.extra.as_ref().and_then(|e| e.id.as_ref()) {
            Some(name) => self.by_name.remove(name),
            None => self.by_hex.remove(&record.hex_id),
        };
        if let Some(moved) = self.records.get(slot) {
            let key = u32::try_from(slot).unwrap_or(u32::MAX);
            match moved.extra.as_ref().and_then(|e| e.id.as_ref()) {
                Some(name) => self.by_name.insert(name.clone(), key),
                None => self.by_hex.insert(moved.hex_id, key),
            };
        }
    }

    pub(crate) fn set_node(&mut self, slot: Slot, node: Option<&str>) {
        let node = node.map_or(0, |n| self.intern(n) + 1);
        self.records[slot].node = node;
    }

    fn intern(&mut self, node: &str) -> u32 {
        if let Some(&i) = self.node_index.get(node) {
            return i;
        }
        let i = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = node.into();
        self.nodes.push(name.clone());
        self.node_index.insert(name, i);
        i
    }

    fn make_record(&mut self, task: CloneTask) -> Record {
        let node = task.node.as_deref().map_or(0, |n| self.intern(n) + 1);
        let hex = hex_id(&task.id);
        let url_len = task.url.len();
        let mut text = task.url;
        text.push_str(&task.path);
        let mut record = Record {
            hex_id: hex.unwrap_or(0),
            text: text.into_boxed_str(),
            url_len,
            results: None,
            extra: None,
            seconds: [0; TIMES],
            nanos: [UNSET; PRECISE],
            attempts: task.attempts,
            consecutive_failures: task.consecutive_failures,
            interval_s: u32::try_from(task.interval_s).unwrap_or(u32::MAX),
            quarantined: task.quarantined,
            archived: task.archived,
            node,
            operation: task.operation,
            status: task.status.status_type,
            progress: task.status.progress,
            phase: task.phase,
            error_code: task.error_code,
        };
        record.set_last_sync(task.last_sync.as_ref());
        record.set_history(&task.history);
        record.set_time(Time::Created, Some(task.created_at));
        record.set_time(Time::Updated, Some(task.updated_at));
        record.set_time(Time::Started, task.started_at);
        record.set_time(Time::Finished, task.finished_at);
        record.set_time(Time::LastSuccess, task.last_success_at);
        record.set_time(Time::LastChange, task.last_change_at);
        record.set_time(Time::NextSync, task.next_sync_at);
        let extra = Extra {
            id: hex.is_none().then(|| task.id.into_boxed_str()),
            error: task.status.error.map(String::into_boxed_str),
            idempotency_key: task.idempotency_key.map(String::into_boxed_str),
            generation: task.generation,
            interval_override_s: task.interval_override_s,
        };
        if !extra.is_empty() {
            record.extra = Some(Box::new(extra));
        }
        record
    }

    /// The task in `slot`, as a `CloneTask`.
    pub(crate) fn task(&self, slot: Slot) -> CloneTask {
        let r = &self.records[slot];
        let extra = r.extra.as_deref();
        let text = |f: fn(&Extra) -> &Option<Box<str>>| {
            extra.and_then(|e| f(e).as_deref()).map(str::to_string)
        };
        let epoch = Timestamp::UNIX_EPOCH;
        CloneTask {
            id: text(|e| &e.id).unwrap_or_else(|| format!("{:016x}", r.hex_id)),
            url: r.url().to_string(),
            operation: r.operation,
            status: CloneStatus {
                status_type: r.status,
                progress: r.progress,
                error: text(|e| &e.error),
            },
            phase: r.phase,
            error_code: r.error_code,
            path: r.path().to_string(),
            attempts: r.attempts,
            created_at: r.time(Time::Created).unwrap_or(epoch),
            updated_at: r.time(Time::Updated).unwrap_or(epoch),
            started_at: r.time(Time::Started),
            finished_at: r.time(Time::Finished),
            node: r
                .node
                .checked_sub(1)
                .and_then(|i| self.nodes.get(i as usize))
                .map(|n| n.to_string()),
            idempotency_key: text(|e| &e.idempotency_key),
            generation: extra.map_or(0, |e| e.generation),
            last_sync: r.last_sync(),
            history: r.history(),
            last_success_at: r.time(Time::LastSuccess),
            last_change_at: r.time(Time::LastChange),
            next_sync_at: r.time(Time::NextSync),
            consecutive_failures: r.consecutive_failures,
            interval_s: u64::from(r.interval_s),
            interval_override_s: extra.and_then(|e| e.interval_override_s),
            quarantined: r.quarantined,
            archived: r.archived,
            freshness: None,
        }
    }

    /// Every task counted by status and freshness (the repositories taken as present).
    pub(crate) fn census(&self, at: gitfleet_proto::FreshnessAt) -> crate::Census {
        let mut census = crate::Census::default();
        for record in &self.records {
            let status = record.status_type();
            let success = record.time(Time::LastSuccess);
            let freshness = gitfleet_proto::Freshness::of(
                record.archived(),
                record.quarantined(),
                status,
                success,
                at,
            );
            census.add(status, freshness, success, record.disk_bytes());
        }
        census
    }

    /// The page `query` asks for: records in the order they were first tracked (a slot is the
    /// cursor: stable as records are only added, except that a removal moves the last record
    /// into the freed slot), filtered without building a task record; one pass over the compact
    /// records, which also counts every match.
    pub(crate) fn page(
        &self,
        query: &crate::TaskQuery,
        at: gitfleet_proto::FreshnessAt,
    ) -> crate::TaskPage {
        let text = query.text.as_deref();
        let start = query.after.map_or(0, |after| after.saturating_add(1));
        let mut page = crate::TaskPage::default();
        for (slot, record) in self.records.iter().enumerate() {
            if query.status.is_some_and(|s| s != record.status) {
                continue;
            }
            let freshness = gitfleet_proto::Freshness::of(
                record.archived,
                record.quarantined,
                record.status,
                record.time(Time::LastSuccess),
                at,
            );
            if query.freshness.is_some_and(|f| f != freshness) {
                continue;
            }
            if let Some(text) = text
                && !contains_ignoring_case(record.url(), text)
            {
                continue;
            }
            page.matched += 1;
            let cursor = slot as u64;
            if cursor < start {
                page.before += 1;
                continue;
            }
            if page.tasks.len() < query.limit {
                let mut task = self.task(slot);
                task.freshness = Some(freshness);
                // A row of a page, as the cluster's `list` gives it: no history.
                task.history = Vec::new();
                page.tasks.push(task);
            } else if page.next.is_none() {
                page.next = page
                    .tasks
                    .last()
                    .and_then(|t| self.find(&t.id))
                    .map(|s| s as u64);
            }
        }
        page
    }

    /// Every task, oldest first (ties by id).
    pub(crate) fn tasks(&self) -> Vec<CloneTask> {
        let mut tasks: Vec<CloneTask> = (0..self.records.len()).map(|s| self.task(s)).collect();
        tasks.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        tasks
    }
}

/// Whether `haystack` contains `needle`, ASCII case ignored.
fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

// The encoding of a `SyncResult`: its counts as LEB128 varints, names as a header varint (0:
// none, else 1 + (length << 2 | prefix), the prefix being one of `PREFIXES`) and the rest of
// the bytes, object ids of 40 or 64 lowercase hex digits as 20 or 32 bytes. A small
// repository's result takes under 100 bytes instead of several hundred.

const PREFIXES: [&str; 4] = ["", "refs/heads/", "refs/tags/", "refs/remotes/"];

const OID_NONE: u8 = 0;
const OID_SAME_AS_HEAD: u8 = 1;
const OID_SHA1: u8 = 2;
const OID_SHA256: u8 = 3;
const OID_TEXT: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_name(out: &mut Vec<u8>, name: Option<&str>) {
    let Some(name) = name else {
        out.push(0);
        return;
    };
    let (prefix, rest) = PREFIXES
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, p)| name.strip_prefix(p).map(|rest| (i, rest)))
        .unwrap_or((0, name));
    put_varint(out, 1 + (((rest.len() as u64) << 2) | prefix as u64));
    out.extend_from_slice(rest.as_bytes());
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn put_oid(out: &mut Vec<u8>, oid: Option<&str>, head: Option<&str>) {
    match oid {
        None => out.push(OID_NONE),
        Some(oid) if head == Some(oid) => out.push(OID_SAME_AS_HEAD),
        Some(oid) if (oid.len() == 40 || oid.len() == 64) && is_lower_hex(oid) => {
            out.push(if oid.len() == 40 {
                OID_SHA1
            } else {
                OID_SHA256
            });
            for pair in oid.as_bytes().chunks(2) {
                out.push((hex_value(pair[0]) << 4) | hex_value(pair[1]));
            }
        }
        Some(oid) => {
            out.push(OID_TEXT);
            put_varint(out, oid.len() as u64);
            out.extend_from_slice(oid.as_bytes());
        }
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// `result` as a compact byte string; [`decode_sync`] gives it back.
pub(crate) fn encode_sync(result: &SyncResult) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64);
    // First, so that it is read without decoding the rest: 0 when unknown, else 1 + bytes
    // (16 EiB less one byte at most).
    put_varint(
        &mut out,
        result
            .disk_bytes
            .map_or(0, |bytes| bytes.min(u64::MAX - 1) + 1),
    );
    for n in [
        result.num_refs_created,
        result.num_refs_updated,
        result.num_refs_deleted,
        result.num_branches,
        result.new_commits,
        result.total_commits,
        result.bytes_received,
        result.duration_ms,
    ] {
        put_varint(&mut out, n);
    }
    for list in [
        &result.refs_created,
        &result.refs_updated,
        &result.refs_deleted,
    ] {
        put_varint(&mut out, list.len() as u64);
        for name in list {
            put_name(&mut out, Some(name));
        }
    }
    put_name(&mut out, result.default_branch.as_deref());
    let head = result.head_commit.as_deref();
    put_oid(&mut out, head, None);
    put_varint(&mut out, result.branches.len() as u64);
    for branch in &result.branches {
        put_name(&mut out, Some(&branch.name));
        put_oid(&mut out, Some(&branch.commit), head);
    }
    out.into_boxed_slice()
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    fn text(&mut self, n: usize) -> Option<&str> {
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn name(&mut self) -> Option<Option<String>> {
        let header = self.varint()?;
        if header == 0 {
            return Some(None);
        }
        let v = header - 1;
        let prefix = PREFIXES[(v & 3) as usize];
        let rest = self.text(usize::try_from(v >> 2).ok()?)?;
        Some(Some(format!("{prefix}{rest}")))
    }

    /// Passes over a name without building it.
    fn skip_name(&mut self) -> Option<()> {
        let header = self.varint()?;
        if header > 0 {
            self.take(usize::try_from((header - 1) >> 2).ok()?)?;
        }
        Some(())
    }

    /// Passes over one run of an encoded history ([`encode_run`]).
    fn skip_run(&mut self) -> Option<()> {
        self.varint()?;
        self.varint()?;
        for _ in 0..4 {
            self.skip_name()?;
        }
        for _ in 0..6 {
            self.varint()?;
        }
        Some(())
    }

    fn names(&mut self) -> Option<Vec<String>> {
        let n = self.len()?;
        let mut names = Vec::with_capacity(n.min(self.bytes.len()));
        for _ in 0..n {
            names.push(self.name()??);
        }
        Some(names)
    }

    fn oid(&mut self, head: Option<&str>) -> Option<Option<String>> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let hex = |bytes: &[u8]| {
            let mut s = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                s.push(DIGITS[usize::from(b >> 4)] as char);
                s.push(DIGITS[usize::from(b & 15)] as char);
            }
            s
        };
        Some(Some(match self.byte()? {
            OID_NONE => return Some(None),
            OID_SAME_AS_HEAD => head?.to_string(),
            OID_SHA1 => hex(self.take(20)?),
            OID_SHA256 => hex(self.take(32)?),
            OID_TEXT => {
                let n = self.len()?;
                self.text(n)?.to_string()
            }
            _ => return None,
        }))
    }
}

/// A task's runs as one byte string (about 20 bytes a successful run, against about 250 as
/// JSON): their number, then per run the finish time (seconds, zigzag, and nanoseconds), the
/// operation, status and error code by name, the error message, and six counts.
fn encode_history(runs: &[RunRecord]) -> Vec<u8> {
    if runs.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(36 * runs.len() + 1);
    put_varint(&mut out, runs.len() as u64);
    for run in runs {
        encode_run(&mut out, run);
    }
    out
}

fn encode_run(out: &mut Vec<u8>, run: &RunRecord) {
    put_varint(out, zigzag(run.finished_at.as_second()));
    put_varint(out, zigzag(i64::from(run.finished_at.subsec_nanosecond())));
    put_name(out, Some(run.operation.as_str()));
    put_name(out, Some(run.status.as_str()));
    put_name(out, run.error_code.map(ErrorCode::as_str));
    put_name(out, run.error.as_deref());
    for n in [
        run.refs_created,
        run.refs_updated,
        run.refs_deleted,
        run.new_commits,
        run.bytes_received,
        run.duration_ms,
    ] {
        put_varint(out, n);
    }
}

/// The encoded history with `run` put first and at most `keep` runs kept, from the encoded
/// `history` ([`encode_history`]) without decoding it: a run is recorded at every final state,
/// so this is one allocation of the final size, not a decoded list and its strings.
fn history_with(history: &[u8], run: &RunRecord, keep: usize) -> Option<Vec<u8>> {
    let mut r = Reader { bytes: history };
    let count = if history.is_empty() { 0 } else { r.len()? };
    let runs = r.bytes;
    // The runs kept after the new one: the first `keep - 1` of those there are.
    let kept = count.min(keep.saturating_sub(1));
    let mut skip = Reader { bytes: runs };
    for _ in 0..kept {
        skip.skip_run()?;
    }
    let kept_bytes = &runs[..runs.len() - skip.bytes.len()];
    let mut one = Vec::with_capacity(48);
    encode_run(&mut one, run);
    let mut out = Vec::with_capacity(kept_bytes.len() + one.len() + 2);
    put_varint(&mut out, (kept + 1) as u64);
    out.extend_from_slice(&one);
    out.extend_from_slice(kept_bytes);
    Some(out)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A record's results as one byte string: 0 when it has no last result, else 1 + the length
/// of its encoding ([`encode_sync`]), then that encoding, then the runs ([`encode_history`],
/// nothing when there are none). No results at all are no allocation.
#[derive(Debug, Clone, Copy)]
struct Results<'a> {
    last_sync: Option<&'a [u8]>,
    history: &'a [u8],
}

impl<'a> Results<'a> {
    fn of(bytes: Option<&'a [u8]>) -> Self {
        let none = Results {
            last_sync: None,
            history: &[],
        };
        let Some(bytes) = bytes else { return none };
        let mut r = Reader { bytes };
        let header = r.len();
        let rest: &'a [u8] = &bytes[bytes.len() - r.bytes.len()..];
        match header {
            Some(0) => Results {
                last_sync: None,
                history: rest,
            },
            Some(n) if n - 1 <= rest.len() => {
                let (sync, history) = rest.split_at(n - 1);
                Results {
                    last_sync: Some(sync),
                    history,
                }
            }
            _ => {
                tracing::error!("undecodable results in the registry (a bug)");
                none
            }
        }
    }

    fn with_last_sync(self, last_sync: Option<&[u8]>) -> Option<Box<[u8]>> {
        Results {
            last_sync,
            history: self.history,
        }
        .encode()
    }

    fn with_history(self, history: &[u8]) -> Option<Box<[u8]>> {
        Results {
            last_sync: self.last_sync,
            history,
        }
        .encode()
    }

    fn encode(&self) -> Option<Box<[u8]>> {
        if self.last_sync.is_none() && self.history.is_empty() {
            return None;
        }
        let sync = self.last_sync.unwrap_or_default();
        let mut out = Vec::with_capacity(sync.len() + self.history.len() + 3);
        put_varint(&mut out, self.last_sync.map_or(0, |s| s.len() as u64 + 1));
        out.extend_from_slice(sync);
        out.extend_from_slice(self.history);
        Some(out.into_boxed_slice())
    }
}

/// The runs [`encode_history`] encoded; `None` if `bytes` are not such an encoding.
fn decode_history(bytes: &[u8]) -> Option<Vec<RunRecord>> {
    /// An enum of the wire model from the name it serializes to.
    fn named<T: serde::de::DeserializeOwned>(name: Option<String>) -> Option<T> {
        gitfleet_proto::from_json(format!("\"{}\"", name?).as_bytes()).ok()
    }
    let mut r = Reader { bytes };
    let n = r.len()?;
    let mut runs = Vec::with_capacity(n.min(RunRecord::KEPT));
    for _ in 0..n {
        let seconds = unzigzag(r.varint()?);
        let nanos = i32::try_from(unzigzag(r.varint()?)).ok()?;
        let finished_at = Timestamp::new(seconds, nanos).ok()?;
        let operation = named(r.name()?)?;
        let status = named(r.name()?)?;
        let error_code = match r.name()? {
            Some(name) => Some(named(Some(name))?),
            None => None,
        };
        let error = r.name()?;
        let mut counts = [0u64; 6];
        for c in &mut counts {
            *c = r.varint()?;
        }
        let [
            refs_created,
            refs_updated,
            refs_deleted,
            new_commits,
            bytes_received,
            duration_ms,
        ] = counts;
        runs.push(RunRecord {
            finished_at,
            operation,
            status,
            error_code,
            error,
            refs_created,
            refs_updated,
            refs_deleted,
            new_commits,
            bytes_received,
            duration_ms,
        });
    }
    r.bytes.is_empty().then_some(runs)
}

/// The `SyncResult` [`encode_sync`] encoded; `None` if `bytes` are not such an encoding.
pub(crate) fn decode_sync(bytes: &[u8]) -> Option<SyncResult> {
    let mut r = Reader { bytes };
    let disk_bytes = r.varint()?.checked_sub(1);
    let mut counts = [0u64; 8];
    for c in &mut counts {
        *c = r.varint()?;
    }
    let refs_created = r.names()?;
    let refs_updated = r.names()?;
    let refs_deleted = r.names()?;
    let default_branch = r.name()?;
    let head_commit = r.oid(None)?;
    let n = r.len()?;
    let mut branches = Vec::with_capacity(n.min(r.bytes.len()));
    for _ in 0..n {
        let name = r.name()??;
        let commit = r.oid(head_commit.as_deref())??;
        branches.push(Branch { name, commit });
    }
    if !r.bytes.is_empty() {
        return None;
    }
    let [
        num_refs_created,
        num_refs_updated,
        num_refs_deleted,
        num_branches,
        new_commits,
        total_commits,
        bytes_received,
        duration_ms,
    ] = counts;
    Some(SyncResult {
        num_refs_created,
        num_refs_updated,
        num_refs_deleted,
        num_branches,
        refs_created,
        refs_updated,
        refs_deleted,
        new_commits,
        total_commits,
        default_branch,
        head_commit,
        branches,
        bytes_received,
        duration_ms,
        disk_bytes,
    })
}

/// The `disk_bytes` of an encoded result, without decoding the rest.
pub(crate) fn encoded_disk_bytes(bytes: &[u8]) -> Option<u64> {
    Reader { bytes }.varint()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64, nanosecond: i32) -> Timestamp {
        Timestamp::new(second, nanosecond).expect("a valid timestamp")
    }

    fn full_result() -> SyncResult {
        SyncResult {
            num_refs_created: 250,
            num_refs_updated: 2,
            num_refs_deleted: u64::MAX,
            num_branches: 3,
            refs_created: vec![
                "refs/heads/main".into(),
                "refs/tags/v1.0".into(),
                "refs/remotes/origin/HEAD".into(),
                "refs/notes/commits".into(),
                "refs/heads/".into(),
                "refs/heads/ünïcødé/ブランチ".into(),
                String::new(),
            ],
            refs_updated: vec!["HEAD".into(), "refs/pull/1/head".into()],
            refs_deleted: vec!["refs/tags/old".into()],
            new_commits: 1 << 40,
            total_commits: 127,
            disk_bytes: Some(123_456_789_012),
            default_branch: Some("main".into()),
            head_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            branches: vec![
                Branch {
                    name: "main".into(),
                    commit: "0123456789abcdef0123456789abcdef01234567".into(),
                },
                Branch {
                    name: "sha256".into(),
                    commit: "ab".repeat(32),
                },
                Branch {
                    name: "upper".into(),
                    commit: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
                },
                Branch {
                    name: "short".into(),
                    commit: "abc".into(),
                },
                Branch {
                    name: "odd".into(),
                    commit: "0123456789abcdef0123456789abcdef0123456g".into(),
                },
                Branch {
                    name: String::new(),
                    commit: String::new(),
                },
            ],
            bytes_received: 12_345_678,
            duration_ms: 0,
        }
    }

    #[test]
    fn results_round_trip() {
        let mut without_head = full_result();
        without_head.head_commit = None;
        without_head.default_branch = Some(String::new());
        let mut head_not_hex = full_result();
        head_not_hex.head_commit = Some("not an id".into());
        head_not_hex.branches[0].commit = "not an id".into();
        for result in [
            SyncResult::default(),
            full_result(),
            without_head,
            head_not_hex,
        ] {
            let bytes = encode_sync(&result);
            assert_eq!(decode_sync(&bytes), Some(result.clone()), "{bytes:?}");
            // Every truncation is refused, not misread.
            for n in 0..bytes.len() {
                assert_eq!(decode_sync(&bytes[..n]), None, "truncated to {n}");
            }
        }
    }

    #[test]
    fn a_small_repositorys_result_is_small() {
        let result = SyncResult {
            num_refs_created: 3,
            num_branches: 2,
            refs_created: vec![
                "refs/heads/dev".into(),
                "refs/heads/main".into(),
                "refs/tags/v1.0".into(),
            ],
            new_commits: 5,
            total_commits: 5,
            default_branch: Some("main".into()),
            head_commit: Some("a".repeat(40)),
            branches: vec![
                Branch {
                    name: "dev".into(),
                    commit: "b".repeat(40),
                },
                Branch {
                    name: "main".into(),
                    commit: "a".repeat(40),
                },
            ],
            bytes_received: 9_000,
            duration_ms: 120,
            ..SyncResult::default()
        };
        let bytes = encode_sync(&result);
        assert!(bytes.len() <= 96, "{} bytes", bytes.len());
        assert_eq!(decode_sync(&bytes), Some(result));
    }

    fn tasks() -> Vec<CloneTask> {
        let plain = CloneTask::new(
            "00000000000000ab".into(),
            "git://h/o/r".into(),
            Operation::Mirror,
            "/x/h/o/r.git".into(),
            at(1_700_000_000, 123_456_789),
        );
        let mut full = plain.clone();
        full.id = "ffffffffffffffff".into();
        full.url = "https://例え.jp/ö/r".into();
        full.path = String::new();
        full.operation = Operation::Checkout;
        full.status = CloneStatus {
            status_type: StatusType::Failed,
            progress: Some(42),
            error: Some("network: connection refused".into()),
        };
        full.phase = Some(Phase::CheckingOut);
        full.error_code = Some(ErrorCode::Network);
        full.attempts = u32::MAX;
        full.created_at = Timestamp::MIN;
        full.updated_at = Timestamp::MAX;
        full.started_at = Some(at(-1, -1));
        full.finished_at = Some(Timestamp::UNIX_EPOCH);
        full.node = Some("node-1".into());
        full.idempotency_key = Some(String::new());
        full.generation = 7;
        full.last_sync = Some(full_result());
        full.last_success_at = Some(at(1_700_000_100, 0));
        full.last_change_at = Some(at(1_700_000_050, 0));
        full.next_sync_at = Some(at(1_700_003_700, 0));
        full.consecutive_failures = 2;
        full.interval_s = 3600;
        full.interval_override_s = Some(900);
        full.quarantined = true;
        full.archived = true;
        // Every kind of run, at the edges of what a timestamp and a count hold, more than a
        // record keeps.
        for i in 0..(RunRecord::KEPT + 2) {
            let mut run =
                RunRecord::completed(Operation::Sync, at(i as i64, 999_999_999), &full_result());
            if i % 3 == 1 {
                run = RunRecord::failed(
                    Operation::Mirror,
                    Some(Timestamp::MIN),
                    Timestamp::MAX,
                    ErrorCode::RateLimited,
                    &"é".repeat(RunRecord::MAX_ERROR),
                );
            }
            if i % 3 == 2 {
                run.finished_at = at(-1_700_000_000, -5);
                run.bytes_received = u64::MAX;
                run.operation = Operation::Checkout;
            }
            full.record_run(run);
        }
        assert_eq!(full.history.len(), RunRecord::KEPT);
        assert!(full.history.iter().all(|r| {
            r.error
                .as_ref()
                .is_none_or(|e| e.len() <= RunRecord::MAX_ERROR)
        }));
        let mut odd_ids = Vec::new();
        for id in [
            "",
            "0123456789ABCDEF",
            "0123456789abcdef0",
            "0123456789abcde",
            "+123456789abcdef",
            "a task",
        ] {
            let mut t = full.clone();
            t.id = id.into();
            t.node = Some("node-2".into());
            odd_ids.push(t);
        }
        let mut cloning = plain.clone();
        cloning.id = "0000000000000000".into();
        cloning.status = CloneStatus::cloning(7);
        cloning.started_at = Some(at(1_700_000_001, 0));
        cloning.node = Some("node-1".into());
        let mut tasks = vec![plain, full, cloning];
        tasks.extend(odd_ids);
        tasks
    }

    #[test]
    fn tasks_round_trip() {
        let mut table = TaskTable::default();
        let tasks = tasks();
        let slots: Vec<Slot> = tasks.iter().map(|t| table.insert(t.clone())).collect();
        assert_eq!(table.len(), tasks.len());
        for (task, slot) in tasks.iter().zip(&slots) {
            assert_eq!(table.find(&task.id), Some(*slot), "{}", task.id);
            assert_eq!(&table.task(*slot), task);
        }
        assert_eq!(table.find("0000000000000001"), None);
        assert_eq!(table.find("0123456789abcdeF"), None);
        let mut sorted = tasks.clone();
        sorted.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        assert_eq!(table.tasks(), sorted);
        // Replacing keeps one task per id.
        let mut again = tasks[1].clone();
        again.status = CloneStatus::queued();
        again.last_sync = None;
        assert_eq!(table.insert(again.clone()), slots[1]);
        assert_eq!(table.len(), tasks.len());
        assert_eq!(table.task(slots[1]), again);
    }

    #[test]
    fn requeue_keeps_creation_last_result_and_schedule() {
        let mut table = TaskTable::default();
        let old = tasks()[1].clone();
        table.insert(old.clone());
        let mut new = CloneTask::new(
            old.id.clone(),
            "git://other/url".into(),
            Operation::Sync,
            "/p".into(),
            at(1_800_000_000, 5),
        );
        let slot = table.requeue(new.clone());
        new.created_at = old.created_at;
        new.last_sync = old.last_sync.clone();
        new.history = old.history.clone();
        // And the schedule.
        new.last_success_at = old.last_success_at;
        new.last_change_at = old.last_change_at;
        new.next_sync_at = old.next_sync_at;
        new.consecutive_failures = old.consecutive_failures;
        new.interval_s = old.interval_s;
        new.interval_override_s = old.interval_override_s;
        new.quarantined = old.quarantined;
        new.archived = old.archived;
        assert_eq!(table.task(slot), new);
        let fresh = tasks()[0].clone();
        let slot = table.requeue(fresh.clone());
        assert_eq!(table.task(slot), fresh);
    }

    #[test]
    fn setters_change_what_they_name() {
        let mut table = TaskTable::default();
        let mut task = tasks()[0].clone();
        let slot = table.insert(task.clone());
        let r = table.record_mut(slot);
        r.set_status(CloneStatus::failed("boom"));
        r.set_phase(Some(Phase::Resolving));
        r.set_error_code(Some(ErrorCode::Protocol));
        r.set_attempts(3);
        r.set_time(Time::Finished, Some(at(5, 6)));
        r.set_time(Time::Created, None);
        r.set_last_sync(Some(&full_result()));
        table.set_node(slot, Some("n"));
        task.status = CloneStatus::failed("boom");
        task.phase = Some(Phase::Resolving);
        task.error_code = Some(ErrorCode::Protocol);
        task.attempts = 3;
        task.finished_at = Some(at(5, 6));
        task.created_at = Timestamp::UNIX_EPOCH;
        task.last_sync = Some(full_result());
        task.node = Some("n".into());
        assert_eq!(table.task(slot), task);
        let r = table.record_mut(slot);
        r.set_status(CloneStatus::completed());
        assert!(r.extra.is_none(), "an empty extra is dropped");
        table.set_node(slot, None);
        task.status = CloneStatus::completed();
        task.node = None;
        assert_eq!(table.task(slot), task);
    }

    #[test]
    fn a_run_recorded_in_place_is_the_run_recorded_on_the_task() {
        let mut table = TaskTable::default();
        for mut task in tasks() {
            let slot = table.insert(task.clone());
            for i in 0..(RunRecord::KEPT as i64 + 3) {
                let run = if i % 4 == 3 {
                    RunRecord::failed(
                        Operation::Sync,
                        Some(at(i, 0)),
                        at(-i, -7),
                        ErrorCode::Protocol,
                        "refs/heads/x: bad pack",
                    )
                } else {
                    RunRecord::completed(Operation::Mirror, at(i * 1000, 5), &full_result())
                };
                table.record_mut(slot).record_run(run.clone());
                task.record_run(run);
                assert_eq!(table.task(slot), task, "{} after {i}", task.id);
            }
            assert_eq!(task.history.len(), RunRecord::KEPT);
        }
    }

    #[test]
    fn a_record_is_small() {
        assert!(
            std::mem::size_of::<Record>() <= 160,
            "{}",
            std::mem::size_of::<Record>()
        );
    }

    #[test]
    fn pages_follow_their_cursor_and_filters_count_every_match() {
        let mut table = TaskTable::default();
        for i in 0..7u64 {
            let mut task = CloneTask::new(
                format!("{i:016x}"),
                format!("https://Host.example/team-{}/repo-{i}", i % 2),
                Operation::Mirror,
                format!("/x/{i}"),
                at(1_700_000_000, 0),
            );
            if i == 3 {
                task.status = CloneStatus::failed("not found");
                task.error_code = Some(ErrorCode::NotFound);
            }
            table.insert(task);
        }
        let at = gitfleet_proto::FreshnessAt {
            now: at(1_700_000_100, 0),
            stale_after: std::time::Duration::from_secs(60),
            present: true,
        };
        let query = |after, limit| crate::TaskQuery {
            after,
            limit,
            ..crate::TaskQuery::default()
        };
        let ids = |page: &crate::TaskPage| -> Vec<String> {
            page.tasks.iter().map(|t| t.id[14..].to_string()).collect()
        };

        let first = table.page(&query(None, 3), at);
        assert_eq!(ids(&first), ["00", "01", "02"]);
        assert_eq!((first.matched, first.next), (7, Some(2)));
        let second = table.page(&query(first.next, 3), at);
        assert_eq!(ids(&second), ["03", "04", "05"]);
        assert_eq!(second.before, 3);
        let last = table.page(&query(second.next, 3), at);
        assert_eq!(ids(&last), ["06"]);
        assert_eq!(last.next, None);

        let failed = table.page(
            &crate::TaskQuery {
                status: Some(StatusType::Failed),
                ..query(None, 10)
            },
            at,
        );
        assert_eq!(ids(&failed), ["03"]);
        assert_eq!(
            failed.tasks[0].freshness,
            Some(gitfleet_proto::Freshness::Error)
        );
        let team_one = crate::TaskQuery {
            text: Some("HOST.EXAMPLE/TEAM-1".into()),
            ..query(None, 2)
        };
        let page = table.page(&team_one, at);
        assert_eq!(ids(&page), ["01", "03"]);
        assert_eq!((page.matched, page.next), (3, Some(3)));
        let stale = crate::TaskQuery {
            freshness: Some(gitfleet_proto::Freshness::Stale),
            ..team_one
        };
        assert_eq!(ids(&table.page(&stale, at)), ["01", "05"]);
    }

    #[test]
    fn a_removed_task_is_gone_and_the_one_moved_into_its_slot_is_still_found() {
        let mut table = TaskTable::default();
        let named = |id: &str| {
            let mut task = tasks()[0].clone();
            task.id = id.into();
            task
        };
        for task in [
            named("00000000000000a1"),
            named("not-hex"),
            named("00000000000000a3"),
        ] {
            table.insert(task);
        }
        table.remove(table.find("00000000000000a1").expect("found"));
        assert_eq!(table.find("00000000000000a1"), None);
        for id in ["not-hex", "00000000000000a3"] {
            let slot = table.find(id).expect("still found");
            assert_eq!(table.task(slot).id, id);
        }
        table.remove(table.find("not-hex").expect("found"));
        assert_eq!(table.find("not-hex"), None);
        assert_eq!(table.len(), 1);
        let slot = table.find("00000000000000a3").expect("found");
        assert_eq!(table.task(slot).id, "00000000000000a3");
    }
}
