//! Which credentials go to which host. A token is only ever offered to the hosts it is bound to:
//! entries of the credentials file, and `GITFLEET_TOKEN` for the hosts named with `--token-host`
//! (or, on the command line without it, the hosts of the repositories the user names). A node
//! takes URLs from other people, so there `GITFLEET_TOKEN` needs `--token-host`.

use std::path::Path;

use anyhow::{Context, bail};
use gitfleet_git::{Credentials, CredentialsConfig, Secret};

use crate::cli::CredentialArgs;

/// The environment variable holding a token (never a flag: flags show in process listings).
const TOKEN_VAR: &str = "GITFLEET_TOKEN";

/// The credentials of a run. `named_hosts`: the hosts of the repositories the user named, which
/// `GITFLEET_TOKEN` is bound to when no `--token-host` is given; `None` on a node.
pub fn load(
    work: &CredentialArgs,
    named_hosts: Option<&[String]>,
) -> anyhow::Result<CredentialsConfig> {
    let mut config = CredentialsConfig::default();
    if let Some(file) = &work.credentials {
        config.per_host.extend(read_file(file)?);
    }
    let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
    if let Some(token) = token {
        let hosts: Vec<String> = match (work.token_hosts.is_empty(), named_hosts) {
            (false, _) => work.token_hosts.clone(),
            (true, Some(named)) => named.to_vec(),
            (true, None) => bail!(
                "{TOKEN_VAR} is set but no --token-host names where it may be sent; a node takes \
                 URLs from other people and never offers a token to a host they choose"
            ),
        };
        let credentials = Credentials {
            username: work.username.clone(),
            token: Secret::new(token),
        };
        config
            .per_host
            .extend(hosts.into_iter().map(|h| (h, credentials.clone())));
    }
    Ok(config)
}

/// `HOST USERNAME TOKEN_FILE` a line (`#` starts a comment line; `*.example.com` matches
/// subdomains); the token is the token file's content without its trailing newline.
fn read_file(path: &Path) -> anyhow::Result<Vec<(String, Credentials)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [host, username, token_file] = fields[..] else {
            bail!(
                "{} line {}: expected `HOST USERNAME TOKEN_FILE`",
                path.display(),
                number + 1
            );
        };
        let token_path = path.parent().unwrap_or(Path::new(".")).join(token_file);
        let token = std::fs::read_to_string(&token_path).with_context(|| {
            format!(
                "{} line {}: cannot read the token file {}",
                path.display(),
                number + 1,
                token_path.display()
            )
        })?;
        let token = token.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            bail!("the token file {} is empty", token_path.display());
        }
        out.push((
            host.to_ascii_lowercase(),
            Credentials {
                username: username.to_string(),
                token: Secret::new(token),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_file_binds_tokens_to_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gh.token"), "t0ken-gh\n").expect("write");
        std::fs::write(
            dir.path().join("credentials"),
            "# host user token file\ngithub.com alice gh.token\n*.corp.example bob gh.token\n",
        )
        .expect("write");
        let entries = read_file(&dir.path().join("credentials")).expect("read");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "github.com");
        assert_eq!(entries[0].1.token.expose(), "t0ken-gh");
        std::fs::write(dir.path().join("bad"), "github.com alice\n").expect("write");
        let err = read_file(&dir.path().join("bad")).expect_err("two fields");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
