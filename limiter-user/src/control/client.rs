//! The control client: one connection, one request at a time, each answered by one line.
//!
//! It is blocking (std sockets with deadlines): the CLI makes one or two requests and needs no
//! runtime. An async caller such as the TUI runs it on a blocking thread
//! (`tokio::task::spawn_blocking`), which suits its one-request-per-refresh pattern.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::protocol::{
    ControlError, Reply, Request, RequestLine, ResponseLine, MAX_REQUEST_BYTES, PROTOCOL_VERSION,
};

/// Where the daemon listens unless configured otherwise (the configuration's `socket`).
pub const DEFAULT_SOCKET: &str = "/run/glance-limiter/limiter.sock";
/// How long a request may take by default: a batch of 10,000 rules is written to disk and
/// compiled into the kernel's tries before the daemon answers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest response line read; far above a full table's stats, and a bound on memory if
/// something else answers on the socket.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no daemon is listening on {}: start it with `limiter run` (or systemctl start \
         glance-limiter); if it uses another socket, point --socket or LIMITER_SOCKET at it",
        path.display()
    )]
    NoDaemon { path: PathBuf },
    #[error(
        "permission denied on {}: run as root or as a member of the socket group \
         (socket_group in the daemon's configuration)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the request is {bytes} bytes, over the daemon's limit of {MAX_REQUEST_BYTES}; split the \
         addresses into several smaller batches"
    )]
    RequestTooLarge { bytes: usize },
    #[error(
        "the daemon on {} did not answer within {}; it may be overloaded or stuck: check its log \
         (journalctl -u glance-limiter) and retry, with a longer --timeout for a large batch \
         (repeating a request is harmless)",
        path.display(),
        humantime::format_duration(*timeout)
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("cannot send the request to {}: {source}; retry (repeating a request is harmless)", path.display())]
    Send {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the daemon's answer from {}: {source}", path.display())]
    Receive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the daemon on {} closed the connection without answering; it may have stopped or \
         restarted: check its log (journalctl -u glance-limiter) and retry",
        path.display()
    )]
    Closed { path: PathBuf },
    #[error(
        "the answer from {} is not a response this client understands ({detail}); the daemon \
         and this client are probably different releases: use the `limiter` of the running \
         daemon's release",
        path.display()
    )]
    BadResponse { path: PathBuf, detail: String },
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// Connects to the daemon's socket. `timeout` bounds each [`Client::request`], from
    /// sending the request to reading the whole response.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| connect_error(&path, source))?;
        Ok(Client {
            reader: BufReader::new(stream),
            path,
            timeout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and reads its response (an error response is `Ok`, with `ok: false`).
    pub fn request(&mut self, request: Request) -> Result<ResponseLine, ClientError> {
        let bytes = encode_request(request)?;
        let deadline = Instant::now() + self.timeout;
        if let Err(sent) = self.write_all(&bytes, deadline) {
            if let ClientError::Send { .. } = sent {
                // A refused peer is told why before the daemon closes; that line is still
                // readable after our write failed.
                if let Ok(Some(line)) = self.read_line(deadline) {
                    return self.decode(&line);
                }
            }
            return Err(sent);
        }
        match self.read_line(deadline)? {
            Some(line) => self.decode(&line),
            None => Err(ClientError::Closed {
                path: self.path.clone(),
            }),
        }
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), ClientError> {
        let mut stream = self.reader.get_ref();
        while !bytes.is_empty() {
            let remaining = self.remaining(deadline)?;
            let written = stream
                .set_write_timeout(Some(remaining))
                .and_then(|()| stream.write(bytes));
            match written {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.timed_out()),
                Err(source) => {
                    return Err(ClientError::Send {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The next whole line, or `None` if the daemon closed the connection before sending one.
    fn read_line(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, ClientError> {
        let mut line = Vec::new();
        loop {
            let remaining = self.remaining(deadline)?;
            if let Err(source) = self.reader.get_ref().set_read_timeout(Some(remaining)) {
                return Err(self.receive_error(source));
            }
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(self.timed_out()),
                Err(e) => return Err(self.receive_error(e)),
            };
            if available.is_empty() {
                // A partial line means the daemon went away mid-answer; nothing usable.
                return Ok(None);
            }
            let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(newline) => (&available[..newline], true),
                None => (available, false),
            };
            if line.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::BadResponse {
                    path: self.path.clone(),
                    detail: format!("a response line longer than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            line.extend_from_slice(chunk);
            let used = chunk.len() + usize::from(complete);
            self.reader.consume(used);
            if complete {
                return Ok(Some(line));
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<ResponseLine, ClientError> {
        decode_response(line).map_err(|detail| ClientError::BadResponse {
            path: self.path.clone(),
            detail,
        })
    }

    fn remaining(&self, deadline: Instant) -> Result<Duration, ClientError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            Err(self.timed_out())
        } else {
            Ok(remaining)
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            path: self.path.clone(),
            timeout: self.timeout,
        }
    }

    fn receive_error(&self, source: io::Error) -> ClientError {
        ClientError::Receive {
            path: self.path.clone(),
            source,
        }
    }
}

/// A request as it goes on the wire, with its newline; refused if the daemon would refuse it
/// for its length, so nothing is sent.
pub fn encode_request(request: Request) -> Result<Vec<u8>, ClientError> {
    let line = RequestLine {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut bytes = serde_json::to_vec(&line).expect("requests are plain data");
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ClientError::RequestTooLarge { bytes: bytes.len() });
    }
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parses a response line.
pub fn decode_response(line: &[u8]) -> Result<ResponseLine, String> {
    let response: ResponseLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if !response.ok && response.error.is_none() {
        return Err("`ok` is false but there is no `error`".into());
    }
    Ok(response)
}

/// The reply of a successful response, or the daemon's error.
pub fn into_reply(response: ResponseLine) -> Result<Option<Reply>, ControlError> {
    match response.error {
        Some(error) if !response.ok => Err(error),
        _ => Ok(response.result),
    }
}

fn connect_error(path: &Path, source: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match source.kind() {
        // No file, or a file left by a daemon that is gone.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon { path }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Connect { path, source },
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{ErrorKind, RuleList};

    #[test]
    fn requests_are_one_line_with_the_version() {
        let bytes = encode_request(Request::Status).unwrap();
        assert_eq!(bytes, b"{\"version\":1,\"op\":\"status\"}\n");
    }

    #[test]
    fn oversized_requests_are_refused_before_sending() {
        let prefixes = vec!["2001:db8::7/128".parse().unwrap(); 300_000];
        let error = encode_request(Request::Unblock { prefixes }).unwrap_err();
        assert!(matches!(error, ClientError::RequestTooLarge { .. }));
        assert!(error.to_string().contains("smaller batches"), "{error}");
    }

    #[test]
    fn responses_decode_into_replies_or_errors() {
        let ok = decode_response(br#"{"version":1,"ok":true,"result":{"rules":[]}}"#).unwrap();
        assert_eq!(into_reply(ok), Ok(Some(Reply::Rules(RuleList::default()))));
        let error = decode_response(
            br#"{"version":1,"ok":false,"error":{"kind":"forbidden","message":"no"}}"#,
        )
        .unwrap();
        assert_eq!(into_reply(error).unwrap_err().kind, ErrorKind::Forbidden);
        assert!(decode_response(br#"{"version":1,"ok":false}"#).is_err());
        assert!(decode_response(b"HTTP/1.1 400 Bad Request").is_err());
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let error = Client::connect(&path, DEFAULT_TIMEOUT).unwrap_err();
        assert!(matches!(error, ClientError::NoDaemon { .. }));
        assert!(
            error.to_string().contains("start it with `limiter run`"),
            "{error}"
        );
        let denied = connect_error(&path, io::ErrorKind::PermissionDenied.into());
        assert!(denied
            .to_string()
            .contains("run as root or as a member of the socket group"));
    }

    #[test]
    fn the_default_socket_is_the_configurations() {
        assert_eq!(
            Path::new(DEFAULT_SOCKET),
            crate::config::Config::default().socket
        );
    }
}
