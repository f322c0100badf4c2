//! ssh connections that gitfleet starts itself: the `ssh` program on PATH run directly (no
//! shell, never a command from a repository's config), with gitfleet's own options and nothing
//! of the user's or system's ssh configuration (`-F /dev/null`), no prompts (`BatchMode`), the
//! identity the operator gave for the host, and host keys checked strictly against the
//! operator's known_hosts file.
//!
//! Doing it here rather than through gix's ssh transport gives what gix's cannot:
//! - what ssh and the server write on standard error never reaches the terminal raw (gix copies
//!   it to the process's stderr): it is made printable, bounded, logged, and its last lines name
//!   the cause when the connection fails;
//! - the connection goes to the address the policy checked (`HostKeyAlias` keeps the host key
//!   check on the name);
//! - the bytes count against the attempt's meter, and `ssh` is killed when the attempt is
//!   interrupted, so a silent server holds no thread.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufReader, BufWriter, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix_transport::Protocol;
use gix_transport::client::git::{self, blocking_io::Connection};

use crate::meter::Meter;

/// The operator's ssh settings.
#[derive(Debug, Clone, Default)]
pub struct SshSettings {
    /// The private key to authenticate with (`-i`, the only identity offered), for hosts that
    /// have none of their own in `host_identities`.
    pub identity: Option<PathBuf>,
    /// A private key per host name: a key for one host is never offered to another.
    pub host_identities: BTreeMap<String, PathBuf>,
    /// Host keys to accept: a known_hosts file; any other host key fails the transfer.
    pub known_hosts: Option<PathBuf>,
}

impl SshSettings {
    /// The key to offer to `host`.
    fn identity_for(&self, host: &str) -> Option<&PathBuf> {
        self.host_identities
            .get(&host.to_ascii_lowercase())
            .or(self.identity.as_ref())
    }
}

static SETTINGS: RwLock<Option<SshSettings>> = RwLock::new(None);

/// Uses `settings` for every ssh transfer this process starts from now on.
pub fn configure_ssh(mut settings: SshSettings) -> io::Result<()> {
    settings.host_identities = settings
        .host_identities
        .into_iter()
        .map(|(host, key)| (host.to_ascii_lowercase(), key))
        .collect();
    let paths = settings
        .identity
        .iter()
        .chain(settings.host_identities.values())
        .chain(settings.known_hosts.iter());
    for path in paths {
        std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // ssh reads `-o` values as configuration lines: a quoted path holds spaces, not quotes.
        if path.to_string_lossy().contains(['"', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: a path with \" cannot be passed to ssh", path.display()),
            ));
        }
    }
    *SETTINGS.write().unwrap_or_else(PoisonError::into_inner) = Some(settings);
    Ok(())
}

fn settings() -> SshSettings {
    SETTINGS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// ssh's own port.
const DEFAULT_PORT: u16 = 22;
/// The last lines ssh wrote on standard error that are kept to explain a failure.
const KEPT_LINES: usize = 4;
/// How long a failed read waits for ssh to say why before reporting without it.
const EXPLANATION_WAIT: Duration = Duration::from_secs(2);
/// How often the watchdog looks at the attempt's interrupt flag.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Reads are buffered: pkt-lines are read from memory.
const BUFFER: usize = 64 * 1024;

pub(crate) type SshConnection = Connection<BufReader<SshOutput>, BufWriter<ChildStdin>>;

/// Starts `ssh` to `url`'s host running `git-upload-pack` on its path, and wraps it as a git
/// connection. `addresses`: the ones the policy checked (the first is connected to).
pub(crate) fn connect(
    url: &gix::Url,
    addresses: Option<&[SocketAddr]>,
    connect_timeout: Duration,
    meter: Arc<Meter>,
    interrupt: Arc<AtomicBool>,
) -> io::Result<SshConnection> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let host = url
        .host()
        .ok_or_else(|| invalid("an ssh URL without a host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let path = gix::url::expand_path::for_shell(url.path.clone());
    // Whatever starts with `-` could be read as an option by ssh or by the remote's program.
    if host.starts_with('-') || url.user().is_some_and(|u| u.starts_with('-')) {
        return Err(invalid(format!(
            "an ssh host or user may not start with '-': {host}"
        )));
    }
    if path.trim_start().starts_with(b"-") {
        return Err(invalid("a repository path may not start with '-'".into()));
    }
    let settings = settings();
    let mut command = Command::new("ssh");
    command.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]);
    command.args(["-o", "SendEnv=GIT_PROTOCOL", "-o", "ServerAliveInterval=15"]);
    command.arg("-o").arg(format!(
        "ConnectTimeout={}",
        connect_timeout.as_secs().max(1)
    ));
    if let Some(identity) = settings.identity_for(host) {
        command
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(identity);
    }
    if let Some(known_hosts) = &settings.known_hosts {
        command.args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]);
        command
            .arg("-o")
            .arg(format!("UserKnownHostsFile=\"{}\"", known_hosts.display()));
    }
    let port = url.port.unwrap_or(DEFAULT_PORT);
    command.arg("-p").arg(port.to_string());
    let destination = match addresses.and_then(|a| a.first()) {
        // The checked address, with the host key looked up under the name, as ssh would have.
        Some(address) => {
            let alias = if port == DEFAULT_PORT {
                host.to_string()
            } else {
                format!("[{host}]:{port}")
            };
            command.args(["-o", "CheckHostIP=no", "-o"]);
            command.arg(format!("HostKeyAlias={alias}"));
            address.ip().to_string()
        }
        None => host.to_string(),
    };
    if let Some(user) = url.user() {
        command.arg("-l").arg(user);
    }
    let remote_command = format!(
        "git-upload-pack {}",
        gix_quote::single(path.as_bstr()).to_str_lossy()
    );
    command.arg("--").arg(destination).arg(remote_command);
    command
        .env("GIT_PROTOCOL", "version=2")
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start ssh: {e}")))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        return Err(io::Error::other("ssh started without its pipes"));
    };
    let child = Arc::new(Mutex::new(child));
    let explained = Arc::new(Mutex::new(VecDeque::new()));
    let (stderr_done, stderr_ended) = mpsc::channel();
    {
        let explained = explained.clone();
        std::thread::Builder::new()
            .name("gitfleet ssh stderr".into())
            .spawn(move || {
                read_stderr(stderr, &explained);
                let _ = stderr_done.send(());
            })?;
    }
    let closed = Arc::new(AtomicBool::new(false));
    {
        let child = child.clone();
        let closed = closed.clone();
        std::thread::Builder::new()
            .name("gitfleet ssh watchdog".into())
            .spawn(move || watchdog(&child, &interrupt, &closed))?;
    }
    let output = SshOutput {
        stdout,
        meter,
        explained,
        stderr_ended,
        child,
        closed,
    };
    Ok(Connection::new(
        BufReader::with_capacity(BUFFER, output),
        BufWriter::with_capacity(BUFFER, stdin),
        Protocol::V2,
        path,
        None::<(String, Option<u16>)>,
        git::ConnectMode::Process,
        false,
    ))
}

/// Kills `ssh` once the attempt is interrupted, so that a read blocked on a silent server
/// returns; ends when the connection is closed or ssh has exited.
fn watchdog(child: &Mutex<Child>, interrupt: &AtomicBool, closed: &AtomicBool) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
        if closed.load(Ordering::SeqCst) || !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        if interrupt.load(Ordering::SeqCst) {
            let _ = child.kill();
            return;
        }
    }
}

/// Reads what ssh (and through it, the server) writes on standard error: each line printable
/// and bounded, logged, and the last few kept to explain a failure. Lines without end are cut.
fn read_stderr(stderr: std::process::ChildStderr, explained: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        // At most a message's length of one line is held; the rest of it is skipped.
        let limit = (crate::MAX_MESSAGE_CHARS * 4) as u64;
        match io::BufRead::read_until(&mut (&mut reader).take(limit), b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            let _ = io::BufRead::skip_until(&mut reader, b'\n');
        }
        let text = crate::printable(&String::from_utf8_lossy(&line));
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        tracing::debug!(ssh = %text, "ssh stderr");
        let mut kept = explained.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(text.to_string());
    }
}

/// What ssh's standard error says about a failure, as an error of the kind it describes.
fn explanation(lines: &VecDeque<String>) -> Option<io::Error> {
    if lines.is_empty() {
        return None;
    }
    let text = lines
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("; ");
    let lower = text.to_ascii_lowercase();
    let (kind, text) = if lower.contains("permission denied") {
        (
            io::ErrorKind::PermissionDenied,
            format!("ssh authentication failed: {text}"),
        )
    } else if lower.contains("host key verification failed")
        || lower.contains("remote host identification has changed")
    {
        (
            io::ErrorKind::ConnectionAborted,
            format!("ssh refused the server's host key: {text}"),
        )
    } else {
        (io::ErrorKind::Other, format!("ssh: {text}"))
    };
    Some(io::Error::new(kind, text))
}

/// ssh's standard output, metered; a failed or ended read reports what ssh said on standard
/// error. Dropping it stops ssh.
pub(crate) struct SshOutput {
    stdout: ChildStdout,
    meter: Arc<Meter>,
    explained: Arc<Mutex<VecDeque<String>>>,
    stderr_ended: mpsc::Receiver<()>,
    child: Arc<Mutex<Child>>,
    closed: Arc<AtomicBool>,
}

impl SshOutput {
    /// Turns the end of the stream, or an error, into what ssh said about it (if anything).
    fn explain(&self, result: io::Result<usize>) -> io::Result<usize> {
        // ssh writes why before it exits and closes stderr.
        let _ = self.stderr_ended.recv_timeout(EXPLANATION_WAIT);
        let lines = self
            .explained
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match explanation(&lines) {
            Some(err) => Err(err),
            None => result,
        }
    }
}

impl Read for SshOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stdout.read(buf) {
            Ok(0) if !buf.is_empty() => self.explain(Ok(0)),
            Ok(n) => {
                self.meter.charge(n);
                self.meter.check()?;
                Ok(n)
            }
            Err(e) => self.explain(Err(e)),
        }
    }
}

impl Drop for SshOutput {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_explained_by_kind() {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<VecDeque<_>>();
        let denied = explanation(&lines(&["git@h: Permission denied (publickey)."]))
            .expect("an explanation");
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            denied.to_string().contains("authentication failed"),
            "{denied}"
        );
        let key = explanation(&lines(&["Host key verification failed."])).expect("one");
        assert_eq!(key.kind(), io::ErrorKind::ConnectionAborted);
        assert!(explanation(&VecDeque::new()).is_none());
    }

    #[test]
    fn a_host_of_its_own_gets_its_own_key() {
        let settings = SshSettings {
            identity: Some("/keys/default".into()),
            host_identities: BTreeMap::from([("git.example".into(), "/keys/example".into())]),
            known_hosts: None,
        };
        assert_eq!(
            settings.identity_for("git.example"),
            Some(&PathBuf::from("/keys/example"))
        );
        assert_eq!(
            settings.identity_for("other.example"),
            Some(&PathBuf::from("/keys/default"))
        );
    }
}
