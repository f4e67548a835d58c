//! Classification of a TCP payload that begins with an HTTP request line. Prefixes compare as
//! words: one load and a mask per candidate instead of byte loops.

use aya_ebpf::programs::XdpContext;

use crate::packet::{first_bytes, header, word64};

pub enum RequestClass {
    /// `POST /v1/images` or `POST /v2/images`, optionally followed by `/`, then a space or `?`.
    ImageCreate,
    /// Any other POST; PUT, PATCH, DELETE.
    OtherWrite,
    /// GET, HEAD, OPTIONS.
    Read,
}

const GET: u64 = word64(b"GET ");
const PUT: u64 = word64(b"PUT ");
const HEAD: u64 = word64(b"HEAD ");
const POST: u64 = word64(b"POST ");
const PATCH: u64 = word64(b"PATCH ");
const DELETE: u64 = word64(b"DELETE ");
const OPTIONS: u64 = word64(b"OPTIONS ");
/// Bytes 5..8 of `POST /v1/images`, in place.
const SLASH_V1: u64 = word64(b"/v1") << 40;
const SLASH_V2: u64 = word64(b"/v2") << 40;
/// Bytes 8..15.
const SLASH_IMAGES: u64 = word64(b"/images");

/// The shortest request line worth classifying: "GET / HTTP/1.0\r\n" is 16 bytes, and every
/// method token with its space fits in the first 8.
const MIN_REQUEST_LEN: usize = 16;

#[inline(always)]
pub fn classify(ctx: &XdpContext, off: usize, payload_len: usize) -> Option<RequestClass> {
    if payload_len < MIN_REQUEST_LEN {
        return None;
    }
    let line = header::<MIN_REQUEST_LEN>(ctx, off)?;
    let head = line.raw64(0);
    if head & first_bytes(4) == GET || head & first_bytes(5) == HEAD || head == OPTIONS {
        return Some(RequestClass::Read);
    }
    if head & first_bytes(5) == POST {
        let path = head & !first_bytes(5);
        if (path == SLASH_V1 || path == SLASH_V2) && line.raw64(8) & first_bytes(7) == SLASH_IMAGES
        {
            // Byte 15 follows "/images": the path ends there or after one trailing slash.
            let ends = match line.u8(15) {
                b' ' | b'?' => true,
                b'/' => {
                    payload_len > MIN_REQUEST_LEN
                        && header::<1>(ctx, off + MIN_REQUEST_LEN)
                            .is_some_and(|next| matches!(next.u8(0), b' ' | b'?'))
                }
                _ => false,
            };
            if ends {
                return Some(RequestClass::ImageCreate);
            }
        }
        return Some(RequestClass::OtherWrite);
    }
    if head & first_bytes(4) == PUT
        || head & first_bytes(6) == PATCH
        || head & first_bytes(7) == DELETE
    {
        return Some(RequestClass::OtherWrite);
    }
    None
}
