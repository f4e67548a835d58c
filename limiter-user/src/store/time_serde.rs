//! Timestamps: RFC 3339, UTC, with as many fractional digits as needed (none for whole
//! seconds), so a time reads back exactly as it was written.

pub(super) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        // `collect_str` turns a formatting error (a time past year 9999) into a serializer
        // error instead of a panic; times before 1970 are rejected earlier by `check_time`.
        serializer.collect_str(&humantime::format_rfc3339(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map_err(|e| {
            D::Error::custom(format_args!(
                "invalid RFC 3339 UTC time {text:?} ({e}); expected like 2026-01-31T12:00:00Z"
            ))
        })
    }
}

pub(super) mod rfc3339_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::rfc3339::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::rfc3339")] SystemTime);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(time)| time))
    }
}
