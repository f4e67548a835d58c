//! One HTTP/1.1 exchange on a client connection: the request sent, the response read
//! (status, headers, and a body framed by `Content-Length`, chunked encoding or the end of
//! the connection), and whether a failure means the kept connection had gone stale.

use std::io::{self, BufRead, BufReader, Read, Write};

use super::Stream;

/// Largest response head and body the client reads.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an exchange failed: `Stale` when nothing of an answer came and the connection was
/// found closed (worth one retry on a fresh connection), else `Other`.
pub(super) enum Failure {
    Stale(io::Error),
    Other(io::Error),
}

impl Failure {
    pub(super) fn into_inner(self) -> io::Error {
        match self {
            Failure::Stale(e) | Failure::Other(e) => e,
        }
    }
}

/// Sends `head` and `body` and reads the answer.
pub(super) fn send_and_read(
    conn: &mut BufReader<Stream>,
    head: &str,
    body: &str,
) -> Result<Response, Failure> {
    let stream = conn.get_mut();
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush());
    if let Err(e) = sent {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Failure::Stale(e),
            _ => Failure::Other(e),
        });
    }
    // The status line: its absence on a closed connection means the server dropped an idle
    // connection, not that it refused this request.
    let mut status_line = String::new();
    match conn.read_line(&mut status_line) {
        Ok(0) => return Err(Failure::Stale(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Failure::Stale(e)),
        Err(e) => return Err(Failure::Other(e)),
    }
    read_rest(conn, &status_line).map_err(Failure::Other)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_rest(conn: &mut impl BufRead, status_line: &str) -> io::Result<Response> {
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    let mut head_bytes = status_line.len();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head_bytes += line.len();
        if head_bytes > MAX_RESPONSE_BYTES {
            return Err(invalid("response head too long"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    response.body = read_body(conn, &response)?;
    Ok(response)
}

/// The body framed by chunked encoding, `Content-Length`, or the end of the connection.
fn read_body(conn: &mut impl BufRead, response: &Response) -> io::Result<Vec<u8>> {
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(conn);
    }
    // 1xx, 204 and 304 have no body whatever the headers say (HEAD is never sent here).
    if matches!(response.status, 100..=199 | 204 | 304) {
        return Ok(Vec::new());
    }
    match response.header("content-length") {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| invalid("bad content-length"))?;
            if length > MAX_RESPONSE_BYTES {
                return Err(invalid("response body too long"));
            }
            let mut body = vec![0; length];
            conn.read_exact(&mut body)?;
            Ok(body)
        }
        None => {
            let mut body = Vec::new();
            conn.take(MAX_RESPONSE_BYTES as u64)
                .read_to_end(&mut body)?;
            Ok(body)
        }
    }
}

fn read_chunked(conn: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        conn.read_line(&mut size_line)?;
        let size = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if body.len() + size > MAX_RESPONSE_BYTES {
            return Err(invalid("response body too long"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        // The CRLF after the chunk (after the last, empty one: the end of the trailers).
        let mut crlf = String::new();
        conn.read_line(&mut crlf)?;
        if size == 0 {
            return Ok(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Response {
        let mut reader = io::BufReader::new(text.as_bytes());
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        read_rest(&mut reader, &status_line).unwrap()
    }

    #[test]
    fn content_length_chunked_and_no_length() {
        let r = parse("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}extra");
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
        );
        assert_eq!(r.body, b"abcd");
        let r = parse("HTTP/1.0 503 Service Unavailable\r\ncontent-type: text/html\r\n\r\n<html>");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"<html>"[..]));
        assert_eq!(r.header("Content-Type"), Some("text/html"));
    }
}
