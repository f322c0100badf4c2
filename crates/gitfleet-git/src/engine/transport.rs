//! Choosing and opening the transport of an attempt, with gitfleet's own settings: our own
//! git:// connection (daemon.rs), our own http(s) client with metered bodies, the checked addresses
//! and no redirects (http.rs), and our own `ssh` connection with the operator's options (ssh.rs). Nothing comes from the repository's
//! configuration: that would let whoever wrote it choose the ssh command (`core.sshCommand`), a
//! proxy, extra headers, or turn off certificate checks (`http.sslVerify`).

use std::time::Duration;

use gitfleet_proto::{ErrorCode, TaskError};
use gix_transport::client::blocking_io::Transport;

use super::{Attempt, Request, git_error};
use crate::url::is_loopback_host;
use crate::{Credentials, Scheme};

/// How long to wait for a server to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type BoxedTransport = Box<dyn Transport + Send>;

/// gix (with the insecure-credentials feature gitfleet needs for its loopback test servers) would
/// send a token over plain http anywhere; gitfleet allows that only to loopback hosts.
pub(super) fn check_credentials(req: &Request) -> Result<(), TaskError> {
    if req.credentials.is_some()
        && req.url.scheme() == Scheme::Http
        && !req.url.host().is_some_and(is_loopback_host)
    {
        return Err(TaskError::new(
            ErrorCode::PolicyDenied,
            "refusing to send credentials over plain http; use https",
        ));
    }
    Ok(())
}

/// What gix asks when the server wants credentials: the request's, or none.
pub(super) fn credentials_helper(
    credentials: Option<Credentials>,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    move |action| match (&credentials, action) {
        (Some(c), gix::credentials::helper::Action::Get(ctx)) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: c.username.clone(),
                    password: c.token.expose().to_string(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            }))
        }
        // Nothing to store or erase: gitfleet keeps no credential state.
        _ => Ok(None),
    }
}

/// How refs are listed for a fetch by refspec.
pub(super) fn ref_map_options() -> gix::remote::ref_map::Options {
    // With the default (true), gix turns `refs/*` into a literal ref-prefix for protocol v2 and
    // the server lists only HEAD (`ls-refs` with `ref-prefix refs/*`, which matches nothing but
    // the implicit HEAD): a mirror would silently have no refs.
    gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    }
}

pub(super) type FetchConnection<'remote, 'repo> =
    gix::remote::Connection<'remote, 'static, 'repo, BoxedTransport>;

/// A fetch connection to the request's URL over our transport, with its credentials. `what`
/// names the step in errors.
pub(super) fn connect<'remote, 'repo>(
    at: &Attempt<'_>,
    remote: &'remote gix::Remote<'repo>,
    what: &str,
) -> Result<FetchConnection<'remote, 'repo>, TaskError> {
    let mut connection = remote.to_connection_with_transport(open(at, what)?);
    connection.set_credentials(credentials_helper(at.req.credentials.clone()));
    Ok(connection)
}

/// A transport to the request's URL, with gitfleet's own settings.
pub(super) fn open(at: &Attempt<'_>, what: &str) -> Result<BoxedTransport, TaskError> {
    let req = at.req;
    let url = req.url.fetch_url().clone();
    let unreachable = |e: std::io::Error| {
        TaskError::new(ErrorCode::Network, format!("cannot reach the server: {e}"))
    };
    match req.url.scheme() {
        Scheme::Git => daemon(at),
        Scheme::Http | Scheme::Https => {
            let settings = crate::http::HttpSettings {
                host: req
                    .url
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()),
                addresses: req.addresses.clone(),
                connect_timeout: CONNECT_TIMEOUT,
                // A little longer than the stall limit, as for git:// below.
                io_timeout: req.limits.stall_limit + Duration::from_secs(1),
            };
            crate::http::transport(url, &settings, at.meter.clone(), at.pushback.clone())
                .map(|transport| Box::new(transport) as BoxedTransport)
                .map_err(|e| {
                    TaskError::new(
                        ErrorCode::Internal,
                        format!("cannot build the http client: {e}"),
                    )
                })
        }
        Scheme::Ssh => crate::ssh::connect(
            &url,
            req.addresses.as_deref(),
            CONNECT_TIMEOUT,
            at.meter.clone(),
            at.interrupt.clone(),
        )
        .map(|connection| Box::new(connection) as BoxedTransport)
        .map_err(unreachable),
        // A local repository, which the operator's policy allowed: `git-upload-pack` run by gix.
        Scheme::File => gix_transport::client::blocking_io::file::connect(
            url.path.clone(),
            gix::protocol::transport::Protocol::V2,
            false,
        )
        .map(|transport| Box::new(transport) as BoxedTransport)
        .map_err(|e| git_error(what, &e)),
    }
}

/// Our own git:// transport (daemon.rs).
fn daemon(at: &Attempt<'_>) -> Result<BoxedTransport, TaskError> {
    let req = at.req;
    // A little longer than the stall limit, so that the watcher reports `stalled` first and the
    // read then returns and frees the thread well within the grace period.
    let io_timeout = req.limits.stall_limit + Duration::from_secs(1);
    match crate::daemon::connect(
        req.url.fetch_url(),
        req.addresses.as_deref(),
        CONNECT_TIMEOUT,
        io_timeout,
        at.meter.clone(),
    ) {
        Ok(connection) => Ok(Box::new(connection)),
        Err(e) => Err(TaskError::new(
            ErrorCode::Network,
            format!("cannot reach the server: {e}"),
        )),
    }
}
