//! Checks the NATS test support itself, speaking the NATS client protocol over plain TCP, so
//! a cluster-mode failure can be blamed on gitfleet rather than on the test server.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gitfleet_tests::{NatsOptions, NatsServer, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// Only guards against a hung read; no test asserts how long anything takes.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const INBOX: &str = "_INBOX.selftest";

/// A minimal NATS client: the INFO greeting, then request/reply over one inbox.
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    /// Connects and returns the client with the server's INFO JSON.
    fn connect(server: &NatsServer) -> (RawClient, Value) {
        let stream =
            TcpStream::connect(("127.0.0.1", server.port())).expect("connecting to nats-server");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("setting a read timeout");
        let writer = stream.try_clone().expect("cloning the TCP stream");
        let mut client = RawClient {
            reader: BufReader::new(stream),
            writer,
        };
        let line = client.read_line();
        let json = line
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("nats-server greeted with {line:?}, not INFO"));
        let info = serde_json::from_str(json).expect("INFO carries JSON");
        (client, info)
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading from nats-server");
        assert!(n > 0, "nats-server closed the connection");
        line.trim_end().to_owned()
    }

    fn send(&mut self, data: &[u8]) {
        self.writer.write_all(data).expect("writing to nats-server");
    }

    /// CONNECT with headers (so a request nobody answers gets a 503 instead of silence),
    /// then subscribe to the reply inbox.
    fn handshake(&mut self) {
        self.send(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
                 \"no_responders\":true,\"protocol\":1}}\r\nSUB {INBOX}.> 1\r\nPING\r\n"
            )
            .as_bytes(),
        );
        loop {
            match self.read_line().as_str() {
                "PONG" => return,
                "PING" => self.send(b"PONG\r\n"),
                line if line.starts_with("-ERR") => panic!("nats-server refused CONNECT: {line}"),
                _ => {}
            }
        }
    }

    /// Publishes `payload` to `subject` and returns the reply's headers (if any) and body.
    fn request(&mut self, subject: &str, payload: &str, n: usize) -> (Option<String>, String) {
        let reply = format!("{INBOX}.{n}");
        self.send(format!("PUB {subject} {reply} {}\r\n{payload}\r\n", payload.len()).as_bytes());
        loop {
            let line = self.read_line();
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["PING"] => self.send(b"PONG\r\n"),
                ["MSG", subj, _sid, len] if *subj == reply => {
                    let body = self.read_payload(len.parse().expect("MSG length"));
                    return (None, body);
                }
                ["HMSG", subj, _sid, hlen, total] if *subj == reply => {
                    let hlen: usize = hlen.parse().expect("HMSG header length");
                    let all = self.read_payload(total.parse().expect("HMSG total length"));
                    let (headers, body) = all.split_at(hlen);
                    return (Some(headers.to_owned()), body.to_owned());
                }
                [first, ..] if first.starts_with("-ERR") => panic!("nats-server error: {line}"),
                _ => {}
            }
        }
    }

    fn read_payload(&mut self, len: usize) -> String {
        let mut buf = vec![0u8; len + 2];
        self.reader
            .read_exact(&mut buf)
            .expect("reading a message payload");
        assert!(buf.ends_with(b"\r\n"), "payload not followed by CRLF");
        buf.truncate(len);
        String::from_utf8(buf).expect("UTF-8 payload")
    }

    /// A JetStream API request, retried while JetStream has no responder yet (503).
    fn js_api(&mut self, subject: &str, payload: &str) -> Value {
        let mut n = 0;
        let mut response = None;
        wait_until(WAIT, &format!("JetStream answers {subject}"), || {
            n += 1;
            match self.request(subject, payload, n) {
                (Some(headers), _) if headers.contains("503") => false,
                (_, body) => {
                    response = Some(body);
                    true
                }
            }
        });
        let body = response.expect("set when wait_until returned");
        let value: Value = serde_json::from_str(&body).expect("JetStream replies with JSON");
        assert!(
            value.get("error").is_none(),
            "JetStream {subject} failed: {body}"
        );
        value
    }
}

fn info(server: &NatsServer) -> Value {
    RawClient::connect(server).1
}

fn stream_messages(server: &NatsServer) -> u64 {
    let (mut client, _) = RawClient::connect(server);
    client.handshake();
    let info = client.js_api("$JS.API.STREAM.INFO.SELFTEST", "");
    info["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("stream info without a message count: {info}"))
}

/// Creates stream SELFTEST on `selftest.>` and stores one message in it.
fn store_one_message(server: &NatsServer) {
    let (mut client, _) = RawClient::connect(server);
    client.handshake();
    client.js_api(
        "$JS.API.STREAM.CREATE.SELFTEST",
        r#"{"name":"SELFTEST","subjects":["selftest.>"],"storage":"file"}"#,
    );
    let ack = client.js_api("selftest.one", "hello");
    assert_eq!(ack["stream"], "SELFTEST", "publish ack: {ack}");
    assert_eq!(ack["seq"], 1, "publish ack: {ack}");
}

fn refuses_connections(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

#[test]
fn server_greets_with_jetstream_info() {
    let mut server = NatsServer::start();
    assert!(server.is_running());
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.store_dir().is_dir());
    let info = info(&server);
    assert_eq!(info["jetstream"], true, "INFO: {info}");
    assert_eq!(info["port"], server.port(), "INFO: {info}");
    assert_eq!(info["server_name"], server.name(), "INFO: {info}");
    assert!(server.log_output().contains("Server is ready"));
}

#[test]
fn max_payload_option_reaches_the_server() {
    let server = NatsServer::start_with(NatsOptions {
        max_payload: Some(4 * 1024 * 1024),
        ..NatsOptions::default()
    });
    let info = info(&server);
    assert_eq!(info["max_payload"], 4 * 1024 * 1024, "INFO: {info}");
    assert_eq!(info["jetstream"], true, "INFO: {info}");
}

#[test]
fn restart_keeps_port_and_store() {
    let mut server = NatsServer::start();
    let port = server.port();
    let store = server.store_dir().to_owned();
    store_one_message(&server);
    assert_eq!(stream_messages(&server), 1);

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.store_dir(), store);
    assert_eq!(info(&server)["jetstream"], true);
    assert_eq!(stream_messages(&server), 1, "the stream survives a restart");
}

#[test]
fn kill_refuses_connections_and_restart_recovers_the_store() {
    let mut server = NatsServer::start();
    let port = server.port();
    store_one_message(&server);

    server.kill();
    assert!(!server.is_running());
    wait_until(WAIT, "the killed server's port refuses connections", || {
        refuses_connections(port)
    });

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(info(&server)["jetstream"], true);
    assert_eq!(stream_messages(&server), 1, "the stream survives SIGKILL");
}

#[test]
fn parallel_servers_are_independent() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    assert_ne!(a.name(), b.name());
    assert_eq!(info(&a)["port"], a.port());
    assert_eq!(info(&b)["port"], b.port());
}

#[test]
fn drop_kills_the_server() {
    let server = NatsServer::start();
    let port = server.port();
    drop(server);
    wait_until(
        WAIT,
        "the dropped server's port refuses connections",
        || refuses_connections(port),
    );
}
