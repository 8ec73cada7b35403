//! The XDP program's parser, packet by packet, through BPF_PROG_TEST_RUN
//! (`bpftool prog run` on the program the agent pins): Ethernet, 802.1Q and
//! 802.1ad tags, IPv4 with options, IPv6, and frames that are not IP.

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
    dir.write_config(&lab, "[tarpit]\nfallback = \"DROP\"\n[defaults]\nignoreip = [\"198.51.100.3\"]\n[jails.x]\nlogpath = [\"{LOG}\"]\nfailregex = ['fail <HOST>$']\n")
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    dir.xban_ok(&["ban", ATK_V6]).unwrap();
    dir.xban_ok(&["ban", "203.0.113.0/24"]).unwrap();
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

    let stats = dir.stats().unwrap();
    assert!(stats["passed_tarpit"].as_u64().unwrap() >= 1);
    assert!(stats["passed_allowlisted"].as_u64().unwrap() >= 1);
    assert!(stats["passed_not_ip"].as_u64().unwrap() >= 2);
    agent.stop().unwrap();
}
