//! A real OpenSSH server (Debian's `openssh-server`, which `./scripts/test.sh` installs) on a
//! free port of 127.0.0.1, with a host key, a client key and a known_hosts file made for it.
//! Logins are by key, as the user running the tests; the repositories are served by the `git`
//! on that machine, as for any ssh remote.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gitcli::free_port;

const SSHD: &str = "/usr/sbin/sshd";

pub struct SshServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (openssh-client)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

impl SshServer {
    pub fn start() -> SshServer {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (./scripts/test.sh does)"
        );
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().expect("a directory for sshd");
        let path = |name: &str| dir.path().join(name);
        keygen(&path("host_key"));
        keygen(&path("client_key"));
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).expect("authorized_keys");
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .expect("a user name")
        .trim()
        .to_string();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nLogLevel ERROR\n",
            path("host_key").display(),
            path("authorized_keys").display(),
            path("sshd.pid").display(),
        );
        std::fs::write(path("sshd_config"), config).expect("sshd_config");
        let host_key = std::fs::read_to_string(path("host_key.pub")).expect("the host key");
        std::fs::write(
            path("known_hosts"),
            format!("[127.0.0.1]:{port} {host_key}"),
        )
        .expect("known_hosts");
        let other = path("other_key");
        keygen(&other);
        let other_key = std::fs::read_to_string(path("other_key.pub")).expect("a key");
        std::fs::write(
            path("wrong_known_hosts"),
            format!("[127.0.0.1]:{port} {other_key}"),
        )
        .expect("known_hosts");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sshd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SshServer {
            child,
            port,
            dir,
            user,
        }
    }

    /// `ssh://USER@127.0.0.1:PORT/<absolute path>`
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key the server accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A key the server does not accept.
    pub fn other_key(&self) -> PathBuf {
        self.dir.path().join("other_key")
    }

    /// The server's host key, as a known_hosts file.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Another key in the server's place: what a man in the middle would present.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        self.dir.path().join("wrong_known_hosts")
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
