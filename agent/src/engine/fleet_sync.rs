//! The fleet in the main loop: local bans and operator unbans into the
//! outbox, the server's acknowledgements out of it, and remote messages
//! checked and applied to the core.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{bail, Result};
use tokio::sync::mpsc;

use super::status::{FleetConsumerStatus, FleetStatus, FleetStreamStatus};
use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanRecord, UnixSecs};
use crate::ban::{BanEvent, BanEventKind};
use crate::blocklist::BLOCKLIST_JAIL;
use crate::fleet::client::{Delivery, FleetClient, Incoming};
use crate::fleet::message::{self, Body, DecodeError, FleetMessage};
use crate::fleet::state::{self, Outgoing};
use crate::fleet::{is_fleet_jail, origin_jail, origin_of, FleetSettings};
use crate::guard::BanOrigin;

/// Why a remote ban was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Wider than `min_prefix_v4`/`min_prefix_v6`.
    MinPrefix,
    /// Overlaps `[defaults] ignoreip`.
    Allowlist,
    /// Covers one of this host's addresses (`ignoreself`).
    IgnoreSelf,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MinPrefix => "min_prefix",
            Refusal::Allowlist => "allowlist",
            Refusal::IgnoreSelf => "ignoreself",
        }
    }
}

/// What happened to the messages read from the stream.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counters {
    pub queued: u64,
    pub applied_bans: u64,
    pub applied_unbans: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub malformed: u64,
    pub oversized: u64,
    pub duplicates: u64,
    pub expired: u64,
    pub own: u64,
    pub apply_errors: u64,
}

/// Checks a remote ban against what this host never bans.
pub fn refusal(
    settings: &FleetSettings,
    core: &Agent,
    self_addrs: &[Target],
    target: &Target,
) -> Option<Refusal> {
    let min = if target.is_ipv4() {
        settings.min_prefix_v4
    } else {
        settings.min_prefix_v6
    };
    if target.prefix() < min {
        return Some(Refusal::MinPrefix);
    }
    if core.allowlisted(target).is_some() {
        return Some(Refusal::Allowlist);
    }
    if settings.ignoreself
        && self_addrs
            .iter()
            .any(|a| a.covers(target) || target.covers(a))
    {
        return Some(Refusal::IgnoreSelf);
    }
    None
}

pub struct FleetRuntime {
    pub settings: FleetSettings,
    client: Option<FleetClient>,
    pub incoming: mpsc::Receiver<Incoming>,
    pub counters: Counters,
    self_addrs: Vec<Target>,
    outbox_len: u64,
    /// For unit tests without a server: what would have been sent.
    #[cfg(test)]
    sent: Vec<Outgoing>,
}

/// Deliveries handed to the core at once at most.
pub const APPLY_BATCH: usize = 2048;

impl FleetRuntime {
    /// Create the tables, load the outbox, start the client.
    pub fn start(
        settings: FleetSettings,
        core: &mut Agent,
        self_addrs: Vec<Target>,
    ) -> Result<FleetRuntime> {
        state::ensure_tables(core.store())?;
        state::purge_applied(core.store(), now_secs())?;
        let pending = state::outbox_load(core.store())?;
        let outbox_len = pending.len() as u64;
        if outbox_len > 0 {
            tracing::info!(
                messages = outbox_len,
                "fleet: outbox holds messages from before; sending them first"
            );
        }
        let (tx, rx) = mpsc::channel(8192);
        tracing::info!(
            node = %settings.node,
            servers = ?settings.servers,
            stream = %settings.stream,
            publish = settings.publish,
            apply = settings.apply,
            "fleet: sharing bans through NATS JetStream"
        );
        let client = FleetClient::spawn(settings.clone(), pending, tx);
        Ok(FleetRuntime {
            settings,
            client: Some(client),
            incoming: rx,
            counters: Counters::default(),
            self_addrs,
            outbox_len,
            #[cfg(test)]
            sent: Vec::new(),
        })
    }

    /// Without a client (unit tests): messages stay in the outbox.
    #[cfg(test)]
    fn offline(settings: FleetSettings, core: &mut Agent, self_addrs: Vec<Target>) -> Self {
        state::ensure_tables(core.store()).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        FleetRuntime {
            settings,
            client: None,
            incoming: rx,
            counters: Counters::default(),
            self_addrs,
            outbox_len: 0,
            sent: Vec::new(),
        }
    }

    fn queue(&mut self, core: &mut Agent, msgs: Vec<FleetMessage>) {
        if msgs.is_empty() {
            return;
        }
        let subject = self.settings.own_subject();
        let out: Vec<Outgoing> = msgs
            .iter()
            .map(|m| Outgoing {
                id: m.id.clone(),
                subject: subject.clone(),
                payload: m.encode(),
            })
            .collect();
        // Stored first: what the server has not acknowledged survives a
        // restart. A failed write is logged; banning goes on regardless.
        if let Err(e) = state::outbox_push(core.store(), &out, now_secs()) {
            tracing::error!(
                "fleet: outbox not written, {} message(s) sent without a copy: {e:#}",
                out.len()
            );
        }
        self.outbox_len += out.len() as u64;
        self.counters.queued += out.len() as u64;
        #[cfg(test)]
        self.sent.extend(out.iter().cloned());
        if let Some(c) = &self.client {
            for m in out {
                let _ = c.outgoing.send(m);
            }
        }
    }

    /// The bans this host decided (not fleet, not blocklist files) go out.
    pub fn on_events(&mut self, core: &mut Agent, events: &[BanEvent]) {
        if !self.settings.publish {
            return;
        }
        let node = self.settings.node.clone();
        let msgs: Vec<FleetMessage> = events
            .iter()
            .filter(|e| e.kind == BanEventKind::Ban)
            .filter(|e| !is_fleet_jail(&e.record.jail) && e.record.jail != BLOCKLIST_JAIL)
            .map(|e| ban_message(&node, &e.record))
            .collect();
        self.queue(core, msgs);
    }

    /// An operator's unban, for every node.
    pub fn publish_unbans(&mut self, core: &mut Agent, targets: &[Target]) {
        if !self.settings.publish {
            return;
        }
        let now = now_secs();
        let msgs = targets
            .iter()
            .map(|t| FleetMessage {
                v: message::VERSION,
                id: message::new_id(&self.settings.node),
                node: self.settings.node.clone(),
                body: Body::Unban {
                    target: *t,
                    at: now,
                },
            })
            .collect();
        self.queue(core, msgs);
    }

    /// A batch from the client: acknowledgements and deliveries.
    pub fn on_incoming(&mut self, core: &mut Agent, batch: Vec<Incoming>) {
        let mut acked = Vec::new();
        let mut deliveries = Vec::new();
        for i in batch {
            match i {
                Incoming::Acked(ids) => acked.extend(ids),
                Incoming::Remote(d) => deliveries.push(*d),
            }
        }
        if !acked.is_empty() {
            match state::outbox_remove(core.store(), &acked) {
                Ok(()) => self.outbox_len = self.outbox_len.saturating_sub(acked.len() as u64),
                Err(e) => tracing::error!(
                    "fleet: outbox clean-up: {e:#} (sent again at restart, dropped as duplicates)"
                ),
            }
        }
        if !deliveries.is_empty() {
            self.apply(core, deliveries, now_secs());
        }
    }

    /// Apply deliveries in order; consecutive bans share one database
    /// commit, an unban ends the batch before it (so it lifts what came
    /// before it, never what follows). Acknowledged once stored.
    pub fn apply(&mut self, core: &mut Agent, deliveries: Vec<Delivery>, now: UnixSecs) {
        let mut segment: Vec<(Delivery, FleetMessage)> = Vec::new();
        for d in deliveries {
            let msg = match FleetMessage::decode(&self.settings.subject, &d.subject, &d.payload) {
                Ok(m) => m,
                Err(e) => {
                    match e {
                        DecodeError::Oversized(_) => self.counters.oversized += 1,
                        _ => self.counters.malformed += 1,
                    }
                    tracing::warn!(subject = %d.subject, seq = d.stream_seq, "fleet: dropped: {e}");
                    d.ack();
                    continue;
                }
            };
            if msg.node == self.settings.node {
                self.counters.own += 1;
                d.ack();
                continue;
            }
            match msg.body {
                Body::Ban { .. } => segment.push((d, msg)),
                Body::Unban { .. } => {
                    self.apply_bans(core, std::mem::take(&mut segment), now);
                    self.apply_unban(core, d, msg);
                }
            }
        }
        self.apply_bans(core, segment, now);
    }

    fn apply_bans(
        &mut self,
        core: &mut Agent,
        segment: Vec<(Delivery, FleetMessage)>,
        now: UnixSecs,
    ) {
        if segment.is_empty() {
            return;
        }
        let mut done = Vec::with_capacity(segment.len());
        let mut applied = 0u64;
        let ok = core.batched(|core| {
            for (d, msg) in segment {
                let Body::Ban {
                    target,
                    class,
                    jail,
                    failures,
                    banned_at,
                    expires_at,
                } = &msg.body
                else {
                    continue;
                };
                match state::was_applied(core.store(), &msg.id) {
                    Ok(true) => {
                        self.counters.duplicates += 1;
                        done.push(d);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!("fleet: {e:#}");
                        self.counters.apply_errors += 1;
                        continue;
                    }
                }
                if expires_at.is_some_and(|e| e <= now) {
                    self.counters.expired += 1;
                    done.push(d);
                    continue;
                }
                if let Some(r) = refusal(&self.settings, core, &self.self_addrs, target) {
                    *self.counters.refused.entry(r.as_str()).or_default() += 1;
                    tracing::warn!(
                        "fleet: refused ban of {target} from {} (jail {jail}): {}",
                        msg.node,
                        match r {
                            Refusal::MinPrefix => "wider than fleet.min_prefix_v4/v6",
                            Refusal::Allowlist => "overlaps [defaults] ignoreip",
                            Refusal::IgnoreSelf => "covers this host's own address (ignoreself)",
                        }
                    );
                    done.push(d);
                    continue;
                }
                let rec = BanRecord {
                    target: *target,
                    jail: origin_jail(&msg.node),
                    class: *class,
                    banned_at: *banned_at,
                    expires_at: *expires_at,
                    failures: *failures,
                    matches: Vec::new(),
                };
                let stored = core
                    .fleet_ban(rec, self.settings.count_remote)
                    .and_then(|()| Ok(state::mark_applied(core.store(), &msg.id, *expires_at)?));
                match stored {
                    Ok(()) => {
                        applied += 1;
                        done.push(d);
                    }
                    Err(e) => {
                        self.counters.apply_errors += 1;
                        tracing::error!("fleet: ban of {target} from {}: {e:#}", msg.node);
                    }
                }
            }
        });
        match ok {
            Ok(()) => {
                self.counters.applied_bans += applied;
                for d in done {
                    d.ack();
                }
            }
            Err(e) => {
                // Not acknowledged: the server delivers them again.
                self.counters.apply_errors += 1;
                tracing::error!("fleet: {} remote ban(s) not stored: {e:#}", done.len());
            }
        }
    }

    fn apply_unban(&mut self, core: &mut Agent, d: Delivery, msg: FleetMessage) {
        let Body::Unban { target, at } = msg.body else {
            return;
        };
        match state::was_applied(core.store(), &msg.id) {
            Ok(true) => {
                self.counters.duplicates += 1;
                d.ack();
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!("fleet: {e:#}");
                self.counters.apply_errors += 1;
                return;
            }
        }
        let keep = self.settings.max_age.map(|a| at + a.as_secs() as i64);
        let result = core
            .fleet_unban(&target, at)
            .and_then(|removed| Ok((removed, state::mark_applied(core.store(), &msg.id, keep)?)));
        match result {
            Ok((removed, ())) => {
                self.counters.applied_unbans += 1;
                tracing::info!(
                    "fleet: unban of {target} by the operator of {} lifted {} ban(s) here",
                    msg.node,
                    removed.len()
                );
                d.ack();
            }
            Err(e) => {
                self.counters.apply_errors += 1;
                tracing::error!("fleet: unban of {target} from {}: {e:#}", msg.node);
            }
        }
    }

    /// Stored outbox length (what the server has not acknowledged yet).
    pub fn outbox_len(&self) -> u64 {
        self.outbox_len
    }

    /// `status`'s fleet section.
    pub fn status(&self, core: &Agent) -> FleetStatus {
        let sh = self.client.as_ref().map(|c| c.shared.clone());
        let get = |f: fn(&crate::fleet::client::Shared) -> u64| sh.as_deref().map(f).unwrap_or(0);
        let stream_last = get(|s| s.stream_last_seq.load(Relaxed));
        let pending = get(|s| s.consumer_pending.load(Relaxed));
        FleetStatus {
            node: self.settings.node.clone(),
            servers: self.settings.servers.clone(),
            connected: sh.as_deref().is_some_and(|s| s.connected.load(Relaxed)),
            stream: FleetStreamStatus {
                name: self.settings.stream.clone(),
                ready: sh.as_deref().is_some_and(|s| s.stream_ready.load(Relaxed)),
                messages: get(|s| s.stream_messages.load(Relaxed)),
                last_seq: stream_last,
            },
            consumer: FleetConsumerStatus {
                name: self.settings.consumer_name(),
                ready: sh
                    .as_deref()
                    .is_some_and(|s| s.consumer_ready.load(Relaxed)),
                ack_floor: get(|s| s.consumer_ack_floor.load(Relaxed)),
                delivered_seq: get(|s| s.consumer_delivered_seq.load(Relaxed)),
                ack_pending: get(|s| s.consumer_ack_pending.load(Relaxed)),
                lag: pending + get(|s| s.consumer_ack_pending.load(Relaxed)),
            },
            publish: self.settings.publish,
            apply: self.settings.apply,
            outbox: self.outbox_len,
            sent: get(|s| s.published.load(Relaxed)),
            publish_errors: get(|s| s.publish_errors.load(Relaxed)),
            applied: self.counters.applied_bans,
            applied_unbans: self.counters.applied_unbans,
            refused: self.counters.refused.values().sum::<u64>(),
            refused_by_reason: self
                .counters
                .refused
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            malformed: self.counters.malformed,
            oversized: self.counters.oversized,
            duplicates: self.counters.duplicates,
            expired_on_arrival: self.counters.expired,
            bans_by_origin: core.fleet_origins(),
            last_error: sh
                .as_deref()
                .map(|s| s.last_error.lock().map(|e| e.clone()).unwrap_or_default())
                .unwrap_or_default(),
        }
    }

    /// Prometheus lines for the fleet.
    pub fn metrics(&self, core: &Agent, o: &mut String) {
        let st = self.status(core);
        let mut family = |name: &str, kind: &str, help: &str, lines: Vec<(String, u64)>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        family(
            "xban_fleet_connected",
            "gauge",
            "1 while connected to a NATS server.",
            vec![(String::new(), u64::from(st.connected))],
        );
        family(
            "xban_fleet_outbox_messages",
            "gauge",
            "Messages waiting for the server's acknowledgement.",
            vec![(String::new(), st.outbox)],
        );
        family(
            "xban_fleet_sent_total",
            "counter",
            "Messages the server acknowledged.",
            vec![(String::new(), st.sent)],
        );
        family(
            "xban_fleet_applied_total",
            "counter",
            "Remote messages applied, by kind.",
            vec![
                ("{kind=\"ban\"}".into(), st.applied),
                ("{kind=\"unban\"}".into(), st.applied_unbans),
            ],
        );
        family(
            "xban_fleet_refused_total",
            "counter",
            "Remote bans refused, by reason.",
            ["min_prefix", "allowlist", "ignoreself"]
                .iter()
                .map(|r| {
                    (
                        format!("{{reason=\"{r}\"}}"),
                        self.counters.refused.get(r).copied().unwrap_or(0),
                    )
                })
                .collect(),
        );
        family(
            "xban_fleet_dropped_total",
            "counter",
            "Messages dropped unapplied, by reason.",
            vec![
                ("{reason=\"malformed\"}".into(), self.counters.malformed),
                ("{reason=\"oversized\"}".into(), self.counters.oversized),
                ("{reason=\"duplicate\"}".into(), self.counters.duplicates),
                ("{reason=\"expired\"}".into(), self.counters.expired),
            ],
        );
        family(
            "xban_fleet_stream_last_sequence",
            "gauge",
            "The stream's last sequence number.",
            vec![(String::new(), st.stream.last_seq)],
        );
        family(
            "xban_fleet_consumer_ack_floor",
            "gauge",
            "The stream sequence this node's consumer acknowledged up to.",
            vec![(String::new(), st.consumer.ack_floor)],
        );
        family(
            "xban_fleet_consumer_lag",
            "gauge",
            "Messages not yet applied by this node (pending and unacknowledged).",
            vec![(String::new(), st.consumer.lag)],
        );
    }
}

fn ban_message(node: &str, r: &BanRecord) -> FleetMessage {
    FleetMessage {
        v: message::VERSION,
        id: message::new_id(node),
        node: node.to_string(),
        body: Body::Ban {
            target: r.target,
            class: r.class,
            jail: r.jail.clone(),
            failures: r.failures,
            banned_at: r.banned_at,
            expires_at: r.expires_at,
        },
    }
}

impl Agent {
    /// A ban from another node, already checked: stored (with history only
    /// when remote bans count towards the ladder), then into the kernel
    /// (at the end of the batch inside [`batched`](Self::batched)).
    pub fn fleet_ban(&mut self, rec: BanRecord, history: bool) -> Result<()> {
        // The local allowlist and this host's addresses always win; the
        // width rule for remote bans is [fleet]'s own (checked before).
        if let Err(r) = self.guard_ban(&rec.target, BanOrigin::Fleet, &[], true) {
            bail!("{r}");
        }
        self.bans
            .store
            .put_bans(std::slice::from_ref(&rec), history.then_some(rec.banned_at))?;
        if self.bans.batching {
            self.bans.staged.push(super::batch::StagedBan {
                event_at: rec.banned_at,
                rec,
                offence: String::new(),
                write: false,
            });
        } else {
            self.enforce_ban(&rec)?;
        }
        Ok(())
    }

    /// An operator's unban on another node: lift this host's bans of the
    /// target (fleet and local alike) that began at or before `at`.
    pub fn fleet_unban(&mut self, target: &Target, at: UnixSecs) -> Result<Vec<BanRecord>> {
        let jails: Vec<String> = self
            .bans
            .book
            .records(target)
            .iter()
            .filter(|r| r.banned_at <= at)
            .map(|r| r.jail.clone())
            .collect();
        let mut removed = Vec::new();
        for j in jails {
            removed.extend(self.unban_because(target, Some(&j), "fleet")?);
        }
        Ok(removed)
    }

    /// Fleet bans held now, per origin node.
    pub fn fleet_origins(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (jail, n) in &self.bans.book.tally().records_by_jail {
            if let Some(o) = origin_of(jail) {
                *out.entry(o.to_string()).or_default() += n;
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "fleet_sync_tests.rs"]
mod tests;
