//! [`Config::validate`]: every enabled jail resolved against `[defaults]`,
//! each section checked by its owner, the whole checked for what no single
//! section can see (widening narrower than the ban limit, country bantimes
//! without a database).

use std::collections::BTreeMap;
use std::path::Path;

use super::checks::{
    allowlist_warnings, check_agent_section, check_bantime, check_escalation_widths,
    check_jail_name, check_logpath_shape, check_window, parse_ignore,
};
use super::{
    Backend, Config, ConfigError, JailConfig, JailSettings, ResolvedConfig, SourceSpec,
    DEFAULT_MAX_TRACKED,
};
use crate::filter::{FilterDef, FilterSet};
use crate::geo::{GeoDb, GeoSet};
use crate::units::BanTime;
use crate::validation::{invalid, ValidationError};

impl Config {
    /// Resolve every enabled jail against `[defaults]` and check it whole:
    /// filters compile, addresses parse, sources make sense.
    pub fn validate(&self) -> Result<ResolvedConfig, ConfigError> {
        Ok(self.resolve()?)
    }

    fn resolve(&self) -> Result<ResolvedConfig, ValidationError> {
        let (allowlist, allow_names) = parse_ignore("defaults.ignoreip", &self.defaults.ignoreip)?;
        let mut warnings = Vec::new();
        check_agent_section(&self.agent)?;
        check_escalation_widths(&self.agent, &self.escalation)?;
        warnings.extend(allowlist_warnings(
            "defaults.ignoreip",
            &allowlist,
            &self.agent,
        ));
        check_bantime("defaults.bantime", self.defaults.bantime)?;
        check_window("defaults.findtime", self.defaults.findtime.0)?;
        if self.defaults.max_tracked == 0 {
            return Err(invalid(
                "defaults.max_tracked",
                format!("must be at least 1 (default {DEFAULT_MAX_TRACKED})"),
            ));
        }
        let dns = self.dns_settings()?;
        let mut geo = self.geo.clone();
        geo.validate()?;
        let (geo_db, geo_set) = if geo.enabled() {
            let db = GeoDb::open(&geo)?;
            let set = crate::geo::compile(&db, &geo.rules)?;
            (Some(std::sync::Arc::new(db)), set)
        } else {
            (None, GeoSet::default())
        };
        let user_filters =
            crate::filter::builtin::load_dir(&self.agent.filters_dir).map_err(|e| {
                invalid(
                    format!("agent.filters_dir ({})", self.agent.filters_dir.display()),
                    e.to_string(),
                )
            })?;
        self.escalation.validate()?;
        // `[tarpit]` belongs to steering (enforce), whose check still
        // returns `PLACE: MESSAGE` as text.
        self.tarpit
            .validate()
            .map_err(|m| match m.split_once(": ") {
                Some((place, message)) => invalid(place, message),
                None => invalid("tarpit", m),
            })?;
        if self.defaults.maxretry == 0 {
            return Err(invalid("defaults.maxretry", "must be at least 1"));
        }
        for (i, f) in self.agent.blocklist_files.iter().enumerate() {
            if !f.is_absolute() {
                return Err(invalid(
                    format!("agent.blocklist_files[{i}]"),
                    format!("`{}` is not an absolute path", f.display()),
                ));
            }
        }
        {
            use xban_common::fastpath::{MAX_CAPACITY, MIN_CAPACITY};
            let c = self.agent.fast_path_capacity;
            if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&c) {
                return Err(invalid(
                    "agent.fast_path_capacity",
                    format!("{c} is out of range: set from {MIN_CAPACITY} to {MAX_CAPACITY} bans per family (the most a ban trie holds), or leave it out for the default {}", xban_common::fastpath::DEFAULT_CAPACITY),
                ));
            }
        }
        if self.agent.blocklist_append && self.agent.blocklist_files.is_empty() {
            return Err(invalid(
                "agent.blocklist_append",
                "needs a file to append to: set blocklist_files = [\"/etc/xban/blocklist.txt\"]",
            ));
        }
        for (name, def) in &self.filters {
            FilterSet::from_def(def, None)
                .map_err(|e| invalid(format!("filters.{name}"), e.to_string()))?;
        }
        let mut jails = Vec::new();
        for (name, jail) in &self.jails {
            check_jail_name(name)?;
            if jail.enabled == Some(false) {
                continue;
            }
            let settings = self.resolve_jail(name, jail, &user_filters)?;
            if jail.ignoreip.is_some() {
                warnings.extend(allowlist_warnings(
                    &format!("jails.{name}.ignoreip"),
                    &settings.ignoreip,
                    &self.agent,
                ));
            }
            jails.push(settings);
        }
        for j in &jails {
            if !j.bantime_by_country.is_empty() && geo.database.is_none() {
                return Err(invalid(
                    format!("jails.{}.bantime_by_country", j.name),
                    "needs a country database: set [geo] database = \"/var/lib/GeoIP/GeoLite2-Country.mmdb\"",
                ));
            }
        }
        let fleet = self
            .fleet
            .resolve(&self.bantimes(&jails), self.defaults.ignoreself)?;
        Ok(ResolvedConfig {
            agent: self.agent.clone(),
            allowlist,
            allow_names,
            dns,
            jails,
            default_bantime: self.defaults.bantime,
            default_class: self.defaults.class,
            escalation: self.escalation.clone(),
            tarpit: self.tarpit.clone(),
            default_actions: self.defaults.actions.clone(),
            dbpurgeage: self
                .agent
                .dbpurgeage
                .map(|d| d.0)
                .unwrap_or_else(|| self.escalation.longest_window()),
            warnings,
            geo,
            geo_db,
            geo_set: std::sync::Arc::new(geo_set),
            fleet,
        })
    }

    fn dns_settings(&self) -> Result<crate::dns::DnsSettings, ValidationError> {
        let a = &self.agent;
        let resolvers = a
            .resolvers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                crate::dns::parse_resolver(r)
                    .map_err(|m| invalid(format!("agent.resolvers[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if a.dns_refresh_min.0.is_zero() {
            return Err(invalid("agent.dns_refresh_min", "must be at least 1s"));
        }
        if a.dns_refresh_max.0 < a.dns_refresh_min.0 {
            return Err(invalid(
                "agent.dns_refresh_max",
                "is shorter than dns_refresh_min: make it at least as long",
            ));
        }
        Ok(crate::dns::DnsSettings {
            resolvers,
            refresh_min: a.dns_refresh_min.0,
            refresh_max: a.dns_refresh_max.0,
        })
    }

    /// Every bantime this config can hand out (the fleet stream keeps
    /// messages as long as the longest).
    fn bantimes(&self, jails: &[JailSettings]) -> Vec<BanTime> {
        let mut out = vec![self.defaults.bantime];
        out.extend(jails.iter().map(|j| j.bantime));
        let e = &self.escalation;
        if e.enabled {
            out.extend(e.steps.iter().map(|s| s.bantime));
            if e.subnet.enabled {
                out.push(e.subnet.bantime);
            }
            if e.increment.enabled {
                out.push(BanTime::Finite(e.increment.maxtime.0));
            }
        }
        out
    }

    fn resolve_jail(
        &self,
        name: &str,
        jail: &JailConfig,
        user_filters: &BTreeMap<String, FilterDef>,
    ) -> Result<JailSettings, ValidationError> {
        let place = |key: &str| format!("jails.{name}.{key}");
        let d = &self.defaults;
        let maxretry = jail.maxretry.unwrap_or(d.maxretry);
        if maxretry == 0 {
            return Err(invalid(place("maxretry"), "must be at least 1"));
        }
        if let Some(b) = jail.bantime {
            check_bantime(&place("bantime"), b)?;
        }
        if let Some(f) = jail.findtime {
            check_window(&place("findtime"), f.0)?;
        }
        let max_tracked = jail.max_tracked.unwrap_or(d.max_tracked);
        if max_tracked == 0 {
            return Err(invalid(
                place("max_tracked"),
                format!("must be at least 1 (default {DEFAULT_MAX_TRACKED})"),
            ));
        }
        let (actions, actions_place) = match &jail.actions {
            Some(a) => (a.clone(), place("actions")),
            None => (d.actions.clone(), "defaults.actions".to_string()),
        };
        for (i, a) in actions.iter().enumerate() {
            a.validate(&format!("{actions_place}[{i}]"))?;
        }
        let (ignoreip, ignore_names) = match &jail.ignoreip {
            Some(list) => parse_ignore(&place("ignoreip"), list)?,
            None => parse_ignore("defaults.ignoreip", &d.ignoreip)?,
        };
        let mut bantime_by_country = BTreeMap::new();
        for (code, bt) in &jail.bantime_by_country {
            let code = crate::geo::country_code(&place("bantime_by_country"), code)?;
            bantime_by_country.insert(code, *bt);
        }

        // The filter: a named one (config section, operator's file, built-in,
        // in that order) plus the jail's own regexes.
        let mut filter = match &jail.filter {
            Some(fname) => self
                .filters
                .get(fname)
                .or_else(|| user_filters.get(fname))
                .cloned()
                .or_else(|| crate::filter::builtin::builtin(fname))
                .ok_or_else(|| {
                    invalid(
                        place("filter"),
                        format!(
                            "no filter named `{fname}`: define [filters.{fname}], add {}/{fname}.toml, or use a built-in one ({})",
                            self.agent.filters_dir.display(),
                            crate::filter::builtin::builtin_names().join(", ")
                        ),
                    )
                })?,
            None => FilterDef::default(),
        };
        filter.failregex.extend(jail.failregex.iter().cloned());
        filter.ignoreregex.extend(jail.ignoreregex.iter().cloned());
        if jail.datepattern.is_some() {
            filter.datepattern = jail.datepattern.clone();
        }
        let has_mode_regexes = filter.modes.values().any(|m| !m.failregex.is_empty());
        if filter.failregex.is_empty() && !has_mode_regexes {
            return Err(invalid(
                place("failregex"),
                "the jail has no failregex: set `filter = \"NAME\"` or list `failregex = [...]` with a <HOST> tag",
            ));
        }
        FilterSet::from_def(&filter, jail.mode.as_deref()).map_err(|e| {
            let key = if jail.failregex.is_empty() {
                "filter"
            } else {
                "failregex"
            };
            invalid(place(key), e.to_string())
        })?;

        let source = match (jail.backend, jail.logpath.is_empty()) {
            (Backend::Systemd, _) => SourceSpec::Journal(jail.journalmatch.clone()),
            (Backend::File, true) => {
                return Err(invalid(
                    place("logpath"),
                    "backend = \"file\" needs at least one log file: logpath = [\"/var/log/auth.log\"]",
                ))
            }
            (Backend::Auto, true) if jail.journalmatch.is_empty() => {
                return Err(invalid(
                    place("logpath"),
                    "the jail reads nothing: set logpath = [\"/var/log/...\"], or backend = \"systemd\" with journalmatch",
                ))
            }
            (Backend::Auto, true) => SourceSpec::Journal(jail.journalmatch.clone()),
            (_, false) => {
                for (i, p) in jail.logpath.iter().enumerate() {
                    if !Path::new(p).is_absolute() {
                        return Err(invalid(
                            format!("jails.{name}.logpath[{i}]"),
                            format!("`{p}` is not an absolute path"),
                        ));
                    }
                    check_logpath_shape(&format!("jails.{name}.logpath[{i}]"), p)?;
                }
                if jail.backend == Backend::Auto && !jail.journalmatch.is_empty() {
                    SourceSpec::FilesOrJournal {
                        files: jail.logpath.clone(),
                        journalmatch: jail.journalmatch.clone(),
                    }
                } else {
                    SourceSpec::Files(jail.logpath.clone())
                }
            }
        };

        Ok(JailSettings {
            name: name.to_string(),
            maxretry,
            findtime: jail.findtime.unwrap_or(d.findtime).0,
            bantime: jail.bantime.unwrap_or(d.bantime),
            ignoreip,
            ignore_names,
            ignoreself: jail.ignoreself.unwrap_or(d.ignoreself),
            usedns: jail.usedns.unwrap_or(d.usedns),
            class: jail.class.unwrap_or(d.class),
            bantime_by_country,
            source,
            filter,
            mode: jail.mode.clone(),
            actions,
            max_tracked,
        })
    }
}
