//! gix's http(s) transport over reqwest, with every response body counted against the attempt's
//! [`Meter`]: a server that lists refs without end, or sends a pack without end, is stopped at
//! the budget as it is over git:// (daemon.rs), rather than only by time.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use gix_transport::client::blocking_io::http::{
    self, GetResponse, Http, PostBodyDataKind, PostResponse, reqwest::Remote,
};

use crate::meter::Meter;

/// reqwest's client, as gix uses it, with metered response bodies.
pub(crate) struct MeteredHttp {
    inner: Remote,
    meter: Arc<Meter>,
}

/// An http(s) transport to `url` whose bodies count against `meter`.
pub(crate) fn transport(url: gix::Url, meter: Arc<Meter>) -> http::Transport<MeteredHttp> {
    let client = MeteredHttp {
        inner: Remote::default(),
        meter,
    };
    http::connect_http(client, url, gix::protocol::transport::Protocol::V2, false)
}

impl Http for MeteredHttp {
    type Headers = <Remote as Http>::Headers;
    type ResponseBody = MeteredBody<<Remote as Http>::ResponseBody>;
    type PostBody = <Remote as Http>::PostBody;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<GetResponse<Self::Headers, Self::ResponseBody>> {
        let response = self.inner.get(url, base_url, headers)?;
        Ok(GetResponse {
            headers: response.headers,
            body: MeteredBody::new(response.body, self.meter.clone()),
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: PostBodyDataKind,
    ) -> gix::Result<PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>> {
        let response = self.inner.post(url, base_url, headers, body)?;
        Ok(PostResponse {
            post_body: response.post_body,
            headers: response.headers,
            body: MeteredBody::new(response.body, self.meter.clone()),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::Result {
        self.inner.configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.inner.redirected_base_url()
    }
}

/// A buffered body whose bytes count against a [`Meter`] as they are consumed; once over the
/// budget, it yields an error instead of more data.
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
