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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use maxminddb::{PathElement, Reader};
use serde::{Deserialize, Serialize};

use crate::addr::{canonical_ip, Target};
use crate::ban::BanClass;
use crate::validation::{invalid, ValidationError};

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

/// File identity and size: any change means "read it again".
pub type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// One opened database file.
pub struct GeoFile {
    pub path: PathBuf,
    reader: Reader<Vec<u8>>,
    stamp: Stamp,
}

impl std::fmt::Debug for GeoFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoFile").field("path", &self.path).finish()
    }
}

impl GeoFile {
    pub fn open(key: &str, path: &Path) -> Result<GeoFile, ValidationError> {
        let st = stamp(path);
        let bytes = std::fs::read(path).map_err(|e| {
            invalid(
                key,
                format!(
                    "cannot read {}: {e} (install the database there, e.g. with geoipupdate, or fix the path)",
                    path.display()
                ),
            )
        })?;
        let reader = Reader::from_source(bytes).map_err(|e| {
            invalid(
                key,
                format!(
                    "{} is not a readable MaxMind DB file ({e}): truncated or corrupt? Download it again",
                    path.display()
                ),
            )
        })?;
        Ok(GeoFile {
            path: path.to_path_buf(),
            reader,
            stamp: st,
        })
    }

    pub fn changed(&self) -> bool {
        stamp(&self.path) != self.stamp
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

/// The opened databases.
#[derive(Debug, Default)]
pub struct GeoDb {
    pub country: Option<GeoFile>,
    pub asn: Option<GeoFile>,
}

/// What the database says of one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoInfo {
    pub address: String,
    pub country: Option<String>,
    pub country_name: Option<String>,
    pub asn: Option<u32>,
    pub asn_org: Option<String>,
    /// The database network the country (or ASN) answer is for.
    pub network: Option<String>,
    /// The rule covering the address, if any.
    pub rule: Option<String>,
    /// The compiled prefix covering it.
    pub prefix: Option<String>,
    /// An allowlist entry that lets it through anyway.
    pub allowlisted_by: Option<String>,
}

impl GeoDb {
    pub fn open(cfg: &GeoConfig) -> Result<GeoDb, ValidationError> {
        Ok(GeoDb {
            country: cfg
                .database
                .as_deref()
                .map(|p| GeoFile::open("geo.database", p))
                .transpose()?,
            asn: cfg
                .asn_database
                .as_deref()
                .map(|p| GeoFile::open("geo.asn_database", p))
                .transpose()?,
        })
    }

    pub fn changed(&self) -> bool {
        self.country.as_ref().is_some_and(GeoFile::changed)
            || self.asn.as_ref().is_some_and(GeoFile::changed)
    }

    pub fn country_of(&self, ip: IpAddr) -> Option<String> {
        let f = self.country.as_ref()?;
        let r = f.reader.lookup(ip).ok()?;
        r.decode_path::<String>(&[PathElement::Key("country"), PathElement::Key("iso_code")])
            .ok()
            .flatten()
    }

    pub fn info(&self, ip: IpAddr) -> GeoInfo {
        let mut out = GeoInfo {
            address: ip.to_string(),
            ..Default::default()
        };
        if let Some(f) = &self.country {
            if let Ok(r) = f.reader.lookup(ip) {
                if r.has_data() {
                    out.network = r.network().ok().map(|n| n.to_string());
                }
                out.country = r
                    .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
                    .ok()
                    .flatten();
                out.country_name = r
                    .decode_path(&[
                        PathElement::Key("country"),
                        PathElement::Key("names"),
                        PathElement::Key("en"),
                    ])
                    .ok()
                    .flatten();
            }
        }
        if let Some(f) = &self.asn {
            if let Ok(r) = f.reader.lookup(ip) {
                if out.network.is_none() && r.has_data() {
                    out.network = r.network().ok().map(|n| n.to_string());
                }
                out.asn = r
                    .decode_path(&[PathElement::Key("autonomous_system_number")])
                    .ok()
                    .flatten();
                out.asn_org = r
                    .decode_path(&[PathElement::Key("autonomous_system_organization")])
                    .ok()
                    .flatten();
            }
        }
        out
    }
}

/// One compiled ban prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoBan {
    pub class: BanClass,
    /// Index into `[[geo.rules]]`.
    pub rule: usize,
    /// The country code or `AS<n>` the prefix came from (metrics label).
    pub label: Arc<str>,
}

/// The rules compiled against the databases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoSet {
    pub bans: BTreeMap<Target, GeoBan>,
    /// Allow-rule prefixes and their rule.
    pub allow: BTreeMap<Target, usize>,
    /// How long reading the databases and compiling took.
    pub compile_ms: f64,
}

impl GeoSet {
    pub fn counts(&self) -> (usize, usize) {
        let v4 = self.bans.keys().filter(|t| t.is_ipv4()).count();
        (v4, self.bans.len() - v4)
    }

    /// The compiled entry covering `ip` (most specific first).
    pub fn ban_covering(&self, ip: IpAddr) -> Option<(&Target, &GeoBan)> {
        let ip = canonical_ip(ip);
        self.bans
            .iter()
            .filter(|(t, _)| t.contains(ip))
            .max_by_key(|(t, _)| t.prefix())
    }

    pub fn allow_covering(&self, ip: IpAddr) -> Option<(&Target, usize)> {
        let ip = canonical_ip(ip);
        self.allow
            .iter()
            .filter(|(t, _)| t.contains(ip))
            .max_by_key(|(t, _)| t.prefix())
            .map(|(t, r)| (t, *r))
    }

    /// Cut `holes` (the host's own addresses) out of the ban prefixes.
    pub fn punch(&mut self, holes: &[Target]) {
        for h in holes {
            let covering: Vec<Target> = self.bans.keys().filter(|t| t.covers(h)).copied().collect();
            for t in covering {
                let ban = self.bans.remove(&t).expect("listed");
                for part in split_around(&t, h) {
                    self.bans.entry(part).or_insert_with(|| ban.clone());
                }
            }
        }
    }
}

/// `outer` minus `hole` (which it covers), as prefixes.
pub fn split_around(outer: &Target, hole: &Target) -> Vec<Target> {
    let mut out = Vec::new();
    let mut cur = *outer;
    while cur.prefix() < hole.prefix() {
        let len = cur.prefix() + 1;
        let low = Target::new(cur.addr(), len).expect("longer prefix of a valid one");
        let high = Target::new(flip_bit(cur.addr(), cur.prefix()), len).expect("valid");
        if low.covers(hole) {
            out.push(high);
            cur = low;
        } else {
            out.push(low);
            cur = high;
        }
    }
    out
}

fn flip_bit(ip: IpAddr, index: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ (1 << (31 - index)))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ (1 << (127 - index)))),
    }
}

/// An address range of one family, inclusive, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    v6: bool,
    start: u128,
    end: u128,
}

fn span_of(net: IpNetwork) -> Option<Span> {
    // IPv4 networks of an IPv6 database are IPv4.
    let t = Target::new(net.network(), net.prefix()).ok()?;
    let (v6, bits, start) = match t.addr() {
        IpAddr::V4(a) => (false, 32u32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, 128u32, u128::from(a)),
    };
    let host_bits = bits - u32::from(t.prefix());
    let size_minus_one = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Some(Span {
        v6,
        start,
        end: start + size_minus_one,
    })
}

/// Sorted, overlapping or adjacent spans joined.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if let Some(last) = out.last_mut() {
            if last.v6 == s.v6 && (s.start <= last.end || s.start == last.end.wrapping_add(1)) {
                last.end = last.end.max(s.end);
                continue;
            }
        }
        out.push(s);
    }
    out
}

/// The fewest prefixes covering exactly the span.
fn prefixes_of(span: Span) -> Vec<Target> {
    let bits: u32 = if span.v6 { 128 } else { 32 };
    let max = if span.v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    };
    let mut out = Vec::new();
    let mut start = span.start;
    loop {
        let mut size_log = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        let last = |log: u32| {
            if log >= 128 {
                u128::MAX
            } else {
                start + ((1u128 << log) - 1)
            }
        };
        while size_log > 0 && last(size_log) > span.end {
            size_log -= 1;
        }
        let ip = if span.v6 {
            IpAddr::V6(Ipv6Addr::from(start))
        } else {
            IpAddr::V4(Ipv4Addr::from(start as u32))
        };
        out.push(Target::new(ip, (bits - size_log) as u8).expect("aligned"));
        let end = last(size_log);
        if end >= span.end || end == max {
            break;
        }
        start = end + 1;
    }
    out
}

/// Networks (with their label) into merged prefixes.
pub fn compile_networks(
    rules: &[GeoRule],
    networks: impl IntoIterator<Item = (usize, Arc<str>, IpNetwork)>,
) -> GeoSet {
    let mut acc: BTreeMap<(usize, Arc<str>), Vec<Span>> = BTreeMap::new();
    for (rule, label, net) in networks {
        if let Some(s) = span_of(net) {
            acc.entry((rule, label)).or_default().push(s);
        }
    }
    let mut set = GeoSet::default();
    // Rule order: the first rule covering a prefix keeps it.
    for ((rule, label), spans) in acc {
        let r = &rules[rule];
        for span in merge(spans) {
            for t in prefixes_of(span) {
                match r.action {
                    GeoAction::Allow => {
                        set.allow.entry(t).or_insert(rule);
                    }
                    GeoAction::Ban => {
                        set.bans.entry(t).or_insert_with(|| GeoBan {
                            class: r.class.unwrap_or(BanClass::Drop),
                            rule,
                            label: label.clone(),
                        });
                    }
                }
            }
        }
    }
    set
}

/// Walk the databases for the rules' countries and ASNs, and compile.
pub fn compile(db: &GeoDb, rules: &[GeoRule]) -> Result<GeoSet, ValidationError> {
    let started = std::time::Instant::now();
    let mut nets: Vec<(usize, Arc<str>, IpNetwork)> = Vec::new();
    let mut by_country: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_asn: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        for c in &r.countries {
            by_country.entry(c.as_str()).or_default().push(i);
        }
        for a in &r.asns {
            by_asn.entry(*a).or_default().push(i);
        }
    }
    let walk_err = |key: &str, path: &Path, e: maxminddb::MaxMindDbError| {
        invalid(
            key,
            format!(
                "{} cannot be read to the end ({e}): truncated or corrupt? Download it again",
                path.display()
            ),
        )
    };
    if let (Some(f), false) = (&db.country, by_country.is_empty()) {
        // Many networks share one record: decode each record once.
        let mut seen: HashMap<usize, Option<Arc<str>>> = HashMap::new();
        let iter = f
            .reader
            .networks(Default::default())
            .map_err(|e| walk_err("geo.database", &f.path, e))?;
        for item in iter {
            let lr = item.map_err(|e| walk_err("geo.database", &f.path, e))?;
            let Some(off) = lr.offset() else { continue };
            let code = match seen.get(&off) {
                Some(c) => c.clone(),
                None => {
                    let c: Option<String> = lr
                        .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
                        .map_err(|e| walk_err("geo.database", &f.path, e))?;
                    let c: Option<Arc<str>> = c.map(Arc::from);
                    seen.insert(off, c.clone());
                    c
                }
            };
            let Some(code) = code else { continue };
            if let Some(rs) = by_country.get(&*code) {
                let net = lr
                    .network()
                    .map_err(|e| walk_err("geo.database", &f.path, e))?;
                for r in rs {
                    nets.push((*r, code.clone(), net));
                }
            }
        }
    }
    if let (Some(f), false) = (&db.asn, by_asn.is_empty()) {
        let mut seen: HashMap<usize, Option<u32>> = HashMap::new();
        let iter = f
            .reader
            .networks(Default::default())
            .map_err(|e| walk_err("geo.asn_database", &f.path, e))?;
        for item in iter {
            let lr = item.map_err(|e| walk_err("geo.asn_database", &f.path, e))?;
            let Some(off) = lr.offset() else { continue };
            let asn = match seen.get(&off) {
                Some(a) => *a,
                None => {
                    let a: Option<u32> = lr
                        .decode_path(&[PathElement::Key("autonomous_system_number")])
                        .map_err(|e| walk_err("geo.asn_database", &f.path, e))?;
                    seen.insert(off, a);
                    a
                }
            };
            let Some(asn) = asn else { continue };
            if let Some(rs) = by_asn.get(&asn) {
                let net = lr
                    .network()
                    .map_err(|e| walk_err("geo.asn_database", &f.path, e))?;
                let label: Arc<str> = Arc::from(format!("AS{asn}"));
                for r in rs {
                    nets.push((*r, label.clone(), net));
                }
            }
        }
    }
    let mut set = compile_networks(rules, nets);
    set.compile_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(set)
}

/// The difference between two compiled sets, in the order that never lets
/// a covered address pass: everything new is added before anything gone
/// is removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GeoDiff {
    pub add: Vec<(Target, GeoBan)>,
    pub remove: Vec<Target>,
}

pub fn diff(old: &GeoSet, new: &GeoSet) -> GeoDiff {
    GeoDiff {
        add: new
            .bans
            .iter()
            .filter(|(t, b)| old.bans.get(t) != Some(b))
            .map(|(t, b)| (*t, b.clone()))
            .collect(),
        remove: old
            .bans
            .keys()
            .filter(|t| !new.bans.contains_key(t))
            .copied()
            .collect(),
    }
}

/// The allowlist entries a set adds, for the XDP allowlist.
pub fn allow_targets(set: &GeoSet) -> BTreeSet<Target> {
    set.allow.keys().copied().collect()
}

#[cfg(test)]
mod tests;
