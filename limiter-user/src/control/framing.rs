//! The wire format on the server side: newline-delimited JSON, read with a length limit, and
//! request lines decoded into a [`Request`] or the error response that rejects them.

use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};

use super::protocol::{
    ControlError, ErrorKind, Request, RequestLine, ResponseLine, PROTOCOL_VERSION,
};

/// What one read from a connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line, without its `\n` (and `\r`). The last line of a stream may lack the `\n`.
    Line(Vec<u8>),
    /// The line is longer than the limit; the connection is no longer in sync.
    TooLong,
    /// The peer closed the connection between lines.
    End,
}

/// Lines of a connection, each at most `limit` bytes: the codec discards what goes past the
/// limit instead of holding it, so a peer cannot make the daemon allocate more than the limit
/// (and a read buffer) by never sending a newline.
pub type FrameReader<R> = FramedRead<R, RequestLines>;

pub fn frame_reader<R: AsyncRead>(reader: R, limit: usize) -> FrameReader<R> {
    FramedRead::new(
        reader,
        RequestLines(AnyDelimiterCodec::new_with_max_length(
            b"\n".to_vec(),
            b"\n".to_vec(),
            limit,
        )),
    )
}

/// Newline-delimited lines, a `\r` before the newline dropped; a last line without a newline
/// comes whole.
#[derive(Debug)]
pub struct RequestLines(AnyDelimiterCodec);

impl Decoder for RequestLines {
    type Item = Vec<u8>;
    type Error = AnyDelimiterCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.0.decode(buf)?.map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            line.to_vec()
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<u8>>, Self::Error> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None => Ok(self.0.decode_eof(buf)?.map(|rest| rest.to_vec())),
        }
    }
}

/// The next line (cancel-safe: what was read stays in the reader).
pub async fn read_frame<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
) -> std::io::Result<Frame> {
    match frames.next().await {
        None => Ok(Frame::End),
        Some(Ok(line)) => Ok(Frame::Line(line)),
        Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => Ok(Frame::TooLong),
        Some(Err(AnyDelimiterCodecError::Io(e))) => Err(e),
    }
}

/// Whether a line holds nothing but whitespace; such lines are skipped, not answered.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Decodes a request line, or returns the error that answers it. The version is
/// checked before the rest, so a newer client's new operation is reported as a version
/// mismatch instead of as an unknown operation.
pub fn decode_request(line: &[u8]) -> Result<Request, ControlError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| bad_input(format!("the request is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(bad_input(
            "a request is one JSON object per line, like {\"version\":1,\"op\":\"status\"}",
        ));
    };
    check_version(object)?;
    let parsed =
        RequestLine::deserialize(&value).map_err(|e| bad_input(format!("invalid request: {e}")))?;
    reject_fields_of_unit_ops(&parsed.request, object)?;
    Ok(parsed.request)
}

fn check_version(object: &Map<String, Value>) -> Result<(), ControlError> {
    let version = match object.get("version") {
        None => {
            return Err(bad_input(format!(
                "invalid request: missing field `version`; send \"version\":{PROTOCOL_VERSION}"
            )))
        }
        Some(version) => version,
    };
    match version.as_u64() {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => Ok(()),
        Some(v) => Err(ControlError {
            kind: ErrorKind::UnsupportedVersion,
            message: format!(
                "the request has version {v}, but this daemon speaks version \
                 {PROTOCOL_VERSION}; upgrade the client or daemon so they match"
            ),
        }),
        None => Err(bad_input(format!(
            "invalid request: `version` must be a whole number ({PROTOCOL_VERSION}), not \
             {version}"
        ))),
    }
}

/// serde's `deny_unknown_fields` does not reach the unit variants of an internally tagged
/// enum (`{"op":"list","top":5}` parses as `list`), so they are checked here: a field the
/// daemon ignores would let a client believe it did something.
fn reject_fields_of_unit_ops(
    request: &Request,
    object: &Map<String, Value>,
) -> Result<(), ControlError> {
    let op = match request {
        Request::List => "list",
        Request::Status => "status",
        Request::ClusterStatus => "cluster_status",
        _ => return Ok(()),
    };
    match object.keys().find(|key| *key != "version" && *key != "op") {
        Some(field) => Err(bad_input(format!(
            "invalid request: unknown field `{field}`; `{op}` takes only `version` and `op`"
        ))),
        None => Ok(()),
    }
}

fn bad_input(message: impl Into<String>) -> ControlError {
    ControlError {
        kind: ErrorKind::BadInput,
        message: message.into(),
    }
}

/// The `op` of a request, for logs and messages.
pub fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Block { .. } => "block",
        Request::Unblock { .. } => "unblock",
        Request::Allow { .. } => "allow",
        Request::Unallow { .. } => "unallow",
        Request::List => "list",
        Request::Stats { .. } => "stats",
        Request::Status => "status",
        Request::ClusterStatus => "cluster_status",
        Request::Recommend { .. } => "recommend",
    }
}

/// A response as it goes on the wire: one JSON line.
pub fn encode_response(response: &ResponseLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
        // Every field is plain data; this only fails on a bug, and the peer still gets a line.
        serde_json::to_vec(&ResponseLine::error(
            ErrorKind::Operational,
            format!("the daemon could not encode its answer ({e}); this is a bug, report it"),
        ))
        .expect("an error response encodes")
    });
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(line: &str) -> ControlError {
        decode_request(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn requests_decode() {
        assert_eq!(
            decode_request(br#"{"version":1,"op":"stats","top":5}"#),
            Ok(Request::Stats {
                top: Some(5),
                sort: None,
                filter: None
            })
        );
        assert_eq!(
            decode_request(br#"{"op":"list","version":1}"#),
            Ok(Request::List)
        );
    }

    #[test]
    fn malformed_requests_are_bad_input_with_serdes_message() {
        let cases = [
            ("{", "not valid JSON"),
            ("[1]", "one JSON object per line"),
            (r#"{"op":"list"}"#, "missing field `version`"),
            (r#"{"version":"1","op":"list"}"#, "must be a whole number"),
            (
                r#"{"version":1,"op":"explode"}"#,
                "unknown variant `explode`",
            ),
            (r#"{"version":1}"#, "missing field `op`"),
            (
                r#"{"version":1,"op":"unblock","prefixes":[],"ttl":5}"#,
                "unknown field `ttl`",
            ),
            (
                r#"{"version":1,"op":"list","top":5}"#,
                "unknown field `top`",
            ),
            (
                r#"{"version":1,"op":"status","x":null}"#,
                "unknown field `x`",
            ),
            (
                r#"{"version":1,"op":"block","prefixes":["10.0.0.300"]}"#,
                "invalid IP",
            ),
        ];
        for (line, expected) in cases {
            let error = error_of(line);
            assert_eq!(error.kind, ErrorKind::BadInput, "{line}");
            assert!(
                error.message.contains(expected),
                "{line}: {}",
                error.message
            );
        }
    }

    #[test]
    fn another_version_is_unsupported_even_with_an_unknown_op() {
        let error = error_of(r#"{"version":2,"op":"teleport"}"#);
        assert_eq!(error.kind, ErrorKind::UnsupportedVersion);
        assert!(
            error.message.contains("speaks version 1"),
            "{}",
            error.message
        );
        assert!(error.message.contains("upgrade the client or daemon"));
    }

    #[test]
    fn blank_lines_are_blank() {
        assert!(is_blank(b""));
        assert!(is_blank(b" \t"));
        assert!(!is_blank(b"{}"));
    }

    #[test]
    fn responses_end_with_a_newline() {
        let bytes = encode_response(&ResponseLine::error(ErrorKind::Forbidden, "no"));
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    async fn frames(input: &[u8], limit: usize) -> Vec<Frame> {
        // Four bytes a read, so lines arrive split.
        let chunks: Vec<std::io::Result<bytes::Bytes>> = input
            .chunks(4)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = tokio_util::io::StreamReader::new(futures_util::stream::iter(chunks));
        let mut reader = frame_reader(reader, limit);
        let mut frames = Vec::new();
        loop {
            let frame = read_frame(&mut reader).await.unwrap();
            let last = !matches!(frame, Frame::Line(_));
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }

    #[tokio::test]
    async fn lines_split_across_reads_and_the_last_may_lack_a_newline() {
        assert_eq!(
            frames(b"first line\r\nsecond\n\nlast", 100).await,
            [
                Frame::Line(b"first line".to_vec()),
                Frame::Line(b"second".to_vec()),
                Frame::Line(Vec::new()),
                Frame::Line(b"last".to_vec()),
                Frame::End
            ]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_too_long() {
        assert_eq!(
            frames(b"12345\n123456\n", 5).await,
            [Frame::Line(b"12345".to_vec()), Frame::TooLong]
        );
        assert_eq!(frames(b"123456", 5).await, [Frame::TooLong]);
    }

    /// Found by fuzzing: a `\r` is dropped only before a newline.
    #[tokio::test]
    async fn a_last_line_without_a_newline_keeps_its_carriage_return() {
        assert_eq!(
            frames(b"one\r\ntwo\r", 100).await,
            [
                Frame::Line(b"one".to_vec()),
                Frame::Line(b"two\r".to_vec()),
                Frame::End
            ]
        );
    }
}
