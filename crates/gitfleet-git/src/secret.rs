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

/// Where credentials come from: an optional default for every host (the `GITFLEET_TOKEN`
/// environment variable of the command line) and per-host entries from configuration. A token
/// inside a URL wins over both and is used only for that URL.
#[derive(Debug, Clone, Default)]
pub struct CredentialsConfig {
    pub default: Option<Credentials>,
    pub per_host: Vec<(String, Credentials)>,
}

impl CredentialsConfig {
    pub fn for_url(&self, url: &RepoUrl) -> Option<Credentials> {
        if let Some(inline) = url.inline_credentials() {
            return Some(inline);
        }
        let host = url.host()?;
        self.per_host
            .iter()
            .find(|(pattern, _)| crate::url::host_matches(pattern, host))
            .map(|(_, c)| c.clone())
            .or_else(|| self.default.clone())
    }

    /// Every secret known here, so that text can be scrubbed of them.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        for c in self
            .default
            .iter()
            .chain(self.per_host.iter().map(|(_, c)| c))
        {
            r.add(&c.token);
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
        out
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

/// Replaces the password of every `scheme://user:password@host` in `text` with `***`, whoever
/// the password belongs to.
pub fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\''
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
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
            "clone https://bob:***@h/o/r failed; see http://a:***@x:1/y"
        );
        assert_eq!(
            scrub_userinfo("git://h/o/r and ssh://git@h/o"),
            "git://h/o/r and ssh://git@h/o"
        );
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
