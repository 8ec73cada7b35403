//! The agent's TOML configuration: `[agent]`, `[defaults]`, `[filters.NAME]`
//! and `[jails.NAME]`, where every jail inherits `[defaults]` and may override
//! any of its keys (as operators know from fail2ban's jail.local).
//!
//! Parsing is two steps: serde reads the file (unknown keys and wrong types are
//! reported by toml with line and column), then [`Config::validate`] resolves
//! each jail and checks what serde cannot (regexes, tags, addresses), naming
//! the jail and the key in every error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::actions::ActionConfig;
use crate::addr::Target;
use crate::ban::BanClass;
use crate::enforce::iptables::TarpitConfig;
use crate::enforce::xdp::XdpModeSetting;
use crate::escalation::EscalationConfig;
use crate::filter::{FilterDef, FilterSet, UseDns};
use crate::geo::{GeoConfig, GeoDb, GeoSet};
use crate::sys::paths;
use crate::units::{BanTime, DurationSetting, MAX_DURATION};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub defaults: JailDefaults,
    pub filters: BTreeMap<String, FilterDef>,
    pub jails: BTreeMap<String, JailConfig>,
    pub escalation: EscalationConfig,
    pub tarpit: TarpitConfig,
    pub geo: GeoConfig,
    pub fleet: crate::fleet::FleetConfig,
}

/// `[agent]`: where and how the agent runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Interfaces XDP attaches to. Empty: the default route's interface.
    pub interfaces: Vec<String>,
    /// `auto` lets the kernel choose (native where the driver supports it).
    pub xdp_mode: XdpModeSetting,
    /// Pin directory on bpffs: maps, program and links live here.
    pub bpf_pin_dir: PathBuf,
    /// Ban database and file positions.
    pub state_dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// On exit, leave XDP attached and maps pinned so bans keep dropping
    /// while the agent restarts. `false`: exit tears everything down.
    pub keep_on_exit: bool,
    /// Operators' filter files (`NAME.toml`), adding to the built-in library.
    pub filters_dir: PathBuf,
    /// Ban history older than this is forgotten. Default: the longest
    /// escalation window (at least a day).
    pub dbpurgeage: Option<DurationSetting>,
    /// Permanent blocklists (one address or CIDR per line, `#` comments),
    /// loaded at start and re-read when they change.
    pub blocklist_files: Vec<PathBuf>,
    /// Append every permanent ban to the first blocklist file.
    pub blocklist_append: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set;
    /// e.g. "127.0.0.1:9717").
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// No ban (manual, jail, blocklist, escalation) may cover a wider IPv4
    /// prefix than this (`xban ban --force` overrides it for one ban).
    pub min_prefix_v4: u8,
    /// The same for IPv6 (/32 is a whole provider's allocation).
    pub min_prefix_v6: u8,
    /// DNS servers for host names in ignoreip (`"ADDR"` or `"ADDR:PORT"`).
    /// Empty: the system's, from /etc/resolv.conf.
    pub resolvers: Vec<String>,
    /// A name's records are looked up again when their TTL runs out, but
    /// not sooner than this (and this soon after a failed lookup).
    pub dns_refresh_min: DurationSetting,
    /// ... and not later than this.
    pub dns_refresh_max: DurationSetting,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interfaces: Vec::new(),
            xdp_mode: XdpModeSetting::Auto,
            bpf_pin_dir: paths::BPF_PIN_DIR.into(),
            state_dir: paths::STATE_DIR.into(),
            socket: paths::SOCKET.into(),
            keep_on_exit: true,
            filters_dir: paths::FILTERS_DIR.into(),
            dbpurgeage: None,
            blocklist_files: Vec::new(),
            blocklist_append: false,
            metrics_listen: None,
            min_prefix_v4: 8,
            min_prefix_v6: 32,
            resolvers: Vec::new(),
            dns_refresh_min: DurationSetting(Duration::from_secs(30)),
            dns_refresh_max: DurationSetting(Duration::from_secs(300)),
        }
    }
}

/// `[defaults]`: every jail starts from these.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JailDefaults {
    /// Failures within `findtime` that earn a ban.
    pub maxretry: u32,
    /// The window failures are counted in.
    pub findtime: DurationSetting,
    /// How long a ban lasts (`"permanent"` or `-1`: until unbanned).
    pub bantime: BanTime,
    /// Addresses and prefixes never banned. The `[defaults]` list is also
    /// written into the XDP allowlist, so these always get through.
    pub ignoreip: Vec<String>,
    /// Never ban this machine's own addresses (and loopback).
    pub ignoreself: bool,
    /// Hostnames in `<HOST>`: resolve (`yes`), log and skip (`warn`), skip (`no`).
    pub usedns: UseDns,
    /// What a ban does: `drop` at XDP, or `tarpit` (passed to iptables).
    pub class: BanClass,
    /// Commands (or mail) run on ban/unban; a jail's own list replaces these.
    pub actions: Vec<ActionConfig>,
    /// Addresses whose failures a jail counts at once, at most. Beyond it
    /// the oldest one-failure address is forgotten first (then the least
    /// recently failing), so a flood of one-time addresses cannot push out
    /// a repeat offender or grow memory without bound (~300 bytes each).
    pub max_tracked: usize,
}

impl Default for JailDefaults {
    fn default() -> Self {
        JailDefaults {
            maxretry: 5,
            findtime: DurationSetting(Duration::from_secs(600)),
            bantime: BanTime::Finite(Duration::from_secs(600)),
            ignoreip: Vec::new(),
            ignoreself: true,
            usedns: UseDns::Warn,
            class: BanClass::Drop,
            actions: Vec::new(),
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

/// `max_tracked` when not set: 100,000 addresses per jail (about 30 MB).
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// `[jails.NAME]`: a log source, a filter, and optional overrides of `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    pub enabled: Option<bool>,
    /// A named filter: built-in, `[filters.NAME]`, or `filters_dir/NAME.toml`.
    pub filter: Option<String>,
    /// The filter's mode (e.g. sshd `normal`, `ddos`, `aggressive`).
    pub mode: Option<String>,
    pub logpath: Vec<String>,
    pub backend: Backend,
    pub journalmatch: Vec<String>,
    /// Regexes of the jail itself, added to its filter's.
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub datepattern: Option<String>,
    pub maxretry: Option<u32>,
    pub findtime: Option<DurationSetting>,
    pub bantime: Option<BanTime>,
    pub ignoreip: Option<Vec<String>>,
    pub ignoreself: Option<bool>,
    pub usedns: Option<UseDns>,
    pub class: Option<BanClass>,
    pub actions: Option<Vec<ActionConfig>>,
    pub max_tracked: Option<usize>,
    /// Longer bans for offenders from these countries (`{ XX = "1w" }`;
    /// needs `[geo] database`).
    pub bantime_by_country: BTreeMap<String, BanTime>,
}

/// Where a jail's lines come from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files when `logpath` is set, the journal otherwise.
    #[default]
    Auto,
    File,
    Systemd,
}

/// A jail with `[defaults]` applied and everything checked.
#[derive(Debug, Clone)]
pub struct JailSettings {
    pub name: String,
    pub maxretry: u32,
    pub findtime: Duration,
    pub bantime: BanTime,
    pub ignoreip: Vec<Target>,
    /// Host names in ignoreip, kept current by [`crate::dns`].
    pub ignore_names: Vec<String>,
    pub ignoreself: bool,
    pub usedns: UseDns,
    pub class: BanClass,
    /// Country code → the jail's bantime for offenders from there.
    pub bantime_by_country: BTreeMap<String, BanTime>,
    pub source: SourceSpec,
    pub filter: FilterDef,
    pub mode: Option<String>,
    pub actions: Vec<ActionConfig>,
    pub max_tracked: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Files(Vec<String>),
    Journal(Vec<String>),
    /// `backend = "auto"` with both: the files if any of them exists at
    /// start, else the journal if there is one (decided by the daemon).
    FilesOrJournal {
        files: Vec<String>,
        journalmatch: Vec<String>,
    },
}

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub agent: AgentConfig,
    /// `[defaults] ignoreip`: never banned by anyone, written into the XDP allowlist.
    pub allowlist: Vec<Target>,
    /// Host names in `[defaults] ignoreip`: their addresses join the allowlist.
    pub allow_names: Vec<String>,
    /// Resolvers and refresh bounds for those names.
    pub dns: crate::dns::DnsSettings,
    pub jails: Vec<JailSettings>,
    /// `[defaults]` bantime and class, for manual bans outside any jail.
    pub default_bantime: BanTime,
    pub default_class: BanClass,
    pub escalation: EscalationConfig,
    pub tarpit: TarpitConfig,
    /// `[defaults] actions`: for bans outside any jail (manual, blocklist, subnet).
    pub default_actions: Vec<ActionConfig>,
    /// History kept for escalation.
    pub dbpurgeage: Duration,
    /// Accepted but worth a look (e.g. an ignoreip that allows everyone):
    /// logged at start and reload, printed by `xban check`.
    pub warnings: Vec<String>,
    pub geo: GeoConfig,
    /// The databases, opened and checked (None without `[geo]`).
    pub geo_db: Option<std::sync::Arc<GeoDb>>,
    /// The rules compiled against them.
    pub geo_set: std::sync::Arc<GeoSet>,
    /// `[fleet]`, when on.
    pub fleet: Option<crate::fleet::FleetSettings>,
}

/// A config error: where it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source} (pass the right file with -c/--config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{place}: {message}")]
    Invalid { place: String, message: String },
}

fn invalid(place: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        place: place.into(),
        message: message.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Only `[agent]`, for commands that just need the socket and pin
    /// paths: a mistake in a jail must not stop `xban reload` from reaching
    /// the agent (which then refuses the broken file with its errors).
    pub fn load_agent_section(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        match table.get("agent") {
            None => Ok(AgentConfig::default()),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| parse_err(format!("[agent]: {e}"))),
        }
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })
    }

    /// Resolve every enabled jail against `[defaults]` and check it whole:
    /// filters compile, addresses parse, sources make sense.
    pub fn validate(&self) -> Result<ResolvedConfig, ConfigError> {
        let (allowlist, allow_names) = parse_ignore("defaults.ignoreip", &self.defaults.ignoreip)?;
        let mut warnings = Vec::new();
        crate::preflight::check_agent_section(&self.agent)
            .map_err(|(place, message)| invalid(place, message))?;
        crate::preflight::check_escalation_widths(&self.agent, &self.escalation)
            .map_err(|(place, message)| invalid(place, message))?;
        warnings.extend(crate::preflight::allowlist_warnings(
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
        geo.validate()
            .map_err(|crate::geo::GeoError::Invalid { place, message }| invalid(place, message))?;
        let (geo_db, geo_set) = if geo.enabled() {
            let db =
                GeoDb::open(&geo).map_err(|crate::geo::GeoError::Invalid { place, message }| {
                    invalid(place, message)
                })?;
            let set = crate::geo::compile(&db, &geo.rules).map_err(
                |crate::geo::GeoError::Invalid { place, message }| invalid(place, message),
            )?;
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
        self.escalation
            .validate()
            .map_err(|(place, message)| invalid(place, message))?;
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
            crate::preflight::check_jail_name(name)
                .map_err(|m| invalid(format!("jails.{name}"), m))?;
            if jail.enabled == Some(false) {
                continue;
            }
            let settings = self.resolve_jail(name, jail, &user_filters)?;
            if jail.ignoreip.is_some() {
                warnings.extend(crate::preflight::allowlist_warnings(
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
            .resolve(&self.bantimes(&jails), self.defaults.ignoreself)
            .map_err(|(place, message)| invalid(place, message))?;
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

    fn dns_settings(&self) -> Result<crate::dns::DnsSettings, ConfigError> {
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
    ) -> Result<JailSettings, ConfigError> {
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
            a.validate()
                .map_err(|m| invalid(format!("{actions_place}[{i}]"), m))?;
        }
        let (ignoreip, ignore_names) = match &jail.ignoreip {
            Some(list) => parse_ignore(&place("ignoreip"), list)?,
            None => parse_ignore("defaults.ignoreip", &d.ignoreip)?,
        };
        let mut bantime_by_country = BTreeMap::new();
        for (code, bt) in &jail.bantime_by_country {
            let code = crate::geo::country_code(&place("bantime_by_country"), code).map_err(
                |crate::geo::GeoError::Invalid { place, message }| invalid(place, message),
            )?;
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
                    crate::preflight::check_logpath_shape(p)
                        .map_err(|m| invalid(format!("jails.{name}.logpath[{i}]"), m))?;
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

/// A ban time of 0 bans nothing: refused, with the way to say what was meant.
fn check_bantime(place: &str, b: BanTime) -> Result<(), ConfigError> {
    match b {
        BanTime::Finite(d) if d.is_zero() => Err(invalid(
            place,
            "a ban of 0 s ends as it starts: set a duration like \"10m\", or \"permanent\"; to stop a jail banning, set enabled = false",
        )),
        BanTime::Finite(d) if d > MAX_DURATION => Err(invalid(place, over_max_text(d.as_secs(), true))),
        _ => Ok(()),
    }
}

/// A counting window of 0 never holds two failures: refused.
fn check_window(place: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(
            place,
            "a window of 0 s never holds two failures: set a duration like \"10m\"",
        ));
    }
    if d > MAX_DURATION {
        return Err(invalid(place, over_max_text(d.as_secs(), false)));
    }
    Ok(())
}

fn over_max_text(secs: u64, permanent_ok: bool) -> String {
    format!(
        "`{secs}` seconds is longer than the maximum duration, 3650d (10 years){}",
        if permanent_ok {
            ": for longer, write \"permanent\""
        } else {
            ""
        }
    )
}

/// An ignoreip list: addresses and prefixes, and DNS host names.
fn parse_ignore(place: &str, list: &[String]) -> Result<(Vec<Target>, Vec<String>), ConfigError> {
    let mut targets = Vec::new();
    let mut names = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match s.parse::<Target>() {
            Ok(t) => targets.push(t),
            Err(_) if crate::dns::is_host_name(s.trim()) => {
                names.push(crate::dns::normalise(s.trim()))
            }
            Err(e) => {
                return Err(invalid(
                    format!("{place}[{i}]"),
                    format!("{e}, or a DNS host name like home.example.org"),
                ))
            }
        }
    }
    names.sort();
    names.dedup();
    Ok((targets, names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_duration;

    fn no_user_filters() -> String {
        // Point filters_dir somewhere empty so tests never read /etc/xban.
        let dir = tempfile::tempdir().unwrap().keep();
        format!("[agent]\nfilters_dir = \"{}\"\n", dir.display())
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.defaults.maxretry, 5);
        assert_eq!(c.defaults.findtime.0, Duration::from_secs(600));
        assert_eq!(
            c.defaults.bantime,
            BanTime::Finite(Duration::from_secs(600))
        );
        assert_eq!(c.agent.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/xban"));
        assert_eq!(c.agent.xdp_mode, XdpModeSetting::Auto);
        assert!(c.agent.keep_on_exit);
    }

    #[test]
    fn jail_inherits_defaults_and_overrides() {
        let text = format!(
            r#"{}
[defaults]
maxretry = 3
findtime = "1h"
bantime = 90
ignoreip = ["198.51.100.0/24", "2001:db8::/32"]

[jails.sshd]
logpath = ["/var/log/auth.log"]
failregex = ['Failed password for \S+ from <HOST>']
bantime = "1d"

[jails.web]
logpath = ["/var/log/web.log"]
failregex = ['auth failed for <HOST>']
maxretry = 10
ignoreip = []
"#,
            no_user_filters()
        );
        let r = Config::parse(&text).unwrap().validate().unwrap();
        assert_eq!(r.allowlist.len(), 2);
        let sshd = r.jails.iter().find(|j| j.name == "sshd").unwrap();
        assert_eq!(sshd.maxretry, 3);
        assert_eq!(sshd.findtime, Duration::from_secs(3600));
        assert_eq!(sshd.bantime, BanTime::Finite(Duration::from_secs(86_400)));
        assert_eq!(sshd.ignoreip.len(), 2);
        assert_eq!(
            sshd.source,
            SourceSpec::Files(vec!["/var/log/auth.log".into()])
        );
        let web = r.jails.iter().find(|j| j.name == "web").unwrap();
        assert_eq!(web.maxretry, 10);
        assert_eq!(web.bantime, BanTime::Finite(Duration::from_secs(90)));
        assert!(web.ignoreip.is_empty());
    }

    fn error_of(text: &str) -> String {
        let full = format!("{}\n{text}", no_user_filters());
        match Config::parse(&full) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().unwrap_err().to_string(),
        }
    }

    #[test]
    fn errors_name_the_jail_and_key() {
        let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['(unclosed <HOST>']\n");
        assert!(e.starts_with("jails.sshd.failregex:"), "{e}");

        let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['Failed password']\n");
        assert!(
            e.starts_with("jails.sshd.failregex:") && e.contains("<HOST>"),
            "{e}"
        );

        let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nbantime = \"10 parsecs\"\n");
        assert!(
            e.contains("is not a duration") && e.contains("bantime"),
            "{e}"
        );

        let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nignoreip = [\"10.0.0.300\"]\n");
        assert!(
            e.starts_with("jails.sshd.ignoreip[0]:") && e.contains("10.0.0.300"),
            "{e}"
        );

        let e = error_of(
            "[jails.sshd]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nmaxretries = 3\n",
        );
        assert!(
            e.contains("unknown field `maxretries`") && e.contains("line"),
            "{e}"
        );

        let e = error_of("[jails.sshd]\nlogpath = [\"relative.log\"]\nfailregex = ['x <HOST>']\n");
        assert!(e.starts_with("jails.sshd.logpath[0]:"), "{e}");

        let e = error_of("[jails.sshd]\nfailregex = ['x <HOST>']\n");
        assert!(e.starts_with("jails.sshd.logpath:"), "{e}");

        let e = error_of("[jails.sshd]\nlogpath = [\"/l\"]\nfilter = \"nope\"\n");
        assert!(
            e.starts_with("jails.sshd.filter:") && e.contains("no filter named `nope`"),
            "{e}"
        );

        let e = error_of("[defaults]\nignoreip = [\"1.2.3.4/40\"]\n");
        assert!(e.starts_with("defaults.ignoreip[0]:"), "{e}");

        let e = Config::parse("[agent]\nxdp_mode = \"turbo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("turbo") && e.contains("line 2"), "{e}");

        let e = error_of("[defaults]\nclass = \"gentle\"\n");
        assert!(e.contains("gentle") && e.contains("line"), "{e}");
    }

    #[test]
    fn disabled_jails_are_not_resolved() {
        let text = format!(
            "{}\n[jails.off]\nenabled = false\nfailregex = ['no tag']\n",
            no_user_filters()
        );
        let r = Config::parse(&text).unwrap().validate().unwrap();
        assert!(r.jails.is_empty());
    }

    fn jail(extra: &str) -> String {
        format!("[jails.sshd]\nlogpath = [\"/var/log/xban-test-none.log\"]\nfailregex = ['x <HOST>']\n{extra}")
    }

    #[test]
    fn durations_above_the_maximum_are_refused_naming_the_key() {
        for (text, key) in [
            ("[defaults]\nbantime = 9223372036854775807\n", "bantime"),
            (
                "[defaults]\nbantime = \"18446744073709551615\"\n",
                "bantime",
            ),
            ("[defaults]\nfindtime = 9223372036854775807\n", "findtime"),
            ("[defaults]\nbantime = \"3651d\"\n", "bantime"),
            ("[escalation.increment]\nmaxtime = \"600w\"\n", "maxtime"),
        ] {
            let e = error_of(text);
            assert!(
                e.contains(key) && e.contains("longer than the maximum") && e.contains("3650d"),
                "{text}: {e}"
            );
        }
        let e = error_of("[defaults]\nbantime = \"999999999999w\"\n");
        assert!(e.contains("bantime"), "{e}");
        // The maximum itself, and permanent, are fine.
        let ok = format!("{}\n[defaults]\nbantime = \"3650d\"\n", no_user_filters());
        Config::parse(&ok).unwrap().validate().unwrap();
        assert!("18446744073709551615"
            .parse::<BanTime>()
            .unwrap_err()
            .contains("maximum"));
        assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
    }

    #[test]
    fn zero_bantime_and_findtime_are_refused() {
        let e = error_of("[defaults]\nbantime = 0\n");
        assert!(
            e.starts_with("defaults.bantime:") && e.contains("permanent"),
            "{e}"
        );
        let e = error_of("[defaults]\nfindtime = \"0s\"\n");
        assert!(
            e.starts_with("defaults.findtime:") && e.contains("10m"),
            "{e}"
        );
        let e = error_of(&jail("bantime = \"0m\"\n"));
        assert!(e.starts_with("jails.sshd.bantime:"), "{e}");
        let e = error_of(&jail("findtime = 0\n"));
        assert!(e.starts_with("jails.sshd.findtime:"), "{e}");
        let e = error_of("[escalation]\nsteps = [{ bans = 2, within = \"1h\", bantime = 0 }]\n");
        assert!(e.starts_with("escalation.steps[0].bantime:"), "{e}");
        let e = error_of("[escalation.subnet]\nbantime = 0\n");
        assert!(e.starts_with("escalation.subnet.bantime:"), "{e}");
        let e = error_of("[defaults]\nmax_tracked = 0\n");
        assert!(
            e.starts_with("defaults.max_tracked:") && e.contains("100000"),
            "{e}"
        );
        let e = error_of(&jail("max_tracked = 0\n"));
        assert!(e.starts_with("jails.sshd.max_tracked:"), "{e}");
    }

    #[test]
    fn max_tracked_defaults_and_overrides() {
        let text = format!(
            "{}\n[defaults]\nmax_tracked = 500\n{}\n[jails.web]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\nmax_tracked = 7\n",
            no_user_filters(),
            jail("")
        );
        let r = Config::parse(&text).unwrap().validate().unwrap();
        let get = |n: &str| r.jails.iter().find(|j| j.name == n).unwrap().max_tracked;
        assert_eq!((get("sshd"), get("web")), (500, 7));
        assert_eq!(JailDefaults::default().max_tracked, 100_000);
    }

    #[test]
    fn allowing_everyone_is_warned_about() {
        let text = format!(
            "{}\n[defaults]\nignoreip = [\"0.0.0.0/0\", \"::/0\", \"203.0.113.9/0\", \"128.0.0.0/1\", \"10.0.0.0/8\"]\n{}",
            no_user_filters(),
            jail("ignoreip = [\"2001:db8::/16\"]\n")
        );
        let r = Config::parse(&text).unwrap().validate().unwrap();
        let w = r.warnings.join("\n");
        assert!(
            w.contains("defaults.ignoreip[0]: `0.0.0.0/0` allowlists every IPv4 address"),
            "{w}"
        );
        assert!(
            w.contains("defaults.ignoreip[1]: `::/0` allowlists every IPv6 address"),
            "{w}"
        );
        assert!(w.contains("defaults.ignoreip[2]: `0.0.0.0/0`"), "{w}");
        assert!(
            w.contains("defaults.ignoreip[3]: `128.0.0.0/1` allowlists a /1"),
            "{w}"
        );
        assert!(w.contains("jails.sshd.ignoreip[0]"), "{w}");
        assert!(!w.contains("ignoreip[4]"), "a /8 is fine: {w}");
    }

    #[test]
    fn reserved_and_unsafe_jail_names_are_refused() {
        for name in ["blocklist", "manual", "subnet", "fleet", "geo"] {
            let e = error_of(&format!(
                "[jails.{name}]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\n"
            ));
            assert!(
                e.starts_with(&format!("jails.{name}:")) && e.contains("reserved"),
                "{e}"
            );
        }
        for name in ["\"ss\\\"hd\"", "\"a b\"", "\"x:y\"", "\"it's\""] {
            let e = error_of(&format!(
                "[jails.{name}]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>']\n"
            ));
            assert!(e.contains("letters, digits"), "{name}: {e}");
        }
        // Even a disabled jail may not take a reserved name.
        let e = error_of("[jails.manual]\nenabled = false\n");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn logpaths_that_are_not_files_and_bad_agent_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = error_of(&format!(
            "[jails.sshd]\nlogpath = [\"/l\", \"{}\"]\nfailregex = ['x <HOST>']\n",
            dir.path().display()
        ));
        assert!(
            e.starts_with("jails.sshd.logpath[1]:") && e.contains("is a directory"),
            "{e}"
        );
        let e = error_of("[jails.sshd]\nlogpath = [\"/dev/zero\"]\nfailregex = ['x <HOST>']\n");
        assert!(e.contains("character device"), "{e}");
        let e =
            error_of("[jails.sshd]\nlogpath = [\"/var/log/[x.log\"]\nfailregex = ['x <HOST>']\n");
        assert!(
            e.starts_with("jails.sshd.logpath[0]:") && e.contains("glob"),
            "{e}"
        );
        // [agent] keys: checked in validate, named in the error.
        for (text, key) in [
            ("state_dir = \"\"", "agent.state_dir:"),
            ("socket = \"relative.sock\"", "agent.socket:"),
            ("bpf_pin_dir = \"/sys/fs/bpf\"", "agent.bpf_pin_dir:"),
            ("bpf_pin_dir = \"pins\"", "agent.bpf_pin_dir:"),
            ("interfaces = [\"\"]", "agent.interfaces[0]:"),
        ] {
            let full = format!("[agent]\nfilters_dir = \"/nonexistent-xban\"\n{text}\n");
            let e = Config::parse(&full)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        let full = "[agent]\nfilters_dir = \"/nonexistent-xban\"\nmin_prefix_v4 = 16\n[escalation.subnet]\nenabled = true\nv4_prefix = 12\n";
        let e = Config::parse(full)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("escalation.subnet.v4_prefix:") && e.contains("min_prefix_v4"),
            "{e}"
        );
    }
}
