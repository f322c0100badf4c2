//! Support for gitfleet's end-to-end tests: deterministic fixture repositories, and real
//! `git daemon` and smart-HTTP (`git http-backend`) servers on 127.0.0.1, plus helpers that
//! ask the real git CLI what a repository contains; and a real `nats-server` with JetStream
//! for cluster mode, with a sandbox of `gitfleet node` processes on it; and a storage root of
//! its own for engine tests.
//!
//! Nothing here is a mock: every server is the git (or NATS) project's own implementation,
//! so a test passing means gitfleet interoperates with git, not with our idea of git. Every process
//! started here is killed when its owner is dropped.

mod cluster;
mod daemon;
mod engine_root;
mod fixtures;
mod gitcli;
mod http;
mod http_client;
mod nats;
mod sshd;
mod tls;

pub use cluster::{
    CLUSTER_WAIT, NodeProcess, Sandbox, eventually, mirror_all, mirror_one, wait_final,
    wait_for_nodes,
};
pub use daemon::GitDaemon;
pub use engine_root::{EngineRoot, test_limits};
pub use fixtures::Fixtures;
pub use gitcli::{
    free_port, fsck, git_command, git_output, head_target, mirror_clone, objects, refs,
    remote_urls, run_git, try_git, try_mirror_clone, wait_until,
};
pub use http::{AUTH_REALM, HttpOptions, HttpServer, LoggedRequest, Refusal};
pub use http_client::{http_get, http_post};
pub use nats::{NatsOptions, NatsServer};
pub use sshd::SshServer;
pub use tls::{TestCa, TlsProxy};
