//! Times on the wire and in the state directory's evidence files: RFC 3339 in UTC to the
//! second (`2026-01-31T12:00:00Z`), as `limiter list` and the logs show them. (The rules file
//! keeps sub-second digits where a time has them: `store/time_serde.rs`.)

use std::time::SystemTime;

use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

/// `time` as this module writes it.
pub fn to_seconds(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `#[serde(with = "time_text::seconds")]` for a `SystemTime`.
pub mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(|e| {
            D::Error::custom(format_args!(
                "invalid RFC 3339 time {text:?} ({e}); expected like 2026-01-31T12:00:00Z"
            ))
        })
    }
}

/// `#[serde(default, with = "time_text::seconds_or_none")]` for an `Option<SystemTime>` a
/// reader should not fail on: a time it cannot parse reads as `None`.
pub mod seconds_or_none {
    use super::*;

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::seconds::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        Ok(text.and_then(|text| humantime::parse_rfc3339_weak(&text).ok()))
    }
}
