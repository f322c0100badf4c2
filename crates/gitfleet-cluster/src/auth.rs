//! Who a node or client is to the NATS server: user and password, a token, an nkey seed, or a
//! `.creds` file, and TLS. The server's permissions (deploy/nats/authorization.conf) decide what
//! each may do: nodes everything, submitters the request API, admins also cancel.
//!
//! Secrets come from files or the environment, never from flags (process listings show those),
//! and are never printed: [`NatsAuth`]'s `Debug` shows which kinds are set, not their values.

use std::path::PathBuf;

use async_nats::ConnectOptions;
use gitfleet_git::Secret;

use crate::infra::ClusterError;

/// How to authenticate to the NATS server. Empty: anonymous (or credentials in the URL).
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// A `.creds` file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// CA certificates to trust for the server's certificate (PEM); setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .finish()
    }
}

impl NatsAuth {
    /// `options` with these credentials and TLS settings.
    pub async fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, ClusterError> {
        let config = |what: &str, e: &dyn std::fmt::Display| {
            ClusterError::Config(format!("NATS {what}: {e}"))
        };
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| config(&format!("credentials file {}", path.display()), &e))?;
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| config(&format!("nkey file {}", path.display()), &e))?;
            options = options.nkey(seed.trim().to_string());
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.expose().to_string());
            }
            (Some(_), None) => {
                return Err(ClusterError::Config(
                    "a NATS user needs GITFLEET_NATS_PASSWORD".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ClusterError::Config(
                    "GITFLEET_NATS_PASSWORD needs a NATS user (--nats-user)".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(ClusterError::Config(
                    "a NATS client certificate needs both --nats-cert and --nats-key".into(),
                ));
            }
        }
        Ok(options)
    }
}
