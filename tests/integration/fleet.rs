//! Bans shared across a fleet through NATS JetStream: real `nats-server`
//! processes in a hub namespace, three agents each in its own lab with its
//! own attacker.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use xban_tests::fleet::{Hub, NatsServer};
use xban_tests::*;

/// One host of the fleet.
pub(crate) struct Node {
    pub(crate) lab: Lab,
    pub(crate) dir: AgentDir,
    pub(crate) agent: Option<AgentProcess>,
}

pub(crate) fn node(hub: &Hub, name: &str, servers: &[String], defaults: &str, fleet: &str) -> Node {
    let lab = Lab::new().unwrap();
    hub.join(&lab).unwrap();
    let dir = AgentDir::new().unwrap();
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let maxretry = if defaults.contains("maxretry") {
        ""
    } else {
        "maxretry = 3"
    };
    dir.write_config(
        &lab,
        &format!(
            r#"
[defaults]
{maxretry}
bantime = "1h"
{defaults}

[escalation]
enabled = false

[jails.sshd]
filter = "sshd"
logpath = ["{{LOG}}"]

[fleet]
servers = [{}]
node = "{name}"
{fleet}
"#,
            servers.join(", ")
        ),
    )
    .unwrap();
    let mut n = Node {
        lab,
        dir,
        agent: None,
    };
    n.start();
    n
}

impl Node {
    pub(crate) fn start(&mut self) {
        assert!(self.agent.is_none());
        self.agent = Some(AgentProcess::start(&self.lab, &self.dir).unwrap());
    }

    pub(crate) fn stop(&mut self) {
        let status = self.agent.take().unwrap().stop().unwrap();
        assert!(status.success(), "agent exit: {status}");
    }

    pub(crate) fn log(&self) -> String {
        self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
    }

    pub(crate) fn fleet(&self) -> Value {
        let st: Value =
            serde_json::from_str(&self.dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
        st["fleet"].clone()
    }

    pub(crate) fn wait_ready(&self) {
        assert!(
            wait_for(Duration::from_secs(30), || {
                let f = self.fleet();
                f["connected"] == true && f["consumer"]["ready"] == true
            }),
            "fleet not ready: {}\n{}",
            self.fleet(),
            self.log()
        );
    }

    /// (address, jail, origin) of every active ban.
    pub(crate) fn bans(&self) -> Vec<(String, String, String)> {
        self.dir
            .banned()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap().to_string(),
                    b["jail"].as_str().unwrap().to_string(),
                    b["origin"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub(crate) fn has(&self, addr: &str) -> bool {
        self.bans().iter().any(|b| b.0 == addr)
    }

    pub(crate) fn fail(&self, addr: &str, times: usize) {
        let lines: Vec<String> = (0..times).map(|n| sshd_failure(addr, n)).collect();
        self.dir.append_log(&lines).unwrap();
    }

    pub(crate) fn dropped(&self, addr: &str) -> bool {
        !self.lab.udp_reaches(addr, SRV_V4)
    }
}

pub(crate) fn wait(what: &str, secs: u64, nodes: &[&Node], f: impl FnMut() -> bool) {
    if !wait_for(Duration::from_secs(secs), f) {
        let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
        panic!("{what} (within {secs} s)\n{}", logs.join("\n-----\n"));
    }
}

#[test]
fn fleet_three_agents_share_bans_expiry_unban_and_allowlist() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&hub, tmp.path(), 4222).unwrap();
    let urls = [server.url()];
    let a = node(&hub, "a", &urls, "", "");
    let b = node(&hub, "b", &urls, "", "");
    let c = node(&hub, "c", &urls, &format!("ignoreip = [\"{ATK2_V4}\"]"), "");
    for n in [&a, &b, &c] {
        n.wait_ready();
    }
    for n in [&a, &b, &c] {
        assert!(
            !n.dropped(ATK_V4),
            "before any ban the attacker gets through"
        );
    }

    // Failures on A ban the attacker there; B and C drop it too.
    a.fail(ATK_V4, 3);
    wait("A bans the attacker", 10, &[&a], || a.has(ATK_V4));
    let t0 = Instant::now();
    wait("B and C have A's ban", 10, &[&a, &b, &c], || {
        b.has(ATK_V4) && c.has(ATK_V4)
    });
    eprintln!("A's ban reached B and C within {:?}", t0.elapsed());
    for n in [&b, &c] {
        assert_eq!(
            n.bans(),
            vec![(ATK_V4.to_string(), "fleet".to_string(), "a".to_string())],
            "kept under jail fleet with its origin"
        );
        assert!(
            n.dropped(ATK_V4),
            "A's attacker is dropped at XDP elsewhere"
        );
        assert!(!n.dropped(ATK3_V4), "a bystander is not");
    }
    let human = b.dir.xban_ok(&["banned"]).unwrap();
    assert!(human.contains("fleet@a"), "{human}");
    let human = b.dir.xban_ok(&["status"]).unwrap();
    assert!(human.contains("fleet: node b connected"), "{human}");

    // The same absolute expiry everywhere: a 4 s ban from A ends on all
    // three nodes at once, with no message about it.
    a.dir.xban_ok(&["ban", ATK3_V4, "--bantime", "4s"]).unwrap();
    wait("B and C have the short ban", 10, &[&a, &b, &c], || {
        b.has(ATK3_V4) && c.has(ATK3_V4)
    });
    let expiry = |n: &Node| -> i64 {
        n.dir
            .banned()
            .unwrap()
            .iter()
            .find(|x| x["address"] == ATK3_V4)
            .unwrap()["expires_at"]
            .as_i64()
            .unwrap()
    };
    let exp = expiry(&a);
    assert_eq!((expiry(&b), expiry(&c)), (exp, exp));
    wait("the short ban ends everywhere", 10, &[&a, &b, &c], || {
        !a.has(ATK3_V4) && !b.has(ATK3_V4) && !c.has(ATK3_V4)
    });
    let ended = chrono::Utc::now().timestamp();
    assert!(ended - exp <= 2, "ended {} s after its expiry", ended - exp);
    assert!(!b.dropped(ATK3_V4) && !c.dropped(ATK3_V4));

    // C's allowlisted address: B bans it, C refuses and counts it.
    a.fail(ATK2_V4, 3);
    wait("B has the second ban", 10, &[&a, &b], || b.has(ATK2_V4));
    wait("C counts the refusal", 10, &[&c], || {
        c.fleet()["refused_by_reason"]["allowlist"] == 1
    });
    assert!(!c.has(ATK2_V4), "C's allowlist wins");
    assert!(
        !c.dropped(ATK2_V4),
        "C lets its allowlisted address through"
    );
    assert!(b.dropped(ATK2_V4));

    // Hostile and broken messages on the subject: refused or dropped,
    // counted, never fatal.
    let now = chrono::Utc::now().timestamp();
    let ban = |node: &str, target: &str| {
        serde_json::json!({"v": 1, "kind": "ban", "id": format!("{node}-{target}"), "node": node,
            "target": target, "class": "drop", "jail": "x", "failures": 1,
            "banned_at": now, "expires_at": now + 600})
        .to_string()
    };
    let p = server.port;
    hub.publish_raw(p, "xban.bans.a", ban("a", "0.0.0.0/1").as_bytes())
        .unwrap();
    hub.publish_raw(p, "xban.bans.a", ban("a", "198.0.0.0/8").as_bytes())
        .unwrap();
    hub.publish_raw(p, "xban.bans.a", ban("a", SRV_V4).as_bytes())
        .unwrap();
    hub.publish_raw(p, "xban.bans.a", b"{\"v\":1,\"kind\":\"ban\"")
        .unwrap();
    hub.publish_raw(p, "xban.bans.c", ban("a", "203.0.113.99").as_bytes())
        .unwrap();
    hub.publish_raw(p, "xban.bans.a", &vec![b'{'; 10_000])
        .unwrap();
    for n in [&b, &c] {
        wait("hostile messages counted", 10, &[n], || {
            let f = n.fleet();
            f["refused_by_reason"]["min_prefix"] == 2
                && f["refused_by_reason"]["ignoreself"] == 1
                && f["malformed"] == 2
                && f["oversized"] == 1
        });
        assert!(!n.has("0.0.0.0/1") && !n.has(SRV_V4) && !n.has("203.0.113.99"));
    }
    let metrics = b.dir.xban_ok(&["status", "--json"]).unwrap();
    assert!(metrics.contains("refused_by_reason"));

    // An operator unban on B lifts it everywhere, A's own jail ban included.
    assert_eq!(a.bans()[0].1, "sshd");
    b.dir.xban_ok(&["unban", ATK_V4]).unwrap();
    wait("the unban reaches every node", 10, &[&a, &b, &c], || {
        !a.has(ATK_V4) && !b.has(ATK_V4) && !c.has(ATK_V4)
    });
    for n in [&a, &b, &c] {
        assert!(!n.dropped(ATK_V4), "unbanned everywhere");
    }
    // `--local` keeps it to this host.
    a.fail(ATK_V4, 3);
    wait(
        "A bans again after more failures",
        10,
        &[&a, &b, &c],
        || a.has(ATK_V4) && b.has(ATK_V4) && c.has(ATK_V4),
    );
    c.dir.xban_ok(&["unban", "--local", ATK_V4]).unwrap();
    assert!(!c.has(ATK_V4));
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.has(ATK_V4) && b.has(ATK_V4), "a local unban stays local");

    // Metrics carry the same figures.
    let st = b.fleet();
    assert!(st["sent"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["outbox"], 0);
    drop(server);
}

#[test]
fn fleet_node_down_catches_up_without_duplicates_or_expired_bans() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&hub, tmp.path(), 4222).unwrap();
    let urls = [server.url()];
    let a = node(&hub, "a", &urls, "maxretry = 1", "");
    let mut b = node(&hub, "b", &urls, "", "");
    a.wait_ready();
    b.wait_ready();
    b.stop();

    // A makes 1,000 bans (one failure each) and 20 that end before B returns.
    let addrs: Vec<String> = (1..=1000).map(|i| format!("2001:db8:f00::{i:x}")).collect();
    let lines: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| sshd_failure(a, i))
        .collect();
    a.dir.append_log(&lines).unwrap();
    for i in 1..=20 {
        a.dir
            .xban_ok(&["ban", &format!("2001:db8:dead::{i:x}"), "--bantime", "2s"])
            .unwrap();
    }
    wait("A has its 1,000 bans, all sent", 30, &[&a], || {
        let f = a.fleet();
        a.bans().len() >= 1000 && f["outbox"] == 0
    });
    std::thread::sleep(Duration::from_secs(3));

    b.start();
    wait("B catches up on all 1,000", 30, &[&b], || {
        b.fleet()["consumer"]["lag"] == 0 && b.bans().len() >= 1000
    });
    let bans = b.bans();
    let unique: BTreeSet<&String> = bans.iter().map(|x| &x.0).collect();
    assert_eq!(bans.len(), 1000, "each once");
    assert_eq!(unique.len(), 1000);
    assert_eq!(
        unique,
        addrs.iter().collect::<BTreeSet<_>>(),
        "exactly A's long bans"
    );
    assert!(bans.iter().all(|x| x.1 == "fleet" && x.2 == "a"));
    let f = b.fleet();
    assert_eq!(f["applied"], 1000, "{f}");
    assert_eq!(f["expired_on_arrival"], 20, "{f}");
    let st: Value = serde_json::from_str(&b.dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(st["map_entries"], 1000, "the kernel holds each once");
    drop(server);
}

#[test]
fn fleet_server_outage_outbox_drains_exactly_once() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(&hub, tmp.path(), 4222).unwrap();
    let urls = [server.url()];
    let mut a = node(&hub, "a", &urls, "maxretry = 1", "");
    let b = node(&hub, "b", &urls, "", "");
    let c = node(&hub, "c", &urls, "", "");
    for n in [&a, &b, &c] {
        n.wait_ready();
    }
    server.kill();
    wait("A sees the server gone", 15, &[&a], || {
        a.fleet()["connected"] == false
    });

    // A keeps banning locally while the server is away...
    let addrs: Vec<String> = (1..=50).map(|i| format!("203.0.113.{}", 100 + i)).collect();
    let lines: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, x)| sshd_failure(x, i))
        .collect();
    a.dir.append_log(&lines).unwrap();
    wait("A bans locally during the outage", 10, &[&a], || {
        a.bans().len() == 50
    });
    assert_eq!(a.fleet()["outbox"], 50);
    // ... and the outbox outlives a restart of A.
    a.stop();
    a.start();
    assert_eq!(a.fleet()["outbox"], 50, "{}", a.log());

    server.restart().unwrap();
    for n in [&b, &c] {
        wait("B and C receive A's outbox", 30, &[&a, n], || {
            n.bans().len() == 50 && n.fleet()["consumer"]["lag"] == 0
        });
        let f = n.fleet();
        assert_eq!(f["applied"], 50, "exactly once: {f}");
        let got: BTreeSet<String> = n.bans().into_iter().map(|x| x.0).collect();
        assert_eq!(got, addrs.iter().cloned().collect::<BTreeSet<_>>());
    }
    wait("A's outbox drains", 10, &[&a], || a.fleet()["outbox"] == 0);
    // The stream holds each once (Nats-Msg-Id deduplicates the retries).
    wait("the stream holds 50 messages", 10, &[&b], || {
        b.fleet()["stream"]["messages"] == 50
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.fleet()["stream"]["messages"], 50, "no duplicate stored");
}

#[test]
fn fleet_cluster_loses_a_server_and_no_ban_is_lost() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let routes = [6222, 6223, 6224];
    let mut servers: Vec<NatsServer> = (0..3)
        .map(|i| {
            NatsServer::start_clustered(
                &hub,
                tmp.path(),
                &format!("n{}", i + 1),
                4222 + i as u16,
                Some((routes[i], &routes)),
            )
            .unwrap()
        })
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let a = node(&hub, "a", &urls, "maxretry = 1", "replicas = 3");
    let b = node(&hub, "b", &urls, "", "replicas = 3");
    a.wait_ready();
    b.wait_ready();

    let addrs: Vec<String> = (1..=300).map(|i| format!("2001:db8:c1::{i:x}")).collect();
    for (chunk_no, chunk) in addrs.chunks(30).enumerate() {
        if chunk_no == 4 {
            // One server dies in the middle of the stream of bans.
            servers[0].kill();
        }
        let lines: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, x)| sshd_failure(x, i))
            .collect();
        a.dir.append_log(&lines).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    wait(
        "B has every ban despite the lost server",
        60,
        &[&a, &b],
        || b.bans().len() == 300,
    );
    let got: BTreeSet<String> = b.bans().into_iter().map(|x| x.0).collect();
    assert_eq!(got, addrs.iter().cloned().collect::<BTreeSet<_>>());
    for n in [&a, &b] {
        wait("connected again on their own", 30, &[n], || {
            n.fleet()["connected"] == true
        });
    }
    wait("A's outbox drains", 30, &[&a], || a.fleet()["outbox"] == 0);
    assert_eq!(b.fleet()["applied"], 300);
}

#[test]
fn fleet_example_server_config_lets_each_node_publish_only_as_itself() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/fleet/nats-server.conf"
    );
    let mut conf = std::fs::read_to_string(example).unwrap();
    let mut seeds = Vec::new();
    for n in ["a", "b", "c"] {
        let path = tmp.path().join(format!("{n}.nk"));
        let out = std::process::Command::new(xban_bin())
            .arg("fleet-key")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let placeholder = format!("NODE_{}_NKEY", n.to_uppercase());
        assert!(conf.contains(&placeholder));
        conf = conf.replace(&placeholder, &public);
        seeds.push(path);
    }
    let listen = "listen: \"0.0.0.0:4222\"";
    assert!(conf.contains(listen) && conf.contains("/var/lib/nats/jetstream"));
    let conf = conf
        .replace(
            listen,
            &format!("listen: \"{}:4222\"", xban_tests::fleet::HUB_V4),
        )
        .replace(
            "/var/lib/nats/jetstream",
            &tmp.path().join("js").display().to_string(),
        );
    let server = NatsServer::start_with_conf(&hub, tmp.path(), "n1", 4222, &conf).unwrap();
    let urls = [server.url()];
    let seed_line = |i: usize| format!("nkey_seed_file = \"{}\"", seeds[i].display());
    let a = node(&hub, "a", &urls, "", &seed_line(0));
    let b = node(&hub, "b", &urls, "", &seed_line(1));
    a.wait_ready();
    b.wait_ready();
    a.fail(ATK_V4, 3);
    wait(
        "A's ban reaches B through the locked-down server",
        10,
        &[&a, &b],
        || b.has(ATK_V4),
    );

    let now = chrono::Utc::now().timestamp();
    let forged = serde_json::json!({"v": 1, "kind": "ban", "id": "forged-1", "node": "b",
        "target": "203.0.113.66", "class": "drop", "jail": "x", "failures": 1,
        "banned_at": now, "expires_at": now + 600})
    .to_string();
    let seed_a = std::fs::read_to_string(&seeds[0]).unwrap();
    // A's key may not publish on B's subject...
    let e = hub
        .publish_raw_as(4222, Some(seed_a.trim()), "xban.bans.b", forged.as_bytes())
        .unwrap_err();
    assert!(format!("{e:#}").contains("Permissions Violation"), "{e:#}");
    // ... nobody without a key may publish at all ...
    let e = hub
        .publish_raw(4222, "xban.bans.a", forged.as_bytes())
        .unwrap_err();
    assert!(
        format!("{e:#}").to_lowercase().contains("authorization"),
        "{e:#}"
    );
    // ... and on its own subject, a body naming B is dropped by receivers.
    hub.publish_raw_as(4222, Some(seed_a.trim()), "xban.bans.a", forged.as_bytes())
        .unwrap();
    wait("B drops the forged origin", 10, &[&b], || {
        b.fleet()["malformed"] == 1
    });
    assert!(!b.has("203.0.113.66"));
    drop(server);
}
