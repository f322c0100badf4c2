//! `git daemon` serving a directory of bare repositories over git:// on 127.0.0.1.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::gitcli::{free_port, git_command, spawn_error};

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `git daemon`; killed (with the upload-pack processes it forked) on drop.
#[derive(Debug)]
pub struct GitDaemon {
    child: Child,
    port: u16,
    base_path: PathBuf,
    stderr: Arc<Mutex<String>>,
    stderr_pump: Option<JoinHandle<()>>,
}

impl GitDaemon {
    /// Serves every repository under `base_path` (export-ok file or not).
    pub fn start(base_path: &Path) -> GitDaemon {
        let base_path = base_path
            .canonicalize()
            .unwrap_or_else(|e| panic!("git daemon base path {}: {e}", base_path.display()));
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&base_path) {
                Ok(daemon) => return daemon,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "git daemon did not start in {START_ATTEMPTS} attempts (is git's daemon program \
             installed? `git daemon` is part of git, e.g. `apt-get install git`):\n{}",
            failures.join("\n---\n")
        );
    }

    /// Ok once the daemon accepts connections; Err (with its stderr) if it exited, which is
    /// what happens when another process grabbed the port between `free_port` and `bind`.
    fn try_start(base_path: &Path) -> Result<GitDaemon, String> {
        let port = free_port();
        let mut cmd = git_command();
        cmd.arg("daemon")
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", base_path.display()))
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--informative-errors")
            .arg(base_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so drop can also kill the per-connection children.
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| spawn_error("git daemon", e));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_pump = child.stderr.take().map(|mut pipe| {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .expect("daemon stderr lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        let mut daemon = GitDaemon {
            child,
            port,
            base_path: base_path.to_owned(),
            stderr,
            stderr_pump,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().expect("polling git daemon") {
                // Let the pump drain the pipe so the message is complete.
                if let Some(pump) = daemon.stderr_pump.take() {
                    pump.join().ok();
                }
                return Err(format!(
                    "git daemon on port {port} exited with {status}: {}",
                    daemon.stderr_output()
                ));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "git daemon on port {port} did not accept connections within \
                     {START_TIMEOUT:?}: {}",
                    daemon.stderr_output()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `git://127.0.0.1:PORT/<repo_rel>`, e.g. `url("alpha.git")`.
    pub fn url(&self, repo_rel: &str) -> String {
        format!("git://127.0.0.1:{}/{}", self.port, repo_rel)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// What the daemon logged so far (errors only; it runs without --verbose).
    pub fn stderr_output(&self) -> String {
        self.stderr.lock().expect("daemon stderr lock").clone()
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // The group id is the daemon's pid (process_group(0)); the group holds only what
        // this daemon started.
        let group_killed = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !group_killed {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Forked children that survived would keep the pipe open and the join would hang.
        if let Some(pump) = self.stderr_pump.take().filter(|_| group_killed) {
            let _ = pump.join();
        }
    }
}
