//! Push-triggered sync: the webhook endpoints of `gitfleet serve --listen` (and `node
//! --listen`), served beside the metrics and the dashboard (listener.rs).
//!
//! - `POST /hooks/github`: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body.
//! - `POST /hooks/gitlab`: `X-Gitlab-Token: <secret>`.
//! - `POST /hooks/gitea` (also Forgejo): `X-Gitea-Signature` (or `X-Forgejo-Signature`), the hex
//!   HMAC-SHA256 of the body.
//! - `POST /hooks/sync`: `Authorization: Bearer <secret>`, `{"urls": [...]}`.
//!
//! The secret is `GITFLEET_WEBHOOK_SECRET`; without one every request is refused (401), as is a
//! bad signature, and nothing happens. A body over 1 MiB is 413, malformed JSON 400. The
//! repository is found by any of the clone URLs a payload names, through the same identity
//! rules as every other input; a webhook only syncs repositories that are tracked, it never adds
//! one (202 "not tracked").

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::future::BoxFuture;
use gitfleet_git::Secret;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The largest body accepted.
const MAX_BODY: usize = 1 << 20;

/// What a webhook's URLs came to.
#[derive(Debug, Default)]
pub struct Synced {
    /// Tasks whose sync was requested (already running ones included: syncs are single
    /// flight).
    pub tasks: Vec<String>,
}

/// Syncs the tracked repositories among URLs that name one repository.
pub type SyncUrls = Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, Synced> + Send + Sync>;

/// The webhook endpoints' state.
pub struct Hooks {
    secret: Option<Secret>,
    sync: SyncUrls,
}

impl Hooks {
    pub fn new(secret: Option<Secret>, sync: SyncUrls) -> Hooks {
        Hooks { secret, sync }
    }
}

/// A forge's webhook format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    GitHub,
    GitLab,
    Gitea,
    Plain,
}

/// The routes, with the body limit.
pub fn router(hooks: Hooks) -> Router {
    let hooks = Arc::new(hooks);
    let route = |provider: Provider| {
        post(
            move |State(hooks): State<Arc<Hooks>>, headers: HeaderMap, body: Bytes| async move {
                handle(&hooks, provider, &headers, &body).await
            },
        )
    };
    Router::new()
        .route("/hooks/github", route(Provider::GitHub))
        .route("/hooks/gitlab", route(Provider::GitLab))
        .route("/hooks/gitea", route(Provider::Gitea))
        .route("/hooks/sync", route(Provider::Plain))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(hooks)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(hooks: &Hooks, provider: Provider, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(secret) = &hooks.secret else {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "no webhook secret is configured (GITFLEET_WEBHOOK_SECRET)"}),
        );
    };
    if !authentic(provider, secret.expose().as_bytes(), headers, body) {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong signature"}),
        );
    }
    match event(provider, headers).as_deref() {
        Some("ping") => return reply(StatusCode::OK, json!({"status": "pong"})),
        Some("push") => {}
        Some(other) => {
            return reply(
                StatusCode::OK,
                json!({"status": "ignored", "event": gitfleet_git::printable(other)}),
            );
        }
        None => {}
    }
    let payload: Value = match serde_json::from_slice(body) {
        Ok(payload) => payload,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the body is not JSON: {e}")}),
            );
        }
    };
    let urls = match repository_urls(provider, &payload) {
        Ok(urls) => urls,
        Err(why) => return reply(StatusCode::BAD_REQUEST, json!({ "error": why })),
    };
    let synced = (hooks.sync)(urls).await;
    if synced.tasks.is_empty() {
        return reply(StatusCode::ACCEPTED, json!({"status": "not tracked"}));
    }
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "syncing", "tasks": synced.tasks}),
    )
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request carries the secret, as the provider signs with it.
fn authentic(provider: Provider, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let hmac_matches = |hex: &str| {
        let Some(tag) = decode_hex(hex.trim()) else {
            return false;
        };
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    };
    let equals_secret = |given: &str| bool::from(given.as_bytes().ct_eq(secret));
    match provider {
        Provider::GitHub => header_text(headers, "x-hub-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(hmac_matches),
        Provider::Gitea => header_text(headers, "x-gitea-signature")
            .or_else(|| header_text(headers, "x-forgejo-signature"))
            .is_some_and(hmac_matches),
        Provider::GitLab => header_text(headers, "x-gitlab-token").is_some_and(equals_secret),
        Provider::Plain => header_text(headers, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| equals_secret(token.trim())),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The event a request announces, lower-case: `ping`, `push`, or another; `None` when the
/// format has no event header (`/hooks/sync` is always a push).
fn event(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let raw = match provider {
        Provider::GitHub => header_text(headers, "x-github-event")?,
        Provider::Gitea => header_text(headers, "x-gitea-event")
            .or_else(|| header_text(headers, "x-forgejo-event"))?,
        Provider::GitLab => match header_text(headers, "x-gitlab-event")? {
            "Push Hook" | "Tag Push Hook" => "push",
            other => other,
        },
        Provider::Plain => return None,
    };
    Some(raw.to_ascii_lowercase())
}

/// The URLs a payload names its repository by (the plain format: the URLs it lists).
fn repository_urls(provider: Provider, payload: &Value) -> Result<Vec<String>, String> {
    let pick = |object: &Value, keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| object.get(*k)?.as_str())
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    };
    let urls = match provider {
        Provider::GitHub | Provider::Gitea => pick(
            &payload["repository"],
            &["clone_url", "ssh_url", "git_url", "html_url"],
        ),
        Provider::GitLab => {
            let mut urls = pick(
                &payload["project"],
                &["git_http_url", "git_ssh_url", "web_url"],
            );
            urls.extend(pick(
                &payload["repository"],
                &["git_http_url", "git_ssh_url", "homepage"],
            ));
            urls
        }
        Provider::Plain => {
            let Some(list) = payload.get("urls").and_then(Value::as_array) else {
                return Err("expected {\"urls\": [...]}".into());
            };
            list.iter()
                .map(|u| u.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("every entry of \"urls\" must be a string")?
        }
    };
    if urls.is_empty() {
        return Err("the payload names no repository URL".into());
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("a header value"));
        }
        map
    }

    fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("a key");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn each_provider_is_authenticated_its_own_way() {
        let body = br#"{"repository":{}}"#;
        let sig = hex_hmac(b"s3cret", body);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={sig}"))]);
        assert!(authentic(Provider::GitHub, b"s3cret", &github, body));
        assert!(!authentic(Provider::GitHub, b"other", &github, body));
        assert!(
            !authentic(Provider::GitHub, b"s3cret", &github, b"{}"),
            "another body"
        );
        let gitea = headers(&[("x-gitea-signature", &sig)]);
        assert!(authentic(Provider::Gitea, b"s3cret", &gitea, body));
        let forgejo = headers(&[("x-forgejo-signature", &sig)]);
        assert!(authentic(Provider::Gitea, b"s3cret", &forgejo, body));
        let gitlab = headers(&[("x-gitlab-token", "s3cret")]);
        assert!(authentic(Provider::GitLab, b"s3cret", &gitlab, body));
        assert!(!authentic(Provider::GitLab, b"s3cre", &gitlab, body));
        let plain = headers(&[("authorization", "Bearer s3cret")]);
        assert!(authentic(Provider::Plain, b"s3cret", &plain, body));
        assert!(!authentic(
            Provider::Plain,
            b"s3cret",
            &HeaderMap::new(),
            body
        ));
        assert!(!authentic(
            Provider::GitHub,
            b"s3cret",
            &headers(&[("x-hub-signature-256", "sha256=zz")]),
            body
        ));
    }

    #[test]
    fn payloads_name_their_repository_by_every_clone_url() {
        let github = json!({"repository": {
            "clone_url": "https://h.example/o/r.git",
            "ssh_url": "git@h.example:o/r.git",
            "git_url": "git://h.example/o/r.git",
            "html_url": "https://h.example/o/r"}});
        assert_eq!(
            repository_urls(Provider::GitHub, &github)
                .expect("urls")
                .len(),
            4
        );
        let gitlab = json!({"project": {"git_http_url": "https://h.example/o/r.git"}});
        assert_eq!(
            repository_urls(Provider::GitLab, &gitlab).expect("urls"),
            ["https://h.example/o/r.git"]
        );
        assert!(repository_urls(Provider::Plain, &json!({"urls": [1]})).is_err());
        assert!(repository_urls(Provider::GitHub, &json!({})).is_err());
        let events = headers(&[("x-gitlab-event", "Tag Push Hook")]);
        assert_eq!(event(Provider::GitLab, &events).as_deref(), Some("push"));
    }
}
