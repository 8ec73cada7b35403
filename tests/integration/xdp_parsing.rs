//! The XDP program's parser, packet by packet, through BPF_PROG_TEST_RUN
//! (`bpftool prog run` on the program the agent pins): Ethernet, 802.1Q and
//! 802.1ad tags, IPv4 with options, IPv6, and frames that are not IP; and its
//! verdict over overlapping host and prefix bans.

use std::net::{Ipv4Addr, Ipv6Addr};

use xban_tests::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tpid in vlans {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x64]); // VLAN id 100
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4(src: Ipv4Addr, options_words: u8) -> Vec<u8> {
    let ihl = 5 + options_words;
    let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&Ipv4Addr::new(198, 51, 100, 1).octets());
    h.extend(std::iter::repeat_n(1u8, options_words as usize * 4)); // NOP options
    h.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]); // UDP
    h
}

fn ipv6(src: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&"2001:db8:100::1".parse::<Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]);
    h
}

/// Run the pinned program on one packet; returns its verdict.
fn verdict(dir: &AgentDir, packet: &[u8]) -> u32 {
    let pkt = dir.path("pkt.bin");
    std::fs::write(&pkt, packet).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["prog", "run", "pinned"])
        .arg(dir.pin_dir.join("prog_xdp"))
        .arg("data_in")
        .arg(&pkt)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Return value: "))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no verdict from bpftool: {text}"))
}

#[test]
fn parser_handles_vlans_options_ipv6_and_non_ip() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, "[tarpit]\nengine = \"iptables\"\nfallback = \"DROP\"\n[defaults]\nignoreip = [\"198.51.100.3\"]\n[jails.x]\nlogpath = [\"{LOG}\"]\nfailregex = ['fail <HOST>$']\n")
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    dir.xban_ok(&["ban", ATK_V6]).unwrap();
    dir.xban_ok(&["ban", "203.0.113.0/24"]).unwrap();
    dir.xban_ok(&["ban", "2001:db8:77:1::/64"]).unwrap();
    dir.xban_ok(&["ban", "198.51.100.5", "--class", "tarpit"])
        .unwrap();

    let banned4: Ipv4Addr = ATK_V4.parse().unwrap();
    let clean4 = Ipv4Addr::new(198, 51, 100, 9);
    let v4 = |vlans: &[u16], src: Ipv4Addr, opts: u8| {
        let mut p = eth(0x0800, vlans);
        p.extend(ipv4(src, opts));
        verdict(&dir, &p)
    };
    assert_eq!(v4(&[], banned4, 0), XDP_DROP, "plain IPv4");
    assert_eq!(v4(&[0x8100], banned4, 0), XDP_DROP, "one 802.1Q tag");
    assert_eq!(
        v4(&[0x88a8, 0x8100], banned4, 0),
        XDP_DROP,
        "802.1ad + 802.1Q"
    );
    assert_eq!(
        v4(&[], banned4, 10),
        XDP_DROP,
        "IPv4 with 40 bytes of options (IHL 15)"
    );
    assert_eq!(v4(&[0x8100], clean4, 3), XDP_PASS, "unbanned source");
    assert_eq!(
        v4(&[], Ipv4Addr::new(203, 0, 113, 77), 0),
        XDP_DROP,
        "inside a banned /24"
    );
    assert_eq!(
        v4(&[], Ipv4Addr::new(198, 51, 100, 3), 0),
        XDP_PASS,
        "allowlisted"
    );
    assert_eq!(
        v4(&[], Ipv4Addr::new(198, 51, 100, 5), 0),
        XDP_PASS,
        "tarpit class passes to iptables"
    );

    let v6 = |vlans: &[u16], src: Ipv6Addr| {
        let mut p = eth(0x86dd, vlans);
        p.extend(ipv6(src));
        verdict(&dir, &p)
    };
    assert_eq!(v6(&[], ATK_V6.parse().unwrap()), XDP_DROP, "IPv6");
    assert_eq!(
        v6(&[0x88a8, 0x8100], ATK_V6.parse().unwrap()),
        XDP_DROP,
        "IPv6 behind two tags"
    );
    assert_eq!(v6(&[], "2001:db8:100::9".parse().unwrap()), XDP_PASS);
    // One tag puts the source 2 bytes off an 8-byte boundary (and the IPv4
    // source 2 off a 4-byte one): the word loads must read the same address
    // there, byte order included, which the prefix bans check.
    assert_eq!(
        v6(&[0x8100], ATK_V6.parse().unwrap()),
        XDP_DROP,
        "IPv6 behind one tag"
    );
    assert_eq!(
        v6(&[0x8100], "2001:db8:77:1:abcd::5".parse().unwrap()),
        XDP_DROP,
        "IPv6 inside a banned /64, behind one tag"
    );
    assert_eq!(
        v6(&[0x8100], "2001:db8:77:2::5".parse().unwrap()),
        XDP_PASS,
        "IPv6 next to the banned /64, behind one tag"
    );
    assert_eq!(
        v4(&[0x8100], Ipv4Addr::new(203, 0, 113, 200), 0),
        XDP_DROP,
        "inside a banned /24, behind one tag"
    );
    assert_eq!(
        v4(&[0x8100], Ipv4Addr::new(203, 0, 114, 1), 0),
        XDP_PASS,
        "next to the banned /24, behind one tag"
    );

    // ARP, and an IPv4 frame cut short before the source address.
    let mut arp = eth(0x0806, &[]);
    arp.extend([0u8; 28]);
    assert_eq!(verdict(&dir, &arp), XDP_PASS);
    let mut short = eth(0x0800, &[]);
    short.extend(&ipv4(banned4, 0)[..10]);
    assert_eq!(
        verdict(&dir, &short),
        XDP_PASS,
        "truncated header passes, no out-of-bounds read"
    );

    // An IPv6 frame cut inside the source address (15 of its 16 bytes).
    let mut short6 = eth(0x86dd, &[0x8100]);
    short6.extend(&ipv6(ATK_V6.parse().unwrap())[..8 + 15]);
    assert_eq!(
        verdict(&dir, &short6),
        XDP_PASS,
        "truncated IPv6 header passes, no out-of-bounds read"
    );

    let stats = dir.stats().unwrap();
    assert!(stats["passed_tarpit"].as_u64().unwrap() >= 1);
    assert!(stats["passed_allowlisted"].as_u64().unwrap() >= 1);
    assert!(stats["passed_not_ip"].as_u64().unwrap() >= 3);
    agent.stop().unwrap();
}

fn v4_verdict(dir: &AgentDir, src: &str) -> u32 {
    let mut p = eth(0x0800, &[]);
    p.extend(ipv4(src.parse().unwrap(), 0));
    verdict(dir, &p)
}

fn v6_verdict(dir: &AgentDir, src: &str) -> u32 {
    let mut p = eth(0x86dd, &[]);
    p.extend(ipv6(src.parse().unwrap()));
    verdict(dir, &p)
}

/// The program probes an exact-match table for the host, then for each
/// prefix length a region directory lists; its verdict must still be the
/// longest-prefix match over all bans, each entry with its own class.
#[test]
fn verdict_is_the_longest_prefix_match() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, "[tarpit]\nengine = \"iptables\"\nfallback = \"DROP\"\n[defaults]\nignoreip = [\"198.51.100.3\"]\n[jails.x]\nlogpath = [\"{LOG}\"]\nfailregex = ['fail <HOST>$']\n")
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let ban = |t: &str, class: &str| {
        dir.xban_ok(&["ban", t, "--class", class]).unwrap();
    };
    // A /24 dropped, a tarpit /25 inside it, hosts of both classes inside both.
    ban("203.0.113.0/24", "drop");
    ban("203.0.113.128/25", "tarpit");
    ban("203.0.113.7", "tarpit");
    ban("203.0.113.200", "drop");
    // A tarpit /26 with a dropped host in it, next to the lab's addresses.
    ban("198.51.100.64/26", "tarpit");
    ban("198.51.100.70", "drop");
    ban("2001:db8:bad::/48", "drop");
    ban("2001:db8:bad:1::/64", "tarpit");
    ban("2001:db8:bad::7", "tarpit");
    ban("2001:db8:bad:1::9", "drop");

    let cases4 = [
        ("203.0.113.7", XDP_PASS, "tarpit host inside a dropped /24"),
        ("203.0.113.8", XDP_DROP, "its neighbour: the /24"),
        ("203.0.113.100", XDP_DROP, "the /24"),
        ("203.0.113.150", XDP_PASS, "the tarpit /25 inside the /24"),
        (
            "203.0.113.200",
            XDP_DROP,
            "dropped host inside the tarpit /25",
        ),
        (
            "198.51.100.70",
            XDP_DROP,
            "dropped host inside a tarpit /26",
        ),
        ("198.51.100.71", XDP_PASS, "its neighbour: the tarpit /26"),
        ("198.51.100.63", XDP_PASS, "just below the /26: not banned"),
        ("198.51.100.128", XDP_PASS, "just above the /26: not banned"),
        ("198.51.100.3", XDP_PASS, "allowlisted"),
    ];
    for (src, want, what) in cases4 {
        assert_eq!(v4_verdict(&dir, src), want, "{src}: {what}");
    }
    let cases6 = [
        (
            "2001:db8:bad::7",
            XDP_PASS,
            "tarpit host inside a dropped /48",
        ),
        ("2001:db8:bad::8", XDP_DROP, "its neighbour: the /48"),
        (
            "2001:db8:bad:1::5",
            XDP_PASS,
            "the tarpit /64 inside the /48",
        ),
        (
            "2001:db8:bad:1::9",
            XDP_DROP,
            "dropped host inside the tarpit /64",
        ),
        ("2001:db8:bae::1", XDP_PASS, "the next /48: not banned"),
        (
            "2001:db8:bac:ffff::1",
            XDP_PASS,
            "the previous /48: not banned",
        ),
    ];
    for (src, want, what) in cases6 {
        assert_eq!(v6_verdict(&dir, src), want, "{src}: {what}");
    }

    // The trie bpftool shows still lists every ban.
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(dir.pin_dir.join("bans_v4"))
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(
        entries.len(),
        6,
        "bans_v4 holds every IPv4 ban: {entries:?}"
    );

    // Lifting a host ban falls back to the prefix around it, and lifting a
    // prefix leaves the hosts banned in it.
    dir.xban_ok(&["unban", "203.0.113.7"]).unwrap();
    assert_eq!(v4_verdict(&dir, "203.0.113.7"), XDP_DROP, "back to the /24");
    dir.xban_ok(&["unban", "203.0.113.128/25"]).unwrap();
    assert_eq!(v4_verdict(&dir, "203.0.113.150"), XDP_DROP, "the /24 again");
    assert_eq!(
        v4_verdict(&dir, "203.0.113.200"),
        XDP_DROP,
        "its own host ban"
    );
    dir.xban_ok(&["unban", "203.0.113.0/24"]).unwrap();
    assert_eq!(v4_verdict(&dir, "203.0.113.100"), XDP_PASS, "nothing left");
    assert_eq!(
        v4_verdict(&dir, "203.0.113.200"),
        XDP_DROP,
        "host ban stays"
    );
    dir.xban_ok(&["unban", "2001:db8:bad::/48"]).unwrap();
    assert_eq!(v6_verdict(&dir, "2001:db8:bad::8"), XDP_PASS);
    assert_eq!(
        v6_verdict(&dir, "2001:db8:bad:1::5"),
        XDP_PASS,
        "tarpit /64"
    );
    assert_eq!(v6_verdict(&dir, "2001:db8:bad:1::9"), XDP_DROP);
    agent.stop().unwrap();
}

/// A pin directory left by an agent from before the fast maps (only the
/// tries pinned): the new agent creates the missing maps, fills them from
/// the ban tries before swapping its program in, and everything still drops.
#[test]
fn adopts_a_pin_dir_without_the_fast_maps() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, "[tarpit]\nengine = \"iptables\"\nfallback = \"DROP\"\n[jails.x]\nlogpath = [\"{LOG}\"]\nfailregex = ['fail <HOST>$']\n")
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    dir.xban_ok(&["ban", "203.0.113.9"]).unwrap();
    dir.xban_ok(&["ban", "198.51.100.64/26"]).unwrap();
    dir.xban_ok(&["ban", "2001:db8:bad::/48"]).unwrap();
    agent.stop().unwrap();
    for m in ["tab_v4", "tab_v6", "over_v4", "over_v6", "dir_v4", "dir_v6"] {
        std::fs::remove_file(dir.pin_dir.join(m)).unwrap();
    }
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    for m in ["tab_v4", "over_v6", "dir_v6"] {
        assert!(dir.pin_dir.join(m).exists(), "{m} pinned again");
    }
    assert_eq!(v4_verdict(&dir, "203.0.113.9"), XDP_DROP);
    assert_eq!(v4_verdict(&dir, "203.0.113.10"), XDP_PASS);
    assert_eq!(v4_verdict(&dir, "198.51.100.99"), XDP_DROP);
    assert_eq!(v6_verdict(&dir, "2001:db8:bad:5::1"), XDP_DROP);
    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "the lab's own traffic passes"
    );
    agent.stop().unwrap();
}

/// IPv6 hosts in 2001:db8:f00d::/48 whose table bucket is the same, found
/// by hashing candidates as the program does.
fn colliding_v6_hosts(n: usize) -> Vec<String> {
    let bucket = |a: &Ipv6Addr| {
        let o = a.octets();
        xban_common::tab_bucket_v6(
            u64::from_ne_bytes(o[..8].try_into().unwrap()),
            u64::from_ne_bytes(o[8..].try_into().unwrap()),
            128,
        )
    };
    let first: Ipv6Addr = "2001:db8:f00d::1".parse().unwrap();
    let want = bucket(&first);
    let mut out = vec![first];
    let mut i: u64 = 2;
    while out.len() < n {
        let a = Ipv6Addr::from(u128::from(first) - 1 + i as u128);
        if bucket(&a) == want {
            out.push(a);
        }
        i += 1;
    }
    out.iter().map(|a| a.to_string()).collect()
}

/// More entries in one bucket than it has ways go to the overflow hash,
/// and a region listing more prefix lengths than the program probes is
/// answered from the ban trie: both keep the longest-prefix verdict, across
/// unbans and a restart.
#[test]
fn full_buckets_and_dense_regions_keep_the_verdict() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, "[tarpit]\nengine = \"iptables\"\nfallback = \"DROP\"\n[jails.x]\nlogpath = [\"{LOG}\"]\nfailregex = ['fail <HOST>$']\n")
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let ways = xban_common::TAB_V6_WAYS;
    let hosts = colliding_v6_hosts(ways + 3);
    // All but the last: the bucket fills, two spill over.
    for h in &hosts[..ways + 2] {
        dir.xban_ok(&["ban", h]).unwrap();
    }
    let over = || {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(dir.pin_dir.join("over_v6"))
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len()
    };
    assert_eq!(over(), 2, "two hosts in the overflow hash");
    for h in &hosts[..ways + 2] {
        assert_eq!(v6_verdict(&dir, h), XDP_DROP, "{h}");
    }
    let unbanned = &hosts[ways + 2];
    assert_eq!(
        v6_verdict(&dir, unbanned),
        XDP_PASS,
        "same bucket, not banned"
    );

    // Dense region: nine nested prefixes in one /48, classes alternating.
    let nested = [
        ("2001:db8:bad::/56", "drop"),
        ("2001:db8:bad::/60", "tarpit"),
        ("2001:db8:bad::/64", "drop"),
        ("2001:db8:bad::/72", "tarpit"),
        ("2001:db8:bad::/80", "drop"),
        ("2001:db8:bad::/96", "tarpit"),
        ("2001:db8:bad::/104", "drop"),
        ("2001:db8:bad::/112", "tarpit"),
        ("2001:db8:bad::/120", "drop"),
    ];
    for (t, class) in nested {
        dir.xban_ok(&["ban", t, "--class", class]).unwrap();
    }
    let dense = [
        ("2001:db8:bad::5", XDP_DROP, "/120"),
        ("2001:db8:bad::105", XDP_PASS, "/112 tarpit"),
        ("2001:db8:bad::1:5", XDP_DROP, "/104"),
        ("2001:db8:bad::100:5", XDP_PASS, "/96 tarpit"),
        ("2001:db8:bad::1:0:5", XDP_DROP, "/80"),
        ("2001:db8:bad:0:1::5", XDP_PASS, "/72 tarpit"),
        ("2001:db8:bad:0:100::5", XDP_DROP, "/64"),
        ("2001:db8:bad:1::5", XDP_PASS, "/60 tarpit"),
        ("2001:db8:bad:10::5", XDP_DROP, "/56"),
        ("2001:db8:bad:100::5", XDP_PASS, "outside the /56"),
    ];
    let check = |cases: &[(&str, u32, &str)]| {
        for (src, want, what) in cases {
            assert_eq!(v6_verdict(&dir, src), *want, "{src}: {what}");
        }
    };
    check(&dense);

    // A restart reads the overflow back: still dropping, and unbans lift
    // entries from both the ways and the overflow hash.
    agent.stop().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    check(&dense);
    for h in &hosts[..ways + 2] {
        assert_eq!(v6_verdict(&dir, h), XDP_DROP, "after restart: {h}");
    }
    dir.xban_ok(&["unban", &hosts[0]]).unwrap();
    dir.xban_ok(&["unban", &hosts[ways + 1]]).unwrap();
    assert_eq!(v6_verdict(&dir, &hosts[0]), XDP_PASS);
    assert_eq!(v6_verdict(&dir, &hosts[ways + 1]), XDP_PASS);
    assert_eq!(v6_verdict(&dir, &hosts[1]), XDP_DROP);
    assert_eq!(v6_verdict(&dir, &hosts[ways]), XDP_DROP);
    dir.xban_ok(&["ban", unbanned]).unwrap();
    assert_eq!(v6_verdict(&dir, unbanned), XDP_DROP, "takes the freed way");
    dir.xban_ok(&["unban", "2001:db8:bad::/120"]).unwrap();
    assert_eq!(
        v6_verdict(&dir, "2001:db8:bad::5"),
        XDP_PASS,
        "now the /112"
    );
    for h in hosts.iter().chain(std::iter::once(unbanned)) {
        let _ = dir.xban(&["unban", h]);
    }
    assert_eq!(over(), 0, "overflow hash empty again");
    agent.stop().unwrap();
}
