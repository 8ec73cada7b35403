//! Enforcement: turning the agent's ban decisions into kernel state, in the
//! XDP maps and, for the tarpit class, in iptables' steering set.

pub mod geo_maps;
pub mod steering;
pub mod tarpit;
pub mod xdp;

use anyhow::Result;

use crate::addr::Target;
use crate::ban::{BanClass, MapChange};
use steering::{TarpitConfig, TarpitSteering};
use tarpit::Engine;

/// Where ban decisions are written. The kernel in production; tests of the
/// agent's logic use a recorder.
pub trait Enforcer: Send {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()>;
    /// Many changes at once, in order; returns the ones that failed (the
    /// rest are applied). An enforcer with steering steers the whole batch
    /// first, so XDP never passes a tarpit address before it is steered.
    fn apply_all(&mut self, changes: &[(Target, MapChange)]) -> Vec<(Target, anyhow::Error)> {
        changes
            .iter()
            .filter_map(|(t, c)| self.apply(t, *c).err().map(|e| (*t, e)))
            .collect()
    }
    fn set_allowlist(&mut self, list: &[Target]) -> Result<()>;
    /// Many `MapChange::Set`s at once (restore); the kernel's enforcer
    /// writes them in batches.
    fn set_all(&mut self, sets: &[(Target, BanClass)]) -> Result<()> {
        for (t, c) in sets {
            self.apply(t, MapChange::Set(*c))?;
        }
        Ok(())
    }
    /// Every target the XDP maps hold now, with its class when readable.
    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>>;
    /// At start, once: every target the XDP maps hold. May answer from
    /// what the load read and what was written since, instead of reading
    /// the maps again, or, when the restore marker held, with "as stored".
    fn entries_for_restore(&mut self) -> Result<KernelBans> {
        Ok(KernelBans::Read(self.entries()?))
    }
    /// How many targets the maps hold, where that is known without reading
    /// them (a check of [`KernelBans::AsStored`]).
    fn entry_count(&self) -> Option<usize> {
        None
    }
    /// At a clean stop: the maps' part of the restore marker, when the maps
    /// hold exactly `book_targets` targets, all of them where the marker
    /// can vouch for them (`None`: the next start reads the maps back).
    fn stop_fingerprint(&self, _book_targets: usize) -> Option<Vec<u64>> {
        None
    }
    /// At start: the tarpit-class targets, all of them (steering set sync).
    fn sync_tarpit(&mut self, _targets: &[Target]) -> Result<()> {
        Ok(())
    }
    /// The XDP counters, where there are any.
    fn xdp_stats(&self) -> Result<Option<xdp::XdpStats>> {
        Ok(None)
    }
    /// Steering mode and counters, where there is steering.
    fn steering_status(&self) -> Option<TarpitStatus> {
        None
    }
    /// Occupancy of the XDP fast path, where there is one.
    fn fast_path(&self) -> Option<xdp::FastPathStatus> {
        None
    }

    /// The geo ban prefixes with their label index, for per-country drop
    /// counts: entries written from now on carry it.
    fn sync_geo_labels(&mut self, _entries: &[(Target, u32)]) -> Result<()> {
        Ok(())
    }
    /// Packets dropped per label index `0..labels`.
    fn geo_drops(&self, _labels: u32) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
}

/// What the kernel's ban maps held when the agent loaded them.
#[derive(Debug)]
pub enum KernelBans {
    /// Read from the maps (at load, with what was written since).
    Read(Vec<(Target, Option<BanClass>)>),
    /// The restore marker held: the maps held the stored bans at the last
    /// stop (the stored bans as loaded now, plus those that expired since)
    /// and `extra`; then `since` was written (`None`: removed).
    AsStored {
        extra: Vec<Target>,
        since: std::collections::HashMap<Target, Option<BanClass>>,
    },
}

/// `status`'s `tarpit`: the engine holding the class, the steering mode
/// and its chain counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TarpitStatus {
    /// The tarpit engine in force ([`Engine::name`]).
    pub engine: String,
    /// Why that engine and mode.
    pub reason: String,
    pub limit: String,
    pub burst: u32,
    /// The steering mode, as the operator reads it.
    pub mode: String,
    /// Whether tarpit-class addresses are steered by iptables.
    pub active: bool,
    /// What the agent put in the sets: `ipset list` of a large set would
    /// hold the loop for seconds.
    pub members: usize,
    /// Read off the loop, at most a few seconds old (`null`: unreadable or
    /// not read yet).
    pub counters: Option<steering::SteeringCounters>,
    pub counters_age_secs: Option<f64>,
    pub counters_error: Option<String>,
}

/// `--dry-run`: says what it would write, writes nothing.
#[derive(Debug, Default)]
pub struct DryRunEnforcer {
    entries: std::collections::HashMap<Target, BanClass>,
}

impl Enforcer for DryRunEnforcer {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        match change {
            MapChange::Set(class) => {
                tracing::info!("dry run: would write {target} into the XDP map as {class}");
                self.entries.insert(*target, class);
            }
            MapChange::Remove => {
                tracing::info!("dry run: would remove {target} from the XDP map");
                self.entries.remove(target);
            }
            MapChange::Unchanged => {}
        }
        Ok(())
    }

    fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        tracing::info!(
            entries = list.len(),
            "dry run: would write the XDP allowlist"
        );
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        Ok(self.entries.iter().map(|(t, c)| (*t, Some(*c))).collect())
    }
}

/// The real thing: XDP maps, plus iptables steering for the tarpit class.
pub struct KernelEnforcer {
    pub xdp: xdp::XdpMaps,
    pub steering: Option<TarpitSteering>,
    /// `[tarpit]`: the XDP tarpit's bucket comes from `limit`/`burst`.
    pub tarpit: TarpitConfig,
    /// Per-country drop counting.
    pub geo: Option<geo_maps::GeoMaps>,
    /// The targets in the steering sets: only they need an `ipset del`
    /// when they are dropped or unbanned (a process per call; tens of
    /// thousands of geo prefixes must not each pay for one).
    pub steered: std::collections::HashSet<Target>,
}

impl KernelEnforcer {
    /// Who holds the tarpit class: iptables (XDP passes it), the XDP
    /// tarpit, or nobody (dropped at XDP).
    fn engine(&self) -> Engine {
        self.steering
            .as_ref()
            .map_or(Engine::Drop, |s| Engine::of(s.mode()))
    }

    /// Tell the program which engine holds the class (and the bucket).
    pub fn configure_tarpit(&mut self) -> Result<()> {
        let engine = self.engine();
        configure_tarpit(&mut self.xdp, engine, &self.tarpit)
    }
}

/// Write the engine and bucket into the program's map.
pub fn configure_tarpit(maps: &mut xdp::XdpMaps, engine: Engine, cfg: &TarpitConfig) -> Result<()> {
    match maps.tarpit.as_mut() {
        Some(t) => t.configure(engine, cfg),
        None => anyhow::bail!("the XDP program's tarpit maps are missing"),
    }
}

impl KernelEnforcer {
    /// The geo label written with a target's entry (0: none).
    fn label(&self, target: &Target) -> u32 {
        self.geo
            .as_ref()
            .and_then(|g| g.labels.get(target).copied())
            .unwrap_or(0)
    }

    /// Out of the steering sets, if it is in them.
    fn unsteer(&mut self, target: &Target) -> Result<()> {
        if self.steered.remove(target) {
            if let Some(s) = self.steering.as_mut() {
                s.remove(target)?;
            }
        }
        Ok(())
    }
}

/// An enforcer whose tarpit class needs steering: what a batch asks of it.
trait SteeredMaps {
    /// Must `target` join the steering sets before this change is written?
    fn needs_steering(&self, target: &Target, change: MapChange) -> bool;
    /// All of them into the sets at once.
    fn steer(&mut self, targets: &[Target]) -> Result<()>;
    /// One change into the maps (and out of the sets, when it leaves the
    /// class: after XDP drops it).
    fn write(&mut self, target: &Target, change: MapChange) -> Result<()>;
}

/// A batch of changes: every tarpit-class target that needs steering is
/// steered first, together; then each change is written in order. A target
/// the sets refused gets no XDP entry (XDP would pass it unsteered): it is
/// returned with the error, as is every write that failed.
fn apply_steered(
    maps: &mut impl SteeredMaps,
    changes: &[(Target, MapChange)],
) -> Vec<(Target, anyhow::Error)> {
    let mut failed: Vec<(Target, anyhow::Error)> = Vec::new();
    let to_steer: Vec<Target> = changes
        .iter()
        .filter(|(t, c)| maps.needs_steering(t, *c))
        .map(|(t, _)| *t)
        .collect();
    let mut unsteered = std::collections::HashSet::new();
    if !to_steer.is_empty() {
        if let Err(e) = maps.steer(&to_steer) {
            for t in to_steer {
                unsteered.insert(t);
                failed.push((t, anyhow::anyhow!("steering {t}: {e:#}")));
            }
        }
    }
    for (t, c) in changes {
        if unsteered.contains(t) {
            continue;
        }
        if let Err(e) = maps.write(t, *c) {
            failed.push((*t, e));
        }
    }
    failed
}

impl SteeredMaps for KernelEnforcer {
    fn needs_steering(&self, target: &Target, change: MapChange) -> bool {
        change == MapChange::Set(BanClass::Tarpit)
            && self.engine() == Engine::Pass
            && self.steering.is_some()
            && !self.steered.contains(target)
    }

    fn steer(&mut self, targets: &[Target]) -> Result<()> {
        if let Some(s) = self.steering.as_mut() {
            s.add_all(targets)?;
            self.steered.extend(targets.iter().copied());
        }
        Ok(())
    }

    /// Steered already ([`steer`](Self::steer)): `apply` finds the target
    /// in the sets and only writes XDP.
    fn write(&mut self, target: &Target, change: MapChange) -> Result<()> {
        self.apply(target, change)
    }
}

impl Enforcer for KernelEnforcer {
    /// Order matters: a tarpit-class address joins the steering set before
    /// XDP starts passing it, and leaves the set only after XDP drops it, so
    /// it is never let through unsteered.
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        let engine = self.engine();
        match change {
            MapChange::Set(BanClass::Tarpit) if engine == Engine::Pass => {
                if !self.steered.contains(target) {
                    if let Some(s) = self.steering.as_mut() {
                        s.add(target)?;
                        self.steered.insert(*target);
                    }
                }
                self.xdp
                    .set_ban_labelled(target, BanClass::Tarpit, self.label(target))
            }
            // The program answers it itself.
            MapChange::Set(BanClass::Tarpit) if engine == Engine::Xdp => {
                self.xdp
                    .set_ban_labelled(target, BanClass::Tarpit, self.label(target))
            }
            // Without steering the tarpit class is dropped at XDP.
            MapChange::Set(BanClass::Tarpit) => {
                self.xdp
                    .set_ban_labelled(target, BanClass::Drop, self.label(target))
            }
            MapChange::Set(BanClass::Drop) => {
                self.xdp
                    .set_ban_labelled(target, BanClass::Drop, self.label(target))?;
                self.unsteer(target)
            }
            MapChange::Remove => {
                self.xdp.remove_ban(target)?;
                self.unsteer(target)
            }
            MapChange::Unchanged => Ok(()),
        }
    }

    /// The batch's tarpit-class targets join the steering sets in one
    /// `ipset restore` first ([`apply_steered`]).
    fn apply_all(&mut self, changes: &[(Target, MapChange)]) -> Vec<(Target, anyhow::Error)> {
        apply_steered(self, changes)
    }

    fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        self.xdp.set_allowlist(list)
    }

    /// Drop-class entries not steered (the bulk of a restore) in one batch;
    /// the rest as `apply` does them.
    fn set_all(&mut self, sets: &[(Target, BanClass)]) -> Result<()> {
        let mut batch = Vec::with_capacity(sets.len());
        for (t, c) in sets {
            match c {
                BanClass::Drop if !self.steered.contains(t) => {
                    batch.push((*t, BanClass::Drop, self.label(t)))
                }
                _ => self.apply(t, MapChange::Set(*c))?,
            }
        }
        self.xdp.set_bans(&batch)
    }

    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        self.xdp.bans()
    }

    fn entries_for_restore(&mut self) -> Result<KernelBans> {
        self.xdp.bans_for_restore()
    }

    fn entry_count(&self) -> Option<usize> {
        Some(self.xdp.entry_count())
    }

    fn stop_fingerprint(&self, book_targets: usize) -> Option<Vec<u64>> {
        self.xdp.stop_fingerprint(book_targets)
    }

    /// The sets first: the program passes the class only once they hold
    /// every tarpit-class address.
    fn sync_tarpit(&mut self, targets: &[Target]) -> Result<()> {
        if let Some(s) = self.steering.as_mut() {
            s.sync(targets)?;
            self.steered = targets.iter().copied().collect();
        }
        self.configure_tarpit()
    }

    fn xdp_stats(&self) -> Result<Option<xdp::XdpStats>> {
        self.xdp.stats().map(Some)
    }

    fn fast_path(&self) -> Option<xdp::FastPathStatus> {
        Some(self.xdp.fast_path_status())
    }

    fn sync_geo_labels(&mut self, entries: &[(Target, u32)]) -> Result<()> {
        if let Some(g) = self.geo.as_mut() {
            g.labels = entries.iter().copied().collect();
        }
        Ok(())
    }

    fn geo_drops(&self, labels: u32) -> Result<Vec<u64>> {
        match self.geo.as_ref() {
            Some(g) => g.drops(labels),
            None => Ok(Vec::new()),
        }
    }

    fn steering_status(&self) -> Option<TarpitStatus> {
        let s = self.steering.as_ref()?;
        // Read off the loop, at most a few seconds old, with its age.
        let reading = s.counters_snapshot();
        let counters = reading
            .as_ref()
            .and_then(|r| r.counters.as_ref().ok().copied());
        let counters_error = reading
            .as_ref()
            .and_then(|r| r.counters.as_ref().err().cloned());
        let counters_age_secs = reading.map(|r| r.at.elapsed().as_secs_f64());
        Some(TarpitStatus {
            engine: self.engine().name().to_string(),
            reason: s.reason().to_string(),
            limit: self.tarpit.limit.clone(),
            burst: self.tarpit.burst,
            mode: s.mode().to_string(),
            active: s.mode().is_active(),
            members: self.steered.len(),
            counters,
            counters_age_secs,
            counters_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steering::{FamilyCounters, SteeringCounters};

    /// Records what a batch did, in order; steering can be made to fail.
    #[derive(Default)]
    struct Recording {
        ops: Vec<String>,
        steered: std::collections::HashSet<Target>,
        steer_fails: bool,
    }

    impl SteeredMaps for Recording {
        fn needs_steering(&self, target: &Target, change: MapChange) -> bool {
            change == MapChange::Set(BanClass::Tarpit) && !self.steered.contains(target)
        }
        fn steer(&mut self, targets: &[Target]) -> Result<()> {
            if self.steer_fails {
                anyhow::bail!("ipset: injected failure");
            }
            let names: Vec<String> = targets.iter().map(Target::to_string).collect();
            self.ops.push(format!("steer {}", names.join(" ")));
            self.steered.extend(targets.iter().copied());
            Ok(())
        }
        fn write(&mut self, target: &Target, change: MapChange) -> Result<()> {
            self.ops.push(format!("write {target} {change:?}"));
            Ok(())
        }
    }

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn a_batch_steers_its_tarpit_targets_together_before_any_xdp_entry() {
        let mut m = Recording::default();
        m.steered.insert(t("203.0.113.9"));
        let changes = [
            (t("203.0.113.1"), MapChange::Set(BanClass::Drop)),
            (t("203.0.113.2"), MapChange::Set(BanClass::Tarpit)),
            (t("2001:db8::3"), MapChange::Set(BanClass::Tarpit)),
            // Steered already: not again.
            (t("203.0.113.9"), MapChange::Set(BanClass::Tarpit)),
        ];
        assert!(apply_steered(&mut m, &changes).is_empty());
        assert_eq!(
            m.ops,
            [
                "steer 203.0.113.2 2001:db8::3",
                "write 203.0.113.1 Set(Drop)",
                "write 203.0.113.2 Set(Tarpit)",
                "write 2001:db8::3 Set(Tarpit)",
                "write 203.0.113.9 Set(Tarpit)",
            ]
        );
    }

    #[test]
    fn a_batch_whose_steering_fails_writes_no_tarpit_entry_and_says_so() {
        let mut m = Recording {
            steer_fails: true,
            ..Default::default()
        };
        let changes = [
            (t("203.0.113.1"), MapChange::Set(BanClass::Drop)),
            (t("203.0.113.2"), MapChange::Set(BanClass::Tarpit)),
            (t("203.0.113.3"), MapChange::Remove),
        ];
        let failed = apply_steered(&mut m, &changes);
        assert_eq!(
            m.ops,
            ["write 203.0.113.1 Set(Drop)", "write 203.0.113.3 Remove"]
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, t("203.0.113.2"));
        assert!(format!("{:#}", failed[0].1).contains("injected failure"));
    }

    /// The wire format of `status`'s `tarpit`, as the JSON object the
    /// enforcer built before it was typed.
    #[test]
    fn tarpit_status_json_is_pinned() {
        let mut t = TarpitStatus {
            engine: "iptables".into(),
            reason: "TARPIT target available".into(),
            limit: "10/second".into(),
            burst: 20,
            mode: "TARPIT".into(),
            active: true,
            members: 3,
            counters: Some(SteeringCounters {
                v4: FamilyCounters {
                    steered_packets: 5,
                    limited_packets: 4,
                    dropped_over_limit: 1,
                },
                v6: FamilyCounters::default(),
            }),
            counters_age_secs: Some(1.5),
            counters_error: None,
        };
        let zero = serde_json::json!({
            "steered_packets": 0, "limited_packets": 0, "dropped_over_limit": 0,
        });
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({
                "engine": "iptables",
                "reason": "TARPIT target available",
                "limit": "10/second",
                "burst": 20,
                "mode": "TARPIT",
                "active": true,
                "members": 3,
                "counters": {
                    "v4": {"steered_packets": 5, "limited_packets": 4, "dropped_over_limit": 1},
                    "v6": zero,
                },
                "counters_age_secs": 1.5,
                "counters_error": null,
            })
        );
        t.counters = None;
        t.counters_age_secs = None;
        t.counters_error = Some("iptables: exit 4".into());
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["counters"], serde_json::Value::Null);
        assert_eq!(v["counters_age_secs"], serde_json::Value::Null);
        assert_eq!(v["counters_error"], "iptables: exit 4");
        assert_eq!(serde_json::from_value::<TarpitStatus>(v).unwrap(), t);
    }

    /// The wire format of `status`'s `xdp` (and of `stats`): the counters
    /// with the tarpit's beside them as `tarpit_<name>`.
    #[test]
    fn xdp_stats_json_is_pinned() {
        let x = xdp::XdpStats {
            seen: 1,
            dropped: 2,
            passed_allowlisted: 3,
            passed_tarpit: 4,
            passed_clean: 5,
            passed_not_ip: 6,
            tarpit: tarpit::TarpitStats {
                synack: 7,
                ack: 8,
                rst: 9,
                ignored: 10,
                over_limit: 11,
                not_tcp: 12,
                unanswerable: 13,
                passed_nd: 14,
            },
        };
        let v = serde_json::to_value(x).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "seen": 1,
                "dropped": 2,
                "passed_allowlisted": 3,
                "passed_tarpit": 4,
                "passed_clean": 5,
                "passed_not_ip": 6,
                "tarpit_synack": 7,
                "tarpit_ack": 8,
                "tarpit_rst": 9,
                "tarpit_ignored": 10,
                "tarpit_over_limit": 11,
                "tarpit_not_tcp": 12,
                "tarpit_unanswerable": 13,
                "tarpit_passed_nd": 14,
            })
        );
        assert_eq!(
            serde_json::from_value::<xdp::XdpStats>(v.clone()).unwrap(),
            x
        );
        // `named` lists what the JSON holds, in the JSON object's order
        // (what `stats` printed and the metrics exported before).
        let named: Vec<(String, serde_json::Value)> = x
            .named()
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::json!(n)))
            .collect();
        let from_json: Vec<(String, serde_json::Value)> =
            v.as_object().unwrap().clone().into_iter().collect();
        assert_eq!(named, from_json);
    }
}
