//! The journal's format: one line per stored state of a task, the `CloneTask` as compact JSON
//! followed by `\n`; the last line of a task wins. A removed task's last line is a tombstone,
//! `{"id":"<id>","removed":true}`. How records are written, found and read, and where the last
//! whole one ends.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use gitfleet_proto::CloneTask;

/// What one line of the log says.
#[derive(Debug)]
pub(super) enum Entry {
    Task(Box<CloneTask>),
    /// The task of this id was removed.
    Removed(String),
}

impl Entry {
    pub(super) fn id(&self) -> &str {
        match self {
            Entry::Task(task) => &task.id,
            Entry::Removed(id) => id,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    id: String,
    removed: bool,
}

/// Appends the line of `entry` to `records`.
pub(super) fn push_entry(records: &mut Vec<u8>, entry: &Entry) {
    match entry {
        Entry::Task(task) => push_record(records, task),
        Entry::Removed(id) => {
            records.extend(gitfleet_proto::to_json(&Tombstone {
                id: id.clone(),
                removed: true,
            }));
            records.push(b'\n');
        }
    }
}

/// Appends the line of `task` to `records`.
pub(super) fn push_record(records: &mut Vec<u8>, task: &CloneTask) {
    let start = records.len();
    records.extend(gitfleet_proto::to_json(task));
    debug_assert!(!records[start..].contains(&b'\n'), "a record is one line");
    records.push(b'\n');
}

/// Whether `line` is a tombstone.
pub(super) fn is_tombstone(line: &[u8]) -> bool {
    line.ends_with(br#","removed":true}"#)
        && serde_json::from_slice::<Tombstone>(line).is_ok_and(|t| t.removed)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The id of the record on `line`, if it holds one: a JSON object with a string `id`, whether
/// this version can read the rest of it or not (a newer one may have written it; the writer
/// neither cuts nor compacts such a record away).
pub(super) fn record_id(line: &[u8]) -> Option<String> {
    // `to_json` writes the id first; task ids are hex. Anything else takes the full parse.
    if let Some(rest) = line.strip_prefix(br#"{"id":""#)
        && let Some(end) = rest.iter().position(|b| *b == b'"')
        && rest[..end].iter().all(u8::is_ascii_alphanumeric)
        && line.ends_with(b"}")
        && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
    {
        return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    match serde_json::from_slice::<serde_json::Value>(line).ok()? {
        serde_json::Value::Object(mut fields) => match fields.remove("id")? {
            serde_json::Value::String(id) => Some(id),
            _ => None,
        },
        _ => None,
    }
}

/// Where the last line of the log (its first `len` bytes) that is whole (ends in `\n`) and holds
/// a record ends; 0 if there is none. Reads the log from its end.
pub(super) fn last_record_end(file: &File, len: u64) -> std::io::Result<u64> {
    let mut window: u64 = 1 << 16;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; usize::try_from(len - start).map_err(std::io::Error::other)?];
        let mut reader = file;
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut buf)?;
        let Some(mut end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(0);
            }
            window = window.saturating_mul(2);
            continue;
        };
        loop {
            let line_start = match buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None if start == 0 => 0,
                // The line begins before the window.
                None => break,
            };
            if record_id(&buf[line_start..end]).is_some() {
                return Ok(start + end as u64 + 1);
            }
            if line_start == 0 {
                return Ok(0);
            }
            end = line_start - 1;
        }
        window = window.saturating_mul(2);
    }
}

/// Calls `each` with the offset and the bytes (without the `\n`) of every whole line of the log
/// at `path`, in order. A last line without its `\n` (cut by a crash, which the next writer
/// cuts off, or being appended right now) is skipped. A missing log has no lines.
pub(super) fn for_each_line(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            // Not a warning: a reader in another process sees this whenever it reads during an
            // append. The writer warns when it cuts a torn tail.
            tracing::debug!(path = %path.display(), offset, bytes = n, "skipping the unfinished end of the task log");
            return Ok(());
        }
        each(offset, &line[..n - 1])?;
        offset += n as u64;
    }
}

pub(super) fn parse_line(path: &Path, offset: u64, line: &[u8]) -> Option<CloneTask> {
    match parse_entry(path, offset, line)? {
        Entry::Task(task) => Some(*task),
        Entry::Removed(_) => None,
    }
}

/// The record or tombstone on `line` of the log at `path` (`offset` for the warning when it is
/// neither).
pub(super) fn parse_entry(path: &Path, offset: u64, line: &[u8]) -> Option<Entry> {
    if is_tombstone(line) {
        return serde_json::from_slice::<Tombstone>(line)
            .ok()
            .map(|t| Entry::Removed(t.id));
    }
    match gitfleet_proto::from_json(line) {
        Ok(task) => Some(Entry::Task(Box::new(task))),
        Err(e) => {
            tracing::warn!(path = %path.display(), offset, error = %e, "skipping an unreadable line of the task log");
            None
        }
    }
}
