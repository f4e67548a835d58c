//! The metrics listener: `GET /metrics` over HTTP/1.1 (hyper), on its own thread and
//! single-threaded runtime.
//!
//! Nothing here can hold up the engine: a scrape copies the last snapshot out under a lock
//! held for a clone, encodes it in memory, and only then writes to the socket. A client that
//! reads slowly, or never sends its request, costs one of a few connection slots until its
//! timeout, never a poll.

use std::{
    convert::Infallible,
    io,
    net::{SocketAddr, TcpListener as StdTcpListener},
    sync::Arc,
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, error, info, warn};

use super::{Format, Metrics};

/// Scrapes served at once; Prometheus sends one per target at a time, so a few allow for a
/// second server and a curl, and more are refused.
const MAX_CONNECTIONS: usize = 8;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// And be done, response read, within this long (Prometheus's default scrape timeout is 10 s).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The path metrics are served at.
pub const PATH: &str = "/metrics";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    // The OS error is part of the message and deliberately not a `source`: the daemon prints
    // error chains, which would repeat it after the hint.
    #[error("cannot listen for metrics on {addr} ({setting}): {error}; {}", bind_hint(.addr, .error, .setting))]
    Bind {
        addr: SocketAddr,
        /// What set the address: "`metrics_listen` in FILE" or "--metrics-listen".
        setting: String,
        error: io::Error,
    },
    #[error("cannot start the metrics server: {0}")]
    Runtime(#[source] io::Error),
}

fn bind_hint(addr: &SocketAddr, error: &io::Error, setting: &str) -> String {
    let fix = match error.kind() {
        io::ErrorKind::AddrInUse => format!(
            "another process listens on port {} (`ss -ltnp` shows which; another \
             glance-limiter daemon?): choose a free port",
            addr.port()
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this host (`ip addr` lists them): give one of its \
             addresses, or 127.0.0.1 for scrapers on this host only",
            addr.ip()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "port {} is privileged and this process may not bind it: choose a port above \
             1023, such as 9464",
            addr.port()
        ),
        _ => "check the address".to_string(),
    };
    format!("{fix}, or remove {setting} to run without metrics")
}

/// The listener on its thread. Dropping it stops the server and closes the port.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// The address bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the metrics server thread panicked");
            }
        }
    }
}

/// Binds `addr` now, so that the caller sees a bad address at start-up, and serves
/// `metrics` on a new thread. `setting` names where the address came from, for the error.
pub fn spawn(
    addr: SocketAddr,
    setting: &str,
    metrics: Arc<Metrics>,
) -> Result<MetricsServer, MetricsError> {
    let bind_error = |error| MetricsError::Bind {
        addr,
        setting: setting.to_owned(),
        error,
    };
    let listener = StdTcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Runtime)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, metrics, stopped).await,
                    Err(e) => error!(error = %e, "the metrics server could not start"),
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(MetricsError::Runtime)?;
    info!(address = %local_addr, path = PATH, "metrics listening");
    Ok(MetricsServer {
        local_addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(%peer, "metrics connection refused: {MAX_CONNECTIONS} already open");
                        continue;
                    };
                    let metrics = metrics.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        serve_connection(stream, metrics, peer).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, metrics: Arc<Metrics>, peer: SocketAddr) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&metrics, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // One request per connection: nothing idles in a slot between scrapes.
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    match timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
        Err(_) => debug!(%peer, "metrics connection closed: too slow"),
    }
}

/// The answer to one request: metrics for `GET`/`HEAD /metrics`, else a short error.
pub fn respond<B>(metrics: &Metrics, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are at {PATH}\n"),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} answers GET and HEAD\n"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match metrics.encode(format) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };

    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    fn local() -> MetricsServer {
        spawn(
            "127.0.0.1:0".parse().unwrap(),
            "test",
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[test]
    fn serves_metrics_over_http() {
        let server = local();
        let response = get(
            server.local_addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
        assert!(
            response.contains("\nglance_limiter_tracked_sources 0\n"),
            "{response}"
        );

        let response = get(
            server.local_addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
        );
        assert!(response.ends_with("# EOF\n"), "{response}");
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let server = local();
        let response = get(server.local_addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        assert!(
            response.ends_with("metrics are at /metrics\n"),
            "{response}"
        );
        let response = get(
            server.local_addr(),
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        assert!(response.contains("allow: GET, HEAD\r\n"), "{response}");
        let response = get(
            server.local_addr(),
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("\r\n\r\n"), "no body: {response}");
    }

    #[test]
    fn a_silent_client_does_not_stop_others() {
        let server = local();
        // Holds a connection without sending a request.
        let _silent = TcpStream::connect(server.local_addr()).unwrap();
        let response = get(server.local_addr(), "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn an_address_in_use_names_the_address_and_the_setting() {
        let taken = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = spawn(
            addr,
            "`metrics_listen` in /etc/glance-limiter/limiter.toml",
            Arc::new(Metrics::new()),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot listen for metrics on {addr} (`metrics_listen` in \
                 /etc/glance-limiter/limiter.toml): "
            )),
            "{message}"
        );
        assert!(
            message.contains("another process listens on port"),
            "{message}"
        );
        assert!(
            message.ends_with(
                "or remove `metrics_listen` in /etc/glance-limiter/limiter.toml to run without \
                 metrics"
            ),
            "{message}"
        );
    }

    #[test]
    fn an_address_not_of_this_host_says_so() {
        // TEST-NET-2 is never assigned to a host.
        let addr: SocketAddr = "198.51.100.77:9464".parse().unwrap();
        let error = spawn(addr, "--metrics-listen", Arc::new(Metrics::new())).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("198.51.100.77 is not an address of this host"),
            "{message}"
        );
        assert!(message.contains("remove --metrics-listen"), "{message}");
    }
}
