//! Command-line interface definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Mirror, clone and keep in sync thousands of git repositories.
///
/// Repositories are stored under the root as <host>/<owner>/<name>.git, task state under
/// <root>/.gitfleet. Runs on this machine with nothing else installed.
///
/// Credentials: set GITFLEET_TOKEN (and GITFLEET_USERNAME, default "git") to authenticate to
/// HTTPS hosts, or put them in the URL (https://user:token@host/owner/repo); they are used for
/// the transfer only and never stored or printed.
#[derive(Debug, Parser)]
#[command(
    name = "gitfleet",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Where repositories and task state are stored.
    #[arg(long, global = true, env = "GITFLEET_ROOT", default_value = "mirrors")]
    pub root: PathBuf,

    /// Talk to a gitfleet cluster through this NATS server instead of working embedded.
    #[arg(long, global = true, env = "GITFLEET_NATS", value_name = "URL")]
    pub nats: Option<String>,

    /// Subject prefix of the cluster.
    #[arg(
        long,
        global = true,
        env = "GITFLEET_PREFIX",
        default_value = "gitfleet"
    )]
    pub prefix: String,

    #[command(flatten)]
    pub nats_auth: NatsAuthArgs,

    /// How log lines (GITFLEET_LOG) are written on standard error: `text`, or `json` (one object
    /// per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "GITFLEET_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mirror repositories: bare clones with every ref, as `git clone --mirror`.
    ///
    /// Example: gitfleet mirror https://github.com/rust-lang/log --root /srv/mirrors
    Mirror {
        #[command(flatten)]
        sources: Sources,
        /// Clone only branches and tags (`git clone --bare`) instead of every ref.
        #[arg(long)]
        bare: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Clone repositories with a working tree.
    Clone {
        #[command(flatten)]
        sources: Sources,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Create empty repositories under <root>/_local/, named OWNER/NAME.
    Init {
        #[arg(required = true, value_name = "OWNER/NAME")]
        names: Vec<String>,
        /// Create a repository with a working tree instead of a bare one.
        #[arg(long)]
        worktree: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Fetch new commits into stored repositories and prune refs deleted upstream.
    ///
    /// With no URL, every known repository is synced.
    Sync {
        #[command(flatten)]
        sources: Sources,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Show every task: status, progress, error and path.
    Status {
        /// Only these tasks (ids or URLs).
        tasks: Vec<String>,
        /// Print a JSON array of tasks.
        #[arg(long)]
        json: bool,
        /// A repository not synced successfully for longer than this is stale (default: twice
        /// the default --max-interval).
        #[arg(long, default_value = "16h", value_name = "DURATION", value_parser = parse_duration)]
        stale_after: Duration,
    },
    /// Keep every repository of the root fresh: sync each when it is due (adaptive interval,
    /// see --min-interval and --max-interval) until stopped (Ctrl-C or SIGTERM drain).
    Serve {
        #[command(flatten)]
        run: RunArgs,
        /// On stop, how long running transfers may take to finish before they are cancelled.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
        drain_timeout: Duration,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Take quarantined repositories (ids or URLs) back into the schedule, due now.
    Resume {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Remove repositories (ids or URLs): the mirror and its record are deleted (moved out of
    /// the way in one rename first). A queued or running one is refused: cancel it first.
    Remove {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Archive repositories (ids or URLs): kept as they are and readable, never synced (on
    /// schedule, by a webhook or on request) until unarchived.
    Archive {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Bring archived repositories (ids or URLs) back into the schedule, due now.
    Unarchive {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Set how often repositories (ids or URLs) are synced: every DURATION, or adaptively.
    Schedule {
        #[arg(required = true)]
        tasks: Vec<String>,
        /// Sync every DURATION (e.g. 30m) instead of the adaptive interval.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, required_unless_present = "adaptive")]
        every: Option<Duration>,
        /// Back to the adaptive interval.
        #[arg(long, conflicts_with = "every")]
        adaptive: bool,
    },
    /// Cancel queued or running tasks (ids or URLs).
    Cancel {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Show a repository's last runs, newest first: when each clone or sync finished, the refs
    /// and commits it brought, how long it took, why it failed.
    History {
        /// The repository (id or URL).
        task: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// List the commits a mirror holds, newest first: what the last syncs brought.
    Log {
        /// The repository (id or URL).
        task: String,
        /// Only commits since then: a time (2026-01-31T12:00:00Z) or a duration ago (2h, 7d).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since)]
        since: Option<jiff::Timestamp>,
        /// How many commits at most.
        #[arg(long, short = 'n', default_value_t = 20)]
        max_count: usize,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show what the repositories take on disk: in total, per node and the largest (sizes as
    /// measured after each clone and each sync that received something).
    Du {
        /// How many of the largest repositories to list.
        #[arg(long, short = 'n', default_value_t = 10)]
        top: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a task record (for generating client types).
    Schema,
    /// A cache of repositories and local directories by name: working-tree clones (and
    /// copies) refreshed when stale, within a size limit.
    Cache(CacheArgs),
    /// Join a cluster: run jobs placed on this node and answer the request API (needs --nats).
    Node(NodeArgs),
    /// List the cluster's live nodes with their load and the repositories they own.
    Nodes {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's id: letters, digits, '-' and '_' (default: the host name).
    #[arg(long, env = "GITFLEET_NODE_ID")]
    pub node_id: Option<String>,
    /// How many repositories this node transfers at once.
    #[arg(long, short = 'j', default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Replicas of the JetStream stream and buckets when this node creates them.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Accept local paths and file:// URLs (refused by default: URLs come from other people).
    #[arg(long)]
    pub allow_local: bool,
    /// Accept loopback and private network addresses (refused by default).
    #[arg(long)]
    pub allow_private: bool,
    /// Allow only these hosts (repeatable; `*.example.com` matches subdomains).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
    #[command(flatten)]
    pub work: WorkArgs,
}

#[derive(Debug, Args)]
pub struct Sources {
    /// Repository URLs: https://, http://, git://, ssh://, user@host:path, or local paths.
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// Read URLs from a file, one per line ('#' starts a comment; '-' reads standard input).
    #[arg(long, short = 'f', value_name = "LIST")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How many repositories are transferred at once.
    #[arg(long, short = 'j', default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Print task updates as JSON lines on standard output instead of progress bars.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub work: WorkArgs,
    /// Allow only these schemes (repeatable): file, git, http, https, ssh.
    #[arg(long = "allow-scheme", value_name = "SCHEME")]
    pub allow_schemes: Vec<String>,
    /// Allow only these hosts (repeatable; `*.example.com` matches subdomains).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Refuse local paths and file:// URLs.
    #[arg(long)]
    pub deny_local: bool,
    /// Refuse loopback and private network addresses.
    #[arg(long)]
    pub deny_private: bool,
}

impl RunArgs {
    /// The URL policy of an embedded run: anything the user names, narrowed by the options.
    pub fn policy(&self) -> anyhow::Result<gitfleet_git::Policy> {
        let mut policy = gitfleet_git::Policy::permissive();
        if !self.allow_schemes.is_empty() {
            policy.allowed_schemes = self
                .allow_schemes
                .iter()
                .map(|s| {
                    gitfleet_git::Scheme::parse(s)
                        .ok_or_else(|| anyhow::anyhow!("unknown scheme '{s}' in --allow-scheme"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        policy.allowed_hosts = self.allow_hosts.clone();
        policy.allow_local = !self.deny_local;
        policy.allow_private = !self.deny_private;
        Ok(policy)
    }
}

impl NodeArgs {
    /// The URL policy of a node, which takes URLs from other people: strict, widened by the
    /// options.
    pub fn policy(&self) -> gitfleet_git::Policy {
        let mut policy = gitfleet_git::Policy::strict();
        policy.allow_local = self.allow_local;
        policy.allow_private = self.allow_private;
        if self.allow_local {
            policy.allowed_schemes.insert(gitfleet_git::Scheme::File);
        }
        policy.allowed_hosts = self.allow_hosts.clone();
        policy
    }
}

/// How each repository is worked on, in the embedded mode and on cluster nodes alike.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Abort one attempt after this long (durations: `90s`, `30m`, `8h`; a bare number is
    /// seconds).
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Abort one attempt when nothing moved for this long.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = parse_duration)]
    pub stall_limit: Duration,
    /// Retries of transient failures (network, timeout, server errors).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Delay before the first retry; it doubles for each further one (with jitter).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// A sync refuses to delete more than this percentage of a repository's refs (when more
    /// than 10 would go; deleting all of them is always refused): a remote that suddenly lists
    /// far fewer refs must not wipe a mirror.
    #[arg(long, default_value_t = 50, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub prune_limit: u8,
    /// Delete every ref the remote no longer lists, however many.
    #[arg(long)]
    pub force_prune: bool,
    /// How much one code host gets (repeatable): `HOST=N` transfers at once, `HOST=N/M` and
    /// at most M started per minute (0: no limit); `*=N[/M]` for every host not named
    /// (default: 32 at once, no rate limit). In a cluster the limits are the cluster's: each
    /// node takes its part (at least 1). A host that answers 429, or 503 with Retry-After,
    /// is paused for the time it asks, whatever the limits.
    #[arg(long = "host-limit", value_name = "HOST=N[/PER_MINUTE]", value_parser = parse_host_rule)]
    pub host_limits: Vec<String>,
    /// Repack a repository (one pack, bitmap, commit-graph; with the git command line) once a
    /// sync leaves it holding more than this many packs; 0: never.
    #[arg(long, default_value_t = 50, value_name = "PACKS")]
    pub repack_after: usize,
    /// Keep this much of the root's file system free (`10%`, or a size such as `50G`): below
    /// it, new repositories fail with `storage` and those already there keep syncing.
    #[arg(long, value_name = "PERCENT|SIZE", value_parser = parse_min_free)]
    pub min_free: Option<gitfleet_git::MinFree>,
    /// Bytes one transfer may receive (suffixes K, M, G, T: powers of 1024).
    #[arg(long, default_value = "20G", value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: u64,
    /// The largest object a pack may hold, unpacked.
    #[arg(long, default_value = "512M", value_name = "SIZE", value_parser = parse_size)]
    pub max_object_size: u64,
    /// Bytes a server may send while listing refs (they are held in memory).
    #[arg(long, default_value = "128M", value_name = "SIZE", value_parser = parse_size)]
    pub max_listing_size: u64,
    /// Refs a remote may list.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_refs: usize,
    /// The longest ref name a remote may list, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_ref_name: usize,
    /// Abort an attempt that receives fewer bytes per second than this, averaged over
    /// --rate-window.
    #[arg(long, default_value_t = 1, value_name = "BYTES")]
    pub min_rate: u64,
    /// The window --min-rate is averaged over.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub rate_window: Duration,
    /// The shortest time between two scheduled syncs of a repository (serve, node): a
    /// repository is synced again half the time since it last changed, within these bounds.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub min_interval: Duration,
    /// The longest time between two scheduled syncs of a repository.
    #[arg(long, default_value = "8h", value_name = "DURATION", value_parser = parse_duration)]
    pub max_interval: Duration,
    /// Quarantine a repository (no scheduled syncs until `gitfleet resume`) after this many
    /// failures in a row that end in a permanent error (not found, authentication).
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub quarantine_after: u32,
    /// The private key for ssh remotes (the only identity offered); `HOST=FILE` gives one
    /// host a key of its own, which no other host is offered (repeatable).
    #[arg(long = "ssh-key", value_name = "[HOST=]FILE", env = "GITFLEET_SSH_KEY")]
    pub ssh_keys: Vec<String>,
    /// Host keys of ssh remotes (a known_hosts file): any other host key fails the transfer.
    #[arg(long, value_name = "FILE", env = "GITFLEET_SSH_KNOWN_HOSTS")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// Certificate authorities (PEM) to trust for https remotes, besides the system's.
    #[arg(long, value_name = "FILE", env = "GITFLEET_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub auth: CredentialArgs,
}

/// Which token goes to which host (credentials.rs): for work on repositories and for the cache.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// Username sent with GITFLEET_TOKEN.
    #[arg(long, env = "GITFLEET_USERNAME", default_value = "git")]
    pub username: String,
    /// Hosts GITFLEET_TOKEN may be sent to (repeatable or comma-separated; `*.example.com`
    /// matches subdomains). Without it the command line sends it to the hosts of the
    /// repositories it is given; a node needs it.
    #[arg(
        long = "token-host",
        value_name = "HOST",
        env = "GITFLEET_TOKEN_HOSTS",
        value_delimiter = ','
    )]
    pub token_hosts: Vec<String>,
    /// A file of `HOST USERNAME TOKEN_FILE` lines: which token goes to which host.
    #[arg(long, value_name = "FILE", env = "GITFLEET_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

impl WorkArgs {
    /// Trusts `--ca-file`'s certificate authorities for https remotes, and sets how ssh
    /// remotes are reached.
    pub fn transport_settings(&self) -> anyhow::Result<()> {
        let mut ssh = gitfleet_git::SshSettings {
            known_hosts: self.ssh_known_hosts.clone(),
            ..Default::default()
        };
        for key in &self.ssh_keys {
            // `HOST=FILE`, unless what comes before `=` is a path.
            match key.split_once('=') {
                Some((host, file)) if !host.is_empty() && !host.contains('/') => {
                    ssh.host_identities.insert(host.to_string(), file.into());
                }
                _ if ssh.identity.is_some() => {
                    anyhow::bail!("--ssh-key: only one key may be for every host; use HOST=FILE")
                }
                _ => ssh.identity = Some(key.into()),
            }
        }
        gitfleet_git::configure_ssh(ssh)
            .map_err(|e| anyhow::anyhow!("cannot use the ssh settings: {e}"))?;
        if let Some(path) = &self.ca_file {
            gitfleet_git::trust_ca_file(path)
                .map_err(|e| anyhow::anyhow!("cannot use the CA file {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// When a repository counts as stale in metrics: twice the longest scheduled interval (as
    /// `status --stale-after` defaults to).
    pub fn stale_after(&self) -> Duration {
        2 * self.max_interval.max(self.min_interval)
    }

    /// The actors' configuration: a pool of `concurrency` workers running git with these limits.
    pub fn fleet_config(
        &self,
        layout: &gitfleet_git::Layout,
        policy: gitfleet_git::Policy,
        credentials: gitfleet_git::CredentialsConfig,
        concurrency: u16,
        node: String,
    ) -> gitfleet_actors::FleetConfig {
        let executor = gitfleet_actors::GitExecutor {
            layout: layout.clone(),
            policy,
            credentials,
            limits: gitfleet_git::Limits {
                time_limit: self.time_limit.max(Duration::from_secs(1)),
                stall_limit: self.stall_limit.max(Duration::from_secs(1)),
                max_prune_percent: self.prune_limit,
                force_prune: self.force_prune,
                max_bytes: self.max_bytes,
                max_object_bytes: self.max_object_size,
                max_listing_bytes: self.max_listing_size,
                max_refs: self.max_refs,
                max_ref_name: self.max_ref_name,
                min_rate: self.min_rate,
                rate_window: self.rate_window.max(Duration::from_secs(1)),
                min_free: self.min_free,
                repack_after_packs: self.repack_after,
                ..gitfleet_git::Limits::default()
            },
        };
        gitfleet_actors::FleetConfig {
            layout: layout.clone(),
            concurrency: usize::from(concurrency),
            retry: gitfleet_actors::RetryPolicy {
                max_retries: self.retries,
                base_delay: self.retry_delay.min(Duration::from_secs(86_400)),
                ..gitfleet_actors::RetryPolicy::default()
            },
            node,
            executor: std::sync::Arc::new(executor),
            hosts: gitfleet_actors::HostLimits::from_rules(
                self.host_limits.iter().map(String::as_str),
            )
            .expect("checked when parsed"),
            schedule: gitfleet_actors::SchedulePolicy {
                min_interval: self.min_interval,
                max_interval: self.max_interval.max(self.min_interval),
                quarantine_after: self.quarantine_after,
                ..gitfleet_actors::SchedulePolicy::default()
            },
        }
    }
}

/// One `--host-limit` rule, checked (kept as written: `HostLimits::from_rules` reads them all).
fn parse_host_rule(text: &str) -> Result<String, String> {
    gitfleet_actors::parse_host_rule(text).map(|_| text.to_string())
}

/// `90s`, `10m`, `8h`, `1h 30m`; a bare number is seconds (`0.2` too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("'{text}' is not a duration of zero or more seconds"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration (like 30s, 10m, 8h): {e}"))
}

/// `10%` or a size.
fn parse_min_free(text: &str) -> Result<gitfleet_git::MinFree, String> {
    gitfleet_git::MinFree::parse(text, parse_size)
}

/// A point in time: an RFC 3339 timestamp, or a duration before now (`2h`, `7d`).
fn parse_since(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(at) = text.trim().parse::<jiff::Timestamp>() {
        return Ok(at);
    }
    let ago = parse_duration(text).map_err(|_| {
        format!("'{text}' is neither a time (2026-01-31T12:00:00Z) nor a duration (2h, 7d)")
    })?;
    let ago = jiff::SignedDuration::try_from(ago).map_err(|e| e.to_string())?;
    jiff::Timestamp::now()
        .checked_sub(ago)
        .map_err(|_| format!("'{text}' is too long ago"))
}

/// `512`, `64K`, `512M`, `20G`, `1T` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (a number with K, M, G or T)"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.2"), Ok(Duration::from_millis(200)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

/// Who this process is to the NATS server. Passwords and tokens come from the environment only
/// (`GITFLEET_NATS_PASSWORD`, `GITFLEET_NATS_TOKEN`): flags show in process listings.
#[derive(Debug, Args)]
pub struct NatsAuthArgs {
    /// A NATS `.creds` file (JWT and nkey seed).
    #[arg(long, global = true, env = "GITFLEET_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[arg(long, global = true, env = "GITFLEET_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// NATS user name; the password is GITFLEET_NATS_PASSWORD.
    #[arg(long, global = true, env = "GITFLEET_NATS_USER", value_name = "NAME")]
    pub nats_user: Option<String>,
    /// CA certificates (PEM) that sign the NATS server's certificate; requires TLS.
    #[arg(long, global = true, env = "GITFLEET_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// A client certificate (PEM) for servers that verify clients, with --nats-key.
    #[arg(long, global = true, env = "GITFLEET_NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "GITFLEET_NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
}

impl NatsAuthArgs {
    /// The options with the secrets from the environment.
    pub fn auth(&self) -> gitfleet_cluster::NatsAuth {
        let secret = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(gitfleet_git::Secret::new)
        };
        gitfleet_cluster::NatsAuth {
            creds_file: self.nats_creds.clone(),
            nkey_file: self.nats_nkey.clone(),
            user: self.nats_user.clone(),
            password: secret("GITFLEET_NATS_PASSWORD"),
            token: secret("GITFLEET_NATS_TOKEN"),
            tls_ca: self.nats_ca.clone(),
            tls_cert: self.nats_cert.clone(),
            tls_key: self.nats_key.clone(),
        }
    }
}

/// `gitfleet cache`: the cache in one directory (gitfleet-cache).
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The cache's directory (created if missing).
    #[arg(
        long,
        env = "GITFLEET_CACHE_DIR",
        default_value = "cache",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
    /// An entry not refreshed for longer than this is STALE (and `add` refreshes it).
    #[arg(long, default_value = "60m", value_name = "DURATION", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Above this size, the least recently used entries are evicted (never the one just
    /// cached).
    #[arg(long, default_value_t = 10.0, value_name = "GB")]
    pub max_size_gb: f64,
    #[command(flatten)]
    pub auth: CredentialArgs,
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Cache git repositories (URLs) or local directories (copied); an entry already there is
    /// refreshed if it is not FRESH.
    Add {
        #[arg(required = true)]
        sources: Vec<String>,
        /// The entry's name (one source only); default: the source's last path segment.
        #[arg(long)]
        name: Option<String>,
        /// Print the entries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the entries with their status (FRESH, STALE, MISSING, ERROR).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Refresh entries by name: every entry that is not FRESH when none is named. A failed
    /// refresh keeps the previous copy.
    Refresh {
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove entries and their copies.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Totals: entries, size, by status and by type.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Print the path of an entry's copy.
    Path { name: String },
}

/// Notifications of `serve` and `node` (notify.rs).
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// POST each event (`{"event", "task"}` JSON) to this URL; retried with backoff until
    /// delivered. Signed (`X-Gitfleet-Signature: sha256=<hex>`) with GITFLEET_NOTIFY_SECRET.
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Run this command for each event, the event's JSON on its standard input. Its words are
    /// split on white space and run as they are: no shell.
    #[arg(long, value_name = "CMD")]
    pub notify_exec: Option<String>,
    /// Which events (comma-separated): completed (something changed), failed, quarantined.
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_parser = ["completed", "failed", "quarantined"])]
    pub notify_on: Vec<String>,
    /// The secret notifications are signed with (only from the environment).
    #[arg(
        long,
        env = "GITFLEET_NOTIFY_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub notify_secret: Option<String>,
}

impl NotifyArgs {
    pub fn notifications(&self) -> anyhow::Result<crate::notify::Notifications> {
        let url = self
            .notify_url
            .as_deref()
            .map(|u| {
                reqwest::Url::parse(u)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| anyhow::anyhow!("--notify-url: {u:?} is not an http(s) URL"))
            })
            .transpose()?;
        Ok(crate::notify::Notifications {
            url,
            exec: self
                .notify_exec
                .as_deref()
                .map(|c| c.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            secret: self
                .notify_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(gitfleet_git::Secret::new),
            kinds: self.notify_on.clone(),
        })
    }
}

/// The HTTP listener of `serve` and `node`: webhooks, metrics and the dashboard. Its secrets
/// come only from the environment (`GITFLEET_WEBHOOK_SECRET`, `GITFLEET_LISTEN_TOKEN`), never
/// from the command line, where every user of the host could read them.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Serve webhooks (GitHub, GitLab, Gitea/Forgejo, plain), `/metrics` and the dashboard
    /// (`/`) on this address, e.g. 127.0.0.1:8080: a push syncs its repository within seconds.
    /// Webhooks are signed with GITFLEET_WEBHOOK_SECRET; the dashboard's actions need
    /// GITFLEET_LISTEN_TOKEN (without it, the dashboard is read-only).
    #[arg(long = "listen", value_name = "ADDR")]
    pub address: Option<std::net::SocketAddr>,
}

impl ListenArgs {
    /// The listener these options ask for, if any, with its secrets from the environment.
    pub fn listener(&self) -> Option<crate::listener::Listen> {
        let secret = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|s| !s.is_empty())
                .map(gitfleet_git::Secret::new)
        };
        Some(crate::listener::Listen {
            address: self.address?,
            webhook_secret: secret("GITFLEET_WEBHOOK_SECRET"),
            token: secret("GITFLEET_LISTEN_TOKEN"),
        })
    }
}
