//! Escalation as the agent applies it: the ladder (repeat offenders get
//! longer bans, by their history in the store) and subnet widening (enough
//! banned hosts of one prefix ban the prefix).

use std::net::IpAddr;

use anyhow::Result;

use super::{expiry, Agent};
use crate::addr::Target;
use crate::ban::{now_secs, BanRecord, UnixSecs};
use crate::escalation::{self, EscalationConfig, SubnetTracker, SUBNET_JAIL};
use crate::guard::BanOrigin;
use crate::jail::BanRequest;
use crate::store::BanStore;

/// The escalation settings and the subnet tracker they feed.
pub struct Escalator {
    pub(super) config: EscalationConfig,
    pub(super) subnets: SubnetTracker,
}

impl Escalator {
    pub(super) fn new(config: EscalationConfig) -> Escalator {
        Escalator {
            config,
            subnets: SubnetTracker::default(),
        }
    }

    fn widening(&self) -> bool {
        self.config.enabled && self.config.subnet.enabled
    }

    /// At start: the subnet tracker learns the recent history.
    pub(super) fn restore_history(&mut self, store: &BanStore, now: UnixSecs) -> Result<()> {
        let sn = &self.config.subnet;
        if self.widening() {
            for (target, _jail, at) in store.history_since(now - sn.within.0.as_secs() as i64)? {
                if target.is_host() {
                    self.subnets.record(sn, target.addr(), at);
                }
            }
        }
        Ok(())
    }

    /// Forget hosts that left the widening window.
    pub(super) fn prune(&mut self, now: UnixSecs) {
        self.subnets.prune(&self.config.subnet, now);
    }
}

impl Agent {
    /// A jail's ban, escalated by the address's history. The history is in
    /// log time, so replaying an old log escalates as watching it live did.
    pub(super) fn ban_from_jail(&mut self, req: BanRequest) -> Result<Option<BanRecord>> {
        let now = now_secs();
        let event_at = req
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(now);
        let target = Target::host(req.addr);
        let jail_allow: Vec<Target> = self
            .jails
            .list
            .iter()
            .find(|j| j.name() == req.jail)
            .map(|j| j.ignoreip())
            .unwrap_or_default();
        if self
            .guard_ban(&target, BanOrigin::Jail, &jail_allow, false)
            .is_err()
        {
            return Ok(None);
        }
        let mut req = req;
        req.bantime = self.bantime_for(&req.jail, req.addr, req.bantime);
        let per_jail = (!self.escalator.config.overalljails).then_some(req.jail.as_str());
        if self.escalator.config.enabled && self.bans.batching {
            // A failure here shows in the lookup below.
            let _ = self.bans.store.open_batch();
        }
        let (store, staged) = (&self.bans.store, &self.bans.staged);
        let mut lookup_error = None;
        let offence = crate::store::offence_key(&req.matches);
        // The address's earlier bans, read once (stored ones, and this
        // batch's): each step of the ladder counts its own window of them.
        let mut history: Option<Vec<UnixSecs>> = None;
        let decision =
            escalation::decide(&self.escalator.config, req.bantime, req.class, |window| {
                let times = history.get_or_insert_with(|| {
                    let mut times = store
                        .earlier_ban_times(&target, per_jail, &req.jail, event_at, &offence)
                        .unwrap_or_else(|e| {
                            lookup_error = Some(e);
                            Vec::new()
                        });
                    times.extend(
                        staged.history_of(&target, per_jail, &req.jail, event_at, &offence),
                    );
                    times
                });
                let since = window.map(|w| event_at - w.as_secs() as i64).unwrap_or(0);
                times.iter().filter(|&&t| t >= since).count() as u32
            });
        if let Some(e) = lookup_error {
            tracing::warn!("escalation history unreadable, banning without it: {e}");
        }
        if let Some(step) = decision.step {
            tracing::info!(%target, step, bantime = %decision.bantime, class = %decision.class, "escalated: repeat offender");
        }
        let rec = BanRecord {
            target,
            jail: req.jail,
            class: decision.class,
            banned_at: now,
            expires_at: expiry(now, decision.bantime),
            failures: req.failures,
            matches: req.matches,
        };
        let rec = self.apply_ban(rec, event_at)?;
        self.widen_to_subnet(req.addr, event_at, now);
        Ok(Some(rec))
    }

    /// Enough distinct hosts of one prefix banned: ban the prefix.
    pub(super) fn widen_to_subnet(&mut self, addr: IpAddr, event_at: UnixSecs, now: UnixSecs) {
        let sn = self.escalator.config.subnet.clone();
        if !(self.escalator.config.enabled && sn.enabled) {
            return;
        }
        let Some(prefix) = self.escalator.subnets.record(&sn, addr, event_at) else {
            return;
        };
        if self
            .guard_ban(&prefix, BanOrigin::Subnet, &[], false)
            .is_err()
        {
            return;
        }
        let rec = BanRecord {
            target: prefix,
            jail: SUBNET_JAIL.to_string(),
            class: sn.class,
            banned_at: now,
            expires_at: expiry(now, sn.bantime),
            failures: sn.hosts,
            matches: Vec::new(),
        };
        match self.apply_ban(rec, event_at) {
            Ok(_) => tracing::info!(%prefix, hosts = sn.hosts, "escalated to the whole prefix"),
            Err(e) => tracing::warn!(%prefix, "prefix not banned: {e:#}"),
        }
    }
}
