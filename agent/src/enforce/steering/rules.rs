//! The steering state machine: which mode setup puts in force (TARPIT, a
//! substitute, fallback drop, disabled, the XDP tarpit) and why, set
//! membership (add, remove, sync), and the chain counters for `status`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::addr::Target;

use super::config::{Family, TarpitConfig, TarpitEngine, FAMILIES};
use super::plumbing::Plumbing;
use super::runner::{CommandRunner, Runner};
use super::SteeringError;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FamilyCounters {
    /// TCP packets from set members that entered the chain (the INPUT hook).
    pub steered_packets: u64,
    /// Packets within the rate limit, handed to the target.
    pub limited_packets: u64,
    /// Packets beyond the rate limit, dropped.
    pub dropped_over_limit: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SteeringCounters {
    pub v4: FamilyCounters,
    pub v6: FamilyCounters,
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
pub const COUNTER_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
        Self::setup_with(cfg, Arc::new(CommandRunner::new(netns)))
    }

    /// [`setup`](Self::setup) with every command run by `runner`.
    pub fn setup_with(
        cfg: &TarpitConfig,
        runner: Arc<dyn Runner>,
    ) -> Result<TarpitSteering, SteeringError> {
        cfg.validate().map_err(SteeringError::Config)?;
        let plumbing = Plumbing {
            cfg: cfg.clone(),
            runner,
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

    /// Steer every one of `targets` with one `ipset -exist restore` (a
    /// burst of tarpit-class bans costs one process, not one each). A no-op
    /// when steering is inactive.
    pub fn add_all(&mut self, targets: &[Target]) -> Result<(), SteeringError> {
        if !self.mode.is_active() || targets.is_empty() {
            return Ok(());
        }
        for t in targets {
            check_target(t)?;
        }
        let p = &self.plumbing;
        let mut script = String::new();
        for t in targets {
            script.push_str(&format!("add {} {t}\n", p.cfg.set(Family::of(t))));
        }
        p.ipset(&["-exist", "restore"], Some(&script))?.ok()?;
        Ok(())
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
        Self::teardown_with(cfg, Arc::new(CommandRunner::new(netns)))
    }

    /// [`teardown`](Self::teardown) with every command run by `runner`.
    pub fn teardown_with(cfg: &TarpitConfig, runner: Arc<dyn Runner>) -> Result<(), SteeringError> {
        cfg.validate_names().map_err(SteeringError::Config)?;
        let p = Plumbing {
            cfg: cfg.clone(),
            runner,
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
