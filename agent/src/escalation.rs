//! Escalation: repeat offenders get longer bans and harsher classes.
//!
//! Three mechanisms, all driven by the ban history (every ban of every
//! address, across jails, timed by the log line that caused it):
//! - a ladder of steps (`3 bans within 1d → 1w drop`), the highest step
//!   reached deciding;
//! - fail2ban-style growth (`bantime × multiplier` or `× factor × 2^n`),
//!   used when no step is reached;
//! - subnet widening: N distinct hosts of one /24 (v4) or /64 (v6) banned
//!   within a window earn the whole prefix a ban.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::addr::Target;
use crate::ban::{BanClass, UnixSecs};
use crate::units::{BanTime, DurationSetting};
use crate::validation::ValidationError;

/// `[escalation]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    pub enabled: bool,
    /// Count an address's bans over all jails (`true`) or per jail.
    pub overalljails: bool,
    /// The ladder, checked from the highest step down.
    pub steps: Vec<EscalationStep>,
    pub increment: IncrementConfig,
    pub subnet: SubnetConfig,
}

impl Default for EscalationConfig {
    /// On by default, with the ladder operators build by hand in fail2ban:
    /// 3 bans within a day earn a week; 5 within 30 days, 30 days of tarpit.
    fn default() -> Self {
        EscalationConfig {
            enabled: true,
            overalljails: true,
            steps: vec![
                EscalationStep {
                    bans: 3,
                    within: DurationSetting(Duration::from_secs(86_400)),
                    bantime: BanTime::Finite(Duration::from_secs(7 * 86_400)),
                    class: BanClass::Drop,
                },
                EscalationStep {
                    bans: 5,
                    within: DurationSetting(Duration::from_secs(30 * 86_400)),
                    bantime: BanTime::Finite(Duration::from_secs(30 * 86_400)),
                    class: BanClass::Tarpit,
                },
            ],
            increment: IncrementConfig::default(),
            subnet: SubnetConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// Bans of the address (this one included) ...
    pub bans: u32,
    /// ... within this window ...
    pub within: DurationSetting,
    /// ... earn this ban.
    pub bantime: BanTime,
    #[serde(default = "default_class")]
    pub class: BanClass,
}

fn default_class() -> BanClass {
    BanClass::Drop
}

/// `[escalation.increment]`: fail2ban's `bantime.increment`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IncrementConfig {
    /// Off by default: the ladder covers the common case.
    pub enabled: bool,
    /// `bantime × factor × 2^min(previous bans, 20)` when no multipliers.
    pub factor: f64,
    /// `bantime × multipliers[min(previous bans, len - 1)]`.
    pub multipliers: Vec<u32>,
    /// No ban grows beyond this.
    pub maxtime: DurationSetting,
    /// A random 0..rndtime added, so botnets cannot time their return.
    pub rndtime: DurationSetting,
}

impl Default for IncrementConfig {
    fn default() -> Self {
        IncrementConfig {
            enabled: false,
            factor: 1.0,
            multipliers: Vec::new(),
            maxtime: DurationSetting(Duration::from_secs(5 * 7 * 86_400)),
            rndtime: DurationSetting(Duration::ZERO),
        }
    }
}

/// `[escalation.subnet]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SubnetConfig {
    pub enabled: bool,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// Distinct banned hosts of one prefix ...
    pub hosts: u32,
    /// ... within this window ...
    pub within: DurationSetting,
    /// ... ban the prefix for this long, with this class.
    pub bantime: BanTime,
    pub class: BanClass,
}

impl Default for SubnetConfig {
    fn default() -> Self {
        SubnetConfig {
            enabled: false,
            v4_prefix: 24,
            v6_prefix: 64,
            hosts: 5,
            within: DurationSetting(Duration::from_secs(3600)),
            bantime: BanTime::Finite(Duration::from_secs(86_400)),
            class: BanClass::Drop,
        }
    }
}

/// The jail name under which subnet bans are recorded.
pub(crate) const SUBNET_JAIL: &str = "subnet";

impl EscalationConfig {
    /// Checks serde cannot make.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let err = |key: String, msg: String| Err(ValidationError::new(key, msg));
        for (i, s) in self.steps.iter().enumerate() {
            if s.bans < 2 {
                return err(
                    format!("escalation.steps[{i}].bans"),
                    "must be at least 2 (the first ban is the jail's own)".into(),
                );
            }
            if s.bantime == BanTime::Finite(Duration::ZERO) {
                return err(
                    format!("escalation.steps[{i}].bantime"),
                    "a ban of 0 s ends as it starts: set a duration like \"1w\", or \"permanent\""
                        .into(),
                );
            }
            if s.within.0.is_zero() {
                return err(
                    format!("escalation.steps[{i}].within"),
                    "must be longer than 0".into(),
                );
            }
        }
        let inc = &self.increment;
        if !(inc.factor.is_finite() && inc.factor > 0.0) {
            return err(
                "escalation.increment.factor".into(),
                "must be a positive number".into(),
            );
        }
        if inc.multipliers.contains(&0) {
            return err(
                "escalation.increment.multipliers".into(),
                "must all be at least 1".into(),
            );
        }
        let sn = &self.subnet;
        if !(8..=32).contains(&sn.v4_prefix) {
            return err(
                "escalation.subnet.v4_prefix".into(),
                format!("{} is out of range (8 to 32)", sn.v4_prefix),
            );
        }
        if !(16..=128).contains(&sn.v6_prefix) {
            return err(
                "escalation.subnet.v6_prefix".into(),
                format!("{} is out of range (16 to 128)", sn.v6_prefix),
            );
        }
        if sn.bantime == BanTime::Finite(Duration::ZERO) {
            return err(
                "escalation.subnet.bantime".into(),
                "a ban of 0 s ends as it starts: set a duration like \"1d\", or \"permanent\""
                    .into(),
            );
        }
        if sn.within.0.is_zero() {
            return err(
                "escalation.subnet.within".into(),
                "must be longer than 0".into(),
            );
        }
        if sn.hosts < 2 {
            return err(
                "escalation.subnet.hosts".into(),
                "must be at least 2".into(),
            );
        }
        Ok(())
    }

    /// How far back the history must reach for every decision: what
    /// `dbpurgeage` defaults to.
    pub fn longest_window(&self) -> Duration {
        let steps = self
            .steps
            .iter()
            .map(|s| s.within.0)
            .max()
            .unwrap_or_default();
        steps
            .max(self.subnet.within.0)
            .max(Duration::from_secs(86_400))
    }
}

/// What a ban becomes after escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub bantime: BanTime,
    pub class: BanClass,
    /// Which ladder step (index) decided, if any.
    pub step: Option<usize>,
}

/// Decide a ban's length and class. `count_since(window)` gives how many
/// earlier bans of the address the history holds within `window` before this
/// one (all jails or the jail's, as the caller chose).
pub(crate) fn decide(
    cfg: &EscalationConfig,
    base_bantime: BanTime,
    base_class: BanClass,
    mut count_since: impl FnMut(Option<Duration>) -> u32,
) -> Decision {
    let base = Decision {
        bantime: base_bantime,
        class: base_class,
        step: None,
    };
    if !cfg.enabled {
        return base;
    }
    // Highest step reached wins; steps are not assumed sorted.
    let mut best: Option<(usize, &EscalationStep)> = None;
    for (i, step) in cfg.steps.iter().enumerate() {
        let total = count_since(Some(step.within.0)) + 1;
        if total >= step.bans && best.is_none_or(|(_, b)| step.bans > b.bans) {
            best = Some((i, step));
        }
    }
    if let Some((i, step)) = best {
        // A step never shortens what the jail would give anyway.
        let bantime = longer(step.bantime, base_bantime);
        let class = step.class.max(base_class);
        return Decision {
            bantime,
            class,
            step: Some(i),
        };
    }
    if cfg.increment.enabled {
        if let BanTime::Finite(b) = base_bantime {
            let previous = count_since(None);
            return Decision {
                bantime: BanTime::Finite(increment(&cfg.increment, b, previous)),
                ..base
            };
        }
    }
    base
}

fn longer(a: BanTime, b: BanTime) -> BanTime {
    match (a, b) {
        (BanTime::Permanent, _) | (_, BanTime::Permanent) => BanTime::Permanent,
        (BanTime::Finite(x), BanTime::Finite(y)) => BanTime::Finite(x.max(y)),
    }
}

/// fail2ban's growth: multipliers by count, or factor × 2^min(count, 20).
fn increment(inc: &IncrementConfig, base: Duration, previous: u32) -> Duration {
    let secs = base.as_secs_f64();
    let grown = if inc.multipliers.is_empty() {
        secs * inc.factor * f64::from(1u32 << previous.min(20))
    } else {
        let m = inc.multipliers[(previous as usize).min(inc.multipliers.len() - 1)];
        secs * f64::from(m) * inc.factor
    };
    let capped = grown.min(inc.maxtime.0.as_secs_f64());
    let jitter = if inc.rndtime.0.is_zero() {
        0.0
    } else {
        fastrand::f64() * inc.rndtime.0.as_secs_f64()
    };
    // Saturating: whatever the factor, never past maxtime + rndtime, nor
    // past the longest duration xban takes.
    Duration::try_from_secs_f64(capped + jitter)
        .unwrap_or(crate::units::MAX_DURATION)
        .min(crate::units::MAX_DURATION)
}

/// Recent host bans grouped by prefix, for subnet widening.
#[derive(Debug, Default)]
pub(crate) struct SubnetTracker {
    recent: HashMap<Target, Vec<(IpAddr, UnixSecs)>>,
}

impl SubnetTracker {
    pub(crate) fn prefix_of(cfg: &SubnetConfig, ip: IpAddr) -> Target {
        let len = if ip.is_ipv4() {
            cfg.v4_prefix
        } else {
            cfg.v6_prefix
        };
        Target::new(ip, len).expect("validated prefix length")
    }

    /// Note a host ban at `at`; returns the prefix to ban when this ban
    /// makes `hosts` distinct hosts within `within`.
    pub(crate) fn record(
        &mut self,
        cfg: &SubnetConfig,
        ip: IpAddr,
        at: UnixSecs,
    ) -> Option<Target> {
        let prefix = Self::prefix_of(cfg, ip);
        let window = cfg.within.0.as_secs() as i64;
        let hosts = self.recent.entry(prefix).or_default();
        hosts.retain(|(h, t)| at - *t <= window && *h != ip);
        hosts.push((ip, at));
        if hosts.len() as u32 >= cfg.hosts {
            self.recent.remove(&prefix);
            return Some(prefix);
        }
        None
    }

    /// Forget entries older than the window (bounded memory).
    pub(crate) fn prune(&mut self, cfg: &SubnetConfig, now: UnixSecs) {
        let window = cfg.within.0.as_secs() as i64;
        self.recent.retain(|_, v| {
            v.retain(|(_, t)| now - *t <= window);
            !v.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn d(secs: u64) -> BanTime {
        BanTime::Finite(Duration::from_secs(secs))
    }

    /// `history`: times (seconds before now) of earlier bans.
    fn decide_with(cfg: &EscalationConfig, history: &[u64]) -> Decision {
        decide(cfg, d(600), BanClass::Drop, |window| {
            history
                .iter()
                .filter(|ago| window.is_none_or(|w| **ago <= w.as_secs()))
                .count() as u32
        })
    }

    #[test]
    fn default_ladder() {
        let cfg = EscalationConfig::default();
        assert_eq!(decide_with(&cfg, &[]).bantime, d(600));
        assert_eq!(
            decide_with(&cfg, &[3600]).bantime,
            d(600),
            "2nd ban in a day: the jail's own"
        );
        let third = decide_with(&cfg, &[3600, 7200]);
        assert_eq!(
            (third.bantime, third.class, third.step),
            (d(7 * DAY), BanClass::Drop, Some(0))
        );
        // Two earlier bans, but one of them 2 days ago: only 2 within 1 d.
        assert_eq!(decide_with(&cfg, &[3600, 2 * DAY]).bantime, d(600));
        let fifth = decide_with(&cfg, &[DAY * 2, DAY * 5, DAY * 10, 3600]);
        assert_eq!(
            (fifth.bantime, fifth.class, fifth.step),
            (d(30 * DAY), BanClass::Tarpit, Some(1))
        );
        // Outside 30 days nothing counts.
        assert_eq!(
            decide_with(&cfg, &[DAY * 31, DAY * 40, DAY * 50, DAY * 60]).bantime,
            d(600)
        );
    }

    #[test]
    fn a_step_never_softens_the_jails_ban() {
        let cfg = EscalationConfig::default();
        let dec = decide(&cfg, BanTime::Permanent, BanClass::Tarpit, |_| 10);
        assert_eq!(
            (dec.bantime, dec.class),
            (BanTime::Permanent, BanClass::Tarpit)
        );
    }

    #[test]
    fn increment_by_factor_and_multipliers() {
        let mut cfg = EscalationConfig {
            steps: vec![],
            ..Default::default()
        };
        cfg.increment.enabled = true;
        assert_eq!(decide_with(&cfg, &[]).bantime, d(600));
        assert_eq!(decide_with(&cfg, &[1]).bantime, d(1200));
        assert_eq!(decide_with(&cfg, &[1, 2, 3]).bantime, d(4800));
        // Capped at maxtime (5 weeks).
        assert_eq!(decide_with(&cfg, &[1; 30]).bantime, d(35 * DAY));
        cfg.increment.multipliers = vec![1, 5, 30];
        assert_eq!(decide_with(&cfg, &[1]).bantime, d(3000));
        assert_eq!(decide_with(&cfg, &[1; 9]).bantime, d(18_000));
        cfg.increment.rndtime = DurationSetting(Duration::from_secs(60));
        let BanTime::Finite(t) = decide_with(&cfg, &[1]).bantime else {
            panic!()
        };
        assert!((3000..3060).contains(&t.as_secs()), "{t:?}");
        cfg.enabled = false;
        assert_eq!(decide_with(&cfg, &[1; 9]).bantime, d(600));
    }

    #[test]
    fn growth_saturates_at_maxtime_whatever_the_factor() {
        let mut cfg = EscalationConfig {
            steps: vec![],
            ..Default::default()
        };
        cfg.increment.enabled = true;
        cfg.increment.factor = 1e300;
        cfg.increment.maxtime = DurationSetting(crate::units::MAX_DURATION);
        let dec = decide(
            &cfg,
            d(crate::units::MAX_DURATION.as_secs()),
            BanClass::Drop,
            |_| 1_000,
        );
        assert_eq!(dec.bantime, d(crate::units::MAX_DURATION.as_secs()));
        cfg.increment.multipliers = vec![u32::MAX];
        cfg.increment.rndtime = DurationSetting(crate::units::MAX_DURATION);
        let BanTime::Finite(t) = decide(&cfg, d(u32::MAX as u64), BanClass::Drop, |_| 7).bantime
        else {
            panic!()
        };
        assert!(t <= crate::units::MAX_DURATION, "{t:?}");
    }

    #[test]
    fn subnet_widens_at_n_distinct_hosts() {
        let cfg = SubnetConfig {
            enabled: true,
            hosts: 3,
            ..Default::default()
        };
        let mut t = SubnetTracker::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.record(&cfg, ip("203.0.113.1"), 0), None);
        // The same host again does not count twice.
        assert_eq!(t.record(&cfg, ip("203.0.113.1"), 10), None);
        assert_eq!(t.record(&cfg, ip("198.51.100.2"), 20), None, "another /24");
        assert_eq!(t.record(&cfg, ip("203.0.113.2"), 30), None);
        assert_eq!(
            t.record(&cfg, ip("203.0.113.3"), 40),
            Some("203.0.113.0/24".parse().unwrap())
        );
        // Outside the window (1 h) old hosts no longer count.
        assert_eq!(t.record(&cfg, ip("2001:db8:1:2::1"), 0), None);
        assert_eq!(t.record(&cfg, ip("2001:db8:1:2::2"), 10), None);
        assert_eq!(t.record(&cfg, ip("2001:db8:1:2::3"), 4000), None);
        assert_eq!(t.record(&cfg, ip("2001:db8:1:2::4"), 4001), None);
        assert_eq!(
            t.record(&cfg, ip("2001:db8:1:2::5"), 4002),
            Some("2001:db8:1:2::/64".parse().unwrap())
        );
        t.prune(&cfg, 100_000);
        assert!(t.recent.is_empty());
    }

    #[test]
    fn config_parses_and_validates() {
        let cfg: EscalationConfig = toml::from_str(
            r#"
overalljails = false
steps = [{ bans = 2, within = "1h", bantime = "permanent", class = "tarpit" }]
[increment]
enabled = true
multipliers = [1, 5, 30]
[subnet]
enabled = true
hosts = 4
"#,
        )
        .unwrap();
        assert!(!cfg.overalljails);
        assert_eq!(cfg.steps[0].bantime, BanTime::Permanent);
        assert_eq!(cfg.subnet.v4_prefix, 24);
        cfg.validate().unwrap();
        let bad = EscalationConfig {
            steps: vec![EscalationStep {
                bans: 1,
                within: DurationSetting(Duration::from_secs(1)),
                bantime: d(1),
                class: BanClass::Drop,
            }],
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().place,
            "escalation.steps[0].bans"
        );
        let e = toml::from_str::<EscalationConfig>("steps = [{ bans = 3 }]").unwrap_err();
        assert!(e.to_string().contains("missing field `within`"), "{e}");
        assert_eq!(
            EscalationConfig::default().longest_window(),
            Duration::from_secs(30 * DAY)
        );
    }
}
