//! The HTTP listener of `serve --listen` and `node --listen`: webhooks (hooks.rs), `GET
//! /metrics` (metrics.rs) and the dashboard (dashboard.rs) on one address.

use std::sync::Arc;

use anyhow::Context;
use gitfleet_git::Secret;

use crate::dashboard::Dashboard;
use crate::hooks::{Hooks, SyncUrls};

/// Where the listener is, and the secrets it checks.
pub struct Listen {
    pub address: std::net::SocketAddr,
    /// What webhooks are signed with; without one every webhook is refused.
    pub webhook_secret: Option<Secret>,
    /// What the dashboard's actions need; without one the dashboard is read-only.
    pub token: Option<Secret>,
}

/// What the listener serves.
pub struct Endpoints {
    /// Syncs the tracked repositories a webhook names.
    pub sync: SyncUrls,
    pub metrics: Arc<gitfleet_actors::FleetMetrics>,
    pub dashboard: Dashboard,
}

/// Serves `endpoints` on `listen.address` until `stop`; returns the server's task.
pub async fn listen(
    listen: Listen,
    endpoints: Endpoints,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", listen.address))?;
    let address = listener.local_addr()?;
    if listen.webhook_secret.is_none() {
        eprintln!("gitfleet: no GITFLEET_WEBHOOK_SECRET: every webhook will be refused (401)");
    }
    let actions = if listen.token.is_some() {
        "actions need the GITFLEET_LISTEN_TOKEN bearer token"
    } else {
        "read-only: no GITFLEET_LISTEN_TOKEN"
    };
    // Streams of live events never end by themselves: they end when the listener stops, or
    // the graceful shutdown would wait for them forever.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let stop = async move {
        stop.await;
        let _ = closing_tx.send(true);
    };
    let router = crate::hooks::router(Hooks::new(listen.webhook_secret, endpoints.sync))
        .merge(crate::metrics::router(endpoints.metrics))
        .merge(crate::dashboard::router(
            endpoints.dashboard,
            listen.token,
            closing,
        ));
    eprintln!(
        "gitfleet: dashboard on http://{address}/ ({actions}), webhooks on \
         http://{address}/hooks/{{github,gitlab,gitea,sync}}, metrics on http://{address}/metrics"
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    }))
}
