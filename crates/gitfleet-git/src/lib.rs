//! gitfleet's git engine: blocking plumbing on gix.
//!
//! This crate knows URLs, the storage layout and how to clone, mirror, initialise and sync one
//! repository. It runs on the calling thread (no tokio, no actors): callers put it on a blocking
//! thread and talk to it through [`Control`] (interrupt) and a progress callback.

mod daemon;
mod disk;
mod engine;
mod error;
mod history;
mod http;
mod layout;
mod locks;
mod maintenance;
mod marker;
mod meter;
mod place;
mod progress;
mod pushback;
mod secret;
mod ssh;
mod target;
mod text;
mod threads;
mod tls;
mod url;
mod worktree;

pub use disk::disk_usage;
pub use engine::{Control, Limits, MinFree, Request, execute};
pub use error::GitError;
pub use history::recent_commits;
pub use layout::Layout;
pub use maintenance::{MAX_AT_ONCE as MAX_REPACKS_AT_ONCE, Repacked, maintain};
pub use progress::Progress;
pub use pushback::{DEFAULT_PAUSE, MAX_PAUSE};
pub use secret::{Credentials, CredentialsConfig, Redactor, Secret, scrub_userinfo};
pub use ssh::{SshSettings, configure_ssh};
pub use target::{InitName, Source, Target, is_task_id};
pub use text::{MAX_MESSAGE_CHARS, printable};
pub use tls::{init_tls, trust_ca_file};
pub use url::{LocalPaths, Policy, RepoUrl, Scheme, UrlError};
pub use worktree::checkout_is_behind;
