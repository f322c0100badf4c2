//! How ssh remotes are reached: the `ssh` program on PATH, never a command from a repository's
//! config, with gitfleet's own options: no user or system ssh configuration (`-F /dev/null`),
//! no prompts (`BatchMode`), the identity the operator gave, and host keys checked strictly
//! against the operator's known_hosts file. Set at start-up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use gix_transport::client::blocking_io::ssh;

/// The operator's ssh settings.
#[derive(Debug, Clone, Default)]
pub struct SshSettings {
    /// The private key to authenticate with (`-i`, the only identity offered).
    pub identity: Option<PathBuf>,
    /// Host keys to accept: a known_hosts file; any other host key fails the transfer.
    pub known_hosts: Option<PathBuf>,
}

static SETTINGS: RwLock<Option<SshSettings>> = RwLock::new(None);

/// Uses `settings` for every ssh transfer this process starts from now on.
pub fn configure_ssh(settings: SshSettings) -> std::io::Result<()> {
    for path in [&settings.identity, &settings.known_hosts]
        .into_iter()
        .flatten()
    {
        std::fs::metadata(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if path.to_string_lossy().contains('\'') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: a path with ' cannot be passed to ssh", path.display()),
            ));
        }
    }
    *SETTINGS.write().unwrap_or_else(PoisonError::into_inner) = Some(settings);
    Ok(())
}

/// The options gix starts `ssh` with.
pub(crate) fn options() -> ssh::connect::Options {
    let settings = SETTINGS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default();
    let quoted = |path: &Path| format!("'{}'", path.display());
    let mut command = String::from("ssh -F /dev/null -o BatchMode=yes");
    if let Some(identity) = &settings.identity {
        command.push_str(&format!(" -o IdentitiesOnly=yes -i {}", quoted(identity)));
    }
    if let Some(known_hosts) = &settings.known_hosts {
        command.push_str(&format!(
            " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null",
            quoted(known_hosts)
        ));
    }
    ssh::connect::Options {
        // Operator paths only (quoted, no `'` in them): a shell may run it.
        command: Some(OsString::from(command)),
        disallow_shell: false,
        kind: Some(ssh::ProgramKind::Ssh),
    }
}
