//! Counting what a server sends over the connections gitfleet opens, and stopping it at a
//! budget: a server that advertises refs without end would otherwise fill
//! memory before any ref could be looked at, and one that sends data without end would fill the
//! disk.
//!
//! The budget is small while refs are listed (the advertisement is held in memory) and grows by
//! the transfer limit once the listing is done ([`Meter::listing_done`]). One meter serves one
//! attempt, and every transport the attempt opens counts against it.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A server sent more than a limit allows (bytes, refs, ref name length, object size): what
/// error.rs classifies as `limit_exceeded`, wherever in an error chain it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OverLimit(pub String);

/// Bytes received by one operation and how many it may receive.
#[derive(Debug)]
pub(crate) struct Meter {
    read: AtomicU64,
    budget: AtomicU64,
    listing: AtomicBool,
    listing_limit: u64,
    transfer_limit: u64,
}

impl Meter {
    pub(crate) fn new(listing_limit: u64, transfer_limit: u64) -> Arc<Meter> {
        Arc::new(Meter {
            read: AtomicU64::new(0),
            budget: AtomicU64::new(listing_limit),
            listing: AtomicBool::new(true),
            listing_limit,
            transfer_limit,
        })
    }

    /// Bytes read so far.
    pub(crate) fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The refs are listed: from now on the transfer limit applies.
    pub(crate) fn listing_done(&self) {
        if self.listing.swap(false, Ordering::SeqCst) {
            self.budget.store(
                self.read().saturating_add(self.transfer_limit),
                Ordering::SeqCst,
            );
        }
    }

    fn count(&self, n: usize) -> io::Result<()> {
        self.charge(n);
        self.check()
    }

    /// Counts `n` bytes received.
    pub(crate) fn charge(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An error once more was received than the budget allows.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.read() <= self.budget.load(Ordering::SeqCst) {
            return Ok(());
        }
        let listing = self.listing.load(Ordering::SeqCst);
        let (limit, what) = if listing {
            (self.listing_limit, "while listing refs")
        } else {
            (self.transfer_limit, "in one transfer")
        };
        Err(io::Error::other(OverLimit(format!(
            "the server sent more than {limit} bytes {what}"
        ))))
    }
}

/// A reader whose bytes count against a [`Meter`].
pub(crate) struct Metered<R> {
    inner: R,
    meter: Arc<Meter>,
}

impl<R> Metered<R> {
    pub(crate) fn new(inner: R, meter: Arc<Meter>) -> Self {
        Metered { inner, meter }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.count(n)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_small_while_listing_and_grows_after() {
        let meter = Meter::new(10, 100);
        let mut reader = Metered::new(&[7u8; 1000][..], meter.clone());
        let mut buf = [0u8; 8];
        reader
            .read_exact(&mut buf)
            .expect("within the listing budget");
        let err = reader
            .read_exact(&mut buf)
            .expect_err("over the listing budget");
        assert!(err.to_string().contains("while listing refs"), "{err}");
        meter.listing_done();
        let mut big = [0u8; 90];
        reader
            .read_exact(&mut big)
            .expect("within the transfer budget");
        let err = reader
            .read_exact(&mut big)
            .expect_err("over the transfer budget");
        assert!(err.to_string().contains("in one transfer"), "{err}");
    }
}
