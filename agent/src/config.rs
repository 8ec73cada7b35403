//! The agent's TOML configuration: `[agent]`, `[defaults]`, `[filters.NAME]`
//! and `[jails.NAME]`, where every jail inherits `[defaults]` and may override
//! any of its keys (as operators know from fail2ban's jail.local).
//!
//! Parsing is two steps: serde reads the file (unknown keys and wrong types are
//! reported by toml with line and column), then [`Config::validate`] resolves
//! each jail and checks what serde cannot (regexes, tags, addresses), naming
//! the jail and the key in every error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actions::ActionConfig;
use crate::addr::Target;
use crate::ban::BanClass;
use crate::directories;
use crate::enforce::iptables::TarpitConfig;
use crate::escalation::EscalationConfig;
use crate::filter::{FilterDef, FilterSet, UseDns};

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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interfaces: Vec::new(),
            xdp_mode: XdpModeSetting::Auto,
            bpf_pin_dir: directories::BPF_PIN_DIR.into(),
            state_dir: directories::STATE_DIR.into(),
            socket: directories::SOCKET.into(),
            keep_on_exit: true,
            filters_dir: directories::FILTERS_DIR.into(),
            dbpurgeage: None,
            blocklist_files: Vec::new(),
            blocklist_append: false,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    Auto,
    Native,
    Generic,
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeSetting::Auto => "auto",
            XdpModeSetting::Native => "native",
            XdpModeSetting::Generic => "generic",
        })
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
        }
    }
}

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
    pub ignoreself: bool,
    pub usedns: UseDns,
    pub class: BanClass,
    pub source: SourceSpec,
    pub filter: FilterDef,
    pub mode: Option<String>,
    pub actions: Vec<ActionConfig>,
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
        let allowlist = parse_targets("defaults.ignoreip", &self.defaults.ignoreip)?;
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
            if jail.enabled == Some(false) {
                continue;
            }
            jails.push(self.resolve_jail(name, jail, &user_filters)?);
        }
        let fleet = self
            .fleet
            .resolve(&self.bantimes(&jails), self.defaults.ignoreself)
            .map_err(|(place, message)| invalid(place, message))?;
        Ok(ResolvedConfig {
            agent: self.agent.clone(),
            allowlist,
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
            fleet,
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
        let (actions, actions_place) = match &jail.actions {
            Some(a) => (a.clone(), place("actions")),
            None => (d.actions.clone(), "defaults.actions".to_string()),
        };
        for (i, a) in actions.iter().enumerate() {
            a.validate()
                .map_err(|m| invalid(format!("{actions_place}[{i}]"), m))?;
        }
        let ignoreip = match &jail.ignoreip {
            Some(list) => parse_targets(&place("ignoreip"), list)?,
            None => parse_targets("defaults.ignoreip", &d.ignoreip)?,
        };

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
            ignoreself: jail.ignoreself.unwrap_or(d.ignoreself),
            usedns: jail.usedns.unwrap_or(d.usedns),
            class: jail.class.unwrap_or(d.class),
            source,
            filter,
            mode: jail.mode.clone(),
            actions,
        })
    }
}

fn parse_targets(place: &str, list: &[String]) -> Result<Vec<Target>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Target>()
                .map_err(|e| invalid(format!("{place}[{i}]"), e.to_string()))
        })
        .collect()
}

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
        return Ok(Duration::from_secs(secs));
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
    Ok(Duration::from_secs(total))
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
            Raw::Secs(s) => Ok(DurationSetting(Duration::from_secs(s))),
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
            Raw::Secs(s) if s >= 0 => Ok(BanTime::Finite(Duration::from_secs(s as u64))),
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

    fn no_user_filters() -> String {
        // Point filters_dir somewhere empty so tests never read /etc/xban.
        let dir = tempfile::tempdir().unwrap().keep();
        format!("[agent]\nfilters_dir = \"{}\"\n", dir.display())
    }

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
}
