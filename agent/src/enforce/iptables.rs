//! Tarpit steering: the iptables/ipset plumbing behind the `tarpit` ban class.
//!
//! XDP passes tarpit-class packets; this module makes iptables hold their TCP
//! connections with the TARPIT target (xtables-addons). Per family it keeps:
//!
//! ```text
//! ipset   xban-tarpit-v4       hash:net family inet maxelem 1048576 (no timeout)
//! filter  -N XBAN-TARPIT
//!         -A XBAN-TARPIT -p tcp -m limit --limit 10/sec --limit-burst 20 -j TARPIT
//!         -A XBAN-TARPIT -p tcp -j DROP
//!         -I INPUT 1 -p tcp -m set --match-set xban-tarpit-v4 src -j XBAN-TARPIT
//! raw     -I PREROUTING 1 -p tcp -m set --match-set xban-tarpit-v4 src -j CT --notrack   (notrack = true)
//! ```
//!
//! and the same with ip6tables and `xban-tarpit-v6` (family inet6). Membership
//! is set operations only; there are never per-address rules. The set is
//! matched in the hook, so other TCP costs one set lookup and the hook's
//! counter is the number of steered packets.
//!
//! Everything is adopted by the next run (an adopted set is never flushed),
//! so a tarpit-class address stays steered while the agent restarts. A chain
//! that differs from the config (other limit or target) is rewritten in place
//! without a gap: the new rules are appended behind the old ones, which are
//! then deleted, so every steered packet meets a verdict throughout. Duplicate
//! hooks or notrack rules are pruned by rule number, never by spec (see
//! `Plumbing::prune`). [`TarpitSteering::teardown`] removes it all.
//!
//! ## Detecting TARPIT
//!
//! Availability is tested by doing what setup would do: in the filter table a
//! scratch chain `XBAN-PROBE-<pid>` is created, `-p tcp -j TARPIT` is appended
//! to it, and the chain is removed again. That one step exercises everything
//! the real rule needs: the iptables extension `libxt_TARPIT.so`, the kernel
//! module `xt_TARPIT` (including the kernel's module autoloading) and the
//! chosen backend (nf_tables through nft_compat, or legacy). `modprobe -n` and
//! `/proc/net/ip_tables_targets` alone cannot answer it: modules may be
//! built in or autoloaded on first use, and neither says whether iptables has
//! the userspace extension. The error text then tells which part is missing:
//!
//! * extension missing: nf_tables says `Chain 'TARPIT' does not exist` (it
//!   takes an unknown target for a chain), legacy `Couldn't load target`;
//! * kernel module missing: nf_tables says `RULE_APPEND failed (No such file
//!   or directory)`, legacy `No chain/target/match by that name`, both after
//!   `Extension TARPIT revision 0 not supported, missing kernel module?`.
//!
//! Both cases are reported as "the TARPIT target is not available (kernel
//! module xt_TARPIT missing: install xtables-addons-dkms)" (the dkms package
//! depends on xtables-addons-common, which has the extension), and `fallback`
//! decides what happens: `"drop"` creates nothing (the caller bans tarpit-class
//! addresses as drop in XDP), anything else is an iptables target spec used in
//! TARPIT's place, after the same probe has shown that it works. Whether the
//! configured spec is rendered correctly is also left to iptables: the wanted
//! chain is written into the scratch chain and read back, and compared with
//! the live chain in iptables' own normalised form (`3/minute` reads `3/min`).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::addr::Target;

/// ipset's default `maxelem` (65,536) silently caps how many addresses can be
/// held, a known fail2ban pain; xban's sets hold a million.
pub const SET_MAXELEM: u32 = 1_048_576;

/// iptables' `-w` wait for the xtables lock (legacy backend), in seconds.
const XTABLES_WAIT_SECS: &str = "10";

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
    fn validate_names(&self) -> Result<(), String> {
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

    fn bin(&self, fam: Family) -> &str {
        match fam {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }

    fn set(&self, fam: Family) -> &str {
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
fn validate_limit(text: &str) -> Result<(), String> {
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

/// What steering actually does once setup has run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SteeringMode {
    /// Steered packets go to the configured target (TARPIT).
    Tarpit,
    /// The target is unavailable; this target spec stands in for it.
    Substitute(String),
    /// The target is unavailable and `fallback = "drop"`: nothing is steered;
    /// the caller writes tarpit-class bans into XDP as drop.
    FallbackDrop,
    /// `enabled = false`.
    Disabled,
    /// The XDP tarpit holds the class (`engine = "xdp"`, or `"auto"`
    /// without a working TARPIT target): nothing is steered.
    Xdp,
    // In the last two modes setup creates and removes nothing; see
    // `TarpitSteering::leftovers` for what an earlier run left.
}

impl SteeringMode {
    /// Are tarpit-class addresses steered by iptables (so XDP must pass them)?
    pub fn is_active(&self) -> bool {
        matches!(self, SteeringMode::Tarpit | SteeringMode::Substitute(_))
    }
}

impl fmt::Display for SteeringMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SteeringMode::Tarpit => f.write_str("tarpit"),
            SteeringMode::Substitute(spec) => write!(f, "substitute target `{spec}`"),
            SteeringMode::FallbackDrop => f.write_str("fallback drop (XDP)"),
            SteeringMode::Disabled => f.write_str("disabled"),
            SteeringMode::Xdp => f.write_str("not used (the XDP tarpit holds the class)"),
        }
    }
}

/// One family's chain counters, in packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FamilyCounters {
    /// TCP packets from set members that entered the chain (the INPUT hook).
    pub steered_packets: u64,
    /// Packets within the rate limit, handed to the target.
    pub limited_packets: u64,
    /// Packets beyond the rate limit, dropped.
    pub dropped_over_limit: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SteeringCounters {
    pub v4: FamilyCounters,
    pub v6: FamilyCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("{program} not installed (needed for tarpit steering): {hint}")]
    NotInstalled { program: String, hint: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}; fix: {fix}")]
    Command {
        command: String,
        stderr: String,
        fix: String,
    },
    #[error("{message}, and the fallback target `{spec}` does not work either ({family}: {stderr}); fix tarpit.fallback or set it to \"drop\"")]
    SubstituteUnavailable {
        message: String,
        spec: String,
        family: &'static str,
        stderr: String,
    },
    #[error("ipset `{set}` exists as `{found}`, not hash:net family {family} without timeout; fix: remove it (`xban` teardown or `ipset destroy {set}`) or choose another tarpit.set_* name")]
    SetMismatch {
        set: String,
        found: String,
        family: &'static str,
    },
    #[error("cannot steer {target}: {reason}")]
    Unsupported { target: String, reason: String },
    #[error("`{command}` printed `{line}`, which is not an address")]
    Parse { command: String, line: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    fn of(t: &Target) -> Family {
        if t.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

/// The installed steering. Dropping it leaves everything in place (that is
/// what keeps tarpit-class addresses steered across restarts).
#[derive(Debug)]
pub struct TarpitSteering {
    plumbing: Plumbing,
    mode: SteeringMode,
    notice: Option<String>,
    leftovers: bool,
    /// Why the class is held where it is (for `xban status`).
    reason: String,
    /// Counters for `status`, read off the event loop (started on first use).
    probe: std::sync::OnceLock<CounterProbe>,
}

/// How often the background thread reads the chain counters.
const COUNTER_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The chain counters as last read by a background thread: reading them
/// runs iptables four times, tens of milliseconds that a `status` or a
/// scrape must not hold the event loop for.
#[derive(Debug)]
struct CounterProbe {
    latest: std::sync::Arc<std::sync::Mutex<Option<CounterReading>>>,
}

/// One reading of the counters, and when it was taken.
#[derive(Debug, Clone)]
pub struct CounterReading {
    pub at: std::time::Instant,
    pub counters: Result<SteeringCounters, String>,
}

impl CounterProbe {
    fn start(plumbing: Plumbing) -> CounterProbe {
        let latest = std::sync::Arc::new(std::sync::Mutex::new(None));
        let shared = std::sync::Arc::downgrade(&latest);
        let spawned = std::thread::Builder::new()
            .name("xban-counters".into())
            .spawn(move || {
                // Ends once the steering (holding the strong end) is gone.
                while let Some(slot) = shared.upgrade() {
                    let reading = CounterReading {
                        counters: read_counters(&plumbing).map_err(|e| e.to_string()),
                        at: std::time::Instant::now(),
                    };
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(reading);
                    drop(slot);
                    std::thread::sleep(COUNTER_PROBE_EVERY);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("tarpit: no thread to read the chain counters ({e}); status shows none");
        }
        CounterProbe { latest }
    }
}

/// Packet counters of the hook and the chain's rules, per family.
fn read_counters(p: &Plumbing) -> Result<SteeringCounters, SteeringError> {
    let fam_counters = |fam| -> Result<FamilyCounters, SteeringError> {
        let mut c = FamilyCounters::default();
        for rule in p.rules(fam, "filter", "INPUT")? {
            if p.is_hook(fam, &rule) {
                c.steered_packets += rule.packets;
            }
        }
        for rule in p.rules(fam, "filter", &p.cfg.chain)? {
            if rule.has("limit") {
                c.limited_packets += rule.packets;
            } else if rule.jumps_to("DROP") {
                c.dropped_over_limit += rule.packets;
            }
        }
        Ok(c)
    };
    Ok(SteeringCounters {
        v4: fam_counters(Family::V4)?,
        v6: fam_counters(Family::V6)?,
    })
}

impl TarpitSteering {
    /// Create or adopt sets, chain, hooks (idempotent; never flushes an
    /// adopted set, so members stay steered across restarts). Returns the
    /// mode actually in force.
    pub fn setup(cfg: &TarpitConfig) -> Result<TarpitSteering, SteeringError> {
        Self::setup_in(cfg, None)
    }

    /// [`setup`](Self::setup) with every command run through
    /// `ip netns exec NETNS` (tests use their own namespaces).
    pub fn setup_in(
        cfg: &TarpitConfig,
        netns: Option<&str>,
    ) -> Result<TarpitSteering, SteeringError> {
        cfg.validate().map_err(SteeringError::Config)?;
        let plumbing = Plumbing {
            cfg: cfg.clone(),
            netns: netns.map(str::to_string),
        };
        let mut steering = TarpitSteering {
            plumbing,
            mode: SteeringMode::Disabled,
            notice: None,
            leftovers: false,
            reason: "[tarpit] enabled = false: the class is dropped in XDP".into(),
            probe: Default::default(),
        };
        if !cfg.enabled {
            steering.leftovers = steering.plumbing.has_leftovers();
            return Ok(steering);
        }
        let p = &steering.plumbing;
        let problem = match cfg.engine {
            TarpitEngine::Xdp => {
                steering.reason = "[tarpit] engine = \"xdp\"".into();
                return Ok(steering.xdp_engine());
            }
            TarpitEngine::Iptables => p.target_problem(&cfg.target)?,
            // Whatever keeps TARPIT from working (the module, the
            // extension, iptables itself) sends auto to the XDP tarpit.
            TarpitEngine::Auto => match p.target_problem(&cfg.target) {
                Ok(None) => None,
                Ok(Some(message)) => {
                    steering.reason = format!("engine = \"auto\" and {message}");
                    return Ok(steering.xdp_engine());
                }
                Err(e) => {
                    steering.reason = format!(
                        "engine = \"auto\" and the iptables TARPIT target cannot be used ({e})"
                    );
                    return Ok(steering.xdp_engine());
                }
            },
        };
        let spec = match problem {
            None => {
                steering.mode = SteeringMode::Tarpit;
                steering.reason = format!(
                    "engine = \"{}\" and the {} target works",
                    cfg.engine, cfg.target
                );
                cfg.target.clone()
            }
            Some(message) if cfg.fallback == "drop" => {
                let notice = format!(
                    "{message}; fallback = \"drop\": tarpit-class addresses are not steered (drop them in XDP)"
                );
                tracing::warn!("{notice}");
                steering.reason = format!("engine = \"iptables\" and {notice}");
                steering.notice = Some(notice);
                steering.mode = SteeringMode::FallbackDrop;
                steering.leftovers = steering.plumbing.has_leftovers();
                return Ok(steering);
            }
            Some(message) => {
                if let Some((family, stderr)) = p.probe_all(&cfg.fallback)? {
                    return Err(SteeringError::SubstituteUnavailable {
                        message,
                        spec: cfg.fallback.clone(),
                        family,
                        stderr,
                    });
                }
                let notice = format!(
                    "{message}; steering tarpit-class addresses to the fallback target `{}` instead",
                    cfg.fallback
                );
                tracing::warn!("{notice}");
                steering.reason = format!("engine = \"iptables\" and {notice}");
                steering.notice = Some(notice);
                steering.mode = SteeringMode::Substitute(cfg.fallback.clone());
                cfg.fallback.clone()
            }
        };
        // Sets first (the rules refer to them), the chain's contents before
        // the hook that sends packets into it.
        for fam in FAMILIES {
            p.ensure_set(fam)?;
            p.ensure_chain(fam, &spec)?;
            p.ensure_hook(fam)?;
            p.ensure_notrack(fam)?;
        }
        tracing::info!(
            mode = %steering.mode,
            chain = %cfg.chain,
            "tarpit steering in place"
        );
        Ok(steering)
    }

    pub fn mode(&self) -> &SteeringMode {
        &self.mode
    }

    /// Why the class is held where it is, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The XDP tarpit holds the class: nothing is created here, and an
    /// earlier run's chain and sets are reported as leftovers.
    fn xdp_engine(mut self) -> TarpitSteering {
        tracing::info!(reason = %self.reason, "the XDP tarpit holds the tarpit class");
        if self.plumbing.cfg.fallback != "drop" {
            tracing::warn!(
                "tarpit.fallback = `{}` applies only with engine = \"iptables\"; the XDP tarpit needs none",
                self.plumbing.cfg.fallback
            );
        }
        self.mode = SteeringMode::Xdp;
        self.leftovers = self.plumbing.has_leftovers();
        self
    }

    /// Why the configured target is not in use, when it is not.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// Steering is inactive (fallback drop, disabled) but an earlier run's
    /// chain or sets are still there, steering their members. They are left
    /// alone by setup because removing them at once would let those addresses
    /// through until XDP drops them: the caller writes tarpit-class bans into
    /// XDP as drop first, then calls [`teardown`](Self::teardown), so that
    /// unbanned addresses are not held by stale members.
    pub fn leftovers(&self) -> bool {
        self.leftovers
    }

    /// Steer `t` (`ipset add -exist`). A no-op when steering is inactive.
    pub fn add(&mut self, t: &Target) -> Result<(), SteeringError> {
        self.member_op("add", t)
    }

    /// Stop steering `t` (`ipset del -exist`). A no-op when inactive.
    pub fn remove(&mut self, t: &Target) -> Result<(), SteeringError> {
        self.member_op("del", t)
    }

    fn member_op(&self, op: &str, t: &Target) -> Result<(), SteeringError> {
        if !self.mode.is_active() {
            return Ok(());
        }
        check_target(t)?;
        let p = &self.plumbing;
        let text = t.to_string();
        p.ipset(&[op, p.cfg.set(Family::of(t)), &text, "-exist"], None)?
            .ok()?;
        Ok(())
    }

    /// Make the sets hold exactly `targets` (at start): one `ipset restore`
    /// adds what is missing and deletes what is extra, so members that stay
    /// are never absent, not even briefly.
    pub fn sync(&mut self, targets: &[Target]) -> Result<(), SteeringError> {
        if !self.mode.is_active() {
            return Ok(());
        }
        for t in targets {
            check_target(t)?;
        }
        let p = &self.plumbing;
        let mut script = String::new();
        for fam in FAMILIES {
            let set = p.cfg.set(fam);
            let want: BTreeSet<Target> = targets
                .iter()
                .filter(|t| Family::of(t) == fam)
                .copied()
                .collect();
            let have: BTreeSet<Target> = p.set_members(fam)?.into_iter().collect();
            for t in want.difference(&have) {
                script.push_str(&format!("add {set} {t}\n"));
            }
            for t in have.difference(&want) {
                script.push_str(&format!("del {set} {t}\n"));
            }
        }
        if !script.is_empty() {
            p.ipset(&["-exist", "restore"], Some(&script))?.ok()?;
        }
        Ok(())
    }

    /// Both sets' members (empty when steering is inactive).
    pub fn members(&self) -> Result<Vec<Target>, SteeringError> {
        if !self.mode.is_active() {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for fam in FAMILIES {
            all.extend(self.plumbing.set_members(fam)?);
        }
        all.sort();
        Ok(all)
    }

    /// Packet counters of the hook and the chain's rules, per family (zero
    /// when steering is inactive).
    pub fn counters(&self) -> Result<SteeringCounters, SteeringError> {
        if !self.mode.is_active() {
            return Ok(SteeringCounters::default());
        }
        read_counters(&self.plumbing)
    }

    /// The counters as a background thread last read them (`None` until
    /// its first reading; inactive steering reads zero at once).
    pub fn counters_snapshot(&self) -> Option<CounterReading> {
        if !self.mode.is_active() {
            return Some(CounterReading {
                at: std::time::Instant::now(),
                counters: Ok(SteeringCounters::default()),
            });
        }
        let probe = self
            .probe
            .get_or_init(|| CounterProbe::start(self.plumbing.clone()));
        probe
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remove hooks, chain, raw rules and sets. Also usable without a running
    /// instance; what is already gone is skipped.
    pub fn teardown(cfg: &TarpitConfig) -> Result<(), SteeringError> {
        Self::teardown_in(cfg, None)
    }

    /// [`teardown`](Self::teardown) inside `ip netns exec NETNS`.
    pub fn teardown_in(cfg: &TarpitConfig, netns: Option<&str>) -> Result<(), SteeringError> {
        cfg.validate_names().map_err(SteeringError::Config)?;
        let p = Plumbing {
            cfg: cfg.clone(),
            netns: netns.map(str::to_string),
        };
        for fam in FAMILIES {
            p.teardown(fam)?;
        }
        Ok(())
    }
}

/// hash:net takes prefixes /1 to /32 (/128); a /0 "ban everything" cannot be
/// a member.
fn check_target(t: &Target) -> Result<(), SteeringError> {
    if t.prefix() == 0 {
        return Err(SteeringError::Unsupported {
            target: t.to_string(),
            reason: "ipset hash:net cannot hold a /0 prefix; ban it as drop".into(),
        });
    }
    Ok(())
}

/// A rule as `iptables -S CHAIN -v` prints it.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    /// Position in the chain, from 1.
    num: usize,
    /// The rule's words after `-A CHAIN`, counters removed.
    spec: Vec<String>,
    packets: u64,
}

impl Rule {
    fn parse(num: usize, chain: &str, line: &str) -> Option<Rule> {
        let words = split_saved(line);
        if words.len() < 2 || words[0] != "-A" || words[1] != chain {
            return None;
        }
        let mut spec = Vec::new();
        let mut packets = 0;
        let mut rest = words[2..].iter();
        while let Some(w) = rest.next() {
            if w == "-c" {
                packets = rest.next()?.parse().ok()?;
                rest.next()?; // bytes
            } else {
                spec.push(w.clone());
            }
        }
        Some(Rule { num, spec, packets })
    }

    fn has(&self, word: &str) -> bool {
        self.spec.iter().any(|w| w == word)
    }

    fn has_seq(&self, seq: &[&str]) -> bool {
        self.spec.windows(seq.len()).any(|w| w == seq)
    }

    fn jumps_to(&self, target: &str) -> bool {
        self.has_seq(&["-j", target])
    }
}

/// Split a line of `iptables -S` output into words: iptables double-quotes
/// words with spaces (comments) and backslash-escapes quotes inside them.
fn split_saved(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The result of a command that ran.
#[derive(Debug)]
struct Ran {
    command: String,
    program: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Stdout, or the failure as an error naming the command, its stderr and
    /// the likely fix.
    fn ok(self) -> Result<String, SteeringError> {
        if self.success {
            Ok(self.stdout)
        } else {
            let fix = fix_for(&self.program, &self.stderr);
            Err(SteeringError::Command {
                command: self.command,
                stderr: self.stderr,
                fix,
            })
        }
    }
}

/// Config plus where to run: the commands behind steering and teardown.
#[derive(Debug, Clone)]
struct Plumbing {
    cfg: TarpitConfig,
    netns: Option<String>,
}

impl Plumbing {
    /// The one place commands run. Errors only when the program could not be
    /// started; a non-zero exit is in [`Ran`] for the caller to judge.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            // The error texts classified below are the untranslated ones.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut command = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} {program}"),
            None => program.to_string(),
        };
        for a in args {
            command.push(' ');
            command.push_str(a);
        }
        let launcher = if self.netns.is_some() { "ip" } else { program };
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                not_installed(launcher)
            } else {
                SteeringError::Spawn {
                    command: command.clone(),
                    source,
                }
            }
        })?;
        let output = std::thread::scope(|scope| {
            // Written from a thread so a child that writes much output before
            // reading all its input cannot deadlock against us.
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                scope.spawn(move || {
                    // A child that exits early closes the pipe; its exit
                    // status reports why.
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(|source| SteeringError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        // `ip netns exec` reports a missing program itself.
        if !output.status.success()
            && stderr.contains("exec of \"")
            && stderr.contains("No such file or directory")
        {
            return Err(not_installed(program));
        }
        Ok(Ran {
            command,
            program: program.to_string(),
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        })
    }

    fn ipt(&self, fam: Family, args: &[&str]) -> Result<Ran, SteeringError> {
        // -w: the legacy backend serialises on /run/xtables.lock; wait for it
        // rather than fail when another iptables runs.
        let mut all = vec!["-w", XTABLES_WAIT_SECS];
        all.extend_from_slice(args);
        self.run(self.cfg.bin(fam), &all, None)
    }

    fn ipset(&self, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        self.run(&self.cfg.ipset, args, stdin)
    }

    fn chain_exists(&self, fam: Family, table: &str, chain: &str) -> Result<bool, SteeringError> {
        Ok(self.ipt(fam, &["-t", table, "-S", chain])?.success)
    }

    /// A chain's rules in order, with packet counters.
    fn rules(&self, fam: Family, table: &str, chain: &str) -> Result<Vec<Rule>, SteeringError> {
        let out = self.ipt(fam, &["-t", table, "-S", chain, "-v"])?.ok()?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with("-A "))
            .enumerate()
            .filter_map(|(i, l)| Rule::parse(i + 1, chain, l))
            .collect())
    }

    fn hook_spec(&self, fam: Family) -> Vec<&str> {
        let c = &self.cfg;
        vec![
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            c.set(fam),
            "src",
            "-j",
            &c.chain,
        ]
    }

    fn is_hook(&self, fam: Family, rule: &Rule) -> bool {
        rule.jumps_to(&self.cfg.chain)
            && rule.has_seq(&["--match-set", self.cfg.set(fam), "src"])
            && rule.has_seq(&["-p", "tcp"])
    }

    fn is_notrack(&self, fam: Family, rule: &Rule) -> bool {
        rule.has_seq(&["-j", "CT", "--notrack"])
            && rule.has_seq(&["--match-set", self.cfg.set(fam), "src"])
    }

    /// `None` when `spec` works in both families, else why not, phrased for
    /// the operator.
    fn target_problem(&self, spec: &str) -> Result<Option<String>, SteeringError> {
        Ok(self
            .probe_all(spec)?
            .map(|(family, stderr)| unavailable_message(spec, family, &stderr)))
    }

    /// Probe `spec` in each family; the first family where it fails, with
    /// the error iptables gave.
    fn probe_all(&self, spec: &str) -> Result<Option<(&'static str, String)>, SteeringError> {
        for fam in FAMILIES {
            if let Err(stderr) = self.probe(fam, spec)? {
                return Ok(Some((fam.label(), stderr)));
            }
        }
        Ok(None)
    }

    /// Append `-p tcp -j SPEC` to a scratch chain (see the module docs).
    /// `Ok(Err(stderr))` when the target is unusable; `Err` when iptables
    /// itself does not work.
    fn probe(&self, fam: Family, spec: &str) -> Result<Result<(), String>, SteeringError> {
        let name = spec.split_whitespace().next().unwrap_or(spec);
        // A user chain of that name would turn `-j NAME` into a jump to it.
        if self.chain_exists(fam, "filter", name)? {
            return Ok(Err(format!(
                "the filter table has a chain named {name}, so `-j {name}` would jump to that chain"
            )));
        }
        self.with_scratch(fam, |scratch| {
            let mut args = vec!["-t", "filter", "-A", scratch, "-p", "tcp", "-j"];
            args.extend(spec.split_whitespace());
            let appended = self.ipt(fam, &args)?;
            Ok(if appended.success {
                Ok(())
            } else {
                Err(appended.stderr)
            })
        })
    }

    /// Run `f` with an empty scratch chain in the filter table, removed after.
    fn with_scratch<T>(
        &self,
        fam: Family,
        f: impl FnOnce(&str) -> Result<T, SteeringError>,
    ) -> Result<T, SteeringError> {
        let scratch = format!("XBAN-PROBE-{}", std::process::id());
        self.remove_chain(fam, "filter", &scratch)?;
        self.ipt(fam, &["-t", "filter", "-N", &scratch])?.ok()?;
        let result = f(&scratch);
        // Clean up even when `f` failed, and report `f`'s error first.
        let cleaned = self.remove_chain(fam, "filter", &scratch);
        let value = result?;
        cleaned?;
        Ok(value)
    }

    /// `rules` as this iptables prints them back (it normalises, e.g.
    /// `3/minute` to `3/min`), by writing them into a scratch chain.
    fn render(&self, fam: Family, rules: &[Vec<&str>]) -> Result<Vec<Vec<String>>, SteeringError> {
        self.with_scratch(fam, |scratch| {
            for rule in rules {
                let mut args = vec!["-t", "filter", "-A", scratch];
                args.extend_from_slice(rule);
                self.ipt(fam, &args)?.ok()?;
            }
            Ok(self
                .rules(fam, "filter", scratch)?
                .into_iter()
                .map(|r| r.spec)
                .collect())
        })
    }

    /// Delete rules of `table`/`chain` for which `hit` holds until at most
    /// `keep` are left (the first ones stay); returns how many are left.
    ///
    /// Deletion is by rule number, listing again before each one, and not by
    /// spec: ip6tables-legacy 1.8.9 `-C`/`-D` ignore match and target
    /// options (`-m limit --limit 3/minute` "matches" a 10/sec rule), so a
    /// spec could delete someone else's similar rule.
    fn prune(
        &self,
        fam: Family,
        table: &str,
        chain: &str,
        keep: usize,
        hit: impl Fn(&Rule) -> bool,
    ) -> Result<usize, SteeringError> {
        loop {
            let hits: Vec<usize> = self
                .rules(fam, table, chain)?
                .iter()
                .filter(|r| hit(r))
                .map(|r| r.num)
                .collect();
            match hits.last() {
                Some(last) if hits.len() > keep => {
                    self.ipt(fam, &["-t", table, "-D", chain, &last.to_string()])?
                        .ok()?;
                }
                _ => return Ok(hits.len()),
            }
        }
    }

    /// Flush and delete a chain if it exists.
    fn remove_chain(&self, fam: Family, table: &str, chain: &str) -> Result<(), SteeringError> {
        if self.chain_exists(fam, table, chain)? {
            self.ipt(fam, &["-t", table, "-F", chain])?.ok()?;
            self.ipt(fam, &["-t", table, "-X", chain])?.ok()?;
        }
        Ok(())
    }

    /// Create the set, or adopt an existing one as it is (members included).
    fn ensure_set(&self, fam: Family) -> Result<(), SteeringError> {
        let set = self.cfg.set(fam);
        let listed = self.ipset(&["list", "-t", set], None)?;
        if listed.success {
            let field = |key: &str| {
                listed
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let (kind, header) = (field("Type:"), field("Header:"));
            let header_words: Vec<&str> = header.split_whitespace().collect();
            let right_family = header_words
                .windows(2)
                .any(|w| w == ["family", fam.ipset_family()]);
            // A timeout would expire members behind xban's back.
            if kind != "hash:net" || !right_family || header_words.contains(&"timeout") {
                return Err(SteeringError::SetMismatch {
                    set: set.to_string(),
                    found: format!("{kind} {header}"),
                    family: fam.ipset_family(),
                });
            }
            return Ok(());
        }
        if !listed.stderr.contains("does not exist") {
            listed.ok()?;
        }
        let maxelem = SET_MAXELEM.to_string();
        self.ipset(
            &[
                "create",
                set,
                "hash:net",
                "family",
                fam.ipset_family(),
                "maxelem",
                &maxelem,
            ],
            None,
        )?
        .ok()?;
        Ok(())
    }

    /// The chain holds exactly: limited jump to the target, then DROP. An
    /// existing chain that differs (compared in iptables' own rendering) is
    /// rewritten without a gap: the new rules are appended behind the old
    /// ones, then the old ones deleted, so every packet meets a verdict.
    fn ensure_chain(&self, fam: Family, spec: &str) -> Result<(), SteeringError> {
        let chain = &self.cfg.chain;
        let burst = self.cfg.burst.to_string();
        let mut limited = vec![
            "-p",
            "tcp",
            "-m",
            "limit",
            "--limit",
            &self.cfg.limit,
            "--limit-burst",
            &burst,
            "-j",
        ];
        limited.extend(spec.split_whitespace());
        let drop = vec!["-p", "tcp", "-j", "DROP"];
        let wanted = [limited, drop];

        let old = if self.chain_exists(fam, "filter", chain)? {
            let have: Vec<Vec<String>> = self
                .rules(fam, "filter", chain)?
                .into_iter()
                .map(|r| r.spec)
                .collect();
            if have == self.render(fam, &wanted)? {
                return Ok(());
            }
            have.len()
        } else {
            self.ipt(fam, &["-t", "filter", "-N", chain])?.ok()?;
            0
        };
        for rule in &wanted {
            let mut args = vec!["-t", "filter", "-A", chain.as_str()];
            args.extend_from_slice(rule);
            self.ipt(fam, &args)?.ok()?;
        }
        for _ in 0..old {
            self.ipt(fam, &["-t", "filter", "-D", chain, "1"])?.ok()?;
        }
        Ok(())
    }

    /// Exactly one INPUT hook; a new one goes first so that no earlier ACCEPT
    /// lets set members past. Duplicates (other tools, older versions) go.
    fn ensure_hook(&self, fam: Family) -> Result<(), SteeringError> {
        if self.prune(fam, "filter", "INPUT", 1, |r| self.is_hook(fam, r))? == 0 {
            let mut args = vec!["-t", "filter", "-I", "INPUT", "1"];
            args.extend(self.hook_spec(fam));
            self.ipt(fam, &args)?.ok()?;
        }
        Ok(())
    }

    /// The raw-table conntrack exemption: present once with `notrack`,
    /// absent without.
    fn ensure_notrack(&self, fam: Family) -> Result<(), SteeringError> {
        let keep = usize::from(self.cfg.notrack);
        let left = self.prune(fam, "raw", "PREROUTING", keep, |r| self.is_notrack(fam, r))?;
        if self.cfg.notrack && left == 0 {
            let set = self.cfg.set(fam);
            let mut args = vec![
                "-t",
                "raw",
                "-I",
                "PREROUTING",
                "1",
                "-p",
                "tcp",
                "-m",
                "set",
            ];
            args.extend(["--match-set", set, "src", "-j", "CT", "--notrack"]);
            self.ipt(fam, &args)?.ok()?;
        }
        Ok(())
    }

    fn set_members(&self, fam: Family) -> Result<Vec<Target>, SteeringError> {
        let set = self.cfg.set(fam);
        let ran = self.ipset(&["save", set], None)?;
        let command = ran.command.clone();
        let out = ran.ok()?;
        let prefix = format!("add {set} ");
        let mut members = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let entry = rest.split_whitespace().next().unwrap_or("");
                members.push(entry.parse().map_err(|_| SteeringError::Parse {
                    command: command.clone(),
                    line: line.to_string(),
                })?);
            }
        }
        Ok(members)
    }

    /// Does the chain or a set exist (in an inactive mode: from an earlier
    /// run)? Best effort: a missing tool means none were made with it.
    fn has_leftovers(&self) -> bool {
        let found = || -> Result<bool, SteeringError> {
            for fam in FAMILIES {
                if self
                    .ipset(&["list", "-n", self.cfg.set(fam)], None)?
                    .success
                    || self.chain_exists(fam, "filter", &self.cfg.chain)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        match found() {
            Ok(found) => {
                if found {
                    tracing::warn!(
                        chain = %self.cfg.chain,
                        "tarpit steering from an earlier run is still in place; it is removed once XDP drops tarpit-class addresses"
                    );
                }
                found
            }
            Err(SteeringError::NotInstalled { .. }) => false,
            Err(e) => {
                tracing::warn!("could not check for earlier tarpit steering: {e}");
                false
            }
        }
    }

    /// Hooks first (a chain or set still referenced cannot be removed), then
    /// the chain, then the set.
    /// A tool that is not installed cannot have left anything behind (and
    /// could not remove it): its part is skipped, the rest still cleaned.
    /// Without the family's iptables its rules may still use the set, which
    /// is then kept too.
    fn teardown(&self, fam: Family) -> Result<(), SteeringError> {
        let chain = &self.cfg.chain;
        let rules = (|| {
            // Every jump to the chain, whatever set it matched on.
            self.prune(fam, "filter", "INPUT", 0, |r| r.jumps_to(chain))?;
            self.prune(fam, "raw", "PREROUTING", 0, |r| self.is_notrack(fam, r))?;
            self.remove_chain(fam, "filter", chain)
        })();
        match rules {
            Err(SteeringError::NotInstalled { program, .. }) => {
                tracing::debug!(
                    "{program} not installed: no tarpit rules of its own to remove, its set kept"
                );
                return Ok(());
            }
            r => r?,
        }
        let set = self.cfg.set(fam);
        let sets = (|| {
            if self.ipset(&["list", "-n", set], None)?.success {
                self.ipset(&["destroy", set], None)?.ok()?;
            }
            Ok(())
        })();
        match sets {
            Err(SteeringError::NotInstalled { program, .. }) => {
                tracing::debug!("{program} not installed: no tarpit set to remove");
                Ok(())
            }
            r => r,
        }
    }
}

/// The operator-facing reason a target spec failed the probe.
fn unavailable_message(spec: &str, family: &str, stderr: &str) -> String {
    let name = spec.split_whitespace().next().unwrap_or(spec);
    let said = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join(" / ");
    let extension_missing = stderr.contains("Couldn't load target")
        || stderr.contains(&format!("Chain '{name}' does not exist"));
    let kernel_missing = stderr.contains("missing kernel module")
        || stderr.contains("RULE_APPEND failed (No such file or directory)")
        || stderr.contains("No chain/target/match by that name");
    if name == "TARPIT" && (extension_missing || kernel_missing) {
        let also = if extension_missing {
            ", which also brings the missing iptables extension libxt_TARPIT.so"
        } else {
            ""
        };
        format!(
            "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms{also}); {family} iptables said: {said}"
        )
    } else {
        format!("the {name} target is not available; {family} iptables said: {said}")
    }
}

fn not_installed(program: &str) -> SteeringError {
    let base = program.rsplit('/').next().unwrap_or(program);
    let hint = if base.starts_with("iptables") || base.starts_with("ip6tables") {
        "apt-get install iptables (it has iptables-legacy and ip6tables too), or fix tarpit.iptables / tarpit.ip6tables"
            .to_string()
    } else if base.starts_with("ipset") {
        "apt-get install ipset, or fix tarpit.ipset".to_string()
    } else if base == "ip" {
        "apt-get install iproute2".to_string()
    } else {
        format!("install {base} or fix its name in [tarpit]")
    };
    SteeringError::NotInstalled {
        program: program.to_string(),
        hint,
    }
}

/// The likely fix for a failed command, from its error text.
fn fix_for(program: &str, stderr: &str) -> String {
    let has = |s: &str| stderr.contains(s);
    let fix = if has("Permission denied") || has("Operation not permitted") || has("must be root") {
        "run xban as root (it needs CAP_NET_ADMIN)"
    } else if has("xtables lock") {
        "another program held the xtables lock for over 10 s; retry"
    } else if has("Hash is full") {
        "the set is full (an older set with a smaller maxelem?); run xban's tarpit teardown and restart to recreate it with maxelem 1048576"
    } else if has("Set cannot be created") {
        "a set of that name exists with other parameters; destroy it or choose another tarpit.set_* name"
    } else if has("in use by a kernel component") {
        "the set is still referenced by an iptables rule; delete that rule first"
    } else if has("match `set'") || has("Couldn't load match") {
        "iptables lacks the set match (xt_set): install the iptables package's extensions and a kernel with CONFIG_NETFILTER_XT_SET"
    } else if has("Kernel error received") || has("Cannot open session to kernel") {
        "the kernel lacks ip_set or hash:net (CONFIG_IP_SET_HASH_NET, modprobe ip_set_hash_net)"
    } else if has("can't initialize")
        || has("Table does not exist")
        || has("does not exist (do you need to insmod?)")
    {
        "the kernel lacks this iptables backend or table; try the other backend (tarpit.iptables = \"iptables-legacy\" or \"iptables-nft\", same for ip6tables)"
    } else if has("incompatible, use 'nft' tool") {
        "the table holds nftables rules iptables cannot read; use tarpit.iptables = \"iptables-legacy\" or fix the table with nft"
    } else if has("Cannot open network namespace") {
        "the network namespace does not exist"
    } else if program.contains("ipset") {
        "check the ipset error above"
    } else {
        "check the iptables error above"
    };
    fix.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- pure logic: config, parsing, messages ----

    #[test]
    fn defaults_are_the_documented_values() {
        let c = TarpitConfig::default();
        assert!(c.enabled && c.notrack);
        assert_eq!(c.target, "TARPIT");
        assert_eq!((c.limit.as_str(), c.burst), ("10/sec", 20));
        assert_eq!(c.fallback, "drop");
        assert_eq!(c.chain, "XBAN-TARPIT");
        assert_eq!(
            (c.set_v4.as_str(), c.set_v6.as_str()),
            ("xban-tarpit-v4", "xban-tarpit-v6")
        );
        assert_eq!(
            (c.iptables.as_str(), c.ip6tables.as_str()),
            ("iptables", "ip6tables")
        );
        assert_eq!(c.ipset, "ipset");
        c.validate().unwrap();
        // An empty [tarpit] section is the defaults; unknown keys are refused.
        let parsed: TarpitConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, c);
        let parsed: TarpitConfig =
            toml::from_str("fallback = \"REJECT --reject-with tcp-reset\"\nlimit = \"5/minute\"")
                .unwrap();
        assert_eq!(parsed.fallback, "REJECT --reject-with tcp-reset");
        parsed.validate().unwrap();
        assert!(toml::from_str::<TarpitConfig>("limt = \"1/sec\"").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let err = |f: fn(&mut TarpitConfig)| {
            let mut c = TarpitConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        for ok in [
            "1/s",
            "10/sec",
            "10/second",
            "3/minute",
            "3/min",
            "1/hour",
            "1/day",
            "10000/sec",
        ] {
            validate_limit(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(err(|c| c.limit = "10/fortnight".into()).starts_with("tarpit.limit: "));
        assert!(err(|c| c.limit = "ten/sec".into()).starts_with("tarpit.limit: "));
        assert!(err(|c| c.limit = "0/sec".into()).starts_with("tarpit.limit: "));
        assert!(err(|c| c.limit = "10001/sec".into()).starts_with("tarpit.limit: "));
        assert!(err(|c| c.limit = "10seconds".into()).starts_with("tarpit.limit: "));
        assert!(err(|c| c.burst = 0).starts_with("tarpit.burst: "));
        assert!(err(|c| c.fallback = "ACCEPT".into()).starts_with("tarpit.fallback: "));
        assert!(err(|c| c.fallback = "".into()).starts_with("tarpit.fallback: "));
        assert!(err(|c| c.fallback = "REJECT -j DROP".into()).starts_with("tarpit.fallback: "));
        assert!(err(|c| c.target = "--tarpit".into()).starts_with("tarpit.target: "));
        assert!(err(|c| c.chain = "INPUT".into()).starts_with("tarpit.chain: "));
        assert!(err(|c| c.chain = "X".repeat(29)).starts_with("tarpit.chain: "));
        assert!(err(|c| c.set_v4 = "a b".into()).starts_with("tarpit.set_v4: "));
        assert!(err(|c| c.set_v6 = c.set_v4.clone()).starts_with("tarpit.set_v6: "));
        assert!(err(|c| c.ipset = "".into()).starts_with("tarpit.ipset: "));
        let c = TarpitConfig {
            fallback: "DROP".into(),
            ..TarpitConfig::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn saved_rules_parse_with_counters_and_quotes() {
        let r = Rule::parse(
            1,
            "INPUT",
            "-A INPUT -p tcp -m set --match-set xban-tarpit-v4 src -c 12 720 -j XBAN-TARPIT",
        )
        .unwrap();
        assert_eq!(r.packets, 12);
        assert!(r.jumps_to("XBAN-TARPIT") && r.has_seq(&["--match-set", "xban-tarpit-v4", "src"]));
        assert_eq!(
            r.spec.join(" "),
            "-p tcp -m set --match-set xban-tarpit-v4 src -j XBAN-TARPIT"
        );
        let r = Rule::parse(
            2,
            "INPUT",
            r#"-A INPUT -m comment --comment "say \"hi\" there" -j XBAN-TARPIT"#,
        )
        .unwrap();
        assert_eq!(r.spec[3], "say \"hi\" there");
        assert!(Rule::parse(1, "INPUT", "-P INPUT ACCEPT").is_none());
        assert!(Rule::parse(1, "INPUT", "-A INPUTX -j DROP").is_none());
    }

    /// The texts are what iptables 1.8.9 printed on this machine (see the
    /// module docs for how each case was produced).
    #[test]
    fn unavailability_is_explained() {
        let want = "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms";
        for stderr in [
            "iptables v1.8.9 (nf_tables): Chain 'TARPIT' does not exist\nTry `iptables -h' or 'iptables --help' for more information.",
            "iptables v1.8.9 (legacy): Couldn't load target `TARPIT':No such file or directory",
            "Warning: Extension TARPIT revision 0 not supported, missing kernel module?\niptables v1.8.9 (nf_tables):  RULE_APPEND failed (No such file or directory): rule in chain SCR2",
            "Warning: Extension TARPIT revision 0 not supported, missing kernel module?\niptables: No chain/target/match by that name.",
        ] {
            let m = unavailable_message("TARPIT", "IPv4", stderr);
            assert!(m.starts_with(want), "{m}");
            assert!(!m.contains("Try `"), "{m}");
        }
        let m = unavailable_message(
            "TARPIT",
            "IPv4",
            "iptables v1.8.9 (legacy): Couldn't load target `TARPIT'",
        );
        assert!(m.contains("libxt_TARPIT.so"), "{m}");
        let m = unavailable_message("FOO --x", "IPv6", "iptables v1.8.9: unknown option \"--x\"");
        assert_eq!(m, "the FOO target is not available; IPv6 iptables said: iptables v1.8.9: unknown option \"--x\"");
    }

    // ---- real iptables/ipset in network namespaces ----

    // They create network namespaces and firewall rules, so they need root:
    // behind a feature that `cargo xtask test` turns on, so that plain
    // `cargo test` passes for an unprivileged user.
    #[cfg(feature = "privileged-tests")]
    mod netns {
        use super::*;

        use std::fs::File;
        use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
        use std::os::fd::AsFd;
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        use std::time::{Duration, Instant};

        static COUNTER: AtomicU32 = AtomicU32::new(0);

        fn require_root() {
            assert!(
                nix::unistd::geteuid().is_root(),
                "these tests create network namespaces and firewall rules: run them as root"
            );
        }

        /// Run a command; panic with its stderr on failure.
        fn sh(program: &str, args: &[&str]) -> String {
            let out = Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(
                out.status.success(),
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// A network namespace, deleted on drop (also when a test panics), which
        /// takes its firewall, sets and interfaces with it.
        struct Netns {
            name: String,
        }

        impl Netns {
            fn new(tag: &str) -> Netns {
                require_root();
                let n = COUNTER.fetch_add(1, Ordering::SeqCst);
                let name = format!("xbtp-{}-{n}-{tag}", std::process::id());
                sh("ip", &["netns", "add", &name]);
                let ns = Netns { name };
                sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
                ns
            }

            fn name(&self) -> Option<&str> {
                Some(&self.name)
            }

            fn exec(&self, program: &str, args: &[&str]) -> String {
                let mut all = vec!["netns", "exec", &self.name, program];
                all.extend_from_slice(args);
                sh("ip", &all)
            }

            /// Run `f` on a thread moved into this namespace; sockets it makes
            /// live there.
            fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let file =
                            File::open(format!("/run/netns/{}", self.name)).expect("open netns");
                        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                            .expect("setns");
                        f()
                    })
                    .join()
                    .expect("namespace thread")
                })
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip")
                    .args(["netns", "del", &self.name])
                    .output();
            }
        }

        /// Server and client namespaces joined by a veth pair, documentation
        /// addresses only.
        struct Lab {
            server: Netns,
            client: Netns,
        }

        const SRV4: &str = "198.51.100.1";
        const CLI4: &str = "198.51.100.2";
        const SRV6: &str = "2001:db8:7a::1";
        const CLI6: &str = "2001:db8:7a::2";

        impl Lab {
            fn new() -> Lab {
                let lab = Lab {
                    server: Netns::new("srv"),
                    client: Netns::new("cli"),
                };
                let n = COUNTER.fetch_add(1, Ordering::SeqCst);
                let id = format!("{}{n}", std::process::id() % 100_000);
                let (srv_if, cli_if) = (format!("xts{id}"), format!("xtc{id}"));
                sh(
                    "ip",
                    &[
                        "link",
                        "add",
                        &srv_if,
                        "netns",
                        &lab.server.name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &cli_if,
                        "netns",
                        &lab.client.name,
                    ],
                );
                for (ns, ifname, v4, v6) in [
                    (&lab.server, &srv_if, SRV4, SRV6),
                    (&lab.client, &cli_if, CLI4, CLI6),
                ] {
                    sh(
                        "ip",
                        &[
                            "-n",
                            &ns.name,
                            "addr",
                            "add",
                            &format!("{v4}/24"),
                            "dev",
                            ifname,
                        ],
                    );
                    sh(
                        "ip",
                        &[
                            "-n",
                            &ns.name,
                            "addr",
                            "add",
                            &format!("{v6}/64"),
                            "dev",
                            ifname,
                            "nodad",
                        ],
                    );
                    sh("ip", &["-n", &ns.name, "link", "set", ifname, "up"]);
                }
                lab
            }

            /// A listener in the server namespace.
            fn listen(&self, ip: &str) -> TcpListener {
                let ip: IpAddr = ip.parse().unwrap();
                self.server
                    .within(|| TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind listener"))
            }

            /// A TCP connection attempt from the client namespace.
            fn connect(&self, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
                self.client
                    .within(|| TcpStream::connect_timeout(&to, timeout))
            }
        }

        fn test_cfg() -> TarpitConfig {
            TarpitConfig {
                engine: TarpitEngine::Iptables,
                ..TarpitConfig::default()
            }
        }

        fn substitute_cfg() -> TarpitConfig {
            TarpitConfig {
                fallback: "REJECT --reject-with tcp-reset".into(),
                engine: TarpitEngine::Iptables,
                ..TarpitConfig::default()
            }
        }

        fn t(s: &str) -> Target {
            s.parse().unwrap()
        }

        /// Everything the module may have created in `ns`, as text.
        fn snapshot(ns: &Netns, cfg: &TarpitConfig) -> String {
            let mut out = String::new();
            for bin in [&cfg.iptables, &cfg.ip6tables] {
                for table in ["filter", "raw"] {
                    out += &ns.exec(bin, &["-w", "10", "-t", table, "-S"]);
                }
            }
            out += &ns.exec(&cfg.ipset, &["save"]);
            // Lines that vary between calls or come from the other backend.
            out.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        }

        fn assert_nothing_left(ns: &Netns, cfg: &TarpitConfig) {
            let snap = snapshot(ns, cfg);
            // The set names also find any rule still matching on them.
            for needle in [&cfg.chain, &cfg.set_v4, &cfg.set_v6, "XBAN-PROBE"] {
                assert!(!snap.contains(needle), "{needle} left behind:\n{snap}");
            }
        }

        fn tarpit_in_kernel() -> bool {
            std::fs::read_to_string("/proc/net/ip_tables_targets")
                .map(|s| s.lines().any(|l| l == "TARPIT"))
                .unwrap_or(false)
        }

        /// Setup creates, setup again adopts without duplicates or member loss,
        /// a changed config is applied in place, teardown removes everything.
        fn setup_adopt_teardown(cfg: TarpitConfig) {
            let ns = Netns::new("life");
            // A set left by an earlier run, with a member, to be adopted.
            ns.exec(
                &cfg.ipset,
                &[
                    "create",
                    &cfg.set_v4,
                    "hash:net",
                    "family",
                    "inet",
                    "maxelem",
                    "1048576",
                ],
            );
            ns.exec(&cfg.ipset, &["add", &cfg.set_v4, "198.51.100.99"]);

            let mut st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Substitute(cfg.fallback.clone()));
            assert_eq!(
                st.members().unwrap(),
                vec![t("198.51.100.99")],
                "adopted set lost its member"
            );
            st.add(&t("198.51.100.0/25")).unwrap();
            st.add(&t("2001:db8:5::/48")).unwrap();
            st.add(&t("2001:db8:5::/48")).unwrap(); // -exist: adding twice is fine

            for bin in [&cfg.iptables, &cfg.ip6tables] {
                let set = if bin == &cfg.iptables {
                    &cfg.set_v4
                } else {
                    &cfg.set_v6
                };
                let filter = ns.exec(bin, &["-w", "10", "-S"]);
                let hook = format!("-A INPUT -p tcp -m set --match-set {set} src -j XBAN-TARPIT");
                assert!(filter.contains(&hook), "{bin}: no hook in\n{filter}");
                assert!(filter.contains("-N XBAN-TARPIT"), "{filter}");
                assert!(
                filter.contains(
                    "-A XBAN-TARPIT -p tcp -m limit --limit 10/sec --limit-burst 20 -j REJECT --reject-with tcp-reset"
                ),
                "{filter}"
            );
                assert!(filter.contains("-A XBAN-TARPIT -p tcp -j DROP"), "{filter}");
                let raw = ns.exec(bin, &["-w", "10", "-t", "raw", "-S"]);
                assert!(
                    raw.contains(&format!(
                        "-A PREROUTING -p tcp -m set --match-set {set} src -j CT --notrack"
                    )),
                    "{raw}"
                );
            }
            let v6 = ns.exec(&cfg.ipset, &["list", "-t", &cfg.set_v6]);
            assert!(
                v6.contains("Type: hash:net")
                    && v6.contains("family inet6")
                    && v6.contains("maxelem 1048576"),
                "{v6}"
            );
            assert!(!v6.contains("timeout"), "{v6}");

            // Setup again (a restart): nothing changes, members stay.
            let before = snapshot(&ns, &cfg);
            drop(st);
            let st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            assert_eq!(
                snapshot(&ns, &cfg),
                before,
                "second setup changed something"
            );
            assert_eq!(
                st.members().unwrap(),
                vec![
                    t("198.51.100.0/25"),
                    t("198.51.100.99"),
                    t("2001:db8:5::/48")
                ]
            );

            // Duplicate hook and notrack rules (another tool, an older version)
            // and a foreign look-alike rule on another set, placed first.
            for (bin, fam, set, foreign) in [
                (&cfg.iptables, "inet", &cfg.set_v4, "foreign-v4"),
                (&cfg.ip6tables, "inet6", &cfg.set_v6, "foreign-v6"),
            ] {
                ns.exec(&cfg.ipset, &["create", foreign, "hash:net", "family", fam]);
                let w = ["-w", "10"];
                let hook = [
                    "-p",
                    "tcp",
                    "-m",
                    "set",
                    "--match-set",
                    set,
                    "src",
                    "-j",
                    "XBAN-TARPIT",
                ];
                ns.exec(bin, &[&w[..], &["-A", "INPUT"], &hook[..]].concat());
                let notrack = [
                    "-p",
                    "tcp",
                    "-m",
                    "set",
                    "--match-set",
                    set,
                    "src",
                    "-j",
                    "CT",
                    "--notrack",
                ];
                ns.exec(
                    bin,
                    &[&w[..], &["-t", "raw", "-A", "PREROUTING"], &notrack[..]].concat(),
                );
                let look_alike = [
                    "-p",
                    "tcp",
                    "-m",
                    "set",
                    "--match-set",
                    foreign,
                    "src",
                    "-j",
                    "CT",
                    "--notrack",
                ];
                ns.exec(
                    bin,
                    &[
                        &w[..],
                        &["-t", "raw", "-I", "PREROUTING", "1"],
                        &look_alike[..],
                    ]
                    .concat(),
                );
            }

            // A changed limit and notrack = false are applied in place.

            let changed = TarpitConfig {
                limit: "3/minute".into(),
                burst: 4,
                notrack: false,
                ..cfg.clone()
            };
            let st = TarpitSteering::setup_in(&changed, ns.name()).unwrap();
            for bin in [&cfg.iptables, &cfg.ip6tables] {
                let chain = ns.exec(bin, &["-w", "10", "-S", "XBAN-TARPIT"]);
                let rules: Vec<&str> = chain.lines().filter(|l| l.starts_with("-A")).collect();
                assert_eq!(rules.len(), 2, "{chain}");
                assert!(
                    rules[0].contains("--limit 3/min --limit-burst 4 -j REJECT"),
                    "{chain}"
                );
                assert!(rules[1].ends_with("-j DROP"), "{chain}");
                let raw = ns.exec(bin, &["-w", "10", "-t", "raw", "-S"]);
                assert_eq!(raw.matches("--notrack").count(), 1, "{raw}");
                assert!(raw.contains("--match-set foreign-v"), "{raw}");
                let input = ns.exec(bin, &["-w", "10", "-S", "INPUT"]);
                assert_eq!(input.matches("-j XBAN-TARPIT").count(), 1, "{input}");
            }
            assert_eq!(st.members().unwrap().len(), 3);

            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
            assert_nothing_left(&ns, &cfg);
            // Teardown of nothing is fine too.
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
        }

        #[test]
        fn setup_is_idempotent_adopts_and_tears_down_nf_tables() {
            setup_adopt_teardown(substitute_cfg());
        }

        #[test]
        fn setup_is_idempotent_adopts_and_tears_down_legacy() {
            let found = Command::new("sh")
                .args([
                    "-c",
                    "command -v iptables-legacy && command -v ip6tables-legacy",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
            found,
            "iptables-legacy / ip6tables-legacy not found: apt-get install iptables (Debian ships them in that package)"
        );
            setup_adopt_teardown(TarpitConfig {
                iptables: "iptables-legacy".into(),
                ip6tables: "ip6tables-legacy".into(),
                ..substitute_cfg()
            });
        }

        #[test]
        fn unavailable_tarpit_with_drop_fallback_creates_nothing() {
            let ns = Netns::new("det");
            let cfg = test_cfg();
            let mut st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            assert!(
                !tarpit_in_kernel(),
                "this test expects a machine without xt_TARPIT"
            );
            assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
            let notice = st.notice().unwrap();
            assert!(
            notice.starts_with(
                "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms"
            ),
            "{notice}"
        );
            assert!(!st.leftovers());
            assert_nothing_left(&ns, &cfg);
            // Inactive steering accepts calls and does nothing.
            st.add(&t("198.51.100.7")).unwrap();
            st.sync(&[t("198.51.100.8")]).unwrap();
            assert!(st.members().unwrap().is_empty());
            assert_eq!(st.counters().unwrap(), SteeringCounters::default());
            assert_nothing_left(&ns, &cfg);

            // Steering left by an earlier run with a substitute is reported and
            // kept (its members stay held until the caller drops them in XDP and
            // tears it down); the same when disabled.
            let earlier = substitute_cfg();
            let mut old = TarpitSteering::setup_in(&earlier, ns.name()).unwrap();
            old.add(&t("198.51.100.9")).unwrap();
            let before = snapshot(&ns, &cfg);
            let st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::FallbackDrop);
            assert!(st.leftovers());
            let disabled = TarpitConfig {
                enabled: false,
                ..cfg.clone()
            };
            let st = TarpitSteering::setup_in(&disabled, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Disabled);
            assert!(st.leftovers());
            assert_eq!(snapshot(&ns, &cfg), before);
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
            assert_nothing_left(&ns, &cfg);
            let st = TarpitSteering::setup_in(&disabled, ns.name()).unwrap();
            assert!(!st.leftovers());
        }

        #[test]
        fn unavailable_tarpit_with_substitute_uses_it() {
            let ns = Netns::new("sub");
            let cfg = substitute_cfg();
            let st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            assert!(
                !tarpit_in_kernel(),
                "this test expects a machine without xt_TARPIT"
            );
            assert_eq!(
                st.mode(),
                &SteeringMode::Substitute("REJECT --reject-with tcp-reset".into())
            );
            assert!(st
                .notice()
                .unwrap()
                .contains("fallback target `REJECT --reject-with tcp-reset`"));
            for bin in ["iptables", "ip6tables"] {
                let chain = ns.exec(bin, &["-w", "10", "-S", "XBAN-TARPIT"]);
                assert!(
                    chain.contains("-j REJECT --reject-with tcp-reset"),
                    "{chain}"
                );
                assert!(!chain.contains("-j TARPIT"), "{chain}");
            }
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
            assert_nothing_left(&ns, &cfg);
        }

        #[test]
        fn auto_and_xdp_engines_create_nothing_and_say_why() {
            let ns = Netns::new("eng");
            assert!(
                !tarpit_in_kernel(),
                "this test expects a machine without xt_TARPIT"
            );
            // Default engine: auto. TARPIT missing: the XDP tarpit, not drop,
            // and `fallback` is not used.
            let auto = TarpitConfig {
                fallback: "REJECT --reject-with tcp-reset".into(),
                ..TarpitConfig::default()
            };
            assert_eq!(auto.engine, TarpitEngine::Auto);
            let st = TarpitSteering::setup_in(&auto, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Xdp);
            assert!(!st.mode().is_active());
            assert!(
                st.reason()
                    .starts_with("engine = \"auto\" and the TARPIT target is not available"),
                "{}",
                st.reason()
            );
            assert_nothing_left(&ns, &auto);
            // Missing iptables entirely: auto still holds the class in XDP.
            let no_tools = TarpitConfig {
                iptables: "/nonexistent/iptables".into(),
                ..TarpitConfig::default()
            };
            let st = TarpitSteering::setup_in(&no_tools, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Xdp);
            assert!(st.reason().contains("cannot be used"), "{}", st.reason());
            // engine = "xdp": no probe, nothing created; an earlier chain is
            // reported as leftovers (the caller removes it).
            let xdp = TarpitConfig {
                engine: TarpitEngine::Xdp,
                ..TarpitConfig::default()
            };
            let st = TarpitSteering::setup_in(&xdp, ns.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Xdp);
            assert_eq!(st.reason(), "[tarpit] engine = \"xdp\"");
            assert!(!st.leftovers());
            let earlier = substitute_cfg();
            TarpitSteering::setup_in(&earlier, ns.name()).unwrap();
            let st = TarpitSteering::setup_in(&xdp, ns.name()).unwrap();
            assert!(st.leftovers());
            TarpitSteering::teardown_in(&earlier, ns.name()).unwrap();
            assert_nothing_left(&ns, &earlier);
            // The config key: lowercase words, anything else refused.
            let parsed: TarpitConfig = toml::from_str("engine = \"xdp\"").unwrap();
            assert_eq!(parsed.engine, TarpitEngine::Xdp);
            assert!(toml::from_str::<TarpitConfig>("engine = \"XDP\"").is_err());
            assert!(toml::from_str::<TarpitConfig>("engine = \"nft\"").is_err());
        }

        #[test]
        fn broken_substitute_and_missing_tools_are_errors_with_fixes() {
            let ns = Netns::new("err");
            let cfg = TarpitConfig {
                fallback: "NOSUCHTARGET".into(),
                engine: TarpitEngine::Iptables,
                ..TarpitConfig::default()
            };
            let e = TarpitSteering::setup_in(&cfg, ns.name())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("fallback target `NOSUCHTARGET` does not work"),
                "{e}"
            );
            assert!(e.contains("set it to \"drop\""), "{e}");

            let cfg = TarpitConfig {
                ipset: "ipset-not-here".into(),
                ..substitute_cfg()
            };
            let e = TarpitSteering::setup_in(&cfg, ns.name())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ipset-not-here not installed") && e.contains("apt-get install ipset"),
                "{e}"
            );
            // Teardown cleans what exists: a tool that is not installed has
            // nothing of its own to remove, and the others' parts still go.
            TarpitSteering::setup_in(&substitute_cfg(), ns.name()).unwrap();
            let cfg = TarpitConfig {
                ip6tables: "ip6tables-not-here".into(),
                ..substitute_cfg()
            };
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
            assert!(
                !ns.exec("iptables", &["-w", "10", "-S"])
                    .contains("XBAN-TARPIT"),
                "the IPv4 chain is removed"
            );
            TarpitSteering::teardown_in(&substitute_cfg(), ns.name()).unwrap();
            let cfg = TarpitConfig {
                iptables: "iptables-not-here".into(),
                ip6tables: "ip6tables-not-here".into(),
                ipset: "ipset-not-here".into(),
                ..TarpitConfig::default()
            };
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();

            // An existing set of the wrong kind is not silently adopted.
            ns.exec(
                "ipset",
                &[
                    "create",
                    "xban-tarpit-v4",
                    "hash:ip",
                    "family",
                    "inet",
                    "timeout",
                    "60",
                ],
            );
            let e = TarpitSteering::setup_in(&substitute_cfg(), ns.name())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ipset `xban-tarpit-v4` exists as `hash:ip"),
                "{e}"
            );
            TarpitSteering::teardown_in(&substitute_cfg(), ns.name()).unwrap();
            assert_nothing_left(&ns, &substitute_cfg());
        }

        /// Real packets: a set member is refused (REJECT with reset) and counted;
        /// removed from the set, it connects again.
        fn steering_for_real(
            srv: &str,
            cli: &str,
            family: fn(&SteeringCounters) -> FamilyCounters,
        ) {
            let lab = Lab::new();
            let cfg = substitute_cfg();
            let mut st = TarpitSteering::setup_in(&cfg, lab.server.name()).unwrap();
            assert_eq!(st.mode(), &SteeringMode::Substitute(cfg.fallback.clone()));
            let listener = lab.listen(srv);
            let to = listener.local_addr().unwrap();
            let wait = Duration::from_secs(3);

            // Not a member: the connection is made.
            lab.connect(to, wait).expect("connect before steering");
            assert_eq!(
                listener.accept().unwrap().1.ip(),
                cli.parse::<IpAddr>().unwrap()
            );

            st.add(&t(cli)).unwrap();
            let before = family(&st.counters().unwrap());
            let refused = lab.connect(to, wait).unwrap_err();
            assert_eq!(
                refused.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{refused}"
            );
            let after = family(&st.counters().unwrap());
            assert!(
                after.steered_packets > before.steered_packets,
                "{before:?} -> {after:?}"
            );
            assert!(
                after.limited_packets > before.limited_packets,
                "{before:?} -> {after:?}"
            );
            assert_eq!(after.dropped_over_limit, 0);

            st.remove(&t(cli)).unwrap();
            lab.connect(to, wait).expect("connect after removal");
            assert_eq!(
                listener.accept().unwrap().1.ip(),
                cli.parse::<IpAddr>().unwrap()
            );
            assert_eq!(
                family(&st.counters().unwrap()).steered_packets,
                after.steered_packets
            );

            TarpitSteering::teardown_in(&cfg, lab.server.name()).unwrap();
        }

        #[test]
        fn steers_ipv4_for_real() {
            steering_for_real(SRV4, CLI4, |c| c.v4);
        }

        #[test]
        fn steers_ipv6_for_real() {
            steering_for_real(SRV6, CLI6, |c| c.v6);
        }

        /// While a client keeps trying to connect, the agent restarts (setup
        /// again) and the config changes (limit, substitute target, notrack):
        /// the chain is rewritten in place and no attempt ever gets through.
        #[test]
        fn members_stay_held_through_restarts_and_reconfiguration() {
            let lab = Lab::new();
            let cfg = substitute_cfg();
            let mut st = TarpitSteering::setup_in(&cfg, lab.server.name()).unwrap();
            let listener = lab.listen(SRV4);
            let to = listener.local_addr().unwrap();
            let stream = lab
                .connect(to, Duration::from_secs(3))
                .expect("connect before steering");
            drop((stream, listener.accept().unwrap()));
            st.add(&t(CLI4)).unwrap();

            let configs = [
                cfg.clone(),
                TarpitConfig {
                    limit: "5/sec".into(),
                    burst: 5,
                    ..cfg.clone()
                },
                TarpitConfig {
                    fallback: "DROP".into(),
                    notrack: false,
                    ..cfg.clone()
                },
                cfg.clone(),
            ];
            let stop = AtomicBool::new(false);
            let (attempts, connected) = std::thread::scope(|s| {
                let prober = s.spawn(|| {
                    lab.client.within(|| {
                        let (mut attempts, mut connected) = (0, 0);
                        while !stop.load(Ordering::SeqCst) {
                            attempts += 1;
                            if TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok() {
                                connected += 1;
                            }
                        }
                        (attempts, connected)
                    })
                });
                for c in &configs {
                    drop(st);
                    st = TarpitSteering::setup_in(c, lab.server.name()).unwrap();
                    assert_eq!(st.members().unwrap(), vec![t(CLI4)]);
                }
                stop.store(true, Ordering::SeqCst);
                prober.join().unwrap()
            });
            assert!(attempts >= 4, "only {attempts} attempts");
            assert_eq!(
                connected, 0,
                "{connected} of {attempts} connections got through"
            );
            TarpitSteering::teardown_in(&cfg, lab.server.name()).unwrap();
        }

        /// Beyond the burst, SYNs are dropped by the chain's last rule (the
        /// client's connect times out instead of being refused).
        #[test]
        fn over_the_limit_is_dropped() {
            let lab = Lab::new();
            let cfg = TarpitConfig {
                limit: "1/minute".into(),
                burst: 2,
                ..substitute_cfg()
            };
            let mut st = TarpitSteering::setup_in(&cfg, lab.server.name()).unwrap();
            let listener = lab.listen(SRV4);
            let to = listener.local_addr().unwrap();
            // Resolve the neighbour first so every attempt below is one SYN; close
            // both ends and let the FIN exchange finish before steering starts.
            let stream = lab
                .connect(to, Duration::from_secs(3))
                .expect("connect before steering");
            drop((stream, listener.accept().unwrap()));
            std::thread::sleep(Duration::from_millis(200));
            st.add(&t(CLI4)).unwrap();

            let attempts = 10;
            let (mut refused, mut timed_out) = (0, 0);
            for _ in 0..attempts {
                match lab.connect(to, Duration::from_millis(200)) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => timed_out += 1,
                    other => panic!("unexpected connect result {other:?}"),
                }
            }
            let c = st.counters().unwrap().v4;
            assert!(
                (2..=3).contains(&refused),
                "refused {refused}, timed out {timed_out}"
            );
            assert_eq!(refused + timed_out, attempts);
            assert_eq!(c.limited_packets, refused as u64, "{c:?}");
            assert!(c.dropped_over_limit >= timed_out as u64, "{c:?}");
            assert_eq!(
                c.steered_packets,
                c.limited_packets + c.dropped_over_limit,
                "{c:?}"
            );
            // What status serves, read by the background thread, catches
            // up with the direct read.
            let deadline = std::time::Instant::now() + COUNTER_PROBE_EVERY * 3;
            let seen = loop {
                let r = st.counters_snapshot();
                if let Some(Ok(s)) = r.as_ref().map(|r| r.counters.clone()) {
                    if s.v4 == c {
                        break r.unwrap();
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "snapshot {r:?}, read {c:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(seen.at.elapsed() <= COUNTER_PROBE_EVERY * 2);
            TarpitSteering::teardown_in(&cfg, lab.server.name()).unwrap();
        }

        #[test]
        fn sync_of_ten_thousand() {
            let ns = Netns::new("bulk");
            let cfg = substitute_cfg();
            let mut st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            // 198.18.0.0/15 (benchmarking) and 2001:db8::/32: never routed here,
            // and only ever set members inside this namespace.
            let v4 = |i: u32| {
                Target::host(IpAddr::from([
                    198,
                    18 + (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                ]))
            };
            let v6 = |i: u32| {
                Target::host(IpAddr::from([
                    0x2001,
                    0xdb8,
                    0x55,
                    0,
                    0,
                    0,
                    (i >> 16) as u16,
                    i as u16,
                ]))
            };
            let mut first: Vec<Target> = (0..5_000).map(v4).chain((0..4_990).map(v6)).collect();
            first.extend((0..10).map(|i| t(&format!("2001:db8:{:x}::/48", 0x100 + i))));
            // A stale member the sync must remove.
            st.add(&t("198.51.100.250")).unwrap();

            let started = Instant::now();
            st.sync(&first).unwrap();
            let initial = started.elapsed();
            let mut have = st.members().unwrap();
            let mut want = first.clone();
            have.sort();
            want.sort();
            assert_eq!(have.len(), 10_000);
            assert_eq!(have, want);

            // Half replaced: 5,000 removed, 5,000 added.
            let second: Vec<Target> = (2_500..7_500)
                .map(v4)
                .chain((2_500..7_500).map(v6))
                .collect();
            let started = Instant::now();
            st.sync(&second).unwrap();
            let changed = started.elapsed();
            let mut have = st.members().unwrap();
            let mut want = second;
            have.sort();
            want.sort();
            assert_eq!(have, want);
            eprintln!("sync timing: 10,000 into an almost empty set {initial:?}; 5,000 added + 5,000 removed {changed:?}");
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
        }

        #[test]
        fn zero_prefix_is_refused() {
            let ns = Netns::new("zero");
            let cfg = substitute_cfg();
            let mut st = TarpitSteering::setup_in(&cfg, ns.name()).unwrap();
            let e = st.add(&t("0.0.0.0/0")).unwrap_err().to_string();
            assert!(e.contains("/0"), "{e}");
            assert!(st.sync(&[t("::/0")]).is_err());
            TarpitSteering::teardown_in(&cfg, ns.name()).unwrap();
        }
    }
}
