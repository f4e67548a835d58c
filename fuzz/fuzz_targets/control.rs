//! The control protocol's wire format: line framing with a length limit (`frame_reader`, `read_frame`), the
//! daemon's request decoder and the client's response decoder. Properties: framing yields the
//! input back, line by line, never holding a line over the limit; a request that decodes
//! encodes (as the client sends it) to a line that decodes to the same request; a response
//! that decodes encodes (as the daemon sends it) to a line that decodes to the same response.
#![no_main]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use libfuzzer_sys::fuzz_target;
use limiter_user::control::{
    client::{decode_response, encode_request},
    framing::{decode_request, encode_response, frame_reader, read_frame, Frame},
};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    framing(stream, usize::from(limit));
    // Each line of the stream, as the daemon would decode it.
    for line in stream.split(|&b| b == b'\n') {
        request(line);
        response(line);
    }
});

fn framing(stream: &[u8], limit: usize) {
    let mut reader = frame_reader(stream, limit);
    let mut rebuilt = Vec::new();
    // Where the next line starts in `stream`.
    let mut consumed = 0;
    loop {
        match now(read_frame(&mut reader)).expect("reading a slice cannot fail") {
            Frame::Line(line) => {
                let rest = &stream[consumed..];
                consumed += rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |newline| newline + 1);
                assert!(
                    line.len() <= limit,
                    "a {}-byte line over the limit {limit}",
                    line.len()
                );
                assert!(!line.contains(&b'\n'));
                rebuilt.extend_from_slice(&line);
                rebuilt.push(b'\n');
            }
            Frame::TooLong => {
                // Only when the next line (to its newline or the end) is over the limit.
                let rest = &stream[consumed..];
                let line_len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                assert!(
                    line_len > limit,
                    "TooLong for a {line_len}-byte line (limit {limit})"
                );
                return;
            }
            Frame::End => break,
        }
    }
    // Every byte is accounted for: each line with a newline, less the `\r` before a newline
    // (dropped); a last line without a newline comes whole.
    let mut expected = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(newline) => {
                let body = &rest[..newline];
                expected.extend_from_slice(body.strip_suffix(b"\r").unwrap_or(body));
                rest = &rest[newline + 1..];
            }
            None => {
                expected.extend_from_slice(rest);
                rest = &[];
            }
        }
        expected.push(b'\n');
    }
    assert_eq!(rebuilt, expected);
}

fn request(line: &[u8]) {
    let Ok(request) = decode_request(line) else {
        return;
    };
    let Ok(encoded) = encode_request(request.clone()) else {
        return; // longer than the daemon reads
    };
    let encoded = encoded
        .strip_suffix(b"\n")
        .expect("a request line ends with a newline");
    match decode_request(encoded) {
        Ok(again) => assert_eq!(again, request),
        Err(e) => panic!(
            "{request:?} encodes as {} which the daemon refuses: {e:?}",
            String::from_utf8_lossy(encoded)
        ),
    }
}

fn response(line: &[u8]) {
    let Ok(response) = decode_response(line) else {
        return;
    };
    let encoded = encode_response(&response);
    let encoded = encoded
        .strip_suffix(b"\n")
        .expect("a response line ends with a newline");
    match decode_response(encoded) {
        Ok(again) => assert_eq!(again, response),
        Err(e) => panic!(
            "{response:?} encodes as {} which the client refuses: {e}",
            String::from_utf8_lossy(encoded)
        ),
    }
}

/// Runs a future that never waits (reading a slice is always ready) to its end.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading a slice waited"),
    }
}
