//! An HTTP/1.1 client for requests through HAProxy's frontend, over TLS (the default) or
//! plain TCP, from a chosen source address inside a client namespace; and the bounded
//! generators of `http` (an image-create flood, a periodic lister) on top of it.
//!
//! Behind a load balancer a refused request still gets an answer (502, 503 or 504 from
//! HAProxy), so the client returns every status it reads; only a connection that fails or
//! goes silent is an error.
//!
//! TLS is the system OpenSSL through the `openssl` crate (a thin binding that compiles in
//! seconds against the headers setup installs; the pure-Rust stacks bring a cryptography
//! crate to build). The certificate is not verified: the kit's HAProxy has a self-signed one,
//! and only tests use this client.

use std::{
    io::{self, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::AtomicBool,
    time::Duration,
};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

mod response;

pub use response::Response;
use response::{send_and_read, Failure};

use crate::{
    haproxy::SERVER_NAME,
    http::{connect_from, drive, FloodLimits, FloodLog},
};

/// The longest a request waits for its answer by default: past HAProxy's `timeout server`
/// (30 s), so a backend that never answers shows as HAProxy's 504, not as a client timeout.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(40);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A client of one frontend address from one source address. Connects lazily, so use it
/// inside the client's namespace (e.g. in [`Netns::run`](crate::netns::Netns::run)); the
/// connection is kept between requests unless [`keep_alive`](Self::keep_alive) is off or
/// the server says `Connection: close`.
pub struct HttpsClient {
    src: String,
    dst: SocketAddr,
    tls: Option<SslConnector>,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    io_timeout: Duration,
    connection: Option<BufReader<Stream>>,
    connections_opened: usize,
    local_addr: Option<SocketAddr>,
}

impl HttpsClient {
    /// A TLS client from `src` to `frontend` (`"203.0.113.1:9292"`, `"[2001:db8:1::1]:9292"`).
    pub fn new(src: &str, frontend: &str) -> Self {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("OpenSSL");
        // Test-only: the kit's HAProxy presents a self-signed certificate.
        builder.set_verify(SslVerifyMode::NONE);
        HttpsClient {
            src: src.to_owned(),
            dst: frontend
                .parse()
                .unwrap_or_else(|e| panic!("frontend `{frontend}`: {e}")),
            tls: Some(builder.build()),
            headers: Vec::new(),
            keep_alive: true,
            io_timeout: DEFAULT_IO_TIMEOUT,
            connection: None,
            connections_opened: 0,
            local_addr: None,
        }
    }

    /// Plain HTTP instead of TLS (for a frontend without `ssl`).
    pub fn plain(mut self) -> Self {
        self.tls = None;
        self
    }

    /// A header sent with every request (e.g. a forged `X-Forwarded-For`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Off: a new connection per request (`Connection: close`).
    pub fn keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }

    /// How long a connection's reads and writes may wait (default [`DEFAULT_IO_TIMEOUT`]).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// Connections opened so far (1 after any number of requests on one kept connection).
    pub fn connections_opened(&self) -> usize {
        self.connections_opened
    }

    /// The local address of the latest connection, open or closed (what a PROXY header or
    /// `X-Forwarded-For` must name).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn request(&mut self, method: &str, path: &str, body: &str) -> io::Result<Response> {
        self.request_with(method, path, &[], body)
    }

    /// One request with `extra` headers besides the client's. On a kept connection that the
    /// server closed while idle (the request could not be sent, or the connection ended
    /// before any byte of an answer), it is sent once more on a new connection, as HTTP
    /// client libraries do.
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Response> {
        let head = self.request_head(method, path, extra, body);
        let reused = self.connection.is_some();
        match self.exchange(&head, body) {
            Err(Failure::Stale(_)) if reused => self.exchange(&head, body),
            other => other,
        }
        .map_err(Failure::into_inner)
    }

    fn request_head(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> String {
        let connection = if self.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUser-Agent: glance-limiter-tests\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
            body.len()
        );
        let extra = extra.iter().map(|(n, v)| (*n, *v));
        for (name, value) in self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(extra)
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    fn exchange(&mut self, head: &str, body: &str) -> Result<Response, Failure> {
        if self.connection.is_none() {
            self.connection = Some(BufReader::new(self.connect().map_err(Failure::Other)?));
            self.connections_opened += 1;
        }
        let conn = self.connection.as_mut().expect("connected above");
        let result = send_and_read(conn, head, body);
        let close = match &result {
            Ok(r) => {
                !self.keep_alive
                    || r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            }
            Err(_) => true,
        };
        if close {
            self.connection = None;
        }
        result
    }

    fn connect(&mut self) -> io::Result<Stream> {
        let tcp = connect_from(
            &self.src,
            &self.dst.ip().to_string(),
            self.dst.port(),
            CONNECT_TIMEOUT,
        )?;
        tcp.set_read_timeout(Some(self.io_timeout))?;
        tcp.set_write_timeout(Some(self.io_timeout))?;
        self.local_addr = Some(tcp.local_addr()?);
        let Some(connector) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let config = connector.configure().map_err(io::Error::other)?;
        let tls = config
            .verify_hostname(false)
            .connect(SERVER_NAME, tcp)
            .map_err(|e| io::Error::other(format!("TLS handshake with {}: {e}", self.dst)))?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// An image-create flood through the frontend: `POST /v2/images` every `pace` (back to back
/// if `None`) with `client` (keep-alive or not, as configured), recording each status (a
/// 5xx from HAProxy included) or `None` for no answer. Call inside the client's namespace.
pub fn image_create_flood(
    client: &mut HttpsClient,
    body: &str,
    pace: Option<Duration>,
    limits: FloodLimits,
    stop: &AtomicBool,
) -> FloodLog {
    drive(limits, stop, pace, || {
        client
            .request("POST", "/v2/images", body)
            .ok()
            .map(|r| r.status)
    })
}

/// A well-behaved client through the frontend: one request every `every` on a fixed
/// schedule, until a limit or `stop`. With `client.keep_alive(false)` each request opens its
/// own connection. Call inside the client's namespace.
pub fn periodic_requests(
    client: &mut HttpsClient,
    method: &str,
    path: &str,
    body: &str,
    every: Duration,
    limits: FloodLimits,
    stop: &AtomicBool,
) -> FloodLog {
    drive(limits, stop, Some(every), || {
        client.request(method, path, body).ok().map(|r| r.status)
    })
}
