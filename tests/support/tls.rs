//! HTTPS for the smart-HTTP server: a test certificate authority made for the run (rcgen), and
//! a TLS front (rustls) on 127.0.0.1 that passes every connection's bytes to an [`HttpServer`]
//! (`crate::HttpServer`). The git CLI trusts the CA through `GIT_SSL_CAINFO`, gitfleet through
//! its `--ca-file`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The test CA and a certificate it signed for `localhost` and `127.0.0.1`, made once per test
/// process, in PEM.
pub struct TestCa {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    pub fn get() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(|| {
            let ca_key = KeyPair::generate().expect("a CA key");
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "gitfleet test CA");
            let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
            let issuer = Issuer::new(ca_params, ca_key);
            let key = KeyPair::generate().expect("a server key");
            let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("server params");
            let cert = params
                .signed_by(&key, &issuer)
                .expect("the server certificate");
            let dir = tempfile::tempdir().expect("a directory for the CA");
            let ca_file = dir.path().join("test-ca.pem");
            std::fs::write(&ca_file, ca_cert.pem()).expect("writing the CA");
            TestCa {
                _dir: dir,
                ca_file,
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        })
    }

    /// The CA certificate, for clients to trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

/// A TLS front on a free port of 127.0.0.1 for a plain server at `backend_port`; stops with
/// its owner.
pub struct TlsProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl TlsProxy {
    pub fn start(backend_port: u16) -> TlsProxy {
        let ca = TestCa::get();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("the server certificate");
        let key = PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).expect("the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a TLS configuration");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the TLS front");
        let port = listener.local_addr().expect("an address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let config = config.clone();
                        let stopping = stopping.clone();
                        std::thread::spawn(move || {
                            let _ = relay(client, backend_port, config, &stopping);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        TlsProxy { port, stop }
    }

    /// `https://localhost:PORT/<repo_rel>`
    pub fn url(&self, repo_rel: &str) -> String {
        format!("https://localhost:{}/{}", self.port, repo_rel)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Decrypts what `client` sends into the backend and encrypts what comes back, until either
/// side closes. One lock around the TLS stream; short socket timeouts let both directions take
/// turns.
fn relay(
    client: TcpStream,
    backend_port: u16,
    config: Arc<rustls::ServerConfig>,
    stop: &AtomicBool,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_millis(5)))?;
    let backend = TcpStream::connect(("127.0.0.1", backend_port))?;
    let connection = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let tls = Arc::new(Mutex::new(rustls::StreamOwned::new(connection, client)));
    let done = Arc::new(AtomicBool::new(false));
    let mut from_backend = backend.try_clone()?;
    let back = {
        let tls = tls.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from_backend.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
                        if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
            let tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = tls.sock.shutdown(Shutdown::Both);
        })
    };
    let mut to_backend = backend;
    let mut buf = [0u8; 16 * 1024];
    while !done.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        let read = {
            let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
            tls.read(&mut buf)
        };
        match read {
            Ok(0) => break,
            Ok(n) => to_backend.write_all(&buf[..n])?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                std::thread::yield_now();
            }
            Err(_) => break,
        }
    }
    let _ = to_backend.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}
