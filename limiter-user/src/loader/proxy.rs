//! The maps behind attribution through trusted proxies: the trusted-proxy trie, which header
//! names the client, Glance's path prefixes, and the response a banned client's proxied
//! request gets in Glance's place.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use ipnet::IpNet;
use limiter_common::{
    PathPrefix, RejectTemplate, TrustedProxy, CONFIG_FORWARDED_HEADER, CONFIG_TRUSTED_PROXIES,
    MAX_PATH_PREFIXES, PATH_PREFIXES_MAP, PATH_PREFIX_MAX_LEN, REJECT_MAP, REJECT_MAX_LEN,
    RETRY_AFTER_DIGITS, TRUSTED_PROXIES_MAP,
};

use super::{
    maps::{map_err, map_mut, set_config_flag, sync_trie, update_config},
    Limiter, LoaderError,
};
use crate::{net, proxy::ClientHeader};

/// Retry-After sent for bans that do not end: a client is told to come back in an hour, and
/// is refused again then if the ban still stands.
pub const RETRY_AFTER_NEVER_SECS: u32 = 3600;

impl Limiter {
    /// Makes the trusted-proxy trie hold exactly `proxies`, then bumps the rules generation so
    /// every source's cached "is a trusted proxy" is read again.
    pub fn set_trusted_proxies(&mut self, proxies: &[IpNet]) -> Result<(), LoaderError> {
        let wanted: BTreeMap<_, _> = proxies
            .iter()
            .map(|p| (net::net_to_key(*p), TrustedProxy::default()))
            .collect();
        if !wanted.is_empty() {
            set_config_flag(&mut self.ebpf, CONFIG_TRUSTED_PROXIES, true)?;
        }
        sync_trie(&mut self.ebpf, TRUSTED_PROXIES_MAP, &wanted, None)?;
        if wanted.is_empty() {
            set_config_flag(&mut self.ebpf, CONFIG_TRUSTED_PROXIES, false)?;
        }
        update_config(&mut self.ebpf, |config| {
            config.rules_generation = config.rules_generation.wrapping_add(1)
        })
    }

    pub fn set_client_header(&mut self, header: ClientHeader) -> Result<(), LoaderError> {
        set_config_flag(
            &mut self.ebpf,
            CONFIG_FORWARDED_HEADER,
            header == ClientHeader::Forwarded,
        )
    }

    /// The URL path prefixes Glance is served under (`/image`): `POST /image/v2/images` is
    /// then an image create. At most [`MAX_PATH_PREFIXES`], each 1-16 bytes.
    pub fn set_path_prefixes(&mut self, prefixes: &[String]) -> Result<(), LoaderError> {
        if prefixes.len() > MAX_PATH_PREFIXES as usize {
            return Err(LoaderError::PathPrefixes(format!(
                "{} prefixes given, at most {MAX_PATH_PREFIXES} are supported",
                prefixes.len()
            )));
        }
        let entries = prefixes
            .iter()
            .map(|p| path_prefix(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Shrink the count before rewriting entries and grow it after, so the program never
        // reads an entry being written as in use.
        update_config(&mut self.ebpf, |c| {
            c.path_prefixes = c.path_prefixes.min(entries.len() as u32)
        })?;
        let mut array: Array<&mut MapData, PathPrefix> =
            Array::try_from(map_mut(&mut self.ebpf, PATH_PREFIXES_MAP)?)
                .map_err(map_err(PATH_PREFIXES_MAP, "open"))?;
        for (index, entry) in entries.iter().enumerate() {
            array
                .set(index as u32, entry, 0)
                .map_err(map_err(PATH_PREFIXES_MAP, "write"))?;
        }
        update_config(&mut self.ebpf, |c| c.path_prefixes = entries.len() as u32)
    }

    /// Writes the response sent in Glance's place to a banned client's proxied request.
    pub fn set_reject_response(&mut self, hz: u32) -> Result<(), LoaderError> {
        let template = reject_template(hz, RETRY_AFTER_NEVER_SECS);
        let mut array: Array<&mut MapData, RejectTemplate> =
            Array::try_from(map_mut(&mut self.ebpf, REJECT_MAP)?)
                .map_err(map_err(REJECT_MAP, "open"))?;
        array
            .set(0, template, 0)
            .map_err(map_err(REJECT_MAP, "write"))
    }
}

fn path_prefix(prefix: &str) -> Result<PathPrefix, LoaderError> {
    let bytes = prefix.as_bytes();
    if bytes.is_empty() || bytes.len() > PATH_PREFIX_MAX_LEN {
        return Err(LoaderError::PathPrefixes(format!(
            "`{prefix}` must be 1-{PATH_PREFIX_MAX_LEN} bytes"
        )));
    }
    let mut padded = [0u8; 16];
    padded[..bytes.len()].copy_from_slice(bytes);
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&padded[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    Ok(PathPrefix {
        words: [word(0), word(8)],
        len: bytes.len() as u32,
        _pad: 0,
    })
}

/// The rejection response: a 429 in Glance's own error format, `Retry-After` right-aligned in
/// a fixed-width field the program fills, and `Connection: close` so the proxy opens a fresh
/// connection for its next request. Padded with spaces in the body to a multiple of 4 bytes.
pub fn reject_template(hz: u32, retry_after_never: u32) -> RejectTemplate {
    let head = "HTTP/1.1 429 Too Many Requests\r\nRetry-After:";
    let spaces = " ".repeat(RETRY_AFTER_DIGITS);
    let body_text = "{\"message\": \"Too many requests from this client (glance-limiter). \
                     Retry later.\", \"code\": 429, \"title\": \"Too Many Requests\"}";
    let mut body = body_text.to_string();
    let mut text;
    loop {
        text = format!(
            "{head}{spaces}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        if text.len().is_multiple_of(4) && head.len().is_multiple_of(2) {
            break;
        }
        body.push(' ');
    }
    assert!(
        text.len() <= REJECT_MAX_LEN,
        "the rejection response outgrew its buffer"
    );
    let retry_after_at = head.len();
    let mut bytes = [0u8; REJECT_MAX_LEN];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    let mut zeroed = bytes;
    zeroed[retry_after_at..retry_after_at + RETRY_AFTER_DIGITS].fill(0);
    let text_sum: u32 = zeroed[..text.len()]
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    RejectTemplate {
        len: text.len() as u32,
        retry_after_at: retry_after_at as u32,
        hz,
        retry_after_never,
        text_sum,
        _pad: 0,
        text: bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fits_and_aligns() {
        let t = reject_template(250, 3600);
        assert_eq!(t.len % 4, 0);
        assert_eq!(t.retry_after_at % 2, 0);
        let text = std::str::from_utf8(&t.text[..t.len as usize]).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\nRetry-After:      \r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
    }

    #[test]
    fn prefixes_are_words() {
        let p = path_prefix("/image").unwrap();
        assert_eq!(p.len, 6);
        assert_eq!(p.words[0].to_ne_bytes()[..6], *b"/image");
        assert!(path_prefix("/a/very/long/prefix").is_err());
    }
}
