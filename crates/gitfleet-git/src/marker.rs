//! The mark gitfleet leaves in every repository it creates, so that it only ever syncs into its
//! own.
//!
//! A directory at a repository's path proves nothing: a checkout's tree can hold a directory that
//! looks like a git directory, an operator can leave one there, and a repository's config names
//! commands (`core.sshCommand`) and servers. So a repository is gitfleet's only if its git
//! directory holds `gitfleet-marker`: the kind of repository and an HMAC-SHA256, under a key only
//! this root has (`.gitfleet/marker.key`), of its path below the root and that kind. Nobody
//! without the key can write one, and a marker copied elsewhere does not match its new path.

use std::io::{self, Write};
use std::path::Path;

use gitfleet_proto::Operation;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The marker's file name, in the git directory.
pub(crate) const MARKER_FILE: &str = "gitfleet-marker";
const KEY_FILE: &str = "marker.key";
const KEY_LEN: usize = 32;
const VERSION: &str = "gitfleet-marker v1";

/// The root's secret key. Never printed.
#[derive(Clone)]
pub(crate) struct MarkerKey([u8; KEY_LEN]);

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerKey(***)")
    }
}

impl MarkerKey {
    /// Reads the key in `state_dir`, creating it (readable by the owner only) if there is none.
    /// Two processes creating it at once agree on one: the key is written to a temporary file and
    /// linked into place, which fails if another got there first.
    pub(crate) fn load_or_create(state_dir: &Path) -> io::Result<MarkerKey> {
        let path = state_dir.join(KEY_FILE);
        if !path.exists() {
            let key: [u8; KEY_LEN] = rand::random();
            let mut tmp = tempfile::Builder::new()
                .prefix(".marker-key")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .tempfile_in(state_dir)?;
            tmp.write_all(&key)?;
            tmp.as_file().sync_all()?;
            match std::fs::hard_link(tmp.path(), &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = std::fs::read(&path)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a gitfleet marker key", path.display()),
            )
        })?;
        Ok(MarkerKey(key))
    }

    fn mac(&self, relative: &Path, kind: Operation) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(VERSION.as_bytes());
        mac.update(b"\0");
        mac.update(relative.as_os_str().as_encoded_bytes());
        mac.update(b"\0");
        mac.update(kind.to_string().as_bytes());
        mac
    }

    /// The marker of a repository of `kind` at `relative` (below the root).
    pub(crate) fn seal(&self, relative: &Path, kind: Operation) -> String {
        let tag = self.mac(relative, kind).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{VERSION} {kind} {hex}\n")
    }

    /// The kind of repository a marker says, if it is this root's marker for `relative`.
    pub(crate) fn verify(&self, relative: &Path, marker: &[u8]) -> Option<Operation> {
        let text = std::str::from_utf8(marker).ok()?;
        let rest = text.trim_end().strip_prefix(VERSION)?.strip_prefix(' ')?;
        let (kind, hex) = rest.split_once(' ')?;
        let kind = match kind {
            "mirror" => Operation::Mirror,
            "bare" => Operation::Bare,
            "checkout" => Operation::Checkout,
            "init" => Operation::Init,
            _ => return None,
        };
        let tag = decode_hex(hex)?;
        self.mac(relative, kind)
            .verify_slice(&tag)
            .is_ok()
            .then_some(kind)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_holds_only_for_its_root_path_and_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MarkerKey::load_or_create(dir.path()).expect("key");
        let again = MarkerKey::load_or_create(dir.path()).expect("same key");
        let path = Path::new("h.example/o/r.git");
        let marker = key.seal(path, Operation::Mirror);
        assert_eq!(
            again.verify(path, marker.as_bytes()),
            Some(Operation::Mirror)
        );
        // Copied to another path, relabelled, or from another root: not ours.
        assert_eq!(
            key.verify(Path::new("h.example/o/x.git"), marker.as_bytes()),
            None
        );
        let relabelled = marker.replace(" mirror ", " checkout ");
        assert_eq!(key.verify(path, relabelled.as_bytes()), None);
        let other = tempfile::tempdir().expect("tempdir");
        let foreign = MarkerKey::load_or_create(other.path()).expect("key");
        assert_eq!(foreign.verify(path, marker.as_bytes()), None);
        assert_eq!(key.verify(path, b"gitfleet-marker v1 mirror zz"), None);
        assert_eq!(format!("{key:?}"), "MarkerKey(***)");
    }
}
