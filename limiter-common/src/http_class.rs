//! A userspace twin of the XDP program's HTTP request classifier (`limiter-ebpf/src/http.rs`):
//! the same decisions over a byte slice, with plain slice comparisons instead of the kernel's
//! masked word loads. The kernel keeps its own code (written for the verifier); this one is
//! what the fuzzer exercises, and `tests/tests/http_twin.rs` runs the same requests through
//! both (the kernel through BPF_PROG_TEST_RUN) and compares the classes, which keeps the two
//! in step.

use crate::{MAX_PATH_PREFIXES, PATH_PREFIX_MAX_LEN};

/// What a request line says about a request (the per-source row counts one of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestClass {
    /// `POST /v1/images` or `POST /v2/images` (optionally under a path prefix), optionally
    /// followed by `/`, then a space or `?`.
    ImageCreate,
    /// Any other POST; PUT, PATCH, DELETE.
    OtherWrite,
    /// GET, HEAD, OPTIONS.
    Read,
}

/// The shortest payload the kernel classifies ("GET / HTTP/1.0\r\n").
pub const MIN_REQUEST_LEN: usize = 16;

/// Length of `/v1/images` plus the two bytes the kernel reads after it in one load.
const PREFIXED_TAIL_LEN: usize = 12;

/// The class of the request at the start of `bytes`, whose first `payload_len` bytes are the
/// TCP payload (the rest, if any, are bytes of the frame after it, which the kernel may read
/// but not count as the request). `prefixes` are the path prefixes in use, as the kernel's
/// `PATH_PREFIXES` map holds them: only the first [`MAX_PATH_PREFIXES`] are looked at, and an
/// empty one or one longer than [`PATH_PREFIX_MAX_LEN`] never matches.
pub fn classify(bytes: &[u8], payload_len: usize, prefixes: &[&[u8]]) -> Option<RequestClass> {
    let payload_len = payload_len.min(bytes.len());
    if payload_len < MIN_REQUEST_LEN {
        return None;
    }
    let starts = |method: &[u8]| bytes.starts_with(method);
    if starts(b"GET ") || starts(b"HEAD ") || starts(b"OPTIONS ") {
        return Some(RequestClass::Read);
    }
    if starts(b"POST ") {
        if unprefixed_image_path(bytes, payload_len)
            || (!prefixes.is_empty() && prefixed_image_path(bytes, payload_len, prefixes))
        {
            return Some(RequestClass::ImageCreate);
        }
        return Some(RequestClass::OtherWrite);
    }
    if starts(b"PUT ") || starts(b"PATCH ") || starts(b"DELETE ") {
        return Some(RequestClass::OtherWrite);
    }
    None
}

/// `/v1/images` or `/v2/images` right after `POST `, then a space or `?`, or `/` and then a
/// space or `?` (the byte after the first 16 must be in the payload).
fn unprefixed_image_path(bytes: &[u8], payload_len: usize) -> bool {
    if !is_image_path(&bytes[5..15]) {
        return false;
    }
    match bytes[15] {
        b' ' | b'?' => true,
        b'/' => payload_len > MIN_REQUEST_LEN && matches!(bytes[16], b' ' | b'?'),
        _ => false,
    }
}

/// The longest prefix that the path starts with, then `/v1/images` or `/v2/images`, an
/// optional `/`, and a space or `?`. The kernel reads 16 bytes of path to match prefixes (so
/// they must be in `bytes`), and 12 bytes after the prefix, which must be in the payload.
fn prefixed_image_path(bytes: &[u8], payload_len: usize, prefixes: &[&[u8]]) -> bool {
    const PATH: usize = 5;
    let Some(path) = bytes.get(PATH..PATH + PATH_PREFIX_MAX_LEN) else {
        return false;
    };
    let matched_len = prefixes
        .iter()
        .take(MAX_PATH_PREFIXES as usize)
        .filter(|p| (1..=PATH_PREFIX_MAX_LEN).contains(&p.len()) && path.starts_with(p))
        .map(|p| p.len())
        .max()
        .unwrap_or(0);
    if matched_len == 0 {
        return false;
    }
    let at = PATH + matched_len;
    if at + PREFIXED_TAIL_LEN > payload_len {
        return false;
    }
    let tail = &bytes[at..at + PREFIXED_TAIL_LEN];
    if !is_image_path(&tail[..10]) {
        return false;
    }
    match tail[10] {
        b' ' | b'?' => true,
        b'/' => matches!(tail[11], b' ' | b'?'),
        _ => false,
    }
}

/// `/v1/images` or `/v2/images` (10 bytes).
fn is_image_path(ten: &[u8]) -> bool {
    (ten.starts_with(b"/v1") || ten.starts_with(b"/v2")) && &ten[3..10] == b"/images"
}

#[cfg(test)]
mod tests {
    use super::{classify, RequestClass::*};

    fn class(text: &str, prefixes: &[&str]) -> Option<super::RequestClass> {
        let mut bytes: [&[u8]; 8] = [b""; 8];
        for (slot, prefix) in bytes.iter_mut().zip(prefixes) {
            *slot = prefix.as_bytes();
        }
        classify(text.as_bytes(), text.len(), &bytes[..prefixes.len()])
    }

    #[test]
    fn methods_map_to_classes() {
        assert_eq!(class("GET / HTTP/1.0\r\n", &[]), Some(Read));
        assert_eq!(class("HEAD /v2/images HTTP/1.1", &[]), Some(Read));
        assert_eq!(class("OPTIONS * HTTP/1.1\r\n", &[]), Some(Read));
        assert_eq!(class("PUT /v2/images/x HTTP/1.1", &[]), Some(OtherWrite));
        assert_eq!(class("PATCH /v2/images/x HTTP/1.1", &[]), Some(OtherWrite));
        assert_eq!(class("DELETE /v2/images/x HTTP/1.1", &[]), Some(OtherWrite));
        assert_eq!(class("CONNECT x:1 HTTP/1.1\r\n", &[]), None);
        assert_eq!(class("get / HTTP/1.0\r\n\r\n", &[]), None);
    }

    #[test]
    fn short_payloads_are_not_classified() {
        assert_eq!(class("GET / HTTP/1.0\r", &[]), None);
        // Bytes past the payload do not make a request long enough.
        let frame = b"GET / HTTP/1.0\r\n";
        assert_eq!(classify(frame, 15, &[]), None);
        assert_eq!(classify(frame, 16, &[]), Some(Read));
    }

    #[test]
    fn image_creates_end_after_images_or_one_slash() {
        assert_eq!(class("POST /v2/images HTTP/1.1", &[]), Some(ImageCreate));
        assert_eq!(class("POST /v1/images?x HTTP/1.1", &[]), Some(ImageCreate));
        assert_eq!(class("POST /v2/images/ HTTP/1.1", &[]), Some(ImageCreate));
        assert_eq!(class("POST /v2/images/?a HTTP/1.1", &[]), Some(ImageCreate));
        assert_eq!(class("POST /v2/images/x HTTP/1.1", &[]), Some(OtherWrite));
        assert_eq!(class("POST /v3/images HTTP/1.1", &[]), Some(OtherWrite));
        assert_eq!(class("POST /v2/imagesx HTTP/1.1", &[]), Some(OtherWrite));
        // "/images/" as the last payload byte: what follows is not the request's.
        assert_eq!(class("POST /v2/images/", &[]), Some(OtherWrite));
    }

    #[test]
    fn prefixes_take_the_longest_match_and_need_twelve_bytes_after_it() {
        let image = &["/image"];
        assert_eq!(
            class("POST /image/v2/images HTTP/1.1", image),
            Some(ImageCreate)
        );
        assert_eq!(
            class("POST /image/v1/images/?x HTTP/1.1", image),
            Some(ImageCreate)
        );
        assert_eq!(
            class("POST /image/v2/images/x HTTP/1.1", image),
            Some(OtherWrite)
        );
        assert_eq!(
            class("POST /other/v2/images HTTP/1.1", image),
            Some(OtherWrite)
        );
        // The kernel reads "/v2/images" and two more bytes in one load.
        assert_eq!(class("POST /image/v2/images ", image), Some(OtherWrite));
        assert_eq!(class("POST /image/v2/images H", image), Some(ImageCreate));
        // `/image` must not hide `/image-api`.
        let both = &["/image", "/image-api"];
        assert_eq!(
            class("POST /image-api/v2/images HTTP/1.1", both),
            Some(ImageCreate)
        );
        // Only the first four prefixes are in use.
        let five = &["/a", "/b", "/c", "/d", "/e"];
        assert_eq!(class("POST /e/v2/images HTTP/1.1", five), Some(OtherWrite));
    }
}
