//! The allowlist and bans that follow something outside the config: host
//! names in ignoreip (kept current by [`crate::dns`]) and geo rules compiled
//! from a MaxMind DB ([`crate::geo`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;

use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanRecord};
use crate::config::ResolvedConfig;
use crate::dns::{Lookup, NameStatus, NameTable};
use crate::geo::{self, GeoConfig, GeoDb, GeoInfo, GeoSet, GEO_JAIL};
use crate::units::BanTime;

/// What the core keeps of the geo rules.
#[derive(Debug, Default)]
pub(super) struct GeoState {
    pub config: GeoConfig,
    pub db: Option<Arc<GeoDb>>,
    /// Compiled, before the host's addresses are cut out.
    pub compiled: Arc<GeoSet>,
    /// What the book and the kernel hold now.
    pub applied: GeoSet,
    /// The files as last read (or tried): a new version differs.
    pub seen: Vec<geo::Stamp>,
    /// Each country's (or AS's) index in the XDP drop counters; kept for
    /// the agent's life so counters never change label.
    pub label_ids: std::collections::BTreeMap<Arc<str>, u32>,
    /// Versions applied, and how long writing the last one took.
    pub generation: u64,
    pub load_ms: f64,
}

/// The dynamic parts of the core's state.
#[derive(Debug, Default)]
pub(super) struct Dynamic {
    /// `[defaults] ignoreip` addresses and prefixes, as configured.
    pub allow_config: Vec<Target>,
    /// Host names of `[defaults] ignoreip`.
    pub allow_names: Vec<String>,
    pub names: NameTable,
    pub geo: GeoState,
    pub self_addrs: Vec<Target>,
}

impl Dynamic {
    pub(super) fn new(cfg: &ResolvedConfig, self_addrs: &[Target]) -> Dynamic {
        let mut d = Dynamic {
            self_addrs: self_addrs.to_vec(),
            ..Default::default()
        };
        d.configure(cfg);
        d
    }

    /// Take a new config's names and geo rules (what is known of names
    /// still configured is kept).
    pub(super) fn configure(&mut self, cfg: &ResolvedConfig) {
        self.allow_config = cfg.allowlist.clone();
        self.allow_names = cfg.allow_names.clone();
        let all = all_names(cfg);
        self.names.set_names(&all);
        self.geo.config = cfg.geo.clone();
        self.geo.db = cfg.geo_db.clone();
        self.geo.compiled = cfg.geo_set.clone();
        self.geo.seen = cfg.geo.stamps();
    }
}

/// Names each banned target by its country in `db` ("unknown" where the
/// database has none), for `status`'s bans per country.
pub(super) fn country_labeller(db: &Option<Arc<GeoDb>>) -> Option<crate::ban::Labeller> {
    let db = db.clone()?;
    Some(Arc::new(move |t: &Target| {
        Some(
            db.country_of(t.addr())
                .unwrap_or_else(|| "unknown".to_string()),
        )
    }))
}

/// The same database (not just an equal one): a reload that keeps it
/// need not count the bans per country again.
pub(super) fn same_db(a: &Option<Arc<GeoDb>>, b: &Option<Arc<GeoDb>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Every host name of the config: `[defaults]` and the jails'.
pub fn all_names(cfg: &ResolvedConfig) -> Vec<String> {
    let mut all: BTreeSet<String> = cfg.allow_names.iter().cloned().collect();
    for j in &cfg.jails {
        all.extend(j.ignore_names.iter().cloned());
    }
    all.into_iter().collect()
}

impl Agent {
    /// The effective allowlist: configured entries, the names' addresses and
    /// geo allow rules; written to XDP.
    pub(super) fn rebuild_allowlist(&mut self) -> Result<()> {
        let d = &self.dynamic;
        let mut all: BTreeSet<Target> = d.allow_config.iter().copied().collect();
        for n in &d.allow_names {
            all.extend(d.names.targets(n));
        }
        all.extend(geo::allow_targets(&d.geo.applied));
        let list: Vec<Target> = all.into_iter().collect();
        if list != self.allowlist {
            self.bans.enforcer.set_allowlist(&list)?;
            self.allowlist = list;
        }
        // The guard refuses bans of every allowed address, names' too.
        self.guard.allowlist = self.allowlist.clone();
        Ok(())
    }

    /// Each jail's ignore set gets its names' current addresses.
    pub(super) fn refresh_jail_ignores(&mut self) {
        for j in &mut self.jails.list {
            let resolved: Vec<Target> = j
                .settings
                .ignore_names
                .iter()
                .flat_map(|n| self.dynamic.names.targets(n))
                .collect();
            j.set_resolved_ignore(resolved);
        }
    }

    /// Every host name to keep resolved.
    pub fn dns_names(&self) -> Vec<String> {
        self.dynamic.names.names()
    }

    pub fn dns_status(&self) -> Vec<NameStatus> {
        self.dynamic.names.status()
    }

    /// Apply one lookup: the old addresses leave the allowlist and ignore
    /// sets, the new ones enter, and bans of newly allowed addresses are
    /// lifted. A failed lookup changes nothing.
    pub fn dns_result(&mut self, name: &str, lookup: &Lookup) -> Result<()> {
        let change = self.dynamic.names.apply(name, lookup, now_secs());
        if change.is_empty() {
            return Ok(());
        }
        let name = crate::dns::normalise(name);
        let global = self.dynamic.allow_names.contains(&name);
        self.refresh_jail_ignores();
        if global {
            self.rebuild_allowlist()?;
        }
        self.lift_covered(&name, &change.added)
    }

    /// After the bans are restored: bans of the names' current addresses
    /// (made while the agent was down, or before a record moved) are lifted.
    pub fn lift_bans_of_names(&mut self) -> Result<()> {
        for name in self.dynamic.names.names() {
            let targets = self.dynamic.names.targets(&name);
            self.lift_covered(&name, &targets)?;
        }
        Ok(())
    }

    /// Lift the bans that `name`'s addresses `added` now allow.
    fn lift_covered(&mut self, name: &str, added: &[Target]) -> Result<()> {
        let global = self.dynamic.allow_names.iter().any(|n| n == name);
        for added in added {
            // Which jails' bans no longer stand: every jail's for a
            // `[defaults]` name, else the jails that list the name.
            let jails: Vec<String> = self
                .jails
                .list
                .iter()
                .filter(|j| j.settings.ignore_names.iter().any(|n| n == name))
                .map(|j| j.name().to_string())
                .collect();
            let lifted: Vec<(Target, String)> = self
                .bans
                .book
                .iter()
                .filter(|r| r.jail != GEO_JAIL && added.covers(&r.target))
                .filter(|r| global || jails.contains(&r.jail))
                .map(|r| (r.target, r.jail.clone()))
                .collect();
            for (t, jail) in lifted {
                self.lift(&t, &jail, "allowlisted")?;
            }
        }
        Ok(())
    }

    /// Remove one jail's ban of a target, with its unban event.
    fn lift(&mut self, target: &Target, jail: &str, reason: &'static str) -> Result<()> {
        self.bans.store.delete_ban(target, Some(jail))?;
        let (removed, change) = self.bans.book.remove(target, Some(jail));
        self.bans.enforcer.apply(target, change)?;
        for r in removed {
            self.bans.unbanned(r, reason);
        }
        Ok(())
    }

    /// Make the book (and, with `apply`, the kernel) hold the compiled geo
    /// bans: new prefixes first, then the gone ones lifted, so an address
    /// covered by both versions is never let through.
    pub fn sync_geo(&mut self, apply: bool) -> Result<()> {
        let mut want = (*self.dynamic.geo.compiled).clone();
        want.punch(&self.guard.host.current());
        let diff = geo::diff(&self.dynamic.geo.applied, &want);
        if diff.add.is_empty()
            && diff.remove.is_empty()
            && want.allow == self.dynamic.geo.applied.allow
        {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let now = now_secs();
        // New allow entries first: nothing they cover is dropped meanwhile.
        let mut applied_allow = self.dynamic.geo.applied.allow.clone();
        applied_allow.extend(want.allow.iter().map(|(t, r)| (*t, *r)));
        self.dynamic.geo.applied.allow = applied_allow;
        self.rebuild_allowlist()?;
        // Labels first: the entries written next carry them.
        self.sync_geo_labels(&want)?;
        for (t, ban) in &diff.add {
            let change = self.bans.book.add(BanRecord {
                target: *t,
                jail: GEO_JAIL.to_string(),
                class: ban.class,
                banned_at: now,
                expires_at: None,
                failures: 0,
                matches: Vec::new(),
            });
            if apply {
                self.bans.enforcer.apply(t, change)?;
            }
        }
        for t in &diff.remove {
            let (_, change) = self.bans.book.remove(t, Some(GEO_JAIL));
            if apply {
                self.bans.enforcer.apply(t, change)?;
            }
        }
        let (v4, v6) = want.counts();
        let (added, removed) = (diff.add.len(), diff.remove.len());
        self.dynamic.geo.applied = want;
        self.rebuild_allowlist()?;
        let g = &mut self.dynamic.geo;
        g.generation += 1;
        g.load_ms = started.elapsed().as_secs_f64() * 1000.0;
        g.applied.compile_ms = g.compiled.compile_ms;
        tracing::info!(
            "geo: {v4} IPv4 + {v6} IPv6 prefixes banned, {} allowed ({added} added, {removed} removed, {:.0} ms)",
            self.dynamic.geo.applied.allow.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }

    /// The per-country drop counters' view of the geo prefixes.
    fn sync_geo_labels(&mut self, set: &GeoSet) -> Result<()> {
        let g = &mut self.dynamic.geo;
        let mut entries = Vec::with_capacity(set.bans.len());
        for (t, ban) in &set.bans {
            let next = g.label_ids.len() as u32 + 1;
            let id = *g.label_ids.entry(ban.label.clone()).or_insert(next);
            // Beyond the counters' room, label 0 collects the rest.
            let id = if id < xban_common::GEO_LABELS { id } else { 0 };
            entries.push((*t, id));
        }
        self.bans.enforcer.sync_geo_labels(&entries)
    }

    /// At start, after the reconcile: geo entries a previous agent left are
    /// written again in place (never removed), with this agent's labels.
    pub(super) fn relabel_geo_entries(&mut self) -> Result<()> {
        let targets: Vec<(Target, crate::ban::BanClass)> = self
            .dynamic
            .geo
            .applied
            .bans
            .keys()
            .filter_map(|t| {
                self.bans
                    .book
                    .effective(t)
                    .filter(|r| r.jail == GEO_JAIL)
                    .map(|r| (*t, r.class))
            })
            .collect();
        for (t, class) in targets {
            self.bans
                .enforcer
                .apply(&t, crate::ban::MapChange::Set(class))?;
        }
        Ok(())
    }

    /// Packets dropped by geo ban entries, per country or AS.
    pub fn geo_drops(&self) -> std::collections::BTreeMap<String, u64> {
        let g = &self.dynamic.geo;
        let n = (g.label_ids.len() as u32 + 1).min(xban_common::GEO_LABELS);
        let counts = self.bans.enforcer.geo_drops(n).unwrap_or_default();
        let mut out = std::collections::BTreeMap::new();
        for (label, id) in &g.label_ids {
            if let Some(c) = counts.get(*id as usize) {
                out.insert(label.to_string(), *c);
            }
        }
        if let Some(rest) = counts.first().filter(|c| **c > 0) {
            out.insert("other".to_string(), *rest);
        }
        out
    }

    /// Has a database file changed since it was read?
    pub fn geo_changed(&self) -> bool {
        let g = &self.dynamic.geo;
        g.db.is_some() && g.config.stamps() != g.seen
    }

    /// Re-read changed database files and apply the difference. A missing
    /// or corrupt file keeps the rules in force and says why.
    pub fn reload_geo(&mut self) -> Result<()> {
        let cfg = self.dynamic.geo.config.clone();
        // Tried once per version: a broken file is not re-read every second.
        self.dynamic.geo.seen = cfg.stamps();
        let db = GeoDb::open(&cfg)?;
        let set = geo::compile(&db, &cfg.rules)?;
        self.dynamic.geo.db = Some(Arc::new(db));
        self.bans
            .book
            .set_labeller(country_labeller(&self.dynamic.geo.db));
        self.dynamic.geo.compiled = Arc::new(set);
        tracing::info!("geo: database changed, applying the difference");
        self.sync_geo(true)
    }

    pub fn country_of(&self, ip: IpAddr) -> Option<String> {
        self.dynamic.geo.db.as_ref()?.country_of(ip)
    }

    /// A jail's bantime for an offender: longer for listed countries.
    pub(super) fn bantime_for(&self, jail: &str, addr: IpAddr, bantime: BanTime) -> BanTime {
        let Some(j) = self.jails.list.iter().find(|j| j.name() == jail) else {
            return bantime;
        };
        if j.settings.bantime_by_country.is_empty() {
            return bantime;
        }
        let Some(country) = self.country_of(addr) else {
            return bantime;
        };
        match j.settings.bantime_by_country.get(&country) {
            Some(longer) if longer_than(*longer, bantime) => {
                tracing::info!(%addr, %country, bantime = %longer, jail, "bantime_by_country");
                *longer
            }
            _ => bantime,
        }
    }

    /// `xban geo ADDR`.
    pub fn geo_info(&self, text: &str) -> Result<GeoInfo> {
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("`{text}` is not an IP address"))?;
        let ip = crate::addr::canonical_ip(ip);
        let Some(db) = &self.dynamic.geo.db else {
            anyhow::bail!(
                "no geo database configured: set [geo] database = \"/path/GeoLite2-Country.mmdb\""
            );
        };
        let mut info = db.info(ip);
        let rules = &self.dynamic.geo.config.rules;
        let applied = &self.dynamic.geo.applied;
        if let Some((t, ban)) = applied.ban_covering(ip) {
            info.rule = Some(rules[ban.rule].describe(ban.rule));
            info.prefix = Some(t.to_string());
        } else if let Some((t, r)) = applied.allow_covering(ip) {
            info.rule = Some(rules[r].describe(r));
            info.prefix = Some(t.to_string());
        }
        info.allowlisted_by = self
            .allowlist
            .iter()
            .filter(|a| a.contains(ip))
            .max_by_key(|a| a.prefix())
            .map(|a| a.to_string());
        Ok(info)
    }

    /// `status`: the geo rules in force.
    pub(super) fn geo_status(&self) -> Option<super::status::GeoStatus> {
        let g = &self.dynamic.geo;
        g.db.as_ref()?;
        let (v4, v6) = g.applied.counts();
        let rules: Vec<String> = g
            .config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.describe(i))
            .collect();
        Some(super::status::GeoStatus {
            database: g.config.database.clone(),
            asn_database: g.config.asn_database.clone(),
            rules,
            prefixes_v4: v4,
            prefixes_v6: v6,
            allow_prefixes: g.applied.allow.len(),
            dropped_packets: self.geo_drops(),
            generation: g.generation,
            compile_ms: g.compiled.compile_ms,
            load_ms: g.load_ms,
        })
    }

    /// The label (country or AS) of each geo prefix in force, for metrics.
    pub fn geo_labels(&self) -> Vec<(Target, Arc<str>)> {
        self.dynamic
            .geo
            .applied
            .bans
            .iter()
            .map(|(t, b)| (*t, b.label.clone()))
            .collect()
    }

    /// Lift a non-geo target's bans; a geo prefix is the rule's, not the
    /// operator's to lift by hand.
    pub(super) fn refuse_geo_unban(&self, target: &Target, jail: Option<&str>) -> Result<()> {
        let geo_only = self
            .bans
            .book
            .records(target)
            .iter()
            .all(|r| r.jail == GEO_JAIL);
        if jail == Some(GEO_JAIL) || (!self.bans.book.records(target).is_empty() && geo_only) {
            anyhow::bail!(
                "{target} is banned by a geo rule: change [[geo.rules]] (or add the address to [defaults] ignoreip) and reload"
            );
        }
        Ok(())
    }
}

fn longer_than(a: BanTime, b: BanTime) -> bool {
    match (a, b) {
        (BanTime::Permanent, BanTime::Permanent) => false,
        (BanTime::Permanent, _) => true,
        (_, BanTime::Permanent) => false,
        (BanTime::Finite(x), BanTime::Finite(y)) => x > y,
    }
}
