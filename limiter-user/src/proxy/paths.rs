//! `glance_path_prefixes`: the URL path prefixes Glance is served under besides the root
//! (devstack serves it at `/image`, so `POST /image/v2/images` creates an image).
//!
//! The kernel program compares a request line's bytes against each prefix, so a prefix is
//! written exactly as it appears in request lines, and must fit what the program compares.

use super::Problem;

/// Prefixes the kernel program checks at most (besides the root, which it always checks): the
/// size of its prefix map.
pub const MAX_PREFIXES: usize = limiter_common::MAX_PATH_PREFIXES as usize;
/// Longest prefix in bytes: the program compares a prefix as two 8-byte words.
pub const MAX_PREFIX_BYTES: usize = limiter_common::PATH_PREFIX_MAX_LEN;

const KEY: &str = "glance_path_prefixes";
const EXAMPLE: &str = "\"/image\"";

/// Problems of `glance_path_prefixes`: too many, and at most one per entry.
pub fn problems(prefixes: &[String]) -> Vec<Problem> {
    let mut problems = Vec::new();
    if prefixes.len() > MAX_PREFIXES {
        problems.push(Problem::new(
            KEY,
            format!(
                "{} prefixes, but the kernel program checks at most {MAX_PREFIXES} (and the root \
                 besides); keep those Glance is really served under",
                prefixes.len()
            ),
        ));
    }
    for (i, prefix) in prefixes.iter().enumerate() {
        let earlier = prefixes[..i].iter().position(|other| other == prefix);
        let message = match earlier {
            Some(j) => Some(format!(
                "`{}` is listed twice (also {KEY}[{j}]); remove one",
                prefix.escape_debug()
            )),
            None => prefix_problem(prefix),
        };
        if let Some(message) = message {
            problems.push(Problem::new(format!("{KEY}[{i}]"), message));
        }
    }
    problems
}

/// What is wrong with one prefix, and what to write instead.
fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() || prefix == "/" {
        return Some(format!(
            "`{prefix}` is the root, where Glance is always looked for; leave it out (an empty \
             list means Glance at the root only)"
        ));
    }
    if let Some(c) = prefix.chars().find(|c| !is_path_char(*c)) {
        return Some(bad_char(prefix, c));
    }
    let tidy = format!("/{}", prefix.trim_matches('/'));
    if !prefix.starts_with('/') {
        return Some(format!(
            "`{prefix}` does not start with `/`; write \"{tidy}\""
        ));
    }
    if prefix.ends_with('/') {
        return Some(format!(
            "`{prefix}` ends with `/`; write \"{tidy}\" (the `/v2/images` that follows brings \
             its own `/`)"
        ));
    }
    if prefix.contains("//") {
        return Some(format!(
            "`{prefix}` has an empty segment (`//`); write \"{}\"",
            collapse_slashes(prefix)
        ));
    }
    if prefix.len() > MAX_PREFIX_BYTES {
        return Some(format!(
            "`{prefix}` is {} bytes, but the kernel program compares at most {MAX_PREFIX_BYTES} \
             (two 8-byte words); serve Glance under a shorter prefix, for example {EXAMPLE}",
            prefix.len()
        ));
    }
    let last = prefix.rsplit('/').next().unwrap_or_default();
    if last == "v1" || last == "v2" {
        let before = &prefix[..prefix.len() - last.len() - 1];
        let fix = if before.is_empty() {
            "leave it out: Glance at the root is always looked for".to_string()
        } else {
            format!("write \"{before}\"")
        };
        return Some(format!(
            "`{prefix}` ends with the API version; the prefix is what comes before \
             `/{last}/images`, so {fix}"
        ));
    }
    None
}

/// RFC 3986 path characters less `%`: the program compares raw bytes and does not decode,
/// so a percent-encoded prefix would match only clients that happen to encode alike.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c)
}

fn bad_char(prefix: &str, c: char) -> String {
    let why = match c {
        ' ' => "a space, which ends the path in a request line".to_string(),
        '?' => "`?`, which starts the query, not the path".to_string(),
        '#' => "`#`, which starts a fragment and is never sent to the server".to_string(),
        '%' => "`%`: percent-encoding is not decoded (the kernel program compares raw bytes, \
                and a client may encode one path several ways), so write the path decoded"
            .to_string(),
        c if c.is_control() => format!("the control character {c:?}"),
        c => format!("`{c}`, which is not a URL path character"),
    };
    format!(
        "`{}` contains {why}; a prefix holds only letters, digits and - . _ ~ ! $ & ' ( ) * + \
         , ; = : @ /, as in {EXAMPLE}",
        prefix.escape_debug()
    )
}

fn collapse_slashes(prefix: &str) -> String {
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(prefixes: &[&str]) -> Vec<(String, String)> {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        problems(&prefixes)
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect()
    }

    fn message_of(prefix: &str) -> String {
        let found = problems_of(&[prefix]);
        assert_eq!(found.len(), 1, "{prefix}: {found:?}");
        assert_eq!(found[0].0, "glance_path_prefixes[0]");
        found[0].1.clone()
    }

    #[test]
    fn good_prefixes_have_no_problems() {
        assert!(problems_of(&[]).is_empty());
        assert!(problems_of(&["/image", "/glance", "/api/image", "/123456789abcdef"]).is_empty());
        assert!(problems_of(&["/v2-images", "/a.b_c~d:e@f"]).is_empty());
    }

    #[test]
    fn each_shape_problem_says_what_to_write() {
        for (prefix, expected) in [
            ("image", "`image` does not start with `/`; write \"/image\""),
            ("/image/", "`/image/` ends with `/`; write \"/image\""),
            (
                "",
                "`` is the root, where Glance is always looked for; leave it out",
            ),
            ("/", "`/` is the root"),
            (
                "/a//b",
                "`/a//b` has an empty segment (`//`); write \"/a/b\"",
            ),
            (
                "/image/v2",
                "`/image/v2` ends with the API version; the prefix is what comes before \
                 `/v2/images`, so write \"/image\"",
            ),
            (
                "/v1",
                "so leave it out: Glance at the root is always looked for",
            ),
            (
                "/0123456789abcdef0",
                "`/0123456789abcdef0` is 18 bytes, but the kernel program compares at most 16 \
                 (two 8-byte words)",
            ),
        ] {
            let message = message_of(prefix);
            assert!(message.contains(expected), "{prefix}: {message}");
        }
    }

    #[test]
    fn characters_outside_a_path_are_named_with_the_reason() {
        for (prefix, expected) in [
            ("/my image", "contains a space, which ends the path"),
            ("/image?x=1", "contains `?`, which starts the query"),
            ("/image#top", "contains `#`, which starts a fragment"),
            ("/im%61ge", "contains `%`: percent-encoding is not decoded"),
            ("/imäge", "contains `ä`, which is not a URL path character"),
            ("/a\tb", "`/a\\tb` contains the control character '\\t'"),
            ("/a\"b", "contains `\"`, which is not a URL path character"),
        ] {
            let message = message_of(prefix);
            assert!(message.contains(expected), "{prefix}: {message}");
            assert!(message.ends_with("as in \"/image\""), "{message}");
        }
    }

    #[test]
    fn too_many_and_duplicates_are_reported() {
        let found = problems_of(&["/a", "/b", "/a", "/c", "/d"]);
        assert_eq!(
            found,
            [
                (
                    "glance_path_prefixes".to_string(),
                    "5 prefixes, but the kernel program checks at most 4 (and the root besides); \
                     keep those Glance is really served under"
                        .to_string()
                ),
                (
                    "glance_path_prefixes[2]".to_string(),
                    "`/a` is listed twice (also glance_path_prefixes[0]); remove one".to_string()
                ),
            ]
        );
    }
}
