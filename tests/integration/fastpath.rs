//! The XDP fast path (bucket table + overflow hash) has a fixed size; the
//! ban tries hold every ban. When an entry fits neither its bucket nor the
//! overflow hash, the agent keeps it in the trie only and flags its region
//! so that the program looks sources there up in the trie: every ban drops,
//! whatever the fast path holds, and the agent never refuses to start.

use std::time::Duration;

use xban_common::{tab_bucket_v4, OVER_MAX_ENTRIES, TAB_V4_WAYS};
use xban_tests::*;

/// IPv4 hosts of 10.0.0.0/8 whose table buckets are among a few thousand,
/// including `extra`'s bucket: enough that, all banned, their buckets are
/// full and the overflow hash is over capacity. Addresses are bans only,
/// never traffic.
fn colliding_hosts(extra: std::net::Ipv4Addr) -> Vec<std::net::Ipv4Addr> {
    let bucket = |a: std::net::Ipv4Addr| tab_bucket_v4(u32::from_ne_bytes(a.octets()), 32);
    let target = bucket(extra);
    // About 64 hosts of a /8 per bucket: each of `k` buckets spills ~57.
    let k = (OVER_MAX_ENTRIES as usize + 5_000) / (64 - TAB_V4_WAYS) + 1;
    let mut out = Vec::new();
    for n in 0u32..(1 << 24) {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 | n);
        let b = bucket(a);
        if (b as usize) < k || b == target {
            out.push(a);
        }
    }
    out
}

fn fast_path(dir: &AgentDir) -> serde_json::Value {
    let st: serde_json::Value =
        serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
    st["fast_path"]["v4"].clone()
}

#[test]
fn bans_beyond_a_full_fast_path_drop_from_the_trie_and_the_agent_starts() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let atk: std::net::Ipv4Addr = ATK_V4.parse().unwrap();
    let hosts = colliding_hosts(atk);
    assert!(
        hosts.len() > OVER_MAX_ENTRIES as usize + 5_000,
        "{} hosts",
        hosts.len()
    );
    let list = dir.path("blocklist.txt");
    let mut text = String::with_capacity(hosts.len() * 12);
    for h in &hosts {
        text.push_str(&h.to_string());
        text.push('\n');
    }
    std::fs::write(&list, text).unwrap();
    dir.write_config_with_agent(
        &lab,
        &format!("blocklist_files = [\"{}\"]\n", list.display()),
        "[defaults]\nignoreip = []\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();

    // Before: E2BIG from the overflow hash, and the agent refused to start.
    let t0 = std::time::Instant::now();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    eprintln!("started (blocklist loaded) in {:?}", t0.elapsed());
    let fp = fast_path(&dir);
    eprintln!(
        "{} colliding hosts banned from a blocklist: fast path {fp}",
        hosts.len()
    );
    let trie_only = fp["trie_only"].as_u64().unwrap();
    assert!(trie_only > 0, "{fp}");
    assert!(fp["fallback_regions"].as_u64().unwrap() > 0, "{fp}");
    assert_eq!(
        fp["overflow_entries"].as_u64().unwrap(),
        u64::from(OVER_MAX_ENTRIES),
        "{fp}"
    );
    assert_eq!(
        fp["table_entries"].as_u64().unwrap()
            + fp["overflow_entries"].as_u64().unwrap()
            + trie_only,
        hosts.len() as u64,
        "every ban is in exactly one place: {fp}"
    );
    assert!(
        agent.log().contains("XDP fast path"),
        "the filling is logged:\n{}",
        agent.log()
    );

    // A ban at run time whose bucket and the overflow hash are full: before,
    // it was in bans_v4 and `banned` while its packets passed.
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    assert_eq!(
        fast_path(&dir)["trie_only"].as_u64().unwrap(),
        trie_only + 1,
        "the new ban is in the trie only"
    );
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "trie-only ban drops");
    // The fallback region does not drop what is not banned.
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4), "neighbour passes");

    // A restart over the full maps adopts them and still drops.
    agent.stop().unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "stopped: still dropped");
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(fast_path(&dir)["trie_only"].as_u64().unwrap() > 0);
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "restarted: still dropped");

    // Unbanning makes room: the region leaves fallback once nothing of it
    // is trie-only, and the unbanned address passes.
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || lab.udp_reaches(ATK_V4, SRV_V4)),
        "unbanned: passes"
    );
    agent.stop().unwrap();
}

/// `[agent] fast_path_capacity` with the first `n` hosts of 10.0.0.0/8 on a
/// blocklist (bans only, never traffic).
fn capacity_config(lab: &Lab, dir: &AgentDir, capacity: u32, n: u32) {
    let list = dir.path("blocklist.txt");
    let text: String = (0..n)
        .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0a00_0000 | i)))
        .collect();
    std::fs::write(&list, text).unwrap();
    dir.write_config_with_agent(
        lab,
        &format!(
            "blocklist_files = [\"{}\"]\nfast_path_capacity = {capacity}\n",
            list.display()
        ),
        "[defaults]\nignoreip = []\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
}

#[test]
fn bans_beyond_a_configured_fast_path_capacity_drop_from_the_trie_and_the_agent_says_so() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    capacity_config(&lab, &dir, 1000, 1000);
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let fp = fast_path(&dir);
    assert_eq!(fp["capacity"], 1000, "{fp}");
    assert_eq!(
        fp["table_entries"].as_u64().unwrap() + fp["overflow_entries"].as_u64().unwrap(),
        1000,
        "{fp}"
    );
    assert_eq!(fp["trie_only"], 0, "{fp}");

    // One more ban is beyond the capacity: in the trie only, and it drops.
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    let fp = fast_path(&dir);
    assert_eq!(fp["trie_only"], 1, "{fp}");
    assert!(fp["fallback_regions"].as_u64().unwrap() >= 1, "{fp}");
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "beyond the capacity: drops"
    );
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4), "the neighbour passes");
    let log = agent.log();
    assert!(
        log.contains("XDP fast path") && log.contains("fast_path_capacity"),
        "the log says so:\n{log}"
    );
    let text = dir.xban_ok(&["status"]).unwrap();
    assert!(
        text.contains("capacity 1000, 1 in the trie only"),
        "status says so:\n{text}"
    );

    // Room made anywhere in the family takes the trie-only ban in.
    dir.xban_ok(&["unban", "10.0.0.5"]).unwrap();
    let fp = fast_path(&dir);
    assert_eq!(fp["trie_only"], 0, "{fp}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "still drops");
    agent.stop().unwrap();

    // A larger capacity at the next start: the overflow hashes are made
    // again at their new size, filled before the program is swapped in.
    capacity_config(&lab, &dir, 1_300_000, 1000);
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("made again at its new size"), "{log}");
    let fp = fast_path(&dir);
    assert_eq!(fp["capacity"], 1_300_000, "{fp}");
    assert_eq!(
        fp["overflow_capacity"].as_u64().unwrap(),
        u64::from(OVER_MAX_ENTRIES) + 100_000,
        "{fp}"
    );
    assert_eq!(fp["trie_only"], 0, "{fp}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "restarted: drops");
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4));
    agent.stop().unwrap();
}
