//! Parsing, normalising and policing repository URLs.
//!
//! Everything that comes from a user or another node passes [`RepoUrl::parse`] and then
//! [`Policy::check`] before any transport sees it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

use gitfleet_proto::ErrorCode;
use gix::bstr::ByteSlice;

use crate::secret::{Credentials, Secret, scrub_userinfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    File,
    Git,
    Http,
    Https,
    Ssh,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Git => "git",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ssh => "ssh",
        }
    }

    pub fn parse(name: &str) -> Option<Scheme> {
        Some(match name.to_ascii_lowercase().as_str() {
            "file" => Scheme::File,
            "git" => Scheme::Git,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "ssh" => Scheme::Ssh,
            _ => return None,
        })
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Git => Some(9418),
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Ssh => Some(22),
            Scheme::File => None,
        }
    }
}

/// Why a URL was refused. The message names the URL (without secrets) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UrlError {
    pub code: ErrorCode,
    pub message: String,
}

impl UrlError {
    /// `why` may quote the input again (gix's parse errors do): it is scrubbed like the input.
    fn invalid(input: &str, why: impl std::fmt::Display) -> Self {
        UrlError {
            code: ErrorCode::InvalidUrl,
            message: format!(
                "invalid url {}: {}",
                quote(input),
                scrub_userinfo(&why.to_string())
            ),
        }
    }

    fn denied(input: &str, why: impl std::fmt::Display) -> Self {
        UrlError {
            code: ErrorCode::PolicyDenied,
            message: format!(
                "url {} refused: {}",
                quote(input),
                scrub_userinfo(&why.to_string())
            ),
        }
    }
}

/// Shows user input safely: secrets scrubbed, control characters escaped, length capped.
fn quote(input: &str) -> String {
    let scrubbed = scrub_userinfo(input);
    let mut out: String = scrubbed
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    if scrubbed.chars().count() > 200 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// A parsed, validated repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    scheme: Scheme,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    /// Validated path segments, `.git` suffix and empty segments removed: the identity.
    segments: Vec<String>,
    /// What the transport is given: the URL as the user spelled it, minus the password and any
    /// trailing slash.
    fetch_url: gix::Url,
}

const MAX_URL_LEN: usize = 4096;
const MAX_SEGMENT_LEN: usize = 255;

/// What [`RepoUrl::parse_with`] does with a local path or `file://` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPaths {
    /// Resolve it on this machine's file system (it must exist): the command line's users name
    /// their own directories.
    Resolve,
    /// Refuse it before touching the file system, so that the answer tells nothing about which
    /// paths exist (requests from other people, when local paths are not allowed).
    Refuse,
    /// Take an absolute path as it is, without looking at the file system: a URL that was
    /// resolved when its task was created.
    AsStored,
}

impl RepoUrl {
    /// Parses `input` (a URL, an scp-like `user@host:path`, or a local path) and checks that
    /// nothing in it can be read as an option, a command or a path escape. Local paths are
    /// resolved on this machine.
    pub fn parse(input: &str) -> Result<RepoUrl, UrlError> {
        Self::parse_with(input, LocalPaths::Resolve)
    }

    /// [`RepoUrl::parse`], with a choice of what a local path does.
    pub fn parse_with(input: &str, local: LocalPaths) -> Result<RepoUrl, UrlError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(UrlError::invalid(input, "it is empty"));
        }
        if trimmed.len() > MAX_URL_LEN {
            return Err(UrlError::invalid(
                input,
                format!("longer than {MAX_URL_LEN} bytes"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(UrlError::invalid(input, "it contains control characters"));
        }
        if trimmed.starts_with('-') {
            return Err(UrlError::denied(
                input,
                "it starts with '-' and could be read as an option",
            ));
        }
        if let Some(transport) = command_transport(trimmed) {
            return Err(UrlError::denied(
                input,
                format!("the '{transport}::' transport runs commands and is never allowed"),
            ));
        }
        let looks_like_url = trimmed.contains("://");
        if looks_like_url {
            let scheme = &trimmed[..trimmed.find("://").unwrap_or(0)];
            if Scheme::parse(scheme).is_none() && !matches!(scheme, "git+ssh" | "ssh+git") {
                return Err(UrlError::denied(
                    input,
                    format!("unsupported scheme '{scheme}'"),
                ));
            }
        }
        // gix's error repeats the input, secrets and all: say what is wrong in our words.
        let mut url = gix::url::parse(trimmed.as_bytes().as_bstr())
            .map_err(|_| UrlError::invalid(input, "it cannot be parsed as a url"))?;
        let scheme = match url.scheme {
            gix::url::Scheme::File => Scheme::File,
            gix::url::Scheme::Git => Scheme::Git,
            gix::url::Scheme::Http => Scheme::Http,
            gix::url::Scheme::Https => Scheme::Https,
            gix::url::Scheme::Ssh => Scheme::Ssh,
            other => {
                return Err(UrlError::denied(
                    input,
                    format!("unsupported transport '{}'", other.as_str()),
                ));
            }
        };

        let password = url
            .password
            .take()
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let user = url.user.clone().filter(|u| !u.is_empty());
        if let Some(user) = &user {
            check_text(input, "user", user)?;
        }
        let port = url.port.filter(|p| Some(*p) != scheme.default_port());
        // Over http(s) a user name is a credential too (tokens are sent as user names:
        // `https://ghp_...@host`): it is kept for authentication only, never in the URL that is
        // shown, stored or handed to the transport.
        if matches!(scheme, Scheme::Http | Scheme::Https) {
            url.user = None;
        }

        let (host, segments) = if scheme == Scheme::File {
            if url.host.is_some() {
                return Err(UrlError::invalid(
                    input,
                    "file urls with a host are not supported",
                ));
            }
            let path = String::from_utf8(url.path.to_vec())
                .map_err(|_| UrlError::invalid(input, "the path is not UTF-8"))?;
            let absolute = match local {
                LocalPaths::Resolve => local_path(input, Path::new(&path))?,
                LocalPaths::Refuse => {
                    return Err(UrlError::denied(
                        input,
                        "local paths and file:// urls are not allowed here",
                    ));
                }
                LocalPaths::AsStored if Path::new(&path).is_absolute() => PathBuf::from(&path),
                LocalPaths::AsStored => {
                    return Err(UrlError::invalid(
                        input,
                        "a stored local path is not absolute",
                    ));
                }
            };
            url.path = absolute.to_string_lossy().as_bytes().into();
            url.serialize_alternative_form = false;
            (None, path_segments(input, &absolute.to_string_lossy())?)
        } else {
            let host = url
                .host
                .clone()
                .ok_or_else(|| UrlError::invalid(input, "it has no host"))?;
            let host = check_host(input, &host)?;
            let path = String::from_utf8(url.path.to_vec())
                .map_err(|_| UrlError::invalid(input, "the path is not UTF-8"))?;
            let segments = path_segments(input, &path)?;
            // A trailing slash is the same repository; transports and servers disagree about it.
            while url.path.len() > 1 && url.path.last() == Some(&b'/') {
                url.path.pop();
            }
            (Some(host), segments)
        };
        if segments.is_empty() {
            return Err(UrlError::invalid(input, "it names no repository"));
        }
        Ok(RepoUrl {
            scheme,
            host,
            port,
            user,
            password,
            segments,
            fetch_url: url,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The host as credential host patterns match it: an IPv6 address without its brackets.
    pub fn credential_host(&self) -> Option<&str> {
        self.host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    }

    pub fn is_local(&self) -> bool {
        self.scheme == Scheme::File
    }

    /// The URL handed to the transport and stored in the repository's config: no password.
    pub fn fetch_url(&self) -> &gix::Url {
        &self.fetch_url
    }

    /// The URL as shown to people and stored in records: no password.
    pub fn display(&self) -> String {
        self.fetch_url.to_bstring().to_string()
    }

    /// Credentials that arrived inside the URL: `https://user:token@host/...`, or a token sent as
    /// the user name, `https://token@host/...` (then the user name is the secret).
    pub fn inline_credentials(&self) -> Option<Credentials> {
        match (&self.password, &self.user) {
            (Some(token), user) => Some(Credentials {
                username: user.clone().unwrap_or_else(|| "git".into()),
                token: token.clone(),
            }),
            (None, Some(user)) if matches!(self.scheme, Scheme::Http | Scheme::Https) => {
                Some(Credentials {
                    username: user.clone(),
                    token: Secret::new(""),
                })
            }
            (None, _) => None,
        }
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Directory segments below the storage root: `[host, owner, ..., name]`, with the port kept
    /// when it is not the scheme's default (`host_8443`), an IPv6 address in brackets with `_` for
    /// its colons (`[__1]_9419`) and `_file` standing in for local paths.
    ///
    /// Distinct repositories never share segments: host names cannot contain `_` or brackets
    /// (so neither a port, an IPv6 address nor `_file`/`_local` can be spelled as a host), and no
    /// segment but the last may end in `.git` (see [`path_segments`]).
    pub fn storage_segments(&self) -> Vec<String> {
        let first = match &self.host {
            Some(host) => {
                // `check_host` wrote an IPv6 address as `[addr]`, canonically.
                let mut first = host.replace(':', "_");
                if let Some(port) = self.port {
                    first.push_str(&format!("_{port}"));
                }
                first
            }
            None => "_file".to_string(),
        };
        let mut out = Vec::with_capacity(self.segments.len() + 1);
        out.push(first);
        out.extend(self.segments.iter().cloned());
        out
    }

    /// Whether `other` names the same repository over the same scheme (the user name and the
    /// spelling may differ).
    pub fn same_source(&self, other: &RepoUrl) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.port == other.port
            && self.segments == other.segments
    }
}

/// `ext::cmd`, `fd::17` and other `<transport>::<address>` forms, which git runs as commands.
fn command_transport(input: &str) -> Option<&str> {
    let pos = input.find("::")?;
    let head = &input[..pos];
    let is_word = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'));
    (is_word && !head.contains('/')).then_some(head)
}

fn check_text(input: &str, what: &str, value: &str) -> Result<(), UrlError> {
    if value.starts_with('-') {
        return Err(UrlError::denied(
            input,
            format!("the {what} starts with '-' and could be read as an option"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(UrlError::invalid(
            input,
            format!("the {what} contains control characters"),
        ));
    }
    Ok(())
}

/// A host name (letters, digits, `.` and `-`; no `_`, which the storage layout uses for ports)
/// or an IP address, lowercased; an IPv6 address keeps its brackets, as URLs spell it.
fn check_host(input: &str, host: &str) -> Result<String, UrlError> {
    check_text(input, "host", host)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Ok(format!("[{v6}]"));
    }
    if bare.contains('_') {
        return Err(UrlError::invalid(
            input,
            format!(
                "'{}' is not a valid host name: host names cannot contain '_'",
                bare.escape_debug()
            ),
        ));
    }
    let ok = !bare.is_empty()
        && !bare.starts_with('.')
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    if !ok {
        return Err(UrlError::invalid(
            input,
            format!("'{}' is not a valid host name", bare.escape_debug()),
        ));
    }
    Ok(bare.to_ascii_lowercase())
}

fn path_segments(input: &str, path: &str) -> Result<Vec<String>, UrlError> {
    let mut segments = Vec::new();
    for segment in path.split('/') {
        if segment.is_empty() {
            continue;
        }
        if segment == "." || segment == ".." {
            return Err(UrlError::denied(
                input,
                "the path contains '.' or '..' segments",
            ));
        }
        if segment.contains('\\') {
            return Err(UrlError::invalid(input, "the path contains a backslash"));
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return Err(UrlError::invalid(
                input,
                "a path segment is longer than 255 bytes",
            ));
        }
        check_text(input, "path", segment)?;
        segments.push(segment.to_string());
    }
    if let Some(last) = segments.last_mut() {
        if let Some(stripped) = last.strip_suffix(".git") {
            *last = stripped.to_string();
        }
        if last.is_empty() {
            segments.pop();
        }
    }
    // `.git` ends the name of every bare repository gitfleet stores: a directory of the path
    // spelled so could be another task's repository, and a name still ending in `.git` (say
    // `r.git.git`) would be stored where the mirror of `r` is.
    if segments.iter().any(|s| s.ends_with(".git")) {
        return Err(UrlError::invalid(
            input,
            "only the last segment of the path may end in '.git', and only once",
        ));
    }
    Ok(segments)
}

/// Resolves a local repository path to an absolute one without `.` or `..`.
fn local_path(input: &str, path: &Path) -> Result<PathBuf, UrlError> {
    let canonical = std::fs::canonicalize(path).map_err(|e| UrlError {
        code: ErrorCode::NotFound,
        message: format!("local repository {} cannot be read: {e}", quote(input)),
    })?;
    if canonical
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(UrlError::denied(input, "the path escapes its directory"));
    }
    Ok(canonical)
}

pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}

/// Which URLs may be fetched. The command line starts permissive (its user types the URLs);
/// cluster nodes start strict (URLs come from other people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed_schemes: BTreeSet<Scheme>,
    /// Empty: any host. Entries are exact host names or `*.suffix`.
    pub allowed_hosts: Vec<String>,
    /// Local paths and file:// URLs.
    pub allow_local: bool,
    /// Loopback, private, link-local and other non-public addresses.
    pub allow_private: bool,
}

impl Policy {
    pub fn permissive() -> Self {
        Policy {
            allowed_schemes: [
                Scheme::File,
                Scheme::Git,
                Scheme::Http,
                Scheme::Https,
                Scheme::Ssh,
            ]
            .into_iter()
            .collect(),
            allowed_hosts: Vec::new(),
            allow_local: true,
            allow_private: true,
        }
    }

    pub fn strict() -> Self {
        Policy {
            allowed_schemes: [Scheme::Git, Scheme::Http, Scheme::Https, Scheme::Ssh]
                .into_iter()
                .collect(),
            allowed_hosts: Vec::new(),
            allow_local: false,
            allow_private: false,
        }
    }

    /// Checks what can be known without the network.
    pub fn check(&self, url: &RepoUrl) -> Result<(), UrlError> {
        let shown = url.display();
        if url.is_local() && !self.allow_local {
            return Err(UrlError::denied(
                &shown,
                "local paths and file:// urls are not allowed here",
            ));
        }
        if !self.allowed_schemes.contains(&url.scheme) {
            return Err(UrlError::denied(
                &shown,
                format!("scheme '{}' is not allowed", url.scheme.as_str()),
            ));
        }
        if let Some(host) = url.host() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if !self.allowed_hosts.is_empty()
                && !self.allowed_hosts.iter().any(|p| host_matches(p, bare))
            {
                return Err(UrlError::denied(
                    &shown,
                    format!("host '{bare}' is not in the allowed hosts"),
                ));
            }
            if !self.allow_private {
                let literal = bare.parse::<IpAddr>().ok();
                if literal.is_some_and(is_private) || is_local_name(bare) {
                    return Err(UrlError::denied(
                        &shown,
                        format!("'{bare}' is a private or loopback address"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Like [`Policy::check`], and, when private addresses are refused, resolves the host name
    /// so that a public-looking name pointing at 127.0.0.1 is refused too. Returns the
    /// addresses it checked: the transfer must connect to those and resolve nothing again
    /// (`None`: nothing to pin). Blocking.
    pub fn check_resolved(&self, url: &RepoUrl) -> Result<Option<Vec<SocketAddr>>, UrlError> {
        self.check(url)?;
        if self.allow_private {
            return Ok(None);
        }
        let Some(host) = url.host() else {
            return Ok(None);
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Ok(None);
        }
        let port = url.port.or(url.scheme.default_port()).unwrap_or(0);
        let addrs: Vec<SocketAddr> = match (bare, port).to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            // Unresolvable: the transport fails with a network error of its own.
            Err(_) => return Ok(None),
        };
        if addrs.iter().any(|a| is_private(a.ip())) {
            return Err(UrlError::denied(
                &url.display(),
                format!("'{bare}' resolves to a private or loopback address"),
            ));
        }
        Ok(Some(addrs).filter(|a| !a.is_empty()))
    }
}

fn is_local_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost") || host == "localhost.localdomain"
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    is_local_name(bare) || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || a == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(input: &str) -> Vec<String> {
        RepoUrl::parse(input).expect(input).storage_segments()
    }

    #[test]
    fn spellings_of_one_repository_are_one_identity() {
        let a = key("https://Host.example/o/r");
        assert_eq!(a, ["host.example", "o", "r"]);
        assert_eq!(key("https://host.example/o/r.git"), a);
        assert_eq!(key("https://host.example/o/r/"), a);
        assert_eq!(key("https://host.example:443/o//r.git/"), a);
        assert_eq!(key("git@host.example:o/r.git"), a);
        assert_eq!(
            key("https://host.example:8443/o/r"),
            ["host.example_8443", "o", "r"]
        );
        assert_ne!(key("https://h/a/utils"), key("https://h/b/utils"));
    }

    #[test]
    fn passwords_never_reach_display_or_fetch_url() {
        let url = RepoUrl::parse("https://bob:s3cret@h.example/o/r.git").expect("parse");
        assert!(!url.display().contains("s3cret"), "{}", url.display());
        // Over http(s) not even the user name is shown: it may be a token.
        assert_eq!(url.display(), "https://h.example/o/r.git");
        let creds = url.inline_credentials().expect("inline");
        assert_eq!(creds.username, "bob");
        assert_eq!(creds.token.expose(), "s3cret");
        let token_as_user = RepoUrl::parse("https://ghp_T0KEN@h.example/o/r").expect("parse");
        assert_eq!(token_as_user.display(), "https://h.example/o/r");
        assert!(
            !token_as_user
                .fetch_url()
                .to_bstring()
                .to_string()
                .contains("T0KEN")
        );
        let creds = token_as_user.inline_credentials().expect("inline");
        assert_eq!(creds.username, "ghp_T0KEN");
        let mut redactor = crate::Redactor::default();
        redactor.add_credentials(&creds);
        assert_eq!(redactor.redact("denied for ghp_T0KEN"), "denied for ***");
        // An ssh user name is not a secret and stays.
        let ssh = RepoUrl::parse("ssh://git@h.example/o/r").expect("parse");
        assert_eq!(ssh.display(), "ssh://git@h.example/o/r");
        assert!(ssh.inline_credentials().is_none());
    }

    #[test]
    fn hostile_urls_are_refused_with_a_reason() {
        for (input, code, needle) in [
            (
                "ext::sh -c touch% /tmp/pwned",
                ErrorCode::PolicyDenied,
                "ext::",
            ),
            ("fd::17", ErrorCode::PolicyDenied, "fd::"),
            ("-uhelp", ErrorCode::PolicyDenied, "option"),
            (
                "ssh://-oProxyCommand=x/o/r",
                ErrorCode::PolicyDenied,
                "option",
            ),
            (
                "ssh://-oProxyCommand=x@h/o/r",
                ErrorCode::PolicyDenied,
                "option",
            ),
            ("https://h/o/-r", ErrorCode::PolicyDenied, "option"),
            ("https://h/o/../../etc", ErrorCode::PolicyDenied, ".."),
            ("https://h/o/r\n", ErrorCode::InvalidUrl, "empty"),
            ("https://h/o/r\u{7}x", ErrorCode::InvalidUrl, "control"),
            ("ftp://h/o/r", ErrorCode::PolicyDenied, "scheme"),
            ("https://", ErrorCode::InvalidUrl, ""),
            ("https://h/", ErrorCode::InvalidUrl, "no repository"),
            ("", ErrorCode::InvalidUrl, "empty"),
        ] {
            // "https://h/o/r\n" is trimmed and valid: check it separately below.
            if input.ends_with('\n') {
                assert!(RepoUrl::parse(input).is_ok());
                continue;
            }
            let err = RepoUrl::parse(input).expect_err(input);
            assert_eq!(err.code, code, "{input}: {err}");
            assert!(err.message.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn errors_do_not_echo_secrets() {
        let err = RepoUrl::parse("https://u:topsecret@h/o/../x").expect_err("dotdot");
        assert!(!err.message.contains("topsecret"), "{err}");
    }

    #[test]
    fn strict_policy_refuses_local_and_private() {
        let strict = Policy::strict();
        for input in [
            "http://127.0.0.1/o/r",
            "https://localhost/o/r",
            "git://10.1.2.3/o/r",
            "https://[::1]/o/r",
            "https://192.168.0.1/o/r",
            "http://169.254.169.254/latest",
        ] {
            let url = RepoUrl::parse(input).expect(input);
            let err = strict.check(&url).expect_err(input);
            assert_eq!(err.code, ErrorCode::PolicyDenied, "{input}");
        }
        let dir = std::env::temp_dir();
        let local = RepoUrl::parse(dir.to_str().expect("utf-8")).expect("local");
        assert!(strict.check(&local).is_err());
        assert!(Policy::permissive().check(&local).is_ok());
        assert!(
            strict
                .check(&RepoUrl::parse("https://git.example.com/o/r").expect("public"))
                .is_ok()
        );
    }

    #[test]
    fn allowed_hosts_and_schemes_are_enforced() {
        let mut policy = Policy::permissive();
        policy.allowed_hosts = vec!["*.example.com".into()];
        policy.allowed_schemes.remove(&Scheme::Git);
        assert!(
            policy
                .check(&RepoUrl::parse("https://git.example.com/o/r").expect("u"))
                .is_ok()
        );
        assert!(
            policy
                .check(&RepoUrl::parse("https://evil.test/o/r").expect("u"))
                .is_err()
        );
        assert!(
            policy
                .check(&RepoUrl::parse("git://git.example.com/o/r").expect("u"))
                .is_err()
        );
    }
}
