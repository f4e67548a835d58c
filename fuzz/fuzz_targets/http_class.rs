//! The userspace twin of the kernel's HTTP classifier (`limiter_common::http_class`; the
//! kernel itself is compared with it through BPF_PROG_TEST_RUN in tests/tests/http_twin.rs).
//! Input: a byte choosing how many path prefixes are in use and how long the payload is
//! within the bytes, then the prefixes (NUL-terminated) and the request bytes. Properties
//! besides not panicking: the class follows from the method; an image create is a POST whose
//! path holds `/v1/images` or `/v2/images`; bytes past the payload never make a request
//! count, and only matter through prefixes; prefixes only ever turn another write into an
//! image create.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_common::http_class::{classify, RequestClass, MIN_REQUEST_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(control & 0x7);
    let trailing = usize::from(control >> 3);
    let mut prefixes: Vec<&[u8]> = Vec::new();
    for _ in 0..count {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        prefixes.push(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    let bytes = rest;
    let payload_len = bytes.len().saturating_sub(trailing);

    let class = classify(bytes, payload_len, &prefixes);
    let payload = &bytes[..payload_len];
    if payload.len() < MIN_REQUEST_LEN {
        assert_eq!(class, None);
        return;
    }
    let method = |m: &[u8]| payload.starts_with(m);
    match class {
        Some(RequestClass::Read) => {
            assert!(method(b"GET ") || method(b"HEAD ") || method(b"OPTIONS "))
        }
        Some(RequestClass::OtherWrite) => {
            assert!(method(b"POST ") || method(b"PUT ") || method(b"PATCH ") || method(b"DELETE "))
        }
        Some(RequestClass::ImageCreate) => {
            assert!(method(b"POST "));
            let image_path = |at: &[u8]| {
                let ends = |rest: &[u8]| matches!(rest.first(), Some(b' ' | b'?'));
                (at.starts_with(b"/v1/images") || at.starts_with(b"/v2/images"))
                    && (ends(&at[10..]) || (at.get(10) == Some(&b'/') && ends(&at[11..])))
            };
            assert!(
                (5..payload.len()).any(|at| image_path(&payload[at..])),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        None => assert!(
            !(method(b"GET ") || method(b"POST ") || method(b"PUT ") || method(b"DELETE ")),
            "{:?}",
            String::from_utf8_lossy(payload)
        ),
    }
    // Without prefixes the bytes past the payload cannot change the class.
    let unprefixed = classify(bytes, payload_len, &[]);
    assert_eq!(unprefixed, classify(payload, payload_len, &[]));
    // Prefixes only add image creates.
    if class != unprefixed {
        assert_eq!(unprefixed, Some(RequestClass::OtherWrite));
        assert_eq!(class, Some(RequestClass::ImageCreate));
    }
});
