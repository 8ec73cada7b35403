//! Durations and ban times as operators write them (`"90s"`, `"1d12h"`,
//! `"permanent"`). A leaf: every owner of a config section reads its
//! durations through here, so none of them needs `config`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The longest finite duration xban takes (10 years): anything longer is a
/// mistake or means "forever", which is `"permanent"`.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// A duration as operators write it: `"90s"`, `"10m"`, `"1h"`, `"1d12h"`,
/// `"1w"`, or plain seconds (`600`, `"600"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSetting(pub Duration);

/// Parse `"1d12h"`-style durations. Units: s, m, h, d, w (and the long forms).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let err = || {
        format!("`{text}` is not a duration (write e.g. \"90s\", \"10m\", \"1h\", \"1d12h\", \"1w\", or seconds)")
    };
    if t.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return bounded(Duration::from_secs(secs), text);
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        rest = rest[unit_len..].trim_start();
    }
    bounded(Duration::from_secs(total), text)
}

fn bounded(d: Duration, text: &str) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "`{}` is longer than the maximum duration, 3650d (10 years)",
            text.trim(),
        ));
    }
    Ok(d)
}

/// Formats a duration the way it is written in config (`1d12h`, `10m`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("w", 604_800),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => bounded(Duration::from_secs(s), &s.to_string())
                .map(DurationSetting)
                .map_err(serde::de::Error::custom),
            Raw::Text(t) => parse_duration(&t)
                .map(DurationSetting)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// How long a ban lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTime {
    Finite(Duration),
    Permanent,
}

impl FromStr for BanTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "permanent" | "-1" => Ok(BanTime::Permanent),
            t => parse_duration(t)
                .map(BanTime::Finite)
                .map_err(|e| format!("{e}; or \"permanent\"")),
        }
    }
}

impl fmt::Display for BanTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTime::Finite(d) => f.write_str(&format_duration(*d)),
            BanTime::Permanent => f.write_str("permanent"),
        }
    }
}

impl<'de> Deserialize<'de> for BanTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(-1) => Ok(BanTime::Permanent),
            Raw::Secs(s) if s >= 0 => bounded(Duration::from_secs(s as u64), &s.to_string())
                .map(BanTime::Finite)
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{e}; for a ban that never ends, write \"permanent\""
                    ))
                }),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "`{s}` is not a ban time: use seconds, a duration like \"1h\", or -1 / \"permanent\""
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            Duration::from_secs(129_600)
        );
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("600").unwrap(), Duration::from_secs(600));
        assert_eq!(
            parse_duration("2 days").unwrap(),
            Duration::from_secs(172_800)
        );
        for bad in ["", "10x", "m10", "1.5h", "-5m", "99999999999999999999w"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
        assert_eq!(format_duration(Duration::from_secs(129_600)), "1d12h");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!("permanent".parse::<BanTime>().unwrap(), BanTime::Permanent);
        assert_eq!("-1".parse::<BanTime>().unwrap(), BanTime::Permanent);
    }
}
