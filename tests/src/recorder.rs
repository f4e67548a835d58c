//! A stand-in backend that records what a load balancer sends it: per connection, the peer,
//! the PROXY protocol header (when told to expect one) and every request's head. It answers
//! as the stand-in Glance does (201 to image-create, 200 otherwise, keep-alive), so HAProxy's
//! health checks and clients' requests through HAProxy succeed. The real Glance speaks no
//! PROXY protocol, hence this server for the `send-proxy` modes.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    http::{complete_request, listen_dual_stack, read_more, response_to},
    netns::Netns,
    proxy_protocol::{self, ProxyHeader, ProxyHeaderError},
};

/// How long a connection may stay idle before the recorder closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub request_line: String,
    /// Header lines as received, in order, names as the sender spelled them.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The values of every line of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `X-Forwarded-For` as one list (RFC 9110: several lines are the same as their values
    /// joined with ", "), `None` without the header.
    pub fn forwarded_for(&self) -> Option<String> {
        let values = self.header_values("x-forwarded-for");
        (!values.is_empty()).then(|| values.join(", "))
    }
}

#[derive(Clone, Debug)]
pub struct RecordedConnection {
    /// Who connected (the load balancer's backend-side address).
    pub peer: SocketAddr,
    /// The PROXY header, when the recorder expects one: `None` until it has arrived.
    pub proxy: Option<Result<ProxyHeader, ProxyHeaderError>>,
    pub requests: Vec<RecordedRequest>,
}

type Log = Arc<Mutex<Vec<RecordedConnection>>>;

pub struct RecordingBackend {
    stop: Arc<AtomicBool>,
    accept_thread: Option<thread::JoinHandle<()>>,
    log: Log,
}

impl RecordingBackend {
    /// Listens on `[::]:port` inside `ns`; with `expect_proxy_header`, every connection must
    /// start with a PROXY header (v1 or v2), else it is recorded as an error and closed.
    pub fn start_in(ns: &Netns, port: u16, expect_proxy_header: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let accept_thread = {
            let (stop, log) = (stop.clone(), log.clone());
            ns.spawn(move || match listen_dual_stack(port) {
                Ok(listener) => {
                    ready_tx.send(Ok(())).ok();
                    accept_loop(listener, &stop, &log, expect_proxy_header);
                }
                Err(e) => {
                    ready_tx.send(Err(e)).ok();
                }
            })
        };
        ready_rx
            .recv()
            .expect("recorder thread ended before listening")
            .unwrap_or_else(|e| panic!("recording backend cannot listen on port {port}: {e}"));
        RecordingBackend {
            stop,
            accept_thread: Some(accept_thread),
            log,
        }
    }

    /// Every connection so far, in the order they were accepted.
    pub fn connections(&self) -> Vec<RecordedConnection> {
        self.log.lock().unwrap().clone()
    }

    /// Every request so far with its connection's PROXY header, in arrival order per
    /// connection.
    pub fn requests(&self) -> Vec<(Option<ProxyHeader>, RecordedRequest)> {
        self.connections()
            .into_iter()
            .flat_map(|c| {
                let proxy = c.proxy.and_then(Result::ok);
                c.requests.into_iter().map(move |r| (proxy.clone(), r))
            })
            .collect()
    }

    /// Waits until `done(connections)` holds, checking every 20 ms; panics with what was
    /// recorded after `deadline`.
    pub fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[RecordedConnection]) -> bool,
    ) -> Vec<RecordedConnection> {
        let started = Instant::now();
        loop {
            let connections = self.connections();
            if done(&connections) {
                return connections;
            }
            assert!(
                started.elapsed() < deadline,
                "recording backend: no {what} within {deadline:?}; recorded {connections:#?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_thread.take() {
            t.join().ok();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: &Arc<AtomicBool>, log: &Log, expect_proxy: bool) {
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(RecordedConnection {
                        peer,
                        proxy: None,
                        requests: Vec::new(),
                    });
                    log.len() - 1
                };
                let (stop, log) = (stop.clone(), log.clone());
                workers.push(thread::spawn(move || {
                    serve(stream, &stop, &log, index, expect_proxy)
                }));
            }
            // Non-blocking accept: poll, so the loop notices `stop`.
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
    for w in workers {
        w.join().ok();
    }
}

fn serve(mut stream: TcpStream, stop: &AtomicBool, log: &Log, index: usize, expect_proxy: bool) {
    stream.set_nonblocking(false).ok();
    // Short reads so the worker notices `stop`; partial data waits in `pending`.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    stream.set_write_timeout(Some(IDLE_TIMEOUT)).ok();
    let record = |f: &mut dyn FnMut(&mut RecordedConnection)| f(&mut log.lock().unwrap()[index]);
    let mut pending = Vec::new();
    let mut awaiting_proxy = expect_proxy;
    let mut chunk = [0u8; 4096];
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::Relaxed) && idle_since.elapsed() < IDLE_TIMEOUT {
        if awaiting_proxy {
            match proxy_protocol::parse(&pending) {
                Ok(None) => {}
                Ok(Some((header, len))) => {
                    pending.drain(..len);
                    awaiting_proxy = false;
                    record(&mut |c| c.proxy = Some(Ok(header.clone())));
                }
                Err(e) => {
                    record(&mut |c| c.proxy = Some(Err(e.clone())));
                    return;
                }
            }
        }
        while let Some((request_line, consumed)) =
            complete_request(&pending).filter(|_| !awaiting_proxy)
        {
            let request = RecordedRequest {
                headers: header_lines(&pending[..consumed]),
                request_line,
            };
            pending.drain(..consumed);
            let response = response_to(&request.request_line);
            // Recorded before the answer: whoever got the answer finds the request recorded.
            record(&mut |c| c.requests.push(request.clone()));
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
            idle_since = Instant::now();
        }
        match read_more(&mut stream, &mut pending, &mut chunk) {
            Some(true) => idle_since = Instant::now(),
            Some(false) => {}
            None => return,
        }
    }
}

/// The header lines of the request head at the start of `request`.
fn header_lines(request: &[u8]) -> Vec<(String, String)> {
    let head_len = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    String::from_utf8_lossy(&request[..head_len])
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect()
}
