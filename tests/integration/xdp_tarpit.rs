//! The XDP tarpit (`[tarpit] engine = "auto"` on a machine without
//! xt_TARPIT, or `"xdp"`): tarpit-class TCP is answered by the XDP program
//! itself. Checked with real Linux clients in the attacker namespace and
//! with hand-made frames captured field by field.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use xban_tests::packet::{self, parse, Parsed, RawSock, Tcp, ACK, FIN, PSH, RST, SYN};
use xban_tests::*;

/// Nothing listens there on the server.
const PORT: u16 = 2222;

const JAIL: &str = "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n";

fn stat(dir: &AgentDir, name: &str) -> u64 {
    dir.stats().unwrap()[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn status(dir: &AgentDir) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap()
}

/// An agent with the XDP tarpit, `src` banned as tarpit class.
struct Rig {
    lab: Lab,
    dir: AgentDir,
    agent: Option<AgentProcess>,
    srv_mac: [u8; 6],
    atk_mac: [u8; 6],
}

impl Rig {
    fn new(tarpit_keys: &str) -> Rig {
        let lab = Lab::new().unwrap();
        packet::veth_like_nic(&lab.atk_ns, &lab.atk_if).unwrap();
        let dir = AgentDir::new().unwrap();
        dir.write_config(&lab, &format!("[tarpit]\n{tarpit_keys}\n{JAIL}"))
            .unwrap();
        let agent = AgentProcess::start(&lab, &dir).unwrap();
        // The attacker's veth end needs NAPI to receive what XDP_TX sends
        // back; any XDP program gives it that. xban's own (pinned) one
        // passes the server's replies, which come from no banned source.
        // (nsenter --net: `ip -n` and `ip netns exec` remount /sys
        // privately, which hides the bpffs.)
        let netns = format!("--net=/run/netns/{}", lab.atk_ns);
        run_in_root_mounts(
            "nsenter",
            &[
                &netns,
                "ip",
                "link",
                "set",
                "dev",
                &lab.atk_if,
                "xdpdrv",
                "pinned",
                &dir.pin_dir.join("prog_xdp").display().to_string(),
            ],
        );
        let srv_mac = packet::mac_of(&lab.srv_ns, &lab.srv_if).unwrap();
        let atk_mac = packet::mac_of(&lab.atk_ns, &lab.atk_if).unwrap();
        Rig {
            lab,
            dir,
            agent: Some(agent),
            srv_mac,
            atk_mac,
        }
    }

    fn ban_tarpit(&self, addr: &str) {
        self.dir
            .xban_ok(&["ban", addr, "--class", "tarpit"])
            .unwrap();
    }

    /// The attacker's kernel answers our hand-made SYN-ACKs with resets;
    /// keep them off the wire so counters see only what the test sends.
    fn quiet_attacker_resets(&self) {
        for bin in ["iptables", "ip6tables"] {
            run_in(
                &self.lab.atk_ns,
                bin,
                &[
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "--tcp-flags",
                    "RST",
                    "RST",
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    fn raw(&self) -> RawSock {
        RawSock::open(&self.lab.atk_ns, &self.lab.atk_if).unwrap()
    }

    fn syn(&self, src: &str, sport: u16, seq: u32) -> Tcp {
        let (src, dst): (IpAddr, IpAddr) = if src.contains(':') {
            (src.parse().unwrap(), SRV_V6.parse().unwrap())
        } else {
            (src.parse().unwrap(), SRV_V4.parse().unwrap())
        };
        Tcp {
            src_mac: self.atk_mac,
            dst_mac: self.srv_mac,
            vlan: None,
            src,
            dst,
            sport,
            dport: PORT,
            seq,
            ack: 0,
            flags: SYN,
            window: 64240,
            // MSS 1460, SACK permitted, NOP, NOP: the reply must carry none.
            options: vec![2, 4, 0x05, 0xb4, 4, 2, 1, 1],
            payload: vec![],
        }
    }
}

fn run_in_root_mounts(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_in(ns: &str, cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Replies to `t`'s connection (server → client, by ports) within `wait`.
fn replies_to(raw: &RawSock, t: &Tcp, wait: Duration) -> Vec<(Parsed, Vec<u8>)> {
    raw.recv_for(wait)
        .into_iter()
        .filter_map(|f| parse(&f).map(|p| (p, f)))
        .filter(|(p, _)| p.sport == t.dport && p.dport == t.sport && p.dst == t.src)
        .collect()
}

fn one_reply(raw: &RawSock, t: &Tcp) -> (Parsed, Vec<u8>) {
    raw.send(&t.frame()).unwrap();
    let mut r = replies_to(raw, t, Duration::from_millis(400));
    assert_eq!(r.len(), 1, "one reply to {t:?}: {r:?}");
    r.remove(0)
}

fn no_reply(raw: &RawSock, frame: &[u8], t: &Tcp, what: &str) {
    raw.send(frame).unwrap();
    let r = replies_to(raw, t, Duration::from_millis(300));
    assert!(r.is_empty(), "{what}: no reply expected, got {r:?}");
}

/// The fields every reply shares, checked against the frame it answers.
fn check_common(r: &Parsed, t: &Tcp, rig: &Rig) {
    assert_eq!(r.dst_mac, rig.atk_mac, "MACs swapped");
    assert_eq!(r.src_mac, rig.srv_mac, "MACs swapped");
    assert_eq!(r.vlan, t.vlan, "VLAN tag kept");
    assert_eq!((r.src, r.dst), (t.dst, t.src), "addresses swapped");
    assert_eq!((r.sport, r.dport), (t.dport, t.sport), "ports swapped");
    assert_eq!(r.doff, 20, "TCP header only, no options");
    assert_eq!(r.urgent, 0);
    assert_eq!(r.payload_len, 0, "no payload");
    assert_eq!(r.trailing, 0, "frame trimmed to the headers");
    assert!(
        r.tcp_csum_ok,
        "TCP checksum (with pseudo-header) valid: {r:?}"
    );
    if let Some((ihl, total, id, frag, ttl, csum_ok)) = r.v4 {
        assert_eq!(ihl, 5);
        assert_eq!(total, 40);
        assert_eq!(id, 0);
        assert_eq!(frag, 0x4000, "DF, no fragment");
        assert_eq!(ttl, 64);
        assert!(csum_ok, "IPv4 header checksum valid");
    }
    if let Some((plen, next, hops, flow)) = r.v6 {
        assert_eq!((plen, next, hops, flow), (20, 6, 64, 0));
    }
}

#[test]
fn xdp_tarpit_holds_a_real_client_that_cannot_close() {
    let rig = Rig::new("");
    let st = status(&rig.dir);
    assert_eq!(st["tarpit"]["engine"], "xdp", "{st}");
    let reason = st["tarpit"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("auto") && reason.contains("TARPIT target is not available"),
        "status says why: {reason}"
    );
    let text = rig.dir.xban_ok(&["status"]).unwrap();
    assert!(text.contains("tarpit engine: xdp"), "{text}");
    // Conntrack on in the server's namespace, so that an entry would show.
    run_in(
        &rig.lab.srv_ns,
        "iptables",
        &[
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ],
    );
    run_in(
        &rig.lab.srv_ns,
        "ip6tables",
        &[
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ],
    );
    rig.ban_tarpit(ATK_V4);
    rig.ban_tarpit(ATK_V6);
    // A clean source still connects (and leaves a conntrack entry, which
    // shows that conntrack is watching).
    assert!(rig.lab.tcp_connects(ATK3_V4, SRV_V4));
    let raw = rig.raw();

    for (src, dst) in [(ATK_V4, SRV_V4), (ATK_V6, SRV_V6)] {
        let dst_ip: IpAddr = dst.parse().unwrap();
        let src_ip: IpAddr = src.parse().unwrap();
        let sock = Lab::in_ns(&rig.lab.atk_ns, || {
            let domain = if src_ip.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
            // A small send buffer, so 64 KiB cannot all be queued.
            s.set_send_buffer_size(4096).unwrap();
            s.bind(&SocketAddr::new(src_ip, 0).into()).unwrap();
            s
        });
        sock.connect_timeout(
            &SocketAddr::new(dst_ip, PORT).into(),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("{src}: the handshake completes although nothing listens: {e}"));
        let local = sock.local_addr().unwrap().as_socket().unwrap();
        let mut stream: TcpStream = sock.into();
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let err = stream
            .write_all(&vec![b'x'; 64 * 1024])
            .expect_err("writing 64 KiB never completes");
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );
        // The client is stuck: ESTABLISHED, zero send window, data queued.
        let filter = format!("sport = :{}", local.port());
        let ss = run_in(
            &rig.lab.atk_ns,
            "ss",
            &["-tino", "state", "established", &filter],
        );
        // Zero-window probing (the persist timer), data waiting to be sent.
        assert!(
            ss.contains("timer:(persist"),
            "zero window: the client probes: {ss}"
        );
        let send_q: u64 = ss
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
        assert!(send_q > 0, "data queued, never acknowledged: {ss}");
        // The server has no socket and no conntrack entry for it.
        let srv = run_in(&rig.lab.srv_ns, "ss", &["-tan"]);
        assert!(!srv.contains(&format!(":{}", local.port())), "{srv}");
        let ct = run_in(&rig.lab.srv_ns, "cat", &["/proc/net/nf_conntrack"]);
        assert!(ct.contains(ATK3_V4), "conntrack is on: {ct}");
        let expanded = match src_ip {
            IpAddr::V6(a) => a
                .segments()
                .iter()
                .map(|s| format!("{s:04x}"))
                .collect::<Vec<_>>()
                .join(":"),
            IpAddr::V4(a) => a.to_string(),
        };
        assert!(
            !ct.contains(&format!("src={src} ")) && !ct.contains(&format!("src={expanded} ")),
            "no conntrack entry for the tarpitted client: {ct}"
        );

        // Close attempts are ignored: the client's FIN (hand-made, the real
        // one waits behind the queued data) and its RST get no answer.
        raw.drain();
        let ignored = stat(&rig.dir, "tarpit_ignored");
        // Distinct numbers: an answer to it would carry them swapped; the
        // connection's own probes keep being answered meanwhile.
        let mut fin = rig.syn(src, local.port(), 0x1234_5678);
        fin.flags = FIN | ACK;
        fin.ack = 0x0abc_def0;
        raw.send(&fin.frame()).unwrap();
        let answers: Vec<_> = replies_to(&raw, &fin, Duration::from_millis(400))
            .into_iter()
            .filter(|(p, _)| p.seq == fin.ack || p.ack == fin.seq)
            .collect();
        assert!(answers.is_empty(), "FIN answered: {answers:?}");
        // SO_LINGER 0: close() sends a real RST; the socket is gone, so
        // anything that came after would answer the RST.
        let s2 = socket2::Socket::from(stream);
        s2.set_linger(Some(Duration::ZERO)).unwrap();
        raw.drain();
        drop(s2);
        let answers = replies_to(&raw, &fin, Duration::from_millis(500));
        assert!(answers.is_empty(), "RST answered: {answers:?}");
        assert!(
            stat(&rig.dir, "tarpit_ignored") >= ignored + 2,
            "FIN and RST counted as ignored"
        );
    }
    assert!(stat(&rig.dir, "tarpit_synack") >= 2);
    assert!(stat(&rig.dir, "tarpit_ack") >= 2);
    // The IPv6 client found the server's MAC: its neighbour solicitation
    // (to a multicast MAC) went to the stack.
    assert!(stat(&rig.dir, "tarpit_passed_nd") >= 1);
    // Not TCP from a tarpit-class source is dropped, and counted.
    let not_tcp = stat(&rig.dir, "tarpit_not_tcp");
    assert!(!rig.lab.udp_reaches(ATK_V4, SRV_V4));
    assert!(stat(&rig.dir, "tarpit_not_tcp") > not_tcp);
    rig.agent.unwrap().stop().unwrap();
}

#[test]
fn xdp_tarpit_replies_field_by_field() {
    let rig = Rig::new("engine = \"xdp\"\nlimit = \"1000/sec\"\nburst = 200");
    assert_eq!(
        status(&rig.dir)["tarpit"]["reason"],
        "[tarpit] engine = \"xdp\""
    );
    rig.quiet_attacker_resets();
    rig.ban_tarpit(ATK_V4);
    rig.ban_tarpit(ATK_V6);
    let raw = rig.raw();
    for src in [ATK_V4, ATK_V6] {
        // SYN → SYN-ACK, window 5, ack = seq + 1, options dropped.
        let syn = rig.syn(src, 41000, 1000);
        let (r, bytes) = one_reply(&raw, &syn);
        check_common(&r, &syn, &rig);
        assert_eq!(r.flags, SYN | ACK);
        assert_eq!(r.ack, 1001);
        assert_eq!(r.window, 5);
        assert_ne!(r.seq, 0, "the ISN is a keyed hash, not xt_TARPIT's 0");
        let isn = r.seq;
        // Retransmitted SYN: the identical SYN-ACK, byte for byte.
        let (_, again) = one_reply(&raw, &syn);
        assert_eq!(again, bytes, "retransmitted SYN, same answer");
        // Another tuple, another ISN.
        let (other, _) = one_reply(&raw, &rig.syn(src, 41001, 1000));
        assert_ne!(other.seq, isn);

        // Data → a bare ACK with window 0 that acknowledges nothing new.
        let mut data = rig.syn(src, 41000, 1001);
        data.flags = ACK | PSH;
        data.ack = isn.wrapping_add(1);
        data.options = vec![];
        data.payload = vec![b'a'; 100];
        let (r, _) = one_reply(&raw, &data);
        check_common(&r, &data, &rig);
        assert_eq!(r.flags, ACK);
        assert_eq!((r.seq, r.ack, r.window), (isn.wrapping_add(1), 1001, 0));
        // A window probe (one old byte) gets the same kind of answer.
        let mut probe = data.clone();
        probe.seq = 1000;
        probe.flags = ACK;
        probe.payload = vec![0];
        let (r, _) = one_reply(&raw, &probe);
        assert_eq!(
            (r.flags, r.seq, r.ack, r.window),
            (ACK, isn.wrapping_add(1), 1000, 0)
        );

        // SYN-ACK → RST with seq = their ack.
        let mut synack = rig.syn(src, 41002, 5000);
        synack.flags = SYN | ACK;
        synack.ack = 777;
        let (r, _) = one_reply(&raw, &synack);
        check_common(&r, &synack, &rig);
        assert_eq!((r.flags, r.seq, r.window), (RST, 777, 0));

        // FIN, RST, no flags: ignored.
        let ignored = stat(&rig.dir, "tarpit_ignored");
        for flags in [FIN | ACK, RST, RST | ACK, 0, PSH] {
            let mut t = data.clone();
            t.flags = flags;
            no_reply(&raw, &t.frame(), &t, &format!("flags {flags:#x}"));
        }
        assert_eq!(stat(&rig.dir, "tarpit_ignored"), ignored + 5);

        // Unanswerable: bad TCP checksum, multicast MAC, and (IPv4) options
        // and fragments, (IPv6) an extension header.
        let unanswerable = stat(&rig.dir, "tarpit_unanswerable");
        let mut bad = syn.frame();
        let n = bad.len();
        bad[n - 1] ^= 0xff; // last option byte: checksum now wrong
        no_reply(&raw, &bad, &syn, "bad TCP checksum");
        let mut mcast = syn.clone();
        mcast.dst_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
        no_reply(&raw, &mcast.frame(), &syn, "multicast MAC");
        let mut expected = 2;
        if src == ATK_V4 {
            no_reply(&raw, &with_ipv4_options(&syn.frame()), &syn, "IPv4 options");
            let mut frag = syn.frame();
            frag[14 + 6] |= 0x20; // MF
            fix_ipv4_csum(&mut frag);
            no_reply(&raw, &frag, &syn, "first fragment");
            expected += 2;
        } else {
            no_reply(
                &raw,
                &with_hop_by_hop(&syn.frame()),
                &syn,
                "IPv6 extension header",
            );
            expected += 1;
        }
        assert_eq!(
            stat(&rig.dir, "tarpit_unanswerable"),
            unanswerable + expected,
            "{src}"
        );

        // 802.1Q: the tag is kept in the reply.
        let mut tagged = rig.syn(src, 41003, 9);
        tagged.vlan = Some(100);
        let (r, _) = one_reply(&raw, &tagged);
        check_common(&r, &tagged, &rig);
        assert_eq!(r.vlan, Some(100));
        assert_eq!((r.flags, r.ack), (SYN | ACK, 10));
    }
    rig.agent.unwrap().stop().unwrap();
}

/// An IPv4 frame (untagged) with 4 bytes of NOP options in its header.
fn with_ipv4_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&f[34..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_csum(&mut out);
    out
}

fn fix_ipv4_csum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = !packet::fold(packet::csum_sum(&f[14..14 + ihl]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An IPv6 frame with an empty hop-by-hop header before TCP.
fn with_hop_by_hop(f: &[u8]) -> Vec<u8> {
    let mut out = f[..54].to_vec();
    out.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next TCP, PadN
    out.extend_from_slice(&f[54..]);
    out[20] = 0; // next header: hop-by-hop
    let plen = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out
}

#[test]
fn xdp_tarpit_rate_limit_bounds_replies() {
    let (limit, burst) = (20.0, 10.0);
    let rig = Rig::new("limit = \"20/sec\"\nburst = 10");
    rig.quiet_attacker_resets();
    rig.ban_tarpit(ATK_V4);
    let raw = rig.raw();
    let before = (
        stat(&rig.dir, "tarpit_synack"),
        stat(&rig.dir, "tarpit_over_limit"),
    );
    // 3,000 SYNs over 1.5 s, each its own connection.
    let sent = 3000u32;
    let start = Instant::now();
    let capture = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                for f in raw.recv_for(Duration::from_millis(50)) {
                    if let Some(p) = parse(&f) {
                        if p.flags == SYN | ACK && p.sport == PORT {
                            got.push((Instant::now(), p));
                        }
                    }
                }
            }
            got
        });
        let tx = RawSock::open(&rig.lab.atk_ns, &rig.lab.atk_if).unwrap();
        for i in 0..sent {
            let t = rig.syn(ATK_V4, 10000 + i as u16, i);
            tx.send(&t.frame()).unwrap();
            let due = start + Duration::from_micros(500 * u64::from(i + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        rx.join().unwrap()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let replies = capture.len() as f64;
    assert!(
        replies <= limit * elapsed + burst + 1.0,
        "{replies} replies in {elapsed:.2} s exceed limit*t + burst"
    );
    // At most limit + burst in any one second.
    for (i, (t0, _)) in capture.iter().enumerate() {
        let in_second = capture[i..]
            .iter()
            .take_while(|(t, _)| t.duration_since(*t0) < Duration::from_secs(1))
            .count();
        assert!(
            in_second as f64 <= limit + burst,
            "{in_second} in one second"
        );
    }
    assert!(replies >= 5.0, "the bucket lets some through: {replies}");
    let synack = stat(&rig.dir, "tarpit_synack") - before.0;
    let over = stat(&rig.dir, "tarpit_over_limit") - before.1;
    assert_eq!(synack, capture.len() as u64, "every reply counted and seen");
    assert_eq!(
        synack + over,
        u64::from(sent),
        "the rest dropped and counted"
    );
    rig.agent.unwrap().stop().unwrap();
}

#[test]
fn xdp_tarpit_follows_class_changes_and_survives_restart() {
    let mut rig = Rig::new("limit = \"2000/sec\"\nburst = 500");
    rig.quiet_attacker_resets();
    let reaches = |rig: &Rig| rig.lab.tcp_connects(ATK_V4, SRV_V4);
    // A SYN to the port where nothing listens: a SYN-ACK only comes from
    // the tarpit (the server's kernel would reset).
    let held = |rig: &Rig| {
        let raw = rig.raw();
        let t = rig.syn(ATK_V4, 42000, 1);
        raw.send(&t.frame()).unwrap();
        replies_to(&raw, &t, Duration::from_millis(400))
            .iter()
            .any(|(p, _)| p.flags == SYN | ACK)
    };
    assert!(reaches(&rig), "unbanned: the real listener answers");
    assert!(!held(&rig), "unbanned: the kernel resets");
    rig.ban_tarpit(ATK_V4);
    assert!(held(&rig), "tarpit class: answered by XDP");
    // A longer drop ban from another jail: dropped at once.
    rig.dir
        .xban_ok(&[
            "ban",
            ATK_V4,
            "--class",
            "drop",
            "--bantime",
            "permanent",
            "--jail",
            "sshd",
        ])
        .unwrap();
    let dropped = stat(&rig.dir, "dropped");
    assert!(!held(&rig), "drop class: no answer");
    assert!(stat(&rig.dir, "dropped") > dropped);
    // Back to tarpit when that ban goes.
    rig.dir
        .xban_ok(&["unban", ATK_V4, "--jail", "sshd"])
        .unwrap();
    assert!(held(&rig), "tarpit again");

    // Restart: SYNs every 10 ms throughout, each must get its SYN-ACK, and
    // the ISN key is kept (same tuple, same answer before and after).
    let raw = rig.raw();
    let probe = rig.syn(ATK_V4, 43000, 77);
    let (before, _) = one_reply(&raw, &probe);
    let agent = rig.agent.take().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, got) = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut got = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for f in raw.recv_for(Duration::from_millis(50)) {
                    if let Some(p) = parse(&f) {
                        if p.flags == SYN | ACK && p.sport == PORT {
                            got.insert(p.dport);
                        }
                    }
                }
            }
            got
        });
        let tx = rig.raw();
        let mut sent = 0u16;
        let mut send_for = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until {
                tx.send(&rig.syn(ATK_V4, 20000 + sent, 5).frame()).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        send_for(Duration::from_millis(300));
        agent.stop().unwrap();
        send_for(Duration::from_millis(300));
        let agent = AgentProcess::start(&rig.lab, &rig.dir).unwrap();
        send_for(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        rig.agent = Some(agent);
        (sent, rx.join().unwrap())
    });
    let missing: Vec<u16> = (0..sent).filter(|i| !got.contains(&(20000 + i))).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} SYNs unanswered across the restart: {missing:?}",
        missing.len()
    );
    let (after, _) = one_reply(&raw, &probe);
    assert_eq!(after.seq, before.seq, "the ISN key survives the restart");
    assert_eq!(status(&rig.dir)["tarpit"]["engine"], "xdp");
    // Unbanned: the real listener again.
    rig.dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(!held(&rig));
    assert!(reaches(&rig));
    rig.agent.take().unwrap().stop().unwrap();
}

#[test]
fn xdp_tarpit_engine_iptables_keeps_the_old_fallback() {
    // engine = "iptables" without TARPIT and fallback = "drop": today's
    // behaviour, the class is dropped at XDP, nothing answers.
    let rig = Rig::new("engine = \"iptables\"");
    let st = status(&rig.dir);
    assert_eq!(st["tarpit"]["engine"], "none (dropped in XDP)", "{st}");
    assert!(st["tarpit"]["reason"]
        .as_str()
        .unwrap()
        .contains("fallback = \"drop\""));
    rig.quiet_attacker_resets();
    rig.ban_tarpit(ATK_V4);
    let raw = rig.raw();
    let t = rig.syn(ATK_V4, 44000, 1);
    let dropped = stat(&rig.dir, "dropped");
    no_reply(&raw, &t.frame(), &t, "engine iptables, fallback drop");
    assert!(stat(&rig.dir, "dropped") > dropped);
    assert_eq!(stat(&rig.dir, "tarpit_synack"), 0);
    rig.agent.unwrap().stop().unwrap();
}

/// `/proc/net/sockstat`'s TCP line of a namespace: (inuse, tw), the
/// per-namespace counts (orphan, alloc and mem are the machine's).
fn sockstat(ns: &str) -> (u64, u64) {
    let text = run_in(ns, "cat", &["/proc/net/sockstat"]);
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let w: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| -> u64 {
        let i = w.iter().position(|x| *x == k).unwrap();
        w[i + 1].parse().unwrap()
    };
    (get("inuse"), get("tw"))
}

#[test]
fn xdp_tarpit_holds_500_connections_for_30_seconds() {
    let rig = Rig::new("limit = \"5000/sec\"\nburst = 1000");
    run_in(
        &rig.lab.srv_ns,
        "iptables",
        &[
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ],
    );
    rig.ban_tarpit(ATK_V4);
    let srv_before = sockstat(&rig.lab.srv_ns);
    let dst = SocketAddr::new(SRV_V4.parse().unwrap(), PORT);
    let src: IpAddr = ATK_V4.parse().unwrap();
    let socks: Vec<socket2::Socket> = Lab::in_ns(&rig.lab.atk_ns, || {
        (0..500)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_send_buffer_size(4096).unwrap();
                s.bind(&SocketAddr::new(src, 0).into()).unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&dst.into()); // EINPROGRESS
                s
            })
            .collect()
    });
    let established = || {
        run_in(
            &rig.lab.atk_ns,
            "ss",
            &[
                "-tn",
                "state",
                "established",
                "dst",
                &format!("{SRV_V4}:{PORT}"),
            ],
        )
        .lines()
        .skip(1)
        .count()
    };
    assert!(
        wait_for(Duration::from_secs(10), || established() == 500),
        "500 handshakes complete: {}",
        established()
    );
    for s in &socks {
        let _ = (&*s).write(&[b'x'; 8192]);
    }
    let agent_pid = rig.agent.as_ref().unwrap().pid();
    let rss = |pid: u32| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let l = st.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let rss_before = rss(agent_pid);
    let held_from = Instant::now();
    std::thread::sleep(Duration::from_secs(31));
    assert!(held_from.elapsed() >= Duration::from_secs(30));
    assert_eq!(established(), 500, "all 500 still held after 30 s");
    let ss = run_in(
        &rig.lab.atk_ns,
        "ss",
        &[
            "-tno",
            "state",
            "established",
            "dst",
            &format!("{SRV_V4}:{PORT}"),
        ],
    );
    let held: Vec<&str> = ss.lines().skip(1).collect();
    assert_eq!(held.len(), 500);
    for l in &held {
        let send_q: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            send_q > 0 && (l.contains("timer:(persist") || l.contains("timer:(on")),
            "held with data queued and probes outstanding: {l}"
        );
    }
    // The server: no sockets, no conntrack entries, the agent's memory flat.
    assert_eq!(
        sockstat(&rig.lab.srv_ns),
        srv_before,
        "server TCP sockets and memory"
    );
    let ct = run_in(&rig.lab.srv_ns, "cat", &["/proc/net/nf_conntrack"]);
    assert!(!ct.contains(&format!("src={ATK_V4} ")), "{ct}");
    let grown = rss(agent_pid).saturating_sub(rss_before);
    assert!(
        grown < 4096,
        "the agent's memory did not move (grew {grown} KiB)"
    );
    drop(socks);
    rig.agent.unwrap().stop().unwrap();
}
