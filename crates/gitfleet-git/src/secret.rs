use std::fmt;

use crate::RepoUrl;

/// A token or password. It prints as `***` in every `Debug` and `Display`, so a secret that
/// slips into a log line or an error by formatting stays hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that hands it to the transport.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A username and token for HTTP(S) basic authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub token: Secret,
}

/// Which credentials go to which host: entries of `host pattern` (an exact host name or
/// `*.suffix`) and credentials, the first match winning. There is no default for every host: a
/// token offered to any host a URL names would go to whoever wrote the URL. A token inside a URL
/// is used only for that URL.
#[derive(Debug, Clone, Default)]
pub struct CredentialsConfig {
    pub per_host: Vec<(String, Credentials)>,
}

impl CredentialsConfig {
    pub fn for_url(&self, url: &RepoUrl) -> Option<Credentials> {
        if let Some(inline) = url.inline_credentials() {
            return Some(inline);
        }
        let host = url.host()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.per_host
            .iter()
            .find(|(pattern, _)| crate::url::host_matches(pattern, host))
            .map(|(_, c)| c.clone())
    }

    /// Every secret known here, so that text can be scrubbed of them.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        for (_, c) in &self.per_host {
            r.add_credentials(c);
        }
        r
    }
}

/// Removes secrets from text before it leaves the engine (errors, logs, events, records).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    pub fn add(&mut self, secret: &Secret) {
        if !secret.0.is_empty() && !self.secrets.contains(secret) {
            self.secrets.push(secret.clone());
        }
    }

    /// The secrets of `credentials`: the token, or the user name when it stands in for one
    /// (`https://token@host`).
    pub fn add_credentials(&mut self, credentials: &Credentials) {
        if credentials.token.expose().is_empty() {
            self.add(&Secret::new(credentials.username.clone()));
        } else {
            self.add(&credentials.token);
        }
    }

    /// `text` without secrets, made safe to show ([`crate::printable`]): every message that
    /// leaves the engine passes here, server text included.
    pub fn redact(&self, text: &str) -> String {
        let mut out = scrub_userinfo(text);
        for s in &self.secrets {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), "***");
            }
            // Transports may percent-encode the secret when they put it into a URL.
            let encoded = percent_encode(s.expose());
            if encoded != s.expose() && out.contains(&encoded) {
                out = out.replace(&encoded, "***");
            }
        }
        crate::printable(&out)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces the user information of every `scheme://userinfo@host` in `text` that may hold a
/// secret with `***`, whoever it belongs to: a password (`user:password@`), or any user name of
/// an http(s) URL (tokens are sent as user names: `https://ghp_...@host`). An ssh or git user
/// name (`ssh://git@host`) stays.
///
/// The user information is taken to run up to the last `@` before the next `/` (or the end of
/// the line): a password may hold spaces, quotes, `#` or `?`, and stopping at any of them would
/// show the rest. Text that is not a URL may be masked too; a secret is never shown.
pub fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let scheme_start = head[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = head[scheme_start..pos].to_ascii_lowercase();
        let span_end = [tail.find('/'), tail.find('\n'), tail.find("://")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tail.len());
        let span = &tail[..span_end];
        match span.rfind('@') {
            Some(at) => {
                let userinfo = &span[..at];
                let keep_user = !userinfo.contains(':')
                    && !matches!(
                        scheme.as_str(),
                        "http" | "https" | "nats" | "tls" | "ws" | "wss"
                    );
                if keep_user {
                    out.push_str(userinfo);
                } else {
                    out.push_str("***");
                }
                out.push_str(&span[at..]);
            }
            None => out.push_str(span),
        }
        rest = &tail[span_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_are_scrubbed_everywhere() {
        assert_eq!(
            scrub_userinfo("clone https://bob:hunter2@h/o/r failed; see http://a:b@x:1/y"),
            "clone https://***@h/o/r failed; see http://***@x:1/y"
        );
        assert_eq!(
            scrub_userinfo("git://h/o/r and ssh://git@h/o"),
            "git://h/o/r and ssh://git@h/o"
        );
        // Where a scrub that stops at a space, a quote or '#' would show part of the secret.
        for (text, secret) in [
            ("https://u:pa ss\"wo#rd@h/o/r", "ss\"wo#rd"),
            ("invalid url \"https://u:p'a?s@h/o\": it is bad", "p'a?s"),
            ("https://ghp_T0KEN@github.com/o/r", "ghp_T0KEN"),
            ("nats://node:n4ts-pass@127.0.0.1:4222", "n4ts-pass"),
            ("ssh://git:s3cret@h/o/r", "s3cret"),
        ] {
            let scrubbed = scrub_userinfo(text);
            assert!(!scrubbed.contains(secret), "{text} -> {scrubbed}");
            assert!(scrubbed.contains("***"), "{text} -> {scrubbed}");
        }
    }

    #[test]
    fn known_secrets_are_redacted_raw_and_encoded() {
        let mut r = Redactor::default();
        r.add(&Secret::new("tok/en+1"));
        assert_eq!(
            r.redact("bad token tok/en+1 or tok%2Fen%2B1"),
            "bad token *** or ***"
        );
        assert_eq!(format!("{:?}", Secret::new("x")), "***");
    }
}
