//! Views of the agent's state, built from counts kept as bans change (no
//! pass over a million bans): `status`, and `banned` listings read a slice
//! at a time.

use anyhow::{bail, Result};
use serde::Serialize;

use super::Agent;
use crate::addr::Target;
use crate::ban::{BanClass, BanRecord, UnixSecs, MANUAL_JAIL};
use crate::blocklist::BLOCKLIST_JAIL;
use crate::escalation::SUBNET_JAIL;
use crate::jail::Jail;

/// How many banned targets one slice of a `banned` listing reads on the
/// event loop (about a millisecond): a ban waits for one slice at most,
/// not for a listing of a million.
pub const LISTING_SLICE: usize = 2048;

/// A `banned` reply being read from the book a slice at a time.
#[derive(Debug)]
pub struct BanListing {
    jail: Option<String>,
    /// The last target read: the next slice starts after it.
    after: Option<Target>,
    views: Vec<BanView>,
    finished: bool,
}

impl BanListing {
    fn new(jail: Option<&str>) -> BanListing {
        BanListing {
            jail: jail.map(str::to_string),
            after: None,
            views: Vec::new(),
            finished: false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The bans read, oldest first. Sorting a million is done off the
    /// event loop, by the caller.
    pub fn into_sorted(mut self) -> Vec<BanView> {
        self.views.sort_by(|a, b| {
            (a.banned_at, &a.address, &a.jail).cmp(&(b.banned_at, &b.address, &b.jail))
        });
        self.views
    }
}

/// One ban as `xban banned` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BanView {
    pub address: String,
    pub jail: String,
    pub class: BanClass,
    pub banned_at: UnixSecs,
    /// `None`: permanent.
    pub expires_at: Option<UnixSecs>,
    pub failures: u32,
    /// The address's country, when a geo database is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Bans from the fleet (jail `fleet`): the node that made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl From<&BanRecord> for BanView {
    fn from(r: &BanRecord) -> Self {
        let origin = crate::fleet::origin_of(&r.jail);
        BanView {
            address: r.target.to_string(),
            origin: origin.map(str::to_string),
            jail: match origin {
                Some(_) => crate::fleet::FLEET_JAIL.to_string(),
                None => r.jail.clone(),
            },
            class: r.class,
            banned_at: r.banned_at,
            expires_at: r.expires_at,
            failures: r.failures,
            country: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JailStatus {
    pub name: String,
    pub failing_now: usize,
    pub bans_now: usize,
    pub counters: JailCountersView,
    /// What the jail reads: the files followed now, or `journal`.
    #[serde(default)]
    pub following: Vec<String>,
    /// With `status JAIL`: addresses failing now and their counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<(String, usize)>,
}

/// A jail's running counters as `status` shows them: the jail's own
/// counters, whose field names are the wire format.
pub use crate::jail::JailCounters as JailCountersView;

/// How long the event loop's turns take: every ban waits for the turn in
/// progress, so a slow one is a ban held back.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LoopTurns {
    /// Turns taken (each handles one event: a batch of lines, a request, a
    /// tick, a slice of a listing...).
    pub turns: u64,
    /// Turns that took longer than [`LoopTurns::SLOW_MS`].
    pub slow_turns: u64,
    /// The longest turn since the agent started, and what it did.
    pub slowest_ms: f64,
    pub slowest_work: String,
    /// The same, per kind of work.
    #[serde(default)]
    pub by_work: std::collections::BTreeMap<String, WorkTurns>,
}

/// One kind of work's turns.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkTurns {
    pub turns: u64,
    pub slowest_ms: f64,
}

impl LoopTurns {
    pub const SLOW_MS: f64 = 10.0;

    /// Count a turn of `work` that started at `started`.
    pub fn record(&mut self, work: &str, started: std::time::Instant) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.turns += 1;
        if ms > Self::SLOW_MS {
            self.slow_turns += 1;
            tracing::debug!(work, ms, "slow event-loop turn");
        }
        if ms > self.slowest_ms {
            self.slowest_ms = ms;
            self.slowest_work = work.to_string();
        }
        if !self.by_work.contains_key(work) {
            self.by_work.insert(work.to_string(), WorkTurns::default());
        }
        if let Some(w) = self.by_work.get_mut(work) {
            w.turns += 1;
            w.slowest_ms = w.slowest_ms.max(ms);
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusView {
    pub interfaces: Vec<String>,
    pub xdp_mode: String,
    pub bans_active: usize,
    pub bans_drop: usize,
    pub bans_tarpit: usize,
    pub map_entries: usize,
    pub xdp: Option<crate::enforce::xdp::XdpStats>,
    /// Tarpit steering: mode, set members, chain counters.
    pub tarpit: Option<crate::enforce::TarpitStatus>,
    /// XDP fast-path occupancy (entries in the table, the overflow hash, the
    /// trie only; regions in trie fallback).
    #[serde(default)]
    pub fast_path: Option<crate::enforce::xdp::FastPathStatus>,
    /// XDP links per interface and their repairs (filled by the daemon).
    #[serde(default)]
    pub links: Option<crate::enforce::xdp::links::LinksStatus>,
    pub jails: Vec<JailStatus>,
    /// `[fleet]`: connection, stream and consumer positions, counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// The daemon's event loop (absent outside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_loop: Option<LoopTurns>,
    /// Host names in ignoreip: their addresses now, and errors.
    #[serde(default)]
    pub dns: Vec<crate::dns::NameStatus>,
    /// Names that never resolved (nothing is allowlisted for them).
    #[serde(default)]
    pub dns_unresolved: Vec<String>,
    /// Geo rules in force, when a database is configured.
    #[serde(default)]
    pub geo: Option<GeoStatus>,
    /// Active bans per country of the banned address (with a geo database).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bans_by_country: std::collections::BTreeMap<String, usize>,
    /// Whether bans reach the database (disk full: a backlog waits).
    #[serde(default)]
    pub store: crate::engine::backlog::StoreHealth,
    /// Bad lines and unreadable files of the blocklists.
    #[serde(default)]
    pub blocklists: crate::blocklist::BlocklistHealth,
    /// Bans the guard refused since start, by rule and origin.
    #[serde(default)]
    pub ban_refusals: Vec<RefusalCount>,
}

// The parts below read missing keys as their defaults, as the JSON values
// they replace did: a `status` reply from an agent a version apart still
// prints.

/// `status`'s `geo`: the geo rules in force (with a database).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GeoStatus {
    pub database: Option<std::path::PathBuf>,
    pub asn_database: Option<std::path::PathBuf>,
    /// Each rule as the operator reads it.
    pub rules: Vec<String>,
    /// Ban prefixes in force, per family.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub allow_prefixes: usize,
    /// Packets dropped at XDP per country (or AS) of the prefix, `other`
    /// for prefixes without a label of their own.
    pub dropped_packets: std::collections::BTreeMap<String, u64>,
    /// Loads of the databases since start.
    pub generation: u64,
    pub compile_ms: f64,
    pub load_ms: f64,
}

/// `status`'s `fleet`: connection, stream and consumer positions, counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FleetStatus {
    pub node: String,
    pub servers: Vec<String>,
    pub connected: bool,
    pub stream: FleetStreamStatus,
    pub consumer: FleetConsumerStatus,
    pub publish: bool,
    pub apply: bool,
    /// Stored messages the server has not acknowledged yet.
    pub outbox: u64,
    /// Messages the server acknowledged.
    pub sent: u64,
    pub publish_errors: u64,
    pub applied: u64,
    pub applied_unbans: u64,
    /// The sum of `refused_by_reason`.
    pub refused: u64,
    pub refused_by_reason: std::collections::BTreeMap<String, u64>,
    pub malformed: u64,
    pub oversized: u64,
    pub duplicates: u64,
    pub expired_on_arrival: u64,
    /// Active fleet bans per node that made them.
    pub bans_by_origin: std::collections::BTreeMap<String, usize>,
    /// The client's last error (empty: none).
    pub last_error: String,
}

/// The fleet's stream, as the server last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FleetStreamStatus {
    pub name: String,
    pub ready: bool,
    pub messages: u64,
    pub last_seq: u64,
}

/// This node's durable consumer of the stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FleetConsumerStatus {
    pub name: String,
    pub ready: bool,
    pub ack_floor: u64,
    pub delivered_seq: u64,
    pub ack_pending: u64,
    /// Messages not applied yet: pending and unacknowledged.
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RefusalCount {
    /// `min_prefix`, `allowlist` or `host_address`.
    pub rule: String,
    /// `manual`, `jail`, `blocklist` or `subnet`.
    pub origin: String,
    pub count: u64,
}

impl Agent {
    /// Every ban (of one jail), sorted as `xban banned` shows them.
    pub fn bans(&self, jail: Option<&str>) -> Vec<BanView> {
        let mut listing = BanListing::new(jail);
        while !listing.is_finished() {
            self.continue_listing(&mut listing, usize::MAX);
        }
        listing.into_sorted()
    }

    /// A `banned` listing, checked and started; [`continue_listing`]
    /// reads it a slice at a time.
    ///
    /// [`continue_listing`]: Self::continue_listing
    pub fn start_listing(&self, jail: Option<&str>) -> Result<BanListing> {
        if let Some(j) = jail {
            self.known_ban_owner(j)?;
        }
        Ok(BanListing::new(jail))
    }

    /// Read up to `max_targets` more banned targets into the listing. The
    /// book may change between slices: each target is read once, as it is
    /// when its slice is read.
    pub fn continue_listing(&self, listing: &mut BanListing, max_targets: usize) {
        if listing.after.is_none() && listing.views.capacity() == 0 {
            // Room for all of them at the first slice (not while queued):
            // growing a vector of a million views copies it, in one turn.
            let tally = self.bans.book.tally();
            let records = match listing.jail.as_deref() {
                Some(j) if j != crate::fleet::FLEET_JAIL => {
                    tally.records_by_jail.get(j).copied().unwrap_or(0)
                }
                _ => tally.records_by_jail.values().sum(),
            };
            listing.views.reserve_exact(records);
        }
        let fleet = listing.jail.as_deref() == Some(crate::fleet::FLEET_JAIL);
        let mut read = 0;
        let mut last = None;
        for (t, recs) in self.bans.book.targets_after(listing.after.as_ref()) {
            if read == max_targets {
                break;
            }
            read += 1;
            last = Some(t);
            for r in recs {
                let wanted = listing.jail.as_deref().is_none_or(|j| r.jail == j)
                    || (fleet && crate::fleet::is_fleet_jail(&r.jail));
                if wanted {
                    let mut b = BanView::from(&r);
                    b.country = self.country_of(r.target.addr());
                    listing.views.push(b);
                }
            }
        }
        match last {
            Some(t) if read == max_targets => listing.after = Some(t),
            _ => listing.finished = true,
        }
    }

    /// `bans_now` is counted for all jails in one pass over the book by the
    /// caller: per jail it would be a pass each.
    pub(super) fn jail_status(&self, j: &Jail, detailed: bool, bans_now: usize) -> JailStatus {
        let mut failing: Vec<(String, usize)> = if detailed {
            j.window
                .failing()
                .map(|(a, n)| (a.to_string(), n))
                .collect()
        } else {
            Vec::new()
        };
        failing.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        JailStatus {
            name: j.name().to_string(),
            failing_now: j.window.failing_count(),
            bans_now,
            counters: JailCountersView {
                backtrack_limit_hits: j.filter().backtrack_limit_hits(),
                ..j.counters.clone()
            },
            following: Vec::new(),
            failing,
        }
    }

    pub fn status(&self, jail: Option<&str>) -> Result<StatusView> {
        // Counts kept as bans change: no pass over the book, which with a
        // million bans holds the loop for tens of milliseconds.
        let tally = self.bans.book.tally();
        let bans_now = |j: &Jail| tally.records_by_jail.get(j.name()).copied().unwrap_or(0);
        let jails = match jail {
            Some(name) => {
                let j = self.jails.by_name(name)?;
                vec![self.jail_status(j, true, bans_now(j))]
            }
            None => self
                .jails
                .list
                .iter()
                .map(|j| self.jail_status(j, false, bans_now(j)))
                .collect(),
        };
        let (bans_drop, bans_tarpit) = (tally.drop, tally.tarpit);
        Ok(StatusView {
            interfaces: self.interfaces.clone(),
            xdp_mode: self.xdp_mode.clone(),
            bans_active: bans_drop + bans_tarpit,
            bans_drop,
            bans_tarpit,
            // One entry per banned target. Not read back from the kernel: a
            // walk of a million-entry trie holds the loop for seconds.
            map_entries: self.bans.book.len_targets(),
            xdp: self.bans.enforcer.xdp_stats()?,
            tarpit: self.bans.enforcer.steering_status(),
            fast_path: self.bans.enforcer.fast_path(),
            links: None,
            jails,
            store: self.bans.backlog.health(),
            blocklists: self.blocklists.lists.health(),
            ban_refusals: self
                .refusals
                .iter()
                .map(|((rule, origin), count)| RefusalCount {
                    rule: rule.to_string(),
                    origin: origin.to_string(),
                    count: *count,
                })
                .collect(),
            dns: self.dns_status(),
            dns_unresolved: self.dynamic.names.unresolved(),
            geo: self.geo_status(),
            bans_by_country: self.bans_by_country(),
            fleet: None,
            event_loop: None,
        })
    }

    pub(super) fn bans_by_country(&self) -> std::collections::BTreeMap<String, usize> {
        if self.dynamic.geo.db.is_none() {
            return Default::default();
        }
        self.bans.book.tally().by_label.clone()
    }

    /// `--jail NAME` of `banned`/`unban`: a configured jail, one of the
    /// agent's own ban owners (manual, blocklist, subnet), or a jail that a
    /// reload removed whose bans are still active. Anything else is a typo,
    /// and saying "nothing to unban" would hide it.
    pub fn known_ban_owner(&self, name: &str) -> Result<()> {
        if self.jails.list.iter().any(|j| j.name() == name)
            || crate::guard::RESERVED_JAIL_NAMES.contains(&name)
            || self.bans.book.has_jail(name)
        {
            return Ok(());
        }
        let mut names: Vec<&str> = self.jails.list.iter().map(|j| j.name()).collect();
        names.extend([MANUAL_JAIL, BLOCKLIST_JAIL, SUBNET_JAIL]);
        bail!(
            "no jail named `{name}` (jails: {}): check the name with `xban status`",
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The wire format of `status`'s `geo`, as the JSON object the engine
    /// built before it was typed.
    #[test]
    fn geo_status_json_is_pinned() {
        let g = GeoStatus {
            database: Some("/var/lib/GeoIP/GeoLite2-Country.mmdb".into()),
            asn_database: None,
            rules: vec!["rules[0]: ban countries XA".into()],
            prefixes_v4: 12,
            prefixes_v6: 3,
            allow_prefixes: 1,
            dropped_packets: [("XA".to_string(), 40), ("other".to_string(), 2)]
                .into_iter()
                .collect(),
            generation: 2,
            compile_ms: 1.25,
            load_ms: 0.5,
        };
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            json!({
                "database": "/var/lib/GeoIP/GeoLite2-Country.mmdb",
                "asn_database": null,
                "rules": ["rules[0]: ban countries XA"],
                "prefixes_v4": 12,
                "prefixes_v6": 3,
                "allow_prefixes": 1,
                "dropped_packets": {"XA": 40, "other": 2},
                "generation": 2,
                "compile_ms": 1.25,
                "load_ms": 0.5,
            })
        );
        assert_eq!(serde_json::from_value::<GeoStatus>(v).unwrap(), g);
    }

    /// The wire format of `status`'s `fleet`, as the JSON object the fleet
    /// runtime built before it was typed.
    #[test]
    fn fleet_status_json_is_pinned() {
        let f = FleetStatus {
            node: "b".into(),
            servers: vec!["nats://127.0.0.1:4222".into()],
            connected: true,
            stream: FleetStreamStatus {
                name: "XBAN".into(),
                ready: true,
                messages: 10,
                last_seq: 11,
            },
            consumer: FleetConsumerStatus {
                name: "xban-b".into(),
                ready: false,
                ack_floor: 9,
                delivered_seq: 10,
                ack_pending: 1,
                lag: 2,
            },
            publish: true,
            apply: false,
            outbox: 3,
            sent: 4,
            publish_errors: 5,
            applied: 6,
            applied_unbans: 7,
            refused: 8,
            refused_by_reason: [("allowlist".to_string(), 8)].into_iter().collect(),
            malformed: 9,
            oversized: 10,
            duplicates: 11,
            expired_on_arrival: 12,
            bans_by_origin: [("a".to_string(), 13)].into_iter().collect(),
            last_error: String::new(),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            json!({
                "node": "b",
                "servers": ["nats://127.0.0.1:4222"],
                "connected": true,
                "stream": {"name": "XBAN", "ready": true, "messages": 10, "last_seq": 11},
                "consumer": {
                    "name": "xban-b",
                    "ready": false,
                    "ack_floor": 9,
                    "delivered_seq": 10,
                    "ack_pending": 1,
                    "lag": 2,
                },
                "publish": true,
                "apply": false,
                "outbox": 3,
                "sent": 4,
                "publish_errors": 5,
                "applied": 6,
                "applied_unbans": 7,
                "refused": 8,
                "refused_by_reason": {"allowlist": 8},
                "malformed": 9,
                "oversized": 10,
                "duplicates": 11,
                "expired_on_arrival": 12,
                "bans_by_origin": {"a": 13},
                "last_error": "",
            })
        );
        assert_eq!(serde_json::from_value::<FleetStatus>(v).unwrap(), f);
    }

    /// In `status`, absent parts stay as they were: `xdp`, `tarpit`, `links`
    /// and `geo` are `null`, `fleet` is left out.
    #[test]
    fn absent_parts_of_status_keep_their_shape() {
        let st = StatusView {
            interfaces: Vec::new(),
            xdp_mode: "native".into(),
            bans_active: 0,
            bans_drop: 0,
            bans_tarpit: 0,
            map_entries: 0,
            xdp: None,
            tarpit: None,
            fast_path: None,
            links: None,
            jails: Vec::new(),
            fleet: None,
            event_loop: None,
            dns: Vec::new(),
            dns_unresolved: Vec::new(),
            geo: None,
            bans_by_country: Default::default(),
            store: Default::default(),
            blocklists: Default::default(),
            ban_refusals: Vec::new(),
        };
        let v = serde_json::to_value(&st).unwrap();
        for key in ["xdp", "tarpit", "links", "geo"] {
            assert_eq!(v.get(key), Some(&serde_json::Value::Null), "{key}");
        }
        assert!(v.get("fleet").is_none());
        let back: StatusView = serde_json::from_value(v).unwrap();
        assert!(back.xdp.is_none() && back.tarpit.is_none() && back.links.is_none());
        assert!(back.geo.is_none() && back.fleet.is_none());
    }

    /// A reply missing keys (an agent a version apart) still reads, as
    /// the JSON values these views replace did.
    #[test]
    fn parts_read_with_keys_missing() {
        let empty = json!({});
        assert_eq!(
            serde_json::from_value::<FleetStatus>(json!({"node": "a", "stream": {}})).unwrap(),
            FleetStatus {
                node: "a".into(),
                ..Default::default()
            }
        );
        serde_json::from_value::<GeoStatus>(empty.clone()).unwrap();
        serde_json::from_value::<crate::enforce::TarpitStatus>(empty.clone()).unwrap();
        serde_json::from_value::<crate::enforce::xdp::links::LinksStatus>(
            json!({"interfaces": [{"interface": "eth9"}]}),
        )
        .unwrap();
        let x: crate::enforce::xdp::XdpStats =
            serde_json::from_value(json!({"seen": 4, "tarpit_ack": 2})).unwrap();
        assert_eq!((x.seen, x.tarpit.ack, x.dropped), (4, 2, 0));
        serde_json::from_value::<crate::enforce::xdp::XdpStats>(empty).unwrap();
    }
}
