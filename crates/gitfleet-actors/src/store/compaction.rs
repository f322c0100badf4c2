//! Compaction: when the log is larger than [`COMPACT_FACTOR`] times its live records (the last one
//! of every task) plus [`COMPACT_SLACK`], the live records are copied into [`COMPACTING`], which is
//! fsynced and renamed over the log: a reader reads the old log or the new one, never a mix.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use super::journal::{for_each_line, is_tombstone, record_id, sync_dir};
use super::writer::{Log, Writer};
use super::{COMPACTING, LOG};

/// The log is compacted once it is larger than this many times its live records (the last one
/// of every task), plus [`COMPACT_SLACK`].
pub(super) const COMPACT_FACTOR: u64 = 2;
pub(super) const COMPACT_SLACK: u64 = 256 << 10;

impl Writer {
    /// Compacts the log if it grew enough since it was last compacted; an error is logged, and
    /// compaction is tried again once the log has grown as much again.
    pub(super) fn compact_if_due(&mut self) {
        let Some(log) = &mut self.log else {
            return;
        };
        // `base`: the size of the log when it was last measured (0: not yet).
        if log.len
            <= COMPACT_FACTOR
                .saturating_mul(log.base)
                .saturating_add(self.compact_slack)
        {
            return;
        }
        let before = log.len;
        match compact(&self.state_dir, self.compact_slack) {
            Ok(Some(file)) => {
                let len = file.metadata().map(|m| m.len());
                let synced = sync_dir(&self.state_dir);
                match (len, synced) {
                    (Ok(len), Ok(())) => {
                        tracing::info!(before, after = len, "compacted the task log");
                        self.log = Some(Log {
                            file,
                            len,
                            base: len,
                        });
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "cannot compact the task log");
                        // The next round opens the new log (and fsyncs the directory).
                        self.log = None;
                    }
                }
            }
            Ok(None) => log.base = log.len,
            Err(e) => {
                tracing::error!(error = %e, "cannot compact the task log");
                log.base = log.len;
                let _ = std::fs::remove_file(self.state_dir.join(COMPACTING));
            }
        }
    }
}

/// Rewrites the log in `state_dir` with the last record of every task not removed (in their
/// order in the log; lines that are not records, and tombstones, are dropped), if the log is larger than [`COMPACT_FACTOR`]
/// times those plus `slack`: written to [`COMPACTING`], fsynced and renamed over the log.
/// Returns the new log, opened for appending, or `None` if it was not worth it (then nothing
/// changed). Memory is proportional to the number of tasks, not to the size of the log.
pub(super) fn compact(state_dir: &Path, slack: u64) -> std::io::Result<Option<File>> {
    let path = state_dir.join(LOG);
    // The offset and length of the last record of every task (none for a removed task: its
    // last line is a tombstone, and nothing of it is kept).
    let mut last: HashMap<String, Option<(u64, u64)>> = HashMap::new();
    let mut total = 0u64;
    for_each_line(&path, |offset, line| {
        let len = line.len() as u64 + 1;
        total += len;
        if let Some(id) = record_id(line) {
            let kept = (!is_tombstone(line)).then_some((offset, len));
            last.insert(id, kept);
        }
        Ok(())
    })?;
    let last: Vec<(u64, u64)> = last.into_values().flatten().collect();
    let live: u64 = last.iter().map(|(_, len)| len).sum();
    if total <= COMPACT_FACTOR.saturating_mul(live).saturating_add(slack) {
        return Ok(None);
    }
    let mut keep: Vec<u64> = last.into_iter().map(|(offset, _)| offset).collect();
    keep.sort_unstable();
    let tmp = state_dir.join(COMPACTING);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 16, &file);
    let mut next = keep.iter().peekable();
    for_each_line(&path, |offset, line| {
        if next.next_if(|&&at| at == offset).is_some() {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    out.flush()?;
    drop(out);
    if next.next().is_some() {
        return Err(std::io::Error::other(
            "the task log changed while it was compacted",
        ));
    }
    file.sync_data()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(file))
}
