//! `gitfleet-test-servers`: the fixture repositories served by a real `git daemon` and smart
//! HTTP (`git http-backend`, open and behind Basic auth) on 127.0.0.1, for test suites in other
//! languages (the Python package's pytest suite). The same servers as the Rust tests use.
//!
//! With `--nats`, also a nats-server with JetStream on a free port (for a cluster the caller
//! starts its `gitfleet node` processes on).
//!
//! Prints one line of JSON (where everything is), then reads commands from standard input:
//! `mutate NAME` rewrites a fixture repository (see `Fixtures::mutate`) and answers `ok`.
//! Everything stops and is deleted when standard input closes.

use std::io::{BufRead, Write};

use gitfleet_tests::{Fixtures, GitDaemon, HttpOptions, HttpServer, NatsServer};

const USER: &str = "alice";
const TOKEN: &str = "s3cret-fixture-token";

fn main() {
    let fixtures = Fixtures::new();
    let daemon = GitDaemon::start(&fixtures.root);
    let http = HttpServer::start(&fixtures.root, HttpOptions::default());
    let http_auth = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            auth: Some((USER.to_string(), TOKEN.to_string())),
            ..HttpOptions::default()
        },
    );
    // Slow enough that a clone of big.git (4 MiB) is still running when a test cancels it.
    let http_slow = HttpServer::start(
        &fixtures.root,
        HttpOptions {
            throttle_bytes_per_sec: Some(1024 * 1024),
            ..HttpOptions::default()
        },
    );
    let nats = std::env::args()
        .any(|a| a == "--nats")
        .then(NatsServer::start);
    let ready = serde_json::json!({
        "nats": nats.as_ref().map(NatsServer::url),
        "repos": fixtures.root,
        "git": format!("git://127.0.0.1:{}", daemon.port()),
        "http": format!("http://127.0.0.1:{}", http.port()),
        "http_auth": format!("http://127.0.0.1:{}", http_auth.port()),
        "http_slow": format!("http://127.0.0.1:{}", http_slow.port()),
        "user": USER,
        "token": TOKEN,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{ready}");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.split_once(' ') {
            Some(("mutate", name)) if !name.contains("..") => {
                fixtures.mutate(name.trim());
                "ok".to_string()
            }
            _ => format!("unknown command: {line}"),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
