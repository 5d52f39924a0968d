//! Durations as people write them (`250ms`, `5s`, `2m`, `1h30m`), for the
//! config file, the command line and every settings type that reads one.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Reads a duration written for people (`10s`, `5m`, `1d`).
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Writes a duration the way [`duration`] reads it back (`5s`, `1day`).
pub fn write_duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

/// A duration as the config and the command line write it (`5s`, `2m`,
/// `1h30m`, `250ms`), with an error that names the bad value and the form
/// expected (humantime alone says "expected number at 0").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| {
        format!("invalid duration {text:?} ({error}): expected a number and a unit, such as 250ms, 5s, 2m or 1h30m")
    })
}
