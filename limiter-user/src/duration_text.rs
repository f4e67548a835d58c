//! Durations as humantime text in the configuration: "500ms", "10s", "10m", "1h 30m", "24h".
//!
//! A module of its own, not part of `config`, so that `policy` (whose `[policy]` table uses it)
//! does not depend on `config`, which depends on `policy`.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        de::Error::custom(format!(
            "`{text}` is not a duration ({error}); write it like \"500ms\", \"10s\", \"10m\", \
             \"1h 30m\" or \"24h\""
        ))
    })
}
