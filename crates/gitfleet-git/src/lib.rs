//! gitfleet's git engine: blocking plumbing on gix.
//!
//! This crate knows URLs, the storage layout and how to clone, mirror, initialise and sync one
//! repository. It runs on the calling thread (no tokio, no actors): callers put it on a blocking
//! thread and talk to it through [`Control`] (interrupt) and a progress callback.

mod daemon;
mod engine;
mod error;
mod fresh;
mod layout;
mod progress;
mod secret;
mod threads;
mod url;

pub use engine::{Control, Limits, Request, execute, init_tls};
pub use error::GitError;
pub use layout::{InitName, Layout, relative_repo_path, task_id};
pub use progress::Progress;
pub use secret::{Credentials, CredentialsConfig, Redactor, Secret, scrub_userinfo};
pub use url::{Policy, RepoUrl, Scheme, UrlError};
