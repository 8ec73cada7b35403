//! Country and network (ASN) rules from a MaxMind DB (GeoLite2-Country,
//! DB-IP's country database, GeoLite2-ASN).
//!
//! A rule is compiled into CIDR prefixes: the database's networks of the
//! rule's countries or ASNs, adjacent ones merged. Ban rules become
//! permanent bans of the `geo` jail, lasting while the rule does; allow rules
//! join the XDP allowlist. `[defaults] ignoreip` always wins: it is in the
//! XDP allowlist, which the program checks before any ban. The host's own
//! addresses are cut out of ban prefixes. The `min_prefix` guard of ordinary
//! bans does not apply: a geo rule is the operator's deliberate choice.
//!
//! Here: the `[geo]` section and its checks. `db.rs` reads the database
//! files, `set.rs` compiles rules into a [`GeoSet`] and diffs two sets,
//! `prefixes.rs` does the prefix arithmetic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ban::BanClass;
use crate::validation::{invalid, ValidationError};

mod db;
mod prefixes;
mod set;

use db::stamp;
pub use db::{GeoDb, GeoFile, GeoInfo, Stamp};
pub use prefixes::split_around;
pub use set::{allow_targets, compile, compile_networks, diff, GeoBan, GeoDiff, GeoSet};

/// The jail name of geo bans.
pub const GEO_JAIL: &str = "geo";

/// `[geo]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeoConfig {
    /// Country database (a MaxMind DB file). None: no country rules.
    pub database: Option<PathBuf>,
    /// ASN database (GeoLite2-ASN). None: no ASN rules.
    pub asn_database: Option<PathBuf>,
    /// `[[geo.rules]]`, in order: the first rule covering a network decides.
    pub rules: Vec<GeoRule>,
}

/// `[[geo.rules]]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeoRule {
    /// ISO 3166-1 alpha-2 codes, e.g. "NL".
    pub countries: Vec<String>,
    /// Autonomous system numbers.
    pub asns: Vec<u32>,
    /// `ban` (default) or `allow`.
    pub action: GeoAction,
    /// For ban rules: `drop` (default) or `tarpit`.
    pub class: Option<BanClass>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GeoAction {
    #[default]
    Ban,
    Allow,
}

impl GeoRule {
    /// How `status` and `xban geo` name the rule.
    pub fn describe(&self, index: usize) -> String {
        let mut what: Vec<String> = self.countries.clone();
        what.extend(self.asns.iter().map(|a| format!("AS{a}")));
        let action = match self.action {
            GeoAction::Allow => "allow".to_string(),
            GeoAction::Ban => format!("ban ({})", self.class.unwrap_or(BanClass::Drop)),
        };
        format!("geo.rules[{index}]: {action} {}", what.join(", "))
    }
}

/// A country code as rules and `bantime_by_country` write it.
pub fn country_code(place: &str, text: &str) -> Result<String, ValidationError> {
    let t = text.trim();
    if t.len() == 2 && t.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(t.to_ascii_uppercase())
    } else {
        Err(invalid(
            place,
            format!(
                "`{text}` is not a country code (two letters, ISO 3166-1 alpha-2, e.g. \"NL\")"
            ),
        ))
    }
}

impl GeoConfig {
    /// The database files' identities now, to notice a new version.
    pub fn stamps(&self) -> Vec<Stamp> {
        [&self.database, &self.asn_database]
            .into_iter()
            .flatten()
            .map(|p| stamp(p))
            .collect()
    }

    pub fn enabled(&self) -> bool {
        self.database.is_some() || self.asn_database.is_some()
    }

    /// Check what needs no file, and normalise the codes.
    pub fn validate(&mut self) -> Result<(), ValidationError> {
        for (key, path) in [
            ("geo.database", &self.database),
            ("geo.asn_database", &self.asn_database),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(invalid(
                        key,
                        format!("`{}` is not an absolute path", p.display()),
                    ));
                }
            }
        }
        for (i, r) in self.rules.iter_mut().enumerate() {
            let place = format!("geo.rules[{i}]");
            if r.countries.is_empty() && r.asns.is_empty() {
                return Err(invalid(
                    place,
                    "the rule covers nothing: list countries = [\"XX\"] and/or asns = [N]",
                ));
            }
            for (j, c) in r.countries.iter_mut().enumerate() {
                *c = country_code(&format!("{place}.countries[{j}]"), c)?;
            }
            if !r.countries.is_empty() && self.database.is_none() {
                return Err(invalid(
                    format!("{place}.countries"),
                    "country rules need a country database: set [geo] database = \"/var/lib/GeoIP/GeoLite2-Country.mmdb\"",
                ));
            }
            if !r.asns.is_empty() && self.asn_database.is_none() {
                return Err(invalid(
                    format!("{place}.asns"),
                    "ASN rules need an ASN database: set [geo] asn_database = \"/var/lib/GeoIP/GeoLite2-ASN.mmdb\"",
                ));
            }
            if r.action == GeoAction::Allow && r.class.is_some() {
                return Err(invalid(
                    format!("{place}.class"),
                    "an allow rule has no ban class: remove `class`",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
