//! Rules compiled against the databases: the ban and allow prefixes of a
//! [`GeoSet`], and the order-safe difference between two sets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use maxminddb::PathElement;

use super::db::GeoDb;
use super::prefixes::{merge, prefixes_of, span_of, split_around, Span};
use super::{GeoAction, GeoRule};
use crate::addr::{canonical_ip, Target};
use crate::ban::BanClass;
use crate::validation::{invalid, ValidationError};

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
