//! What operators type, parsed the same way on the command line and on the live screen:
//! durations, rule TTLs and the screen's refresh settings. It sits below `cli` and `tui` so
//! that neither imports the other for it (the text both print is in [`crate::text`]).

use std::time::Duration;

/// The longest TTL accepted: anything longer is meant to be permanent, which is what leaving
/// out --ttl says.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const DURATION_FORMS: &str = "write it like 90s, 30m, 12h, 7d or 1h30m";

/// A duration such as `30m` or `1h30m`; a unit is required, so `30` is not silently seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{text}` has no unit; {DURATION_FORMS}"));
    }
    humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is not a duration; {DURATION_FORMS}"))
}

/// A rule's TTL: a positive duration of at most [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err(
            "a TTL of 0 would expire at once; give at least 1s, or leave out --ttl for a rule \
             that lasts until removed"
                .into(),
        );
    }
    if ttl > MAX_TTL {
        return Err(format!(
            "`{text}` is longer than 10 years; leave out --ttl for a rule that lasts until removed"
        ));
    }
    Ok(ttl)
}

/// Whole seconds for the protocol, rounded up: a rule never ends before the time asked for.
pub fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// Bounds of `--interval`: faster than 200 ms costs the daemon more than it shows; slower
/// than 10 s is no longer live.
pub const INTERVAL_MIN: Duration = Duration::from_millis(200);
pub const INTERVAL_MAX: Duration = Duration::from_secs(10);
/// `--interval`: a duration between [`INTERVAL_MIN`] and [`INTERVAL_MAX`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(INTERVAL_MIN..=INTERVAL_MAX).contains(&interval) {
        return Err(format!(
            "`{text}` is outside 200ms..10s; the default of 1s suits most uses"
        ));
    }
    Ok(interval)
}

/// `--max-sources`: how many sources one refresh fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxSources(pub Option<usize>);

/// `all` or a whole number of at least 1.
pub fn parse_max_sources(text: &str) -> Result<MaxSources, String> {
    if text.eq_ignore_ascii_case("all") {
        return Ok(MaxSources(None));
    }
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(MaxSources(Some(n))),
        _ => Err(format!(
            "`{text}` is not a number of sources; give a whole number of at least 1, or `all`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_accept_human_durations() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl(" 90s "), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn bad_ttls_say_what_is_accepted() {
        for (text, expected) in [
            ("30x", "is not a duration; write it like 90s, 30m"),
            ("", "is not a duration"),
            ("30", "has no unit"),
            ("-5m", "is not a duration"),
            ("0s", "would expire at once"),
            ("0m", "would expire at once"),
            ("11years", "longer than 10 years"),
        ] {
            let message = parse_ttl(text).unwrap_err();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(1800)), 1800);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("50ms")
            .unwrap_err()
            .contains("outside 200ms..10s"));
        assert!(parse_interval("1m").is_err());
        assert!(parse_interval("1").unwrap_err().contains("no unit"));
    }

    #[test]
    fn max_sources_takes_a_number_or_all() {
        assert_eq!(parse_max_sources("all"), Ok(MaxSources(None)));
        assert_eq!(parse_max_sources("500"), Ok(MaxSources(Some(500))));
        assert!(parse_max_sources("0").is_err());
        assert!(parse_max_sources("many").is_err());
    }
}
