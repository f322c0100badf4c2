//! Smart-HTTP git server on 127.0.0.1: tiny_http in front of the real `git http-backend` CGI,
//! with switches for the failure modes gitfleet must survive (auth, transient errors, slow
//! and stalled transfers).

use std::io::{self, BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tiny_http::{Header, Request, Response, StatusCode};

use crate::gitcli::{isolate_git_env, run_git};

/// How long drop waits for request threads before leaving them behind; only a client that
/// stopped reading can keep one busy that long, and the test must not hang on it.
const DROP_GRACE: Duration = Duration::from_secs(5);

pub const AUTH_REALM: &str = "gitfleet-test";

#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `(username, token)`: any request without exactly these HTTP Basic credentials gets
    /// `401` with `WWW-Authenticate: Basic realm="gitfleet-test"`.
    pub auth: Option<(String, String)>,
    /// The first N requests the server receives (in total, whatever the path) get `503`.
    pub fail_first: usize,
    /// Pace every response body to about this many bytes per second.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Once a response body has handed this many bytes to the connection, send nothing more
    /// and keep the connection open until the server is dropped. tiny_http writes chunked
    /// bodies in 8 KiB chunks, so the client receives at most this many bytes.
    pub stall_after_bytes: Option<u64>,
    /// The first `count` requests get this refusal (after `fail_first`).
    pub refuse_first: Option<Refusal>,
}

/// A code host asking to slow down: `status` (429, 503, 403) with these headers and body.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub count: usize,
    pub status: u16,
    /// e.g. `("Retry-After", "2")`, `("x-ratelimit-remaining", "0")`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query, e.g. `/alpha.git/info/refs?service=git-upload-pack`.
    pub url: String,
    /// The `Git-Protocol` header (`version=2` when the client asked for protocol v2).
    pub git_protocol: Option<String>,
    /// The raw `Authorization` header.
    pub authorization: Option<String>,
    /// `Content-Encoding` of the request body (git gzips request bodies over 1 KiB).
    pub content_encoding: Option<String>,
    /// `Content-Length` of the request body; None for a chunked (or absent) body.
    pub content_length: Option<usize>,
    pub status: u16,
    /// When the request arrived.
    pub received: Instant,
}

#[derive(Debug)]
struct Shared {
    base: PathBuf,
    backend: PathBuf,
    opts: HttpOptions,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    body_bytes_sent: AtomicU64,
    log: Mutex<Vec<LoggedRequest>>,
    shut_down: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn is_shut_down(&self) -> bool {
        *self.shut_down.lock().expect("shutdown lock")
    }

    /// Waits `limit` (forever if None) or until shutdown; true if the server shut down.
    fn pause(&self, limit: Option<Duration>) -> bool {
        let guard = self.shut_down.lock().expect("shutdown lock");
        match limit {
            None => *self
                .wake
                .wait_while(guard, |down| !*down)
                .expect("shutdown lock"),
            Some(limit) => {
                *self
                    .wake
                    .wait_timeout_while(guard, limit, |down| !*down)
                    .expect("shutdown lock")
                    .0
            }
        }
    }

    fn record(&self, entry: LoggedRequest) {
        self.log.lock().expect("request log lock").push(entry);
    }
}

/// A running smart-HTTP server; stops accepting, releases stalled responses and waits
/// (boundedly) for request threads on drop.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("port", &self.port)
            .field("base", &self.shared.base)
            .field("opts", &self.shared.opts)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Serves every repository under `base_path` (no export-ok file needed).
    pub fn start(base_path: &Path, opts: HttpOptions) -> HttpServer {
        let base = base_path
            .canonicalize()
            .unwrap_or_else(|e| panic!("http server base path {}: {e}", base_path.display()));
        let backend = http_backend_path();
        let server = tiny_http::Server::http((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("starting tiny_http on 127.0.0.1:0: {e}"));
        let port = server
            .server_addr()
            .to_ip()
            .expect("tiny_http listens on TCP")
            .port();
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            base,
            backend,
            opts,
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            body_bytes_sent: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            shut_down: Mutex::new(false),
            wake: Condvar::new(),
        });
        let handlers = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (server, shared, handlers) = (
                Arc::clone(&server),
                Arc::clone(&shared),
                Arc::clone(&handlers),
            );
            std::thread::spawn(move || accept_loop(&server, &shared, &handlers))
        };
        HttpServer {
            server,
            port,
            shared,
            acceptor: Some(acceptor),
            handlers,
        }
    }

    /// `http://127.0.0.1:PORT/<repo_rel>`, e.g. `url("alpha.git")`.
    pub fn url(&self, repo_rel: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, repo_rel)
    }

    /// `http://USER:TOKEN@127.0.0.1:PORT/<repo_rel>`, userinfo percent-encoded.
    pub fn url_with_credentials(&self, repo_rel: &str, user: &str, token: &str) -> String {
        format!(
            "http://{}:{}@127.0.0.1:{}/{}",
            percent_encode(user),
            percent_encode(token),
            self.port,
            repo_rel
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_path(&self) -> &Path {
        &self.shared.base
    }

    /// Requests received so far, including rejected ones.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The most requests the server was answering at once so far.
    pub fn max_concurrent_requests(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every request that got a status so far, in order of that decision.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("request log lock").clone()
    }

    /// The `Authorization` header of each logged request that had one.
    pub fn seen_authorization_headers(&self) -> Vec<String> {
        self.request_log()
            .into_iter()
            .filter_map(|r| r.authorization)
            .collect()
    }

    /// Response body bytes handed to connections so far, across all requests; lets a test
    /// wait until a transfer is under way without guessing a duration.
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        *self.shared.shut_down.lock().expect("shutdown lock") = true;
        self.shared.wake.notify_all();
        self.server.unblock();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let handlers = std::mem::take(&mut *self.handlers.lock().expect("handler list lock"));
        let deadline = Instant::now() + DROP_GRACE;
        for handler in handlers {
            while !handler.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handler.is_finished() {
                let _ = handler.join();
            }
        }
    }
}

fn http_backend_path() -> PathBuf {
    let exec_path = run_git(Path::new("/"), &["--exec-path"]);
    let backend = Path::new(exec_path.trim()).join("git-http-backend");
    assert!(
        backend.is_file(),
        "{} does not exist: the end-to-end tests need git's http-backend program (part of \
         git, e.g. `apt-get install git`)",
        backend.display()
    );
    backend
}

fn accept_loop(
    server: &tiny_http::Server,
    shared: &Arc<Shared>,
    handlers: &Mutex<Vec<JoinHandle<()>>>,
) {
    loop {
        match server.recv() {
            Ok(request) => {
                let shared = Arc::clone(shared);
                let handler = std::thread::spawn(move || handle(&shared, request));
                let mut handlers = handlers.lock().expect("handler list lock");
                handlers.retain(|h| !h.is_finished());
                handlers.push(handler);
            }
            Err(_) if shared.is_shut_down() => return,
            // An accept or parse error on one connection; the server itself is fine.
            Err(_) => {}
        }
    }
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
}

/// Every response closes its connection. tiny_http keeps serving accepted keep-alive
/// connections after the server is dropped, but nothing would answer their requests any
/// more, so a client reusing one would hang instead of seeing the server gone.
fn respond<R: Read>(request: Request, response: Response<R>) -> io::Result<()> {
    request.respond(response.with_header(make_header("Connection", "close")))
}

fn make_header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| panic!("invalid header {name}: {value}"))
}

/// Counts a request as being answered from its arrival until its body's last byte is about to
/// go out (so the count never includes a response the client is already done with), or until
/// the handler ends.
struct InFlight<'a> {
    shared: &'a Shared,
    ended: std::sync::atomic::AtomicBool,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight {
            shared,
            ended: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn end(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

fn handle(shared: &Shared, request: Request) {
    let in_flight = InFlight::enter(shared);
    let received = Instant::now();
    let index = shared.requests.fetch_add(1, Ordering::SeqCst);
    let authorization = header(&request, "Authorization");
    let entry = |status: u16| LoggedRequest {
        method: request.method().as_str().to_owned(),
        url: request.url().to_owned(),
        git_protocol: header(&request, "Git-Protocol"),
        authorization: authorization.clone(),
        content_encoding: header(&request, "Content-Encoding"),
        content_length: request.body_length(),
        status,
        received,
    };

    if index < shared.opts.fail_first || shared.is_shut_down() {
        shared.record(entry(503));
        let _ = respond(
            request,
            Response::from_string("injected failure (HttpOptions::fail_first)\n")
                .with_status_code(503),
        );
        return;
    }

    if let Some(refusal) = &shared.opts.refuse_first
        && index < shared.opts.fail_first + refusal.count
    {
        shared.record(entry(refusal.status));
        let mut response =
            Response::from_string(refusal.body.clone()).with_status_code(refusal.status);
        for (name, value) in &refusal.headers {
            response = response.with_header(make_header(name, value));
        }
        let _ = respond(request, response);
        return;
    }

    let remote_user = match &shared.opts.auth {
        None => None,
        Some((user, token)) if basic_auth_matches(authorization.as_deref(), user, token) => {
            Some(user.clone())
        }
        Some(_) => {
            shared.record(entry(401));
            let challenge = format!("Basic realm=\"{AUTH_REALM}\"");
            let _ = respond(
                request,
                Response::from_string("authentication required\n")
                    .with_status_code(401)
                    .with_header(make_header("WWW-Authenticate", &challenge)),
            );
            return;
        }
    };

    let entry = entry(0);
    serve_cgi(shared, &in_flight, request, remote_user, |status| {
        shared.record(LoggedRequest { status, ..entry });
    });
}

fn basic_auth_matches(authorization: Option<&str>, user: &str, token: &str) -> bool {
    let Some((scheme, encoded)) = authorization.and_then(|h| h.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && BASE64
            .decode(encoded.trim())
            .is_ok_and(|decoded| decoded == format!("{user}:{token}").as_bytes())
}

/// Runs one request through `git http-backend` as a CGI/1.1 script.
fn serve_cgi(
    shared: &Shared,
    in_flight: &InFlight<'_>,
    mut request: Request,
    remote_user: Option<String>,
    record: impl FnOnce(u16),
) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut cmd = Command::new(&shared.backend);
    isolate_git_env(&mut cmd);
    cmd.env("GATEWAY_INTERFACE", "CGI/1.1")
        .env(
            "SERVER_PROTOCOL",
            format!("HTTP/{}", request.http_version()),
        )
        .env("GIT_PROJECT_ROOT", &shared.base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", request.method().as_str())
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(addr) = request.remote_addr() {
        cmd.env("REMOTE_ADDR", addr.ip().to_string());
    }
    if let Some(user) = &remote_user {
        cmd.env("REMOTE_USER", user);
    }
    if let Some(length) = request.body_length() {
        cmd.env("CONTENT_LENGTH", length.to_string());
    }
    // Without these http-backend would not know to inflate a gzip body or to speak v2.
    for (name, var) in [
        ("Content-Type", "CONTENT_TYPE"),
        ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ("Git-Protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = header(&request, name) {
            cmd.env(var, value);
        }
    }

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            record(500);
            let _ = respond(
                request,
                Response::from_string(format!("cannot run git http-backend: {e}\n"))
                    .with_status_code(500),
            );
            return;
        }
    };

    // The CGI's output is drained on its own thread (into memory, unbounded) while this one
    // feeds it the request body: a CGI that answers before reading all input can then never
    // deadlock against us.
    let mut stdout = child.stdout.take().expect("CGI stdout is piped");
    let (tx, rx) = mpsc::channel();
    let out_pump = std::thread::spawn(move || {
        loop {
            let mut chunk = vec![0u8; 64 * 1024];
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(chunk).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stderr = child.stderr.take().expect("CGI stderr is piped");
    let err_pump = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    if let Some(mut stdin) = child.stdin.take() {
        // tiny_http has already undone any chunked transfer encoding here; EOF on stdin
        // (dropping it) is how a body without Content-Length ends for http-backend.
        let _ = io::copy(request.as_reader(), &mut stdin);
    }

    let mut output = BufReader::new(ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    });
    match read_cgi_head(&mut output) {
        Ok(head) => {
            record(head.status);
            let body = ShapedReader {
                inner: output,
                shared,
                in_flight,
                length: head.content_length,
                started: Instant::now(),
                sent: 0,
            };
            let response = Response::new(
                StatusCode(head.status),
                head.headers,
                body,
                head.content_length,
                None,
            );
            let _ = respond(request, response);
        }
        Err(problem) => {
            let _ = child.wait();
            record(502);
            let _ = respond(
                request,
                Response::from_string(format!("bad CGI response: {problem}\n"))
                    .with_status_code(502),
            );
        }
    }
    // Normally it has exited already; after a stall or a vanished client it may not have.
    let _ = child.kill();
    let _ = child.wait();
    let _ = out_pump.join();
    if let Ok(text) = err_pump.join()
        && !text.trim().is_empty()
    {
        eprintln!("[git http-backend {url}] {}", text.trim_end());
    }
}

#[derive(Debug)]
struct CgiHead {
    status: u16,
    headers: Vec<Header>,
    content_length: Option<usize>,
}

fn read_cgi_head(output: &mut impl BufRead) -> Result<CgiHead, String> {
    let mut head = CgiHead {
        status: 200,
        headers: Vec::new(),
        content_length: None,
    };
    loop {
        let mut line = String::new();
        let n = output
            .read_line(&mut line)
            .map_err(|e| format!("reading CGI header: {e}"))?;
        if n == 0 {
            return Err("CGI output ended before the end of its header".to_owned());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(head);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("Status") {
            head.status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| format!("malformed CGI status {value:?}"))?;
        } else if name.eq_ignore_ascii_case("Content-Length") {
            head.content_length = value.parse().ok();
        } else if !name.eq_ignore_ascii_case("Transfer-Encoding")
            && !name.eq_ignore_ascii_case("Connection")
        {
            // Framing headers are tiny_http's business; everything else passes through.
            head.headers.push(
                Header::from_bytes(name.as_bytes(), value.as_bytes())
                    .map_err(|()| format!("invalid CGI header {line:?}"))?,
            );
        }
    }
}

/// Reads what the stdout pump collected.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies the throttle and stall options to one response body.
struct ShapedReader<'a, R> {
    inner: R,
    shared: &'a Shared,
    in_flight: &'a InFlight<'a>,
    /// The Content-Length, if the CGI gave one.
    length: Option<usize>,
    started: Instant,
    sent: u64,
}

impl<R: Read> ShapedReader<'_, R> {
    fn shut_down_error() -> io::Error {
        io::Error::other("test HTTP server shut down during the response")
    }
}

impl<R: Read> Read for ShapedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let opts = &self.shared.opts;
        let mut cap = buf.len();
        if let Some(limit) = opts.stall_after_bytes {
            if self.sent >= limit {
                self.shared.pause(None);
                return Err(Self::shut_down_error());
            }
            cap = cap.min(usize::try_from(limit - self.sent).unwrap_or(usize::MAX));
        }
        if let Some(rate) = opts.throttle_bytes_per_sec {
            let rate = rate.max(1);
            // Small slices (about 20 per second) keep the pace even rather than bursty.
            let slice = usize::try_from(rate / 20)
                .unwrap_or(usize::MAX)
                .clamp(1, 16 * 1024);
            cap = cap.min(slice);
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now())
                && self.shared.pause(Some(wait))
            {
                return Err(Self::shut_down_error());
            }
        }
        let n = self.inner.read(&mut buf[..cap])?;
        self.sent += n as u64;
        // The last bytes (or the end of a chunked body) are yet to be written: the client
        // cannot be done with this response before this point.
        if n == 0 || self.length.is_some_and(|l| self.sent >= l as u64) {
            self.in_flight.end();
        }
        self.shared
            .body_bytes_sent
            .fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
