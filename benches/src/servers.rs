//! The git servers, in a child process of their own (`gitfleet-bench serve`), so that the CPU
//! time of `git upload-pack` and `git http-backend` never lands in the benchmark's own
//! accounting of its children. And a small TCP forwarder, for the network-namespace runs (the
//! test servers listen on 127.0.0.1 only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gitfleet_tests::{GitDaemon, HttpOptions, HttpServer};

pub const AUTH_USER: &str = "git";
pub const AUTH_TOKEN: &str = "right-token";
pub const WRONG_TOKEN: &str = "wrong-token";

/// `gitfleet-bench serve DIR`: serves DIR over git:// and smart HTTP (twice: open, and behind
/// token auth), prints the ports as one JSON line, and runs until stdin closes.
pub fn serve_main(dir: &Path) -> anyhow::Result<()> {
    let daemon = GitDaemon::start(dir);
    let http = HttpServer::start(dir, HttpOptions::default());
    let http_auth = HttpServer::start(
        dir,
        HttpOptions {
            auth: Some((AUTH_USER.into(), AUTH_TOKEN.into())),
            ..HttpOptions::default()
        },
    );
    let ports = serde_json::json!({
        "daemon": daemon.port(),
        "http": http.port(),
        "http_auth": http_auth.port(),
    });
    println!("{ports}");
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(http_auth);
    drop(http);
    drop(daemon);
    Ok(())
}

/// The serving child process; stopped on drop.
#[derive(Debug)]
pub struct Servers {
    child: Child,
    stdin: Option<ChildStdin>,
    pub daemon_port: u16,
    pub http_port: u16,
    pub http_auth_port: u16,
}

impl Servers {
    /// `log`: where the servers' complaints go (e.g. http-backend on a missing repository).
    pub fn start(dir: &Path, log: std::fs::File) -> anyhow::Result<Servers> {
        let exe = std::env::current_exe().context("locating gitfleet-bench")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a Ctrl-C reaches only the benchmark, which then closes
            // our stdin.
            .process_group(0)
            .spawn()
            .context("starting the git servers")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server ports")?;
        let ports: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the git servers did not start ({e}): {line:?}");
            }
        };
        let port = |k: &str| {
            ports[k]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0)
        };
        Ok(Servers {
            daemon_port: port("daemon"),
            http_port: port("http"),
            http_auth_port: port("http_auth"),
            child,
            stdin,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards connections from `listen` to `127.0.0.1:to_port` until dropped.
#[derive(Debug)]
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(listen_ip: &str, port: u16, to_port: u16) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind((listen_ip, port))
            .with_context(|| format!("binding {listen_ip}:{port}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(inbound) = conn else { continue };
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", to_port)) else {
                        continue;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    pipe(inbound, outbound);
                }
            })
        };
        Ok(Forwarder {
            stop,
            addr,
            acceptor: Some(acceptor),
        })
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy_then_close(a, b2));
    std::thread::spawn(move || copy_then_close(b, a2));
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
