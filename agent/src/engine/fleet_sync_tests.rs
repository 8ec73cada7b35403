use super::*;
use crate::api::handler::BanText;
use crate::ban::BanClass;
use crate::config::Config;
use crate::enforce::DryRunEnforcer;
use crate::store::BanStore;

struct Fixture {
    core: Agent,
    fleet: FleetRuntime,
    seq: u64,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n[defaults]\nignoreip = [\"198.51.100.0/24\"]\n\
         [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['fail from <HOST>$']\n\
         [fleet]\nservers = [\"nats://127.0.0.1:1\"]\nnode = \"b\"\n",
        dir.path().join("none").display()
    );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let store = BanStore::open(dir.path()).unwrap();
    let mut core = Agent::new(&cfg, store, Box::new(DryRunEnforcer::default()), &[]).unwrap();
    let self_addrs = vec!["203.0.113.250".parse().unwrap()];
    let fleet = FleetRuntime::offline(cfg.fleet.unwrap(), &mut core, self_addrs);
    Fixture {
        core,
        fleet,
        seq: 0,
        _dir: dir,
    }
}

fn ban(node: &str, target: &str, banned_at: i64, expires_at: Option<i64>) -> FleetMessage {
    FleetMessage {
        v: message::VERSION,
        id: message::new_id(node),
        node: node.into(),
        body: Body::Ban {
            target: target.parse().unwrap(),
            class: BanClass::Drop,
            jail: "sshd".into(),
            failures: 5,
            banned_at,
            expires_at,
        },
    }
}

fn unban(node: &str, target: &str, at: i64) -> FleetMessage {
    FleetMessage {
        v: message::VERSION,
        id: message::new_id(node),
        node: node.into(),
        body: Body::Unban {
            target: target.parse().unwrap(),
            at,
        },
    }
}

impl Fixture {
    fn deliver_raw(&mut self, subject: &str, payloads: Vec<Vec<u8>>, now: i64) {
        let ds = payloads
            .into_iter()
            .map(|payload| {
                self.seq += 1;
                Delivery {
                    subject: subject.into(),
                    payload,
                    stream_seq: self.seq,
                    message: None,
                }
            })
            .collect();
        self.fleet.apply(&mut self.core, ds, now);
    }

    fn deliver(&mut self, msgs: &[FleetMessage], now: i64) {
        for m in msgs {
            let subject = format!("xban.bans.{}", m.node);
            self.deliver_raw(&subject, vec![m.encode()], now);
        }
    }

    fn banned(&self) -> Vec<(String, String, Option<String>)> {
        let mut v: Vec<_> = self
            .core
            .bans(None)
            .into_iter()
            .map(|b| (b.address, b.jail, b.origin))
            .collect();
        v.sort();
        v
    }
}

#[test]
fn remote_bans_apply_once_with_their_origin_and_absolute_expiry() {
    let mut f = fixture();
    let now = now_secs();
    let m = ban("a", "203.0.113.7", now - 10, Some(now + 600));
    f.deliver(&[m.clone(), m.clone()], now);
    assert_eq!(
        f.banned(),
        vec![("203.0.113.7".into(), "fleet".into(), Some("a".into()))]
    );
    assert_eq!(
        (f.fleet.counters.applied_bans, f.fleet.counters.duplicates),
        (1, 1)
    );
    let view = &f.core.bans(Some("fleet"))[0];
    assert_eq!(view.expires_at, Some(now + 600));
    // The same target from another origin is its own record.
    f.deliver(&[ban("c", "203.0.113.7", now, Some(now + 60))], now);
    assert_eq!(f.core.fleet_origins().len(), 2);
    // Already over when it arrives: not applied.
    f.deliver(&[ban("a", "203.0.113.8", now - 100, Some(now - 1))], now);
    assert_eq!(f.fleet.counters.expired, 1);
    // Expiry ends it at the absolute time: c's at now+60, a's at now+600.
    assert_eq!(f.core.expire(now + 60).unwrap(), 1);
    assert_eq!(f.core.expire(now + 600).unwrap(), 1);
    assert!(f.banned().is_empty());
    // Own messages (the consumer reads the whole stream) are skipped.
    f.deliver(&[ban("b", "203.0.113.9", now, None)], now);
    assert_eq!(f.fleet.counters.own, 1);
    assert!(f.banned().is_empty());
    // Remote bans are never published again.
    let events = f.core.take_events();
    assert!(events.iter().any(|e| e.kind == BanEventKind::Ban));
    f.fleet.on_events(&mut f.core, &events);
    assert!(f.fleet.sent.is_empty());
}

#[test]
fn local_rules_win_and_refusals_are_counted() {
    let mut f = fixture();
    let now = now_secs();
    let exp = Some(now + 600);
    f.deliver(
        &[
            ban("a", "0.0.0.0/1", now, exp),
            ban("a", "203.0.0.0/15", now, exp),
            ban("a", "2001:db8::/32", now, exp),
            ban("a", "198.51.100.7", now, exp),
            ban("a", "198.51.0.0/16", now, exp),
            ban("a", "203.0.113.250", now, exp),
            ban("a", "203.0.113.0/24", now, exp),
            ban("a", "2001:db8:bad::/48", now, exp),
        ],
        now,
    );
    let r = &f.fleet.counters.refused;
    assert_eq!(r.get("min_prefix"), Some(&3));
    assert_eq!(r.get("allowlist"), Some(&2));
    assert_eq!(r.get("ignoreself"), Some(&2));
    assert_eq!(
        f.banned(),
        vec![("2001:db8:bad::/48".into(), "fleet".into(), Some("a".into()))]
    );
    // Garbage on the subject is counted and dropped.
    f.deliver_raw(
        "xban.bans.a",
        vec![
            b"not json".to_vec(),
            vec![b'x'; message::MAX_MESSAGE_BYTES + 1],
            ban("c", "203.0.113.1", now, exp).encode(),
            br#"{"v":1,"kind":"ban"}"#.to_vec(),
        ],
        now,
    );
    assert_eq!(f.fleet.counters.malformed, 3);
    assert_eq!(f.fleet.counters.oversized, 1);
    assert_eq!(f.banned().len(), 1);
}

#[test]
fn operator_unban_lifts_local_and_fleet_bans_made_before_it() {
    let mut f = fixture();
    let now = now_secs();
    f.core
        .ban_text("203.0.113.20", Some("ssh"), None, None)
        .unwrap();
    f.deliver(&[ban("a", "203.0.113.20", now - 5, Some(now + 600))], now);
    assert_eq!(f.banned().len(), 2);
    f.deliver(&[unban("c", "203.0.113.20", now + 1)], now);
    assert!(f.banned().is_empty(), "{:?}", f.banned());
    let events = f.core.take_events();
    assert!(events
        .iter()
        .filter(|e| e.kind == BanEventKind::Unban)
        .all(|e| e.reason == "fleet"));
    // A ban and its unban in one batch: the unban comes after, and wins.
    let b = ban("a", "203.0.113.21", now, Some(now + 600));
    let u = unban("c", "203.0.113.21", now + 1);
    let later = ban("a", "203.0.113.22", now + 5, Some(now + 600));
    let u2 = unban("c", "203.0.113.22", now + 1);
    f.deliver_raw("xban.bans.a", vec![b.encode()], now);
    let ds: Vec<Delivery> = [("a", &b), ("c", &u), ("a", &later), ("c", &u2)]
        .into_iter()
        .map(|(n, m)| Delivery {
            subject: format!("xban.bans.{n}"),
            payload: m.encode(),
            stream_seq: 0,
            message: None,
        })
        .collect();
    f.fleet.apply(&mut f.core, ds, now);
    // 21: banned, unbanned (its redelivery was a duplicate); 22 began
    // after the unban's time and stays.
    assert_eq!(
        f.banned(),
        vec![("203.0.113.22".into(), "fleet".into(), Some("a".into()))]
    );
    assert_eq!(f.fleet.counters.duplicates, 1);
}

#[test]
fn local_bans_and_unbans_go_to_the_outbox_until_acknowledged() {
    let mut f = fixture();
    f.core.ban_text("203.0.113.30", None, None, None).unwrap();
    let events = f.core.take_events();
    f.fleet.on_events(&mut f.core, &events);
    f.fleet
        .publish_unbans(&mut f.core, &["203.0.113.30".parse().unwrap()]);
    assert_eq!(f.fleet.sent.len(), 2);
    let stored = state::outbox_load(f.core.store()).unwrap();
    assert_eq!(stored, f.fleet.sent);
    assert!(stored.iter().all(|m| m.subject == "xban.bans.b"));
    let first = FleetMessage::decode("xban.bans", "xban.bans.b", &stored[0].payload).unwrap();
    assert!(matches!(first.body, Body::Ban { ref jail, .. } if jail == "manual"));
    assert_eq!(first.id, stored[0].id);
    f.fleet.on_incoming(
        &mut f.core,
        vec![Incoming::Acked(vec![stored[0].id.clone()])],
    );
    assert_eq!(state::outbox_load(f.core.store()).unwrap(), stored[1..]);
    assert_eq!(f.fleet.outbox_len(), 1);
}

/// `status`'s `fleet` of a node without a connection: the whole object,
/// as the runtime built it as JSON before it was typed.
#[test]
fn status_of_an_offline_node_reads_the_counters() {
    let mut f = fixture();
    let now = now_secs();
    let exp = Some(now + 600);
    let m = ban("a", "203.0.113.7", now, exp);
    f.deliver(&[m.clone(), m, ban("a", "198.51.100.7", now, exp)], now);
    let v = serde_json::to_value(f.fleet.status(&f.core)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "node": "b",
            "servers": ["nats://127.0.0.1:1"],
            "connected": false,
            "stream": {"name": "XBAN", "ready": false, "messages": 0, "last_seq": 0},
            "consumer": {
                "name": "xban-b",
                "ready": false,
                "ack_floor": 0,
                "delivered_seq": 0,
                "ack_pending": 0,
                "lag": 0,
            },
            "publish": true,
            "apply": true,
            "outbox": 0,
            "sent": 0,
            "publish_errors": 0,
            "applied": 1,
            "applied_unbans": 0,
            "refused": 1,
            "refused_by_reason": {"allowlist": 1},
            "malformed": 0,
            "oversized": 0,
            "duplicates": 1,
            "expired_on_arrival": 0,
            "bans_by_origin": {"a": 1},
            "last_error": "",
        })
    );
    let mut text = String::new();
    f.fleet.metrics(&f.core, &mut text);
    for line in [
        "xban_fleet_connected 0",
        "xban_fleet_applied_total{kind=\"ban\"} 1",
        "xban_fleet_refused_total{reason=\"allowlist\"} 1",
        "xban_fleet_consumer_lag 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}
