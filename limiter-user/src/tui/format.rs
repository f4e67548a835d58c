//! Numbers and times in the few characters a table cell has. Every figure fits in six
//! columns, so the table keeps its shape at 80 columns whatever the traffic.

use std::time::{Duration, SystemTime};

use crate::text::short_duration;

/// A rate: `0`, `0.5`, `12.3`, `820`, `12.3k`, `4.1M`.
pub fn rate(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return "0".to_string();
    }
    match value {
        v if v < 100.0 => trim_zero(format!("{v:.1}")),
        v if v < 10_000.0 => format!("{v:.0}"),
        v if v < 100_000.0 => format!("{:.1}k", v / 1e3),
        v if v < 1e6 => format!("{:.0}k", v / 1e3),
        v if v < 1e8 => format!("{:.1}M", v / 1e6),
        v if v < 1e9 => format!("{:.0}M", v / 1e6),
        v if v < 1e11 => format!("{:.1}G", v / 1e9),
        v => format!("{:.0}G", v / 1e9),
    }
}

/// A whole count: `0`, `300`, `9999`, `12.3k`.
pub fn count(value: u64) -> String {
    if value < 10_000 {
        value.to_string()
    } else {
        rate(value as f64)
    }
}

/// Bytes per second in binary units, without a space: `820B`, `12.3K`, `1.5M`.
pub fn bytes(per_second: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    if !per_second.is_finite() || per_second <= 0.0 {
        return "0B".to_string();
    }
    let mut value = per_second;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}B")
    } else if value < 100.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// How long until `until`, as [`short_duration`] writes it; `0s` once it has passed.
pub fn time_left(until: SystemTime, now: SystemTime) -> String {
    short_duration(until.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `10:00:05`: the UTC time of day, which is all an event log on a live screen needs (the
/// header carries the date-free clock too, marked `Z`).
pub fn clock(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    // 2025-06-01T10:00:05Z
    text.get(11..19).unwrap_or(&text).to_string()
}

/// Cuts `text` to `width` characters, marking the cut with `…`.
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        out.push('…');
    }
    out
}

fn trim_zero(text: String) -> String {
    match text.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_fit_six_columns() {
        for (value, text) in [
            (0.0, "0"),
            (f64::NAN, "0"),
            (0.5, "0.5"),
            (12.34, "12.3"),
            (50.0, "50"),
            (820.4, "820"),
            (12_345.0, "12.3k"),
            (412_345.0, "412k"),
            (4_100_000.0, "4.1M"),
            (410_000_000.0, "410M"),
        ] {
            assert_eq!(rate(value), text, "{value}");
        }
        for value in [
            0.1,
            99.96,
            9_999.4,
            99_999.0,
            999_999.0,
            99_999_999.0,
            9.9e9,
            1e12,
        ] {
            assert!(rate(value).len() <= 6, "{value}: {}", rate(value));
        }
    }

    #[test]
    fn counts_and_bytes() {
        assert_eq!(count(300), "300");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(bytes(820.0), "820B");
        assert_eq!(bytes(1_572_864.0), "1.5M");
        assert_eq!(bytes(200.0 * 1024.0), "200K");
    }

    #[test]
    fn times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_772_005);
        assert_eq!(clock(now), "10:00:05");
        assert_eq!(time_left(now + Duration::from_secs(599), now), "9m");
        assert_eq!(time_left(now - Duration::from_secs(5), now), "0s");
        assert_eq!(fit("2001:db8::1234:5678", 10), "2001:db8:…");
        assert_eq!(fit("ok", 10), "ok");
    }
}
