//! The agent's TOML configuration: `[agent]`, `[defaults]`, `[filters.NAME]`
//! and `[jails.NAME]`, where every jail inherits `[defaults]` and may override
//! any of its keys (as operators know from fail2ban's jail.local).
//!
//! Parsing is two steps: serde reads the file (unknown keys and wrong types are
//! reported by toml with line and column), then [`Config::validate`] resolves
//! each jail and checks what serde cannot (regexes, tags, addresses), naming
//! the jail and the key in every error.
//!
//! Here: the sections' types and their documented defaults, and loading.
//! [`validate`](Config::validate) (resolution into a [`ResolvedConfig`]) is
//! in `validate.rs`, the checks of single settings in `checks.rs`; every
//! check reports a [`ValidationError`] (place and message).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::actions::ActionConfig;
use crate::addr::Target;
use crate::ban::BanClass;
use crate::enforce::steering::TarpitConfig;
use crate::enforce::xdp::XdpModeSetting;
use crate::escalation::EscalationConfig;
use crate::filter::{FilterDef, UseDns};
use crate::geo::{GeoConfig, GeoDb, GeoSet};
use crate::sys::paths;
use crate::units::{BanTime, DurationSetting};
pub use crate::validation::ValidationError;

mod checks;
mod validate;

pub(crate) use checks::file_kind;

/// The default config, `deploy/xban.toml`, as installed by the package and
/// by `cargo xtask install`: `xban import` may replace it while it is
/// untouched.
pub const DEFAULT_CONFIG: &str = include_str!("../../../deploy/xban.toml");

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
    /// Bans per family (IPv4, IPv6) the XDP fast path holds (1,200,000;
    /// from 1,000 to 2,000,000). Beyond it bans still drop, looked up in the
    /// ban trie (slower per packet in their regions); status, metrics and
    /// the log say so. More than the default grows the overflow hashes.
    pub fast_path_capacity: u32,
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
            fast_path_capacity: xban_common::fastpath::DEFAULT_CAPACITY,
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
    /// A setting that parses but is wrong (`jails.sshd.bantime: ...`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
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
}

#[cfg(test)]
mod tests;
