//! What one attempt may do and receive: time, transfer size and rate, ref listing, prune share.

use std::time::Duration;

use crate::meter::OverLimit;

/// What one attempt may do: how long it may take, how much it may receive, and how much of a
/// mirror a sync may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole operation (default 30 minutes).
    pub time_limit: Duration,
    /// No progress of any kind for this long aborts the operation (default 2 minutes).
    pub stall_limit: Duration,
    /// How long to wait for the git thread to notice an interrupt before giving up on it.
    pub grace: Duration,
    /// A sync refuses to delete more than this percentage of the refs it keeps (when more than
    /// [`PRUNE_FEW`] would go), and always refuses to delete all of them (default 50).
    pub max_prune_percent: u8,
    /// Delete whatever the remote no longer lists, however much that is.
    pub force_prune: bool,
    /// Bytes one transfer may receive (default 20 GiB).
    pub max_bytes: u64,
    /// Bytes a server may send while listing its refs, which are held in memory (default
    /// 128 MiB).
    pub max_listing_bytes: u64,
    /// The largest object a pack may hold, unpacked (default 512 MiB): a small delta can
    /// declare a huge result, which would be built in memory.
    pub max_object_bytes: u64,
    /// Refs a remote may list (default 1,000,000).
    pub max_refs: usize,
    /// The longest ref name a remote may list, in bytes (default 1,024).
    pub max_ref_name: usize,
    /// Fewer bytes than `min_rate` per second, averaged over `rate_window`, abort the attempt
    /// (default 1 byte/s over 60 s): a server that sends a byte now and then holds no thread.
    pub min_rate: u64,
    pub rate_window: Duration,
    /// Below this much free space on the root's file system, new repositories are refused
    /// (`storage`); existing ones keep syncing. None: no floor.
    pub min_free: Option<MinFree>,
    /// A repository holding more packs than this after a sync is repacked (maintenance.rs;
    /// default 50, git's own `gc.autoPackLimit`; 0: never).
    pub repack_after_packs: usize,
}

/// Free space a root keeps for the repositories it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    /// Of the file system's size.
    Percent(u8),
    Bytes(u64),
}

impl MinFree {
    /// Parses `10%` or a size (`50G`; suffixes K, M, G, T: powers of 1024).
    pub fn parse(
        text: &str,
        size: impl Fn(&str) -> Result<u64, String>,
    ) -> Result<MinFree, String> {
        match text.trim().strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MinFree::Percent(p)),
                _ => Err(format!("'{text}' is not a percentage from 0% to 100%")),
            },
            None => size(text).map(MinFree::Bytes),
        }
    }

    /// Whether `available` of `total` bytes is below this floor.
    pub fn is_below(self, available: u64, total: u64) -> bool {
        match self {
            MinFree::Bytes(floor) => available < floor,
            MinFree::Percent(p) => u128::from(available) * 100 < u128::from(total) * u128::from(p),
        }
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time_limit: Duration::from_secs(30 * 60),
            stall_limit: Duration::from_secs(120),
            grace: Duration::from_secs(10),
            max_prune_percent: 50,
            force_prune: false,
            max_bytes: 20 << 30,
            max_listing_bytes: 128 << 20,
            max_object_bytes: 512 << 20,
            min_free: None,
            repack_after_packs: 50,
            max_refs: 1_000_000,
            max_ref_name: 1024,
            min_rate: 1,
            rate_window: Duration::from_secs(60),
        }
    }
}

/// Up to this many refs may go in one sync whatever their share (unless they are all there is).
pub const PRUNE_FEW: usize = 10;

impl Limits {
    /// Refuses a listing of more refs, or longer names, than the limits allow.
    pub(crate) fn check_listing<'a>(
        &self,
        names: impl Iterator<Item = &'a gix::bstr::BStr>,
    ) -> Result<(), OverLimit> {
        let mut count = 0usize;
        for name in names {
            count += 1;
            if count > self.max_refs {
                return Err(OverLimit(format!(
                    "the server lists more than {} refs",
                    self.max_refs
                )));
            }
            if name.len() > self.max_ref_name {
                return Err(OverLimit(format!(
                    "the server lists a ref name longer than {} bytes",
                    self.max_ref_name
                )));
            }
        }
        Ok(())
    }

    /// Whether a sync may delete `deleting` of the `kept` refs it manages: not all of them, nor
    /// more than the allowed share of more than a few, unless forced. A mirror is a backup: a
    /// remote that suddenly lists no refs, or far fewer (a glitch, a misconfigured server, a
    /// compromised account), must not wipe it.
    pub(crate) fn allows_prune(&self, deleting: usize, kept: usize) -> bool {
        let all = deleting == kept;
        let too_many =
            deleting > PRUNE_FEW && deleting * 100 > kept * usize::from(self.max_prune_percent);
        self.force_prune || !(all || too_many)
    }
}
