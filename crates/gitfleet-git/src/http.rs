//! gitfleet's own HTTP client for gix's smart-HTTP transport, on reqwest.
//!
//! Everything about a request is decided here, from gitfleet's settings: the checked addresses
//! for the host, the extra certificate authorities, no redirects, no total timeout (the engine's
//! watcher owns time) but a bound on every wait for the server, and nothing from the
//! repository's configuration (`configure` ignores what gix passes from it: proxies, extra
//! headers, `sslVerify`). Every response body counts against the attempt's [`Meter`], so a
//! server that lists refs without end, or sends a pack without end, is stopped at the budget
//! as it is over git:// (daemon.rs). A response that asks to slow down (429, a 503 with
//! `Retry-After`, GitHub's rate-limit 403) is recorded in the attempt's [`Pushback`] with its
//! headers, which gix's errors would drop.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix_transport::client::blocking_io::http::{
    self, GetResponse, Http, PostBodyDataKind, PostResponse,
};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::meter::Meter;
use crate::pushback::{Pushback, SNIFFED_BODY_BYTES, refusal};

/// How gitfleet's HTTP client is built for one attempt.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// The URL's host (without IPv6 brackets) and the addresses the policy checked for it:
    /// connections go there and nowhere a new lookup would say.
    pub host: Option<String>,
    pub addresses: Option<Vec<SocketAddr>>,
    pub connect_timeout: Duration,
    /// The longest wait for any one read or write: a server that goes silent frees the thread.
    pub io_timeout: Duration,
}

/// A smart-HTTP transport to `url` for one attempt.
pub(crate) fn transport(
    url: gix::Url,
    settings: &HttpSettings,
    meter: Arc<Meter>,
    pushback: Arc<Pushback>,
) -> Result<http::Transport<FleetHttp>, reqwest::Error> {
    let client = FleetHttp {
        client: client(settings)?,
        meter,
        pushback,
    };
    Ok(http::connect_http(
        client,
        url,
        gix::protocol::transport::Protocol::V2,
        false,
    ))
}

fn client(settings: &HttpSettings) -> Result<Client, reqwest::Error> {
    let mut builder = Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.io_timeout)
        // A redirect could send the request, and with it credentials, to another host or to
        // an address the policy refuses.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve the name itself: the policy's checked
        // addresses (private addresses refused, no second lookup) would not hold.
        .no_proxy()
        .http1_title_case_headers()
        .user_agent(concat!("gitfleet/", env!("CARGO_PKG_VERSION")));
    if let (Some(host), Some(addresses)) = (&settings.host, &settings.addresses) {
        builder = builder.resolve_to_addrs(host, addresses);
    }
    if let Some(roots) = crate::tls::extra_roots() {
        builder = builder.tls_certs_merge(roots.iter().cloned());
    }
    builder.build()
}

/// The client gix's transport talks through.
pub(crate) struct FleetHttp {
    client: Client,
    meter: Arc<Meter>,
    pushback: Arc<Pushback>,
}

impl FleetHttp {
    fn request(
        &self,
        builder: RequestBuilder,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> RequestBuilder {
        let mut map = HeaderMap::new();
        for line in headers {
            // gix's own header lines; gitfleet's user agent replaces gix's.
            let Some((name, value)) = line.as_ref().split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("user-agent") {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                map.append(name, value);
            }
        }
        builder.headers(map)
    }

    /// The response as gix reads it: header lines and a metered body, or the error a read of
    /// the headers returns.
    fn answer(&self, sent: reqwest::Result<Response>) -> (Head, Body) {
        match sent.map_err(io_error).and_then(|r| self.accept(r)) {
            Ok(response) => (
                Head::lines(response.headers()),
                Body::new(response, self.meter.clone()),
            ),
            Err(e) => (Head::Failed(Some(e)), Body::Empty),
        }
    }

    /// A successful response, or the error its status means (recording a request to slow
    /// down).
    fn accept(&self, mut response: Response) -> io::Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let code = status.as_u16();
        if status.is_redirection() {
            return Err(io::Error::other(format!(
                "http status {code}: the server redirects elsewhere and gitfleet does not \
                 follow redirects; use the repository's final URL"
            )));
        }
        if code == 401 {
            let www_authenticate = response
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .map(|value| value.as_bytes().into())
                .collect();
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                gix_transport::client::AuthenticationRequired { www_authenticate },
            ));
        }
        let mut body = Vec::new();
        if code == 403 {
            let _ = response
                .by_ref()
                .take(SNIFFED_BODY_BYTES)
                .read_to_end(&mut body);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let reason = status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase();
        if let Some(refused) = refusal(code, response.headers(), &body, now) {
            self.pushback.record(refused);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "http status {code} ({reason}): the server asks to wait {} s",
                    refused.pause.as_secs()
                ),
            ));
        }
        let kind = if status.is_server_error() && code != 501 {
            io::ErrorKind::ConnectionAborted
        } else {
            io::ErrorKind::Other
        };
        Err(io::Error::new(
            kind,
            format!("http status {code} ({reason})"),
        ))
    }
}

/// A reqwest error as an I/O error of the kind it is (the classifier reads kinds first).
fn io_error(e: reqwest::Error) -> io::Error {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else if e.is_connect() {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl Http for FleetHttp {
    type Headers = Head;
    type ResponseBody = Body;
    type PostBody = PostBody;

    fn get(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<GetResponse<Head, Body>> {
        let sent = self.request(self.client.get(url), headers).send();
        let (headers, body) = self.answer(sent);
        Ok(GetResponse { headers, body })
    }

    /// The request is sent when gix starts reading the response (it has written the whole
    /// request body by then): headers, body and the body to post share the exchange.
    fn post(
        &mut self,
        url: &str,
        _base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        _kind: PostBodyDataKind,
    ) -> gix::Result<PostResponse<Head, Body, PostBody>> {
        let builder = self.request(self.client.post(url), headers);
        let exchange = Arc::new(Mutex::new(Exchange::Writing {
            http: FleetHttp {
                client: self.client.clone(),
                meter: self.meter.clone(),
                pushback: self.pushback.clone(),
            },
            builder: Some(Box::new(builder)),
            body: Vec::new(),
        }));
        Ok(PostResponse {
            post_body: PostBody(exchange.clone()),
            headers: Head::Pending(exchange.clone()),
            body: Body::Pending(exchange),
        })
    }

    /// Ignored: what gix passes here comes from the repository's configuration.
    fn configure(&mut self, _config: &dyn std::any::Any) -> gix::Result {
        Ok(())
    }

    fn redirected_base_url(&self) -> Option<String> {
        None
    }
}

/// A POST on its way: the body being written, then the answer until headers and body took it.
pub(crate) enum Exchange {
    Writing {
        http: FleetHttp,
        builder: Option<Box<RequestBuilder>>,
        body: Vec<u8>,
    },
    Answered {
        head: Option<Head>,
        body: Option<Body>,
    },
}

impl Exchange {
    fn send(&mut self) {
        if let Exchange::Writing {
            http,
            builder,
            body,
        } = self
        {
            let sent = builder
                .take()
                .expect("a request is sent once")
                .body(std::mem::take(body))
                .send();
            let (head, body) = http.answer(sent);
            *self = Exchange::Answered {
                head: Some(head),
                body: Some(body),
            };
        }
    }

    fn take_head(exchange: &Mutex<Exchange>) -> Head {
        let mut exchange = exchange.lock().unwrap_or_else(|e| e.into_inner());
        exchange.send();
        match &mut *exchange {
            Exchange::Answered { head, .. } => head.take().unwrap_or(Head::Failed(None)),
            Exchange::Writing { .. } => Head::Failed(None),
        }
    }

    fn take_body(exchange: &Mutex<Exchange>) -> Body {
        let mut exchange = exchange.lock().unwrap_or_else(|e| e.into_inner());
        exchange.send();
        match &mut *exchange {
            Exchange::Answered { body, .. } => body.take().unwrap_or(Body::Empty),
            Exchange::Writing { .. } => Body::Empty,
        }
    }
}

/// The body of a POST, kept until the request is sent.
pub(crate) struct PostBody(Arc<Mutex<Exchange>>);

impl Write for PostBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Exchange::Writing { body, .. } => {
                body.extend_from_slice(buf);
                Ok(buf.len())
            }
            Exchange::Answered { .. } => Err(io::Error::other(
                "the request was already sent; nothing more can be written",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Response headers as gix reads them, one `name:value` line each; or the request's failure.
pub(crate) enum Head {
    Lines(Cursor<Vec<u8>>),
    /// The error, returned by the first read (`None`: returned already).
    Failed(Option<io::Error>),
    Pending(Arc<Mutex<Exchange>>),
}

impl Head {
    fn lines(headers: &HeaderMap) -> Head {
        let mut lines = Vec::new();
        for (name, value) in headers {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.push(b':');
            lines.extend_from_slice(value.as_bytes());
            lines.push(b'\n');
        }
        Head::Lines(Cursor::new(lines))
    }

    fn ready(&mut self) -> io::Result<&mut Cursor<Vec<u8>>> {
        if let Head::Pending(exchange) = self {
            *self = Exchange::take_head(exchange);
        }
        match self {
            Head::Lines(lines) => Ok(lines),
            Head::Failed(e) => Err(e
                .take()
                .unwrap_or_else(|| io::Error::other("the request failed"))),
            Head::Pending(_) => unreachable!("taken above"),
        }
    }
}

impl Read for Head {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready()?.read(buf)
    }
}

impl BufRead for Head {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.ready()?.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Head::Lines(lines) = self {
            lines.consume(amount);
        }
    }
}

/// A response body, buffered, counted against the attempt's [`Meter`]: once over the budget,
/// it yields an error instead of more data.
pub(crate) enum Body {
    Reading(Box<MeteredBody<BufReader<Response>>>),
    Empty,
    Pending(Arc<Mutex<Exchange>>),
}

impl Body {
    fn new(response: Response, meter: Arc<Meter>) -> Body {
        Body::Reading(Box::new(MeteredBody::new(
            BufReader::with_capacity(64 * 1024, response),
            meter,
        )))
    }

    fn ready(&mut self) -> Option<&mut MeteredBody<BufReader<Response>>> {
        if let Body::Pending(exchange) = self {
            *self = Exchange::take_body(exchange);
        }
        match self {
            Body::Reading(body) => Some(&mut **body),
            Body::Empty | Body::Pending(_) => None,
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.ready() {
            Some(body) => body.read(buf),
            None => Ok(0),
        }
    }
}

impl BufRead for Body {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self.ready() {
            Some(body) => body.fill_buf(),
            None => Ok(&[]),
        }
    }

    fn consume(&mut self, amount: usize) {
        if let Some(body) = self.ready() {
            body.consume(amount);
        }
    }
}

/// A buffered body whose bytes count against a [`Meter`] as they are consumed.
pub(crate) struct MeteredBody<B> {
    inner: B,
    meter: Arc<Meter>,
}

impl<B> MeteredBody<B> {
    fn new(inner: B, meter: Arc<Meter>) -> Self {
        MeteredBody { inner, meter }
    }
}

impl<B: Read> Read for MeteredBody<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.meter.check()?;
        let n = self.inner.read(buf)?;
        self.meter.charge(n);
        Ok(n)
    }
}

impl<B: BufRead> BufRead for MeteredBody<B> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.meter.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.meter.charge(amount);
        self.inner.consume(amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_stops_once_over_the_budget() {
        let meter = Meter::new(100, 1000);
        let mut body = MeteredBody::new(&[b'x'; 10_000][..], meter.clone());
        let mut line = String::new();
        // Lines are read through fill_buf/consume, as gix reads pkt-lines.
        let mut taken = 0;
        let err = loop {
            match body.fill_buf() {
                Ok(buf) => {
                    let n = buf.len().min(30);
                    body.consume(n);
                    taken += n;
                }
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("while listing refs"), "{err}");
        assert!((100..=130).contains(&taken), "{taken}");
        assert!(body.read_to_string(&mut line).is_err());
    }
}
