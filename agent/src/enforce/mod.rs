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
