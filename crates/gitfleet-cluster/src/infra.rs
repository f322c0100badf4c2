//! Connecting to NATS and making sure the stream and buckets exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::auth::NatsAuth;
use crate::subjects::Subjects;

/// The cause of a [`ClusterError`]: an async-nats error (or a message), kept whole.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The message has the credentials of the URL removed; the cause is not kept, since its
    /// text may hold them.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("JetStream is not available or refused the setup ({what})")]
    Setup {
        what: String,
        #[source]
        source: Cause,
    },
    #[error("{0}")]
    Config(String),
    #[error("NATS request failed ({what})")]
    Request {
        what: String,
        #[source]
        source: Cause,
    },
    #[error("the NATS server refused: {0}")]
    PermissionDenied(String),
}

impl ClusterError {
    /// Creating or finding `what` (a stream, bucket or consumer) failed.
    pub fn setup(what: &str, source: impl Into<Cause>) -> ClusterError {
        ClusterError::Setup {
            what: what.to_string(),
            source: source.into(),
        }
    }

    /// A request, publish or subscription for `what` failed.
    pub fn request(what: &str, source: impl Into<Cause>) -> ClusterError {
        ClusterError::Request {
            what: what.to_string(),
            source: source.into(),
        }
    }
}

/// Everything a node or a client holds on to.
#[derive(Debug, Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    /// The server's latest refusal of this connection: bad credentials, or a permissions
    /// violation (which the server reports asynchronously, not as the failure of a publish).
    pub refusals: tokio::sync::watch::Receiver<Option<String>>,
    /// What happened to the connection, for the metrics.
    pub connection: Arc<ConnectionStats>,
}

/// A NATS connection's losses and recoveries, counted from the client's events.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    connected: AtomicBool,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
}

impl ConnectionStats {
    fn observe(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                self.connected.store(true, Ordering::Relaxed);
                // A reconnect is a connection after a loss not yet recovered from (the first
                // connection is none).
                if self.disconnects.load(Ordering::Relaxed)
                    > self.reconnects.load(Ordering::Relaxed)
                {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            async_nats::Event::Disconnected if self.connected.swap(false, Ordering::Relaxed) => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl gitfleet_actors::Connection for ConnectionStats {
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// What a connection event says about the server refusing this client, if anything.
fn refusal(event: &async_nats::Event) -> Option<String> {
    use async_nats::{ClientError, Event, ServerError};
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => {
            Some("authorization violation: the credentials were not accepted".into())
        }
        // A connection refused at CONNECT, while it keeps retrying.
        Event::ClientError(ClientError::Other(text))
            if text.contains("authorization") || text.contains("authentication") =>
        {
            Some(format!(
                "{}: the credentials were not accepted",
                gitfleet_git::printable(text)
            ))
        }
        Event::ServerError(ServerError::Other(text))
            if text.to_ascii_lowercase().contains("permissions violation") =>
        {
            Some(gitfleet_git::printable(text))
        }
        _ => None,
    }
}

/// How JetStream resources are created.
#[derive(Debug, Clone, Copy)]
pub struct Durability {
    /// Replicas of the stream and buckets (3 in a three-server cluster).
    pub replicas: usize,
}

impl Default for Durability {
    fn default() -> Self {
        Durability { replicas: 1 }
    }
}

/// How long a node's heartbeat lives in the nodes bucket: a node that has not refreshed it for
/// this long is gone.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// How often a node refreshes its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

impl Nats {
    /// Connects anonymously (or with credentials in the URL).
    pub async fn connect(url: &str, subjects: Subjects, name: &str) -> Result<Nats, ClusterError> {
        Self::connect_with(url, subjects, name, &NatsAuth::default()).await
    }

    /// Connects with `auth`'s credentials and TLS settings.
    pub async fn connect_with(
        url: &str,
        subjects: Subjects,
        name: &str,
        auth: &NatsAuth,
    ) -> Result<Nats, ClusterError> {
        let shown = gitfleet_git::scrub_userinfo(url);
        let (refused, refusals) = tokio::sync::watch::channel(None::<String>);
        let connection = Arc::new(ConnectionStats::default());
        let stats = connection.clone();
        let options = async_nats::ConnectOptions::new().event_callback(move |event| {
            let refused = refused.clone();
            stats.observe(&event);
            async move {
                if let Some(why) = refusal(&event) {
                    tracing::warn!(why = %why, "the NATS server refused");
                    refused.send_replace(Some(why));
                }
            }
        });
        let client = auth
            .apply(options)
            .await?
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .connect(
                url.split(',')
                    .map(|u| u.trim().parse::<async_nats::ServerAddr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ClusterError::Connect {
                        url: shown.clone(),
                        message: gitfleet_git::scrub_userinfo(&e.to_string()),
                    })?,
            )
            .await
            .map_err(|e| ClusterError::Connect {
                url: shown.clone(),
                message: gitfleet_git::scrub_userinfo(&e.to_string()),
            })?;
        let jetstream = jetstream::new(client.clone());
        // The client reports its first connection before `connect` returns, but a state read
        // now is the truth either way.
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        connection.connected.fetch_or(connected, Ordering::Relaxed);
        Ok(Nats {
            client,
            jetstream,
            subjects,
            refusals,
            connection,
        })
    }

    /// Creates the jobs stream and the task and node buckets if they do not exist.
    pub async fn ensure_resources(&self, durability: Durability) -> Result<(), ClusterError> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.subjects.jobs_stream(),
                subjects: vec![self.subjects.jobs_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: durability.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::setup("jobs stream", e))?;
        self.tasks_bucket_or_create(durability).await?;
        if self
            .jetstream
            .get_key_value(self.subjects.nodes_bucket())
            .await
            .is_err()
        {
            self.jetstream
                .create_key_value(kv::Config {
                    bucket: self.subjects.nodes_bucket(),
                    history: 1,
                    max_age: NODE_TTL,
                    storage: stream::StorageType::Memory,
                    num_replicas: durability.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::setup("nodes bucket", e))?;
        }
        Ok(())
    }

    async fn tasks_bucket_or_create(
        &self,
        durability: Durability,
    ) -> Result<kv::Store, ClusterError> {
        if let Ok(kv) = self
            .jetstream
            .get_key_value(self.subjects.tasks_bucket())
            .await
        {
            // Paging reads the bucket's stream as one message per task: a bucket that keeps
            // older revisions would list tasks again and sync them twice.
            let history = kv
                .status()
                .await
                .map_err(|e| ClusterError::setup("tasks bucket", e))?
                .history();
            if history != 1 {
                return Err(ClusterError::Config(format!(
                    "the task bucket {} keeps {history} revisions per key; gitfleet needs 1 \
                     (it creates the bucket so when it is missing)",
                    self.subjects.tasks_bucket()
                )));
            }
            return Ok(kv);
        }
        self.jetstream
            .create_key_value(kv::Config {
                bucket: self.subjects.tasks_bucket(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: durability.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::setup("tasks bucket", e))
    }

    pub async fn tasks(&self) -> Result<kv::Store, ClusterError> {
        self.jetstream
            .get_key_value(self.subjects.tasks_bucket())
            .await
            .map_err(|e| ClusterError::setup("tasks bucket", e))
    }

    pub async fn nodes(&self) -> Result<kv::Store, ClusterError> {
        self.jetstream
            .get_key_value(self.subjects.nodes_bucket())
            .await
            .map_err(|e| ClusterError::setup("nodes bucket", e))
    }
}
