//! git:// connections that gitfleet opens itself instead of leaving them to gix.
//!
//! gix 0.90 writes each pkt-line of a request as several small unbuffered writes and leaves
//! Nagle's algorithm on. Against `git daemon` every request then waits for the peer's delayed
//! ACK: about 40 ms per round trip, three per clone and one per sync, which dominated the time of
//! a small clone (benches/README.md). gix also sets no read timeout, so a silent server held a
//! thread forever. The connection built here has `TCP_NODELAY` and a read and write timeout; the
//! rest (handshake, negotiation, pack) is gix's own `git::Connection`.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use gix_transport::Protocol;
use gix_transport::client::git::{self, blocking_io::Connection};

/// git's own port for `git://`.
const DEFAULT_PORT: u16 = 9418;

/// A git:// transport to `url`'s host, asking for the repository at `url`'s path.
///
/// `connect_timeout` bounds each connection attempt; `io_timeout` bounds every read and write
/// afterwards, so that a server that stops answering surfaces as a `TimedOut` error rather than
/// a thread blocked forever. Every resolved address is tried in turn.
pub(crate) fn connect(
    url: &gix::Url,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> io::Result<Connection<TcpStream, TcpStream>> {
    let host = url
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "git:// URL without a host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port.unwrap_or(DEFAULT_PORT);
    let addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("could not resolve {bare}: {e}")))?
        .collect();
    let mut last_err = io::Error::new(
        io::ErrorKind::NotFound,
        format!("could not resolve {bare}: no addresses"),
    );
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, connect_timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(io_timeout))?;
                stream.set_write_timeout(Some(io_timeout))?;
                let write = stream.try_clone()?;
                return Ok(Connection::new(
                    stream,
                    write,
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
