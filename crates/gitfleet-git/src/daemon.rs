//! git:// connections that gitfleet opens itself instead of leaving them to gix.
//!
//! gix 0.90 writes each pkt-line of a request as several small unbuffered writes and leaves
//! Nagle's algorithm on. Against `git daemon` every request then waits for the peer's delayed
//! ACK: about 40 ms per round trip, three per clone and one per sync, which dominated the time of
//! a small clone (benches/README.md). gix also sets no read timeout, so a silent server held a
//! thread forever. The connection built here has `TCP_NODELAY`, buffered reads and writes, and a
//! read and write timeout; the rest (handshake, negotiation, pack) is gix's own `git::Connection`.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use gix_transport::Protocol;

use crate::meter::{Meter, Metered};
use gix_transport::client::git::{self, blocking_io::Connection};

/// git's own port for `git://`.
const DEFAULT_PORT: u16 = 9418;

/// Reads and writes are buffered: a request goes out as one segment (gix flushes the writer at
/// the end of every request, in `RequestWriter::into_read` and the handshake), and pkt-lines are
/// read from memory rather than with two syscalls each.
const BUFFER: usize = 64 * 1024;

pub(crate) type DaemonConnection = Connection<BufReader<Metered<TcpStream>>, BufWriter<TcpStream>>;

/// A git:// transport to `url`'s host, asking for the repository at `url`'s path.
///
/// `connect_timeout` bounds each connection attempt; `io_timeout` bounds every read and write
/// afterwards, so that a server that stops answering surfaces as a `TimedOut` error rather than
/// a thread blocked forever. Every resolved address is tried in turn.
pub(crate) fn connect(
    url: &gix::Url,
    addresses: Option<&[SocketAddr]>,
    connect_timeout: Duration,
    io_timeout: Duration,
    meter: Arc<Meter>,
) -> io::Result<DaemonConnection> {
    let host = url
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "git:// URL without a host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port.unwrap_or(DEFAULT_PORT);
    // The addresses the policy checked, when it did: never resolved a second time.
    let addrs: Vec<SocketAddr> = match addresses {
        Some(checked) => checked.to_vec(),
        None => (bare, port)
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("could not resolve {bare}: {e}")))?
            .collect(),
    };
    let mut last_err = io::Error::new(
        io::ErrorKind::NotFound,
        format!("could not resolve {bare}: no addresses"),
    );
    for addr in addrs {
        match connect_addr(addr, connect_timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(io_timeout))?;
                stream.set_write_timeout(Some(io_timeout))?;
                let write = stream.try_clone()?;
                return Ok(Connection::new(
                    BufReader::with_capacity(BUFFER, Metered::new(stream, meter.clone())),
                    BufWriter::with_capacity(BUFFER, write),
                    Protocol::V2,
                    url.path.clone(),
                    Some((host.to_owned(), url.port)),
                    git::ConnectMode::Daemon,
                    false,
                ));
            }
            Err(e) => {
                last_err = io::Error::new(
                    e.kind(),
                    format!("could not connect to git server at {addr}: {e}"),
                );
            }
        }
    }
    Err(last_err)
}

/// The first connect attempt to a host of unknown round-trip time gives up after this long.
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// Bounds of the first attempt's wait for a host whose connect time is known.
const MIN_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(2);

/// The last connect time to each address: a few of them is how long a first SYN is worth waiting
/// for before sending another.
fn connect_times() -> &'static Mutex<HashMap<IpAddr, Duration>> {
    static TIMES: OnceLock<Mutex<HashMap<IpAddr, Duration>>> = OnceLock::new();
    TIMES.get_or_init(Mutex::default)
}

/// Connects to `addr` within `total`, in attempts of growing length.
///
/// `git daemon` listens with a backlog of 5: a burst of connections (a fleet's workers starting
/// together) overflows it, the server drops the SYNs it has no room for, and the kernel sends the
/// next SYN only after its initial retransmission timeout of one second. Giving up on an attempt
/// after a few known round trips (250 ms for a host not yet seen) and trying again turns that
/// second into a few milliseconds, while the doubling waits leave a slow or busy host alone.
fn connect_addr(addr: SocketAddr, total: Duration) -> io::Result<TcpStream> {
    let started = Instant::now();
    let known = connect_times()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&addr.ip())
        .copied();
    let mut wait = known.map_or(FIRST_WAIT, |t| (t * 4).clamp(MIN_WAIT, MAX_WAIT));
    loop {
        let remaining = total.saturating_sub(started.elapsed());
        let attempt = Instant::now();
        match TcpStream::connect_timeout(&addr, wait.min(remaining).max(Duration::from_millis(1))) {
            Ok(stream) => {
                connect_times()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(addr.ip(), attempt.elapsed());
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && started.elapsed() < total => {
                wait = (wait * 2).min(total);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_fails_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("its address");
        drop(listener);
        // Refused is an answer, not a lost SYN: not retried (only timeouts are).
        let err = connect_addr(addr, Duration::from_secs(30)).expect_err("nothing listens");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn a_listening_host_is_connected_and_remembered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("its address");
        connect_addr(addr, Duration::from_secs(30)).expect("connecting");
        assert!(
            connect_times()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&addr.ip())
        );
    }
}
