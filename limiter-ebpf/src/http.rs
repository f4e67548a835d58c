//! Classification of a TCP payload that begins with an HTTP request line. Prefixes compare as
//! words: one load and a mask per candidate instead of byte loops.

use aya_ebpf::{macros::map, maps::Array, programs::XdpContext};
use limiter_common::{PathPrefix, MAX_PATH_PREFIXES};

use crate::packet::{first_bytes, header, word64};

/// URL path prefixes Glance is served under (`/image` on devstack); the first
/// `Config::path_prefixes` entries are in use.
#[map]
static PATH_PREFIXES: Array<PathPrefix> = Array::with_max_entries(MAX_PATH_PREFIXES, 0);

#[derive(Clone, Copy)]
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

/// The class of the request whose line starts at `off`; `prefixes` of [`PATH_PREFIXES`] are
/// tried in front of `/v1/images` and `/v2/images`.
#[inline(always)]
pub fn classify(
    ctx: &XdpContext,
    off: usize,
    payload_len: usize,
    prefixes: u32,
) -> Option<RequestClass> {
    if payload_len < MIN_REQUEST_LEN {
        return None;
    }
    let line = header::<MIN_REQUEST_LEN>(ctx, off)?;
    let head = line.raw64(0);
    // POST first: image creates are what the limiter is for, and their path should not pay
    // for the read methods' comparisons (the method tokens exclude one another).
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
        if prefixes != 0 {
            // The request's offsets are forgotten (`Window::forget`): this rare path is then
            // checked once, not once per way of reaching it (VLAN tags, IP options, ...).
            // SAFETY: this CPU's window; a program run is not preempted on its CPU.
            let window = unsafe { &mut *crate::headers::window()? };
            let (off, payload_len) = (window.forget(off), window.forget(payload_len));
            if prefixed_image_path(ctx, off, payload_len, prefixes) {
                return Some(RequestClass::ImageCreate);
            }
        }
        return Some(RequestClass::OtherWrite);
    }
    if head & first_bytes(4) == GET || head & first_bytes(5) == HEAD || head == OPTIONS {
        return Some(RequestClass::Read);
    }
    if head & first_bytes(4) == PUT
        || head & first_bytes(6) == PATCH
        || head & first_bytes(7) == DELETE
    {
        return Some(RequestClass::OtherWrite);
    }
    None
}

/// Whether the path after `POST ` is one of the prefixes followed by `/v1/images` or
/// `/v2/images`, then an optional `/`, then a space or `?`.
#[inline(always)]
fn prefixed_image_path(ctx: &XdpContext, off: usize, payload_len: usize, prefixes: u32) -> bool {
    const PATH: usize = 5;
    let Some(path) = header::<16>(ctx, off + PATH) else {
        return false;
    };
    let (first, second) = (path.raw64(0), path.raw64(8));
    // Which prefix matches (the longest, so `/image` does not hide `/image-api`), then one
    // look at what follows it: a look per prefix would have the verifier follow every
    // combination of outcomes.
    let mut matched_len = 0;
    for i in 0..MAX_PATH_PREFIXES {
        if i >= prefixes {
            break;
        }
        let Some(prefix) = PATH_PREFIXES.get(i) else {
            break;
        };
        let len = prefix.len as usize;
        let matches = match len {
            1..=8 => first & first_bytes(len as u32) == prefix.words[0],
            9..=16 => {
                first == prefix.words[0] && second & first_bytes(len as u32 - 8) == prefix.words[1]
            }
            _ => false,
        };
        if matches && len > matched_len {
            matched_len = len;
        }
    }
    matched_len != 0 && image_path_at(ctx, off + PATH + matched_len, off + payload_len)
}

/// `/v1/images` or `/v2/images` at `at`, then an optional `/`, then a space or `?`, all
/// before `end`.
#[inline(always)]
fn image_path_at(ctx: &XdpContext, at: usize, end: usize) -> bool {
    let Some(path) = header::<12>(ctx, at) else {
        return false;
    };
    if at + 12 > end {
        return false;
    }
    let version = path.raw64(0) & first_bytes(3);
    let version_ok = version == word64(b"/v1") || version == word64(b"/v2");
    // Bytes 3..10: "/images"; read as the word at 3 masked to 7 bytes.
    let images = path.raw64(3) & first_bytes(7);
    if !version_ok || images != SLASH_IMAGES {
        return false;
    }
    match path.u8(10) {
        b' ' | b'?' => true,
        b'/' => matches!(path.u8(11), b' ' | b'?'),
        _ => false,
    }
}
