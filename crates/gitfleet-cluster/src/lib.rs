//! gitfleet over NATS: the embedded actors on every node, JetStream for what must survive a
//! crash (the jobs stream, the task bucket), core NATS for what is frequent and ephemeral
//! (progress events, cancel requests), and a request/reply API any NATS client can use.

pub mod api;
mod auth;
pub mod client;
mod commit_log;
pub mod follow;
mod freshness;
mod infra;
mod intake;
mod kv_store;
mod node;
pub mod placement;
pub mod subjects;
mod takeover;

pub use auth::NatsAuth;
pub use client::{Client, ClientError};
pub use follow::Follow;
pub use infra::{ClusterError, Durability, Nats};
pub use kv_store::{KvStore, LINGER};
pub use node::{NodeOptions, Watcher, run_node};
pub use subjects::Subjects;
