//! TLS for https remotes: one crypto provider (ring) for the process, and certificate
//! authorities to trust besides the system's (a company CA, a test CA), given once at start-up.

use std::path::Path;
use std::sync::OnceLock;

static EXTRA_ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Installs the process-wide TLS crypto provider (ring). Call once at start-up, before any
/// HTTPS or TLS connection (the engine calls it too); later calls do nothing.
pub fn init_tls() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Trusts the certificate authorities in the PEM file `path` for https remotes, besides the
/// system's. Once per process: a second call is an error.
pub fn trust_ca_file(path: &Path) -> std::io::Result<()> {
    let pem = std::fs::read(path)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds no usable PEM certificate: {e}", path.display()),
        )
    })?;
    if certs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    EXTRA_ROOTS.set(certs).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "extra certificate authorities were already given",
        )
    })
}

/// The extra certificate authorities, if any were given.
pub(crate) fn extra_roots() -> Option<&'static [reqwest::Certificate]> {
    EXTRA_ROOTS.get().map(Vec::as_slice)
}
