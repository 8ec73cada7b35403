//! `[tarpit]`: the config section behind steering, its validation (every
//! message names its key), and the two address families it is applied to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::addr::Target;

/// ipset's default `maxelem` (65,536) silently caps how many addresses can be
/// held, a known fail2ban pain; xban's sets hold a million.
pub const SET_MAXELEM: u32 = 1_048_576;

/// `[tarpit]` in the agent's config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TarpitConfig {
    /// Hold tarpit-class addresses at all. `false`: setup creates nothing
    /// and reports [`SteeringMode::Disabled`] (the class is dropped in XDP).
    pub enabled: bool,
    /// Who holds the class: `"iptables"` (this chain, `fallback` when TARPIT
    /// is missing), `"xdp"` (the XDP program answers itself, see
    /// `enforce::tarpit`), or `"auto"` (iptables when the TARPIT target
    /// really works, else XDP).
    pub engine: TarpitEngine,
    /// The target spec for steered packets (xtables-addons' `TARPIT`).
    pub target: String,
    /// Rate of packets handed to the target (iptables `-m limit` syntax,
    /// `N/sec|minute|hour|day`); packets beyond it are dropped.
    pub limit: String,
    /// `--limit-burst`: packets let through at once before `limit` applies.
    pub burst: u32,
    /// When `target` is unavailable: `"drop"` (no steering; the caller drops
    /// tarpit-class addresses in XDP) or an iptables target spec used in its
    /// place, e.g. `"REJECT --reject-with tcp-reset"` or `"DROP"`.
    pub fallback: String,
    /// Exempt steered packets from conntrack (raw PREROUTING `CT --notrack`),
    /// so held connections cost no conntrack entries.
    pub notrack: bool,
    /// The filter-table chain, hooked from INPUT (same name in both families).
    pub chain: String,
    /// The IPv4 set (`hash:net family inet`).
    pub set_v4: String,
    /// The IPv6 set (`hash:net family inet6`).
    pub set_v6: String,
    /// IPv4 iptables binary: `iptables` (whichever backend it is),
    /// `iptables-legacy` or `iptables-nft`.
    pub iptables: String,
    /// IPv6 counterpart: `ip6tables`, `ip6tables-legacy`, `ip6tables-nft`.
    pub ip6tables: String,
    /// The ipset binary.
    pub ipset: String,
}

impl Default for TarpitConfig {
    fn default() -> Self {
        TarpitConfig {
            enabled: true,
            engine: TarpitEngine::Auto,
            target: "TARPIT".into(),
            limit: "10/sec".into(),
            burst: 20,
            fallback: "drop".into(),
            notrack: true,
            chain: "XBAN-TARPIT".into(),
            set_v4: "xban-tarpit-v4".into(),
            set_v6: "xban-tarpit-v6".into(),
            iptables: "iptables".into(),
            ip6tables: "ip6tables".into(),
            ipset: "ipset".into(),
        }
    }
}

/// Chain names iptables reserves (built-in chains and standard verdicts).
const RESERVED_CHAINS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "DROP",
    "RETURN",
    "QUEUE",
];

impl TarpitConfig {
    /// Check what serde cannot; every message names its key.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_names()?;
        validate_limit(&self.limit).map_err(|e| format!("tarpit.limit: {e}"))?;
        if !(1..=10_000).contains(&self.burst) {
            return Err(format!(
                "tarpit.burst: {} is out of range (iptables' --limit-burst takes 1 to 10000)",
                self.burst
            ));
        }
        validate_target_spec(&self.target).map_err(|e| format!("tarpit.target: {e}"))?;
        if self.fallback != "drop" {
            validate_target_spec(&self.fallback).map_err(|e| {
                format!("tarpit.fallback: {e} (or \"drop\" to drop tarpit-class addresses in XDP)")
            })?;
        }
        Ok(())
    }

    /// The names teardown needs; checked on their own so that teardown works
    /// with a config whose other keys are wrong.
    pub(super) fn validate_names(&self) -> Result<(), String> {
        validate_word("tarpit.chain", &self.chain, 28)?;
        if self.chain.starts_with('-') || RESERVED_CHAINS.contains(&self.chain.as_str()) {
            return Err(format!(
                "tarpit.chain: `{}` is reserved by iptables or looks like an option; choose a name such as XBAN-TARPIT",
                self.chain
            ));
        }
        // IPSET_MAXNAMELEN is 32 including the terminating NUL.
        validate_word("tarpit.set_v4", &self.set_v4, 31)?;
        validate_word("tarpit.set_v6", &self.set_v6, 31)?;
        if self.set_v4 == self.set_v6 {
            return Err(format!(
                "tarpit.set_v6: `{}` is also tarpit.set_v4; a set holds one family, so the names must differ",
                self.set_v6
            ));
        }
        for (key, value) in [
            ("tarpit.iptables", &self.iptables),
            ("tarpit.ip6tables", &self.ip6tables),
            ("tarpit.ipset", &self.ipset),
        ] {
            validate_word(key, value, 4096)?;
        }
        Ok(())
    }

    pub(super) fn bin(&self, fam: Family) -> &str {
        match fam {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }

    pub(super) fn set(&self, fam: Family) -> &str {
        match fam {
            Family::V4 => &self.set_v4,
            Family::V6 => &self.set_v6,
        }
    }
}

fn validate_word(key: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{key}: must not be empty"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{key}: `{value}` must not contain spaces"));
    }
    if value.len() > max {
        return Err(format!(
            "{key}: `{value}` is longer than {max} characters, the kernel's limit"
        ));
    }
    Ok(())
}

/// A valid `limit` as (count, period in seconds).
pub fn limit_rate(text: &str) -> Result<(u64, u64), String> {
    validate_limit(text)?;
    let (n, unit) = text.split_once('/').expect("validated");
    let unit = unit.to_ascii_lowercase();
    let secs = [
        ("second", 1),
        ("minute", 60),
        ("hour", 3600),
        ("day", 86_400),
    ]
    .iter()
    .find(|(name, _)| name.starts_with(unit.as_str()))
    .map(|&(_, secs)| secs)
    .expect("validated");
    Ok((n.parse().expect("validated"), secs))
}

/// iptables' `--limit`: `N/unit`, the unit any prefix of second, minute, hour
/// or day (so `10/s`, `10/sec`, `10/second` alike), at most 10000/sec.
pub(super) fn validate_limit(text: &str) -> Result<(), String> {
    let bad = || {
        format!("`{text}` is not a rate (expected N/sec, N/minute, N/hour or N/day, e.g. 10/sec)")
    };
    let (n, unit) = text.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_lowercase();
    let per_secs: u64 = [
        ("second", 1),
        ("minute", 60),
        ("hour", 3600),
        ("day", 86_400),
    ]
    .iter()
    .find(|(name, _)| !unit.is_empty() && name.starts_with(unit.as_str()))
    .map(|&(_, secs)| secs)
    .ok_or_else(bad)?;
    if n == 0 {
        return Err(format!(
            "`{text}` is zero; use fallback or disable the tarpit instead"
        ));
    }
    // The kernel's limit match resolves 1/10000 s (XT_LIMIT_SCALE).
    if n > 10_000 * per_secs {
        return Err(format!(
            "`{text}` is faster than iptables' limit match allows (10000/sec)"
        ));
    }
    Ok(())
}

/// A target with its options, e.g. `TARPIT` or `REJECT --reject-with tcp-reset`.
fn validate_target_spec(spec: &str) -> Result<(), String> {
    let mut words = spec.split_whitespace();
    let name = words.next().ok_or_else(|| {
        "an empty target; expected e.g. TARPIT or \"REJECT --reject-with tcp-reset\"".to_string()
    })?;
    if name.starts_with('-')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("`{spec}` does not start with a target name"));
    }
    if matches!(name, "ACCEPT" | "RETURN") {
        return Err(format!(
            "`{name}` would let tarpit-class packets through; use TARPIT, REJECT or DROP"
        ));
    }
    if words.any(|w| matches!(w, "-j" | "--jump" | "-g" | "--goto")) {
        return Err(format!(
            "`{spec}` has a second jump; give one target with its options"
        ));
    }
    Ok(())
}

/// `[tarpit] engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TarpitEngine {
    Auto,
    Xdp,
    Iptables,
}

impl fmt::Display for TarpitEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TarpitEngine::Auto => "auto",
            TarpitEngine::Xdp => "xdp",
            TarpitEngine::Iptables => "iptables",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

pub(super) const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    pub(super) fn of(t: &Target) -> Family {
        if t.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub(super) fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}
