//! Humane durations in config files: `"90s"`, `"5m"`, `"8h"`, `"30d"`, `"1h 30m"`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration written the way admins write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"5m"`-style durations; a bare number is refused because its unit would be a guess.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (write e.g. \"5m\" or \"8h\")".to_owned());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration {t:?} has no unit (write e.g. \"{t}s\" or \"{t}m\")"
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {t:?}: {e}"))
}

/// Formats a duration back for messages and the CLI (`"5m"`, `"30days"`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn refuses_unitless_and_garbage() {
        assert!(parse("300").unwrap_err().contains("no unit"));
        assert!(parse("").is_err());
        assert!(parse("five minutes").is_err());
        assert!(parse("-5m").is_err());
    }
}
