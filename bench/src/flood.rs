//! Dropping a flood from N banned sources on an interface, compared: xban's
//! XDP program, iptables with one DROP rule per address, an ipset with one
//! iptables set match, and an nftables set.
//!
//! The attacker namespace generates frames in the kernel (rotating over the
//! N banned IPv6 sources) into its end of a veth, on one core. The server's
//! end runs its receive path (NAPI, threaded) on the other core, so that
//! core's time is the cost of dropping; it is read from the NAPI thread's
//! schedstat. IPv6 because the documentation IPv4 ranges hold only 512
//! addresses.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xban_common::stats;

use xban_lab::packet::ipv6_udp_frame_to;
use xban_lab::{in_ns, mac_of, require_tool, run_cmd, Lab, SRV_V6};

use crate::bpf::{insn, load_xdp, prog_test_run, BpfMap, BPF_F_TEST_XDP_LIVE_FRAMES};
use crate::maps::BanMaps;
use crate::napi::{
    enable_napi, napi_thread, napi_threads, online_cpus, percpu_counter, set_affinity,
    thread_cpu_ns, AffinityGuard,
};
use crate::rig::{agent_binary, lab, Agent};
use crate::xdp::{v6, Rng};
use crate::{median, require_root, Ctx, Section, Table};

/// Where the banned flood sources live (never on any interface).
pub const FLOOD_NET: u128 = 0x2001_0db8_f00d_0000_0000_0000_0000_0000;
const DST_PORT: u16 = 9;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mechanism {
    Xdp,
    Iptables,
    Ipset,
    Nft,
}

impl Mechanism {
    const ALL: [Mechanism; 4] = [
        Mechanism::Xdp,
        Mechanism::Iptables,
        Mechanism::Ipset,
        Mechanism::Nft,
    ];

    fn short(self) -> &'static str {
        match self {
            Mechanism::Xdp => "XDP",
            Mechanism::Iptables => "ip6tables rules",
            Mechanism::Ipset => "ipset",
            Mechanism::Nft => "nftables set",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mechanism::Xdp => "xban XDP",
            Mechanism::Iptables => "ip6tables, one DROP rule per address",
            Mechanism::Ipset => "ipset hash:ip + one ip6tables set match",
            Mechanism::Nft => "nftables set",
        }
    }
}

/// One measured flood.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    /// Receiver core time per dropped packet.
    pub ns_per_drop: f64,
    /// Packets the mechanism dropped per second.
    pub drop_pps: f64,
    pub sent_pps: f64,
    /// Fraction of the receiver core the receive path used.
    pub busy: f64,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let quick = ctx.quick;
    require_root()?;
    for tool in ["bpftool", "ip6tables", "ip6tables-restore", "ipset", "nft"] {
        require_tool(tool)?;
    }
    let bin = agent_binary(ctx)?;
    let cpus = online_cpus()?;
    ensure!(
        cpus.len() >= 2,
        "the flood bench needs two cores (sender and receiver apart); this machine has {}",
        cpus.len()
    );
    let (send_cpu, recv_cpu) = (cpus[0], cpus[cpus.len() - 1]);
    // Everything we start (tools, the agent) stays off the receiver's core.
    let _affinity = AffinityGuard::pin_self(send_cpu)?;

    let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    let runs = if quick { 1 } else { 3 };
    let secs = if quick { 1.0 } else { 3.0 };
    let mut results: Vec<(Mechanism, usize, Vec<Trial>)> = Vec::new();
    for run in 0..runs {
        for &n in sizes {
            // Rotate the order so that no mechanism always goes first.
            for k in 0..Mechanism::ALL.len() {
                let m = Mechanism::ALL[(k + run) % Mechanism::ALL.len()];
                let t = trial(&bin, m, n, secs, send_cpu, recv_cpu)
                    .with_context(|| format!("flood against {} with {n} bans", m.label()))?;
                eprintln!(
                    "xtask: flood {} n={n}: {:.0} ns/drop, {:.0} kpps dropped, sent {:.0} kpps, receiver busy {:.0}%",
                    m.label(),
                    t.ns_per_drop,
                    t.drop_pps / 1e3,
                    t.sent_pps / 1e3,
                    t.busy * 100.0
                );
                match results.iter_mut().find(|(rm, rn, _)| *rm == m && *rn == n) {
                    Some((_, _, v)) => v.push(t),
                    None => results.push((m, n, vec![t])),
                }
            }
        }
    }

    let mut table = Table::new(&[
        "mechanism",
        "banned sources",
        "CPU per dropped packet (ns), median (min-max)",
        "vs xban XDP",
        "dropped (kpps)",
        "receiver core busy",
        "offered (kpps)",
        "one core's capacity (kpps)",
    ]);
    let mut notes = Vec::new();
    let mut busiest = (f64::MAX, 0.0f64);
    for &n in sizes {
        let samples = |m: Mechanism, f: fn(&Trial) -> f64| -> Vec<f64> {
            let (_, _, v) = results
                .iter()
                .find(|(rm, rn, _)| *rm == m && *rn == n)
                .expect("every mechanism ran");
            v.iter().map(f).collect()
        };
        let med = |m, f| median(&mut samples(m, f));
        let xdp_cost = med(Mechanism::Xdp, |t| t.ns_per_drop);
        let mut summary = Vec::new();
        for m in Mechanism::ALL {
            let costs = samples(m, |t| t.ns_per_drop);
            let cost = median(&mut costs.clone());
            let (lo, hi) = costs
                .iter()
                .fold((f64::MAX, 0.0f64), |(a, b), &c| (a.min(c), b.max(c)));
            for b in samples(m, |t| t.busy) {
                busiest = (busiest.0.min(b), busiest.1.max(b));
            }
            table.row(vec![
                m.label().into(),
                n.to_string(),
                format!("{cost:.0} ({lo:.0}-{hi:.0})"),
                format!("{:.1}×", cost / xdp_cost),
                format!("{:.0}", med(m, |t| t.drop_pps) / 1e3),
                format!("{:.0}%", med(m, |t| t.busy) * 100.0),
                format!("{:.0}", med(m, |t| t.sent_pps) / 1e3),
                format!("{:.0}", 1e6 / cost),
            ]);
            if m != Mechanism::Xdp {
                summary.push(format!("{} {:.1}×", m.short(), cost / xdp_cost));
            }
        }
        notes.push(format!(
            "{n} banned sources: per dropped packet, {} the CPU of xban's XDP drop ({xdp_cost:.0} ns); one core drops about {:.0} kpps with XDP.",
            summary.join(", "),
            1e6 / xdp_cost
        ));
    }
    notes.push(format!(
        "The receiver core was {:.0}-{:.0}% busy in every run: the generator offered more than any mechanism could take, so \"dropped\" is the most one core sustained here (the real-time share caps a core at 95%), and the capacity column is 1 s / CPU per packet. Frames beyond that were lost in the veth ring, which costs the receiver nothing.",
        busiest.0 * 100.0,
        busiest.1 * 100.0
    ));
    notes.push(
        "The generator runs in the kernel (an XDP program through BPF_PROG_TEST_RUN in live-frames mode, redirecting into the attacker's veth), so frames reach the server as a NIC would hand them over: XDP runs before any skb exists, the other mechanisms pay for the skb and the IPv6 stack up to their hook. A real NIC adds driver and DMA work to every mechanism alike, which would narrow the ratios somewhat."
            .into(),
    );
    notes.push(format!(
        "Noise: {runs} run(s) of {secs} s per mechanism and size, in a fresh namespace pair each, mechanisms rotating; medians, with the spread shown. A 2-core VM shared with other jobs: the generator (CPU {send_cpu}) and the receiver's NAPI thread (CPU {recv_cpu}) run real-time so that those jobs do not interleave with the flood, but caches and the hypervisor are shared, so single figures move by 10-30%. More banned sources spread the lookups over more memory, hence XDP's higher figure at 10,000."
    ));
    notes.push(format!(
        "iptables here is {}; rules sit in the filter table's INPUT chain as fail2ban puts them (one rule per address: cost grows with the number of rules), the ipset match is one rule there too, the nftables set is matched in an input-hook chain.",
        run_cmd(Command::new("ip6tables").arg("--version"))
            .unwrap_or_default()
            .trim()
    ));

    let flood_section = Section {
        title: "Dropping a flood from banned sources".into(),
        method: format!(
            "An attacker namespace floods a veth with UDP/IPv6 frames from N banned sources (rotating) towards a server namespace that drops them with one mechanism at a time. CPU per dropped packet is the CPU time of the server's receive path (threaded NAPI, alone on its core) over {secs} s of flood, divided by the packets the mechanism counted as dropped; both read while nothing flows."
        ),
        commands: vec![format!(
            "cargo xtask bench flood{}",
            if quick { " --quick" } else { "" }
        )],
        table,
        notes,
    };
    // The tarpit area: the same machine, after the floods.
    let mut sections = vec![flood_section];
    sections.extend(super::tarpit::run(&bin, quick, (send_cpu, recv_cpu))?);
    Ok(sections)
}

/// A fresh lab, one mechanism holding `n` bans, a flood, its figures.
fn trial(
    bin: &std::path::Path,
    m: Mechanism,
    n: usize,
    secs: f64,
    send_cpu: usize,
    recv_cpu: usize,
) -> Result<Trial> {
    let lab = lab()?;
    let sources = sources(n);
    let before = napi_threads()?;
    enable_napi(&lab)?;

    let mut agent: Option<Agent> = None;
    let dropped: Box<dyn Fn() -> Result<u64>> = match m {
        Mechanism::Xdp => {
            // The lab's own addresses only: flood sources are not allowlisted.
            let a = agent.insert(Agent::start(bin, &lab, r#"["127.0.0.0/8", "::1"]"#)?);
            let maps = BanMaps::open(a.pin_dir())?;
            for s in &sources {
                maps.ban(s, 128, xban_common::BanClass::Drop as u32)?;
            }
            let stats_map = BpfMap::open(&a.pin_dir().join(xban_common::MAP_STATS))?;
            percpu_counter(stats_map, vec![stats::DROPPED])?
        }
        Mechanism::Iptables => {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
            for s in &sources {
                rules += &format!("-A INPUT -s {}/128 -j DROP\n", ipv6(s));
            }
            rules += "COMMIT\n";
            in_srv_stdin(&lab, &["ip6tables-restore", "-w"], &rules)?;
            let ns = lab.srv_ns.clone();
            Box::new(move || iptables_input_packets(&ns))
        }
        Mechanism::Ipset => {
            let mut set = format!(
                "create xbench hash:ip family inet6 hashsize {} maxelem {}\n",
                n.next_power_of_two(),
                2 * n
            );
            for s in &sources {
                set += &format!("add xbench {}\n", ipv6(s));
            }
            in_srv_stdin(&lab, &["ipset", "restore"], &set)?;
            in_srv(
                &lab,
                &[
                    "ip6tables",
                    "-w",
                    "-A",
                    "INPUT",
                    "-m",
                    "set",
                    "--match-set",
                    "xbench",
                    "src",
                    "-j",
                    "DROP",
                ],
            )?;
            let ns = lab.srv_ns.clone();
            Box::new(move || iptables_input_packets(&ns))
        }
        Mechanism::Nft => {
            let elems: Vec<String> = sources.iter().map(ipv6).collect();
            let ruleset = format!(
                "table inet xbench {{\n  set banned {{\n    type ipv6_addr\n    elements = {{ {} }}\n  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    ip6 saddr @banned counter drop\n  }}\n}}\n",
                elems.join(", ")
            );
            in_srv_stdin(&lab, &["nft", "-f", "-"], &ruleset)?;
            let ns = lab.srv_ns.clone();
            Box::new(move || {
                let out = run_cmd(Command::new("ip").args([
                    "netns", "exec", &ns, "nft", "list", "chain", "inet", "xbench", "input",
                ]))?;
                out.split("counter packets ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no counter in the nft chain: {out}"))
            })
        }
    };

    let sink = in_ns(&lab.srv_ns, || {
        UdpSocket::bind(SocketAddr::new(SRV_V6.parse().unwrap(), DST_PORT))
    })??;
    sink.set_nonblocking(true)?;
    let srv_mac = mac_of(&lab.srv_ns, &lab.srv_if)?;
    let atk_mac = mac_of(&lab.atk_ns, &lab.atk_if)?;
    let dst = v6(SRV_V6);
    // One source port for all: the generator only rewrites the source
    // address and the checksum.
    let frames: Vec<Vec<u8>> = sources
        .iter()
        .map(|s| ipv6_udp_frame_to(srv_mac, atk_mac, *s, dst, 40000, DST_PORT))
        .collect();
    let t = receive_cost(
        &lab,
        &before,
        &frames,
        Rewrite::SourceAndChecksum(UDP_CSUM_OFF),
        (send_cpu, recv_cpu),
        secs,
        &*dropped,
    )?;
    // A banned source's packet reaching the socket means the mechanism leaked.
    let mut buf = [0u8; 64];
    let mut leaked = 0;
    loop {
        match sink.recv_from(&mut buf) {
            Ok(_) => leaked += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(leaked == 0, "{leaked} flood packets got through");
    if let Some(a) = agent {
        a.stop()?;
    }
    Ok(t)
}

/// The server's receive-path CPU per counted packet for a flood of
/// `frames` (IPv6, rotating sources; the generator rewrites `rewrite` in
/// each): the server veth's NAPI thread (new since `before`, so created
/// after the mechanism was set up) alone and real-time on `cpus.1`, the
/// generator on `cpus.0`; `counted` reads the mechanism's own count of
/// packets it handled.
pub fn receive_cost(
    lab: &Lab,
    before: &[(i32, String)],
    frames: &[Vec<u8>],
    rewrite: Rewrite,
    (send_cpu, recv_cpu): (usize, usize),
    secs: f64,
    counted: &dyn Fn() -> Result<u64>,
) -> Result<Trial> {
    // After the mechanism is in place: XDP attach may (re)create the thread.
    let napi = napi_thread(&lab.srv_if, before)?;
    set_affinity(napi, recv_cpu)?;
    // Real-time, so that other jobs on that core (a shared machine) do not
    // delay the receive path and overflow the ring: its core is then its
    // own (up to the kernel's 95% real-time share).
    let param = libc::sched_param { sched_priority: 50 };
    // SAFETY: plain syscall on a thread id with a valid sched_param.
    let r = unsafe { libc::sched_setscheduler(napi, libc::SCHED_FIFO, &param) };
    ensure!(
        r == 0,
        "make the NAPI thread real-time: {}",
        std::io::Error::last_os_error()
    );
    let ifindex = in_ns(&lab.atk_ns, || {
        let name = std::ffi::CString::new(lab.atk_if.as_str()).expect("interface name");
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    ensure!(ifindex != 0, "no interface {}", lab.atk_if);
    let gen = Arc::new(Generator::new(frames, ifindex, rewrite)?);
    // Warm-up (neighbour state, caches), then the measured flood. Counters
    // are read while nothing flows, so that drops and CPU time cover the
    // same packets.
    flood(lab, &gen, send_cpu, Duration::from_millis(300))?;
    drain(napi)?;
    let (d0, c0) = (counted()?, thread_cpu_ns(napi)?);
    let (sent, elapsed) = flood(lab, &gen, send_cpu, Duration::from_secs_f64(secs))?;
    drain(napi)?;
    let (d1, c1) = (counted()?, thread_cpu_ns(napi)?);
    let drops = d1 - d0;
    ensure!(drops > 0, "nothing was dropped ({sent} frames sent)");
    Ok(Trial {
        ns_per_drop: (c1 - c0) as f64 / drops as f64,
        drop_pps: drops as f64 / elapsed,
        sent_pps: sent as f64 / elapsed,
        busy: (c1 - c0) as f64 / (elapsed * 1e9),
    })
}

/// `n` distinct banned sources in 2001:db8:f00d::/48, shuffled.
pub fn sources(n: usize) -> Vec<[u8; 16]> {
    let mut rng = Rng(0xf100d);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = FLOOD_NET | (rng.next() as u128 & 0xffff_ffff_ffff_ffff_ffff);
        if seen.insert(a) {
            out.push(a.to_be_bytes());
        }
    }
    out
}

fn ipv6(a: &[u8; 16]) -> String {
    std::net::Ipv6Addr::from(*a).to_string()
}

pub fn in_srv(lab: &Lab, args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", &lab.srv_ns])
            .args(args),
    )
}

/// Runs a command in the server namespace with `input` on its stdin.
fn in_srv_stdin(lab: &Lab, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.srv_ns])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", args.join(" ")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Packets matched by the INPUT chain's rules, summed.
fn iptables_input_packets(ns: &str) -> Result<u64> {
    let out = run_cmd(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "ip6tables",
        "-w",
        "-nvxL",
        "INPUT",
    ]))?;
    // Two header lines, then "pkts bytes target ..." per rule.
    Ok(out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

// ---------------------------------------------------------------------------
// The sender: frames generated in the kernel, as a NIC would hand them over.
//
// A small XDP program runs through BPF_PROG_TEST_RUN in live-frames mode on
// the attacker's side: for each frame it writes the next banned source
// address (and the UDP checksum that goes with it) and redirects the frame to
// the attacker's veth. veth passes it to the server's end as an XDP frame,
// not an skb: the server's XDP program runs on it directly, and without XDP
// veth builds an skb around it for the stack, like a NIC driver. (Writing
// frames from an AF_PACKET socket instead would make veth copy every skb
// into a fresh page before XDP could run, a cost no NIC has.)

/// Placeholder offset of the generator's jumps to its exit.
const OUT: i16 = i16::MIN;
/// Frames in the first BPF_PROG_TEST_RUN call (and the fewest per call).
const CHUNK: u32 = 1 << 16;
/// Offsets in the frame: IPv6 source address, UDP checksum.
const SRC_OFF: i16 = 14 + 8;
const UDP_CSUM_OFF: i16 = 14 + 40 + 6;

/// What the generator writes into each frame before sending it.
#[derive(Clone, Copy)]
pub enum Rewrite {
    /// The IPv6 source address and the 2-byte checksum at this offset.
    SourceAndChecksum(i16),
    /// The whole frame (for receivers that rewrite frames in place).
    Whole,
}

/// The generator program and its maps: a counter, and per source the
/// address and the frame's checksum with it.
struct Generator {
    prog: OwnedFd,
    _counter: BpfMap,
    _sources: BpfMap,
    template: Vec<u8>,
}

impl Generator {
    fn new(frames: &[Vec<u8>], ifindex: u32, rewrite: Rewrite) -> Result<Generator> {
        let counter = BpfMap::create_array(8, 1)?;
        let len = frames[0].len();
        ensure!(
            frames.iter().all(|f| f.len() == len),
            "the generator's frames are all of one length"
        );
        let value_size = match rewrite {
            Rewrite::SourceAndChecksum(_) => 24,
            Rewrite::Whole => {
                // 8-byte words, then 2-byte ones.
                ensure!(len.is_multiple_of(2), "odd frame length {len}");
                len.next_multiple_of(8)
            }
        };
        let sources = BpfMap::create_array(value_size as u32, frames.len() as u32)?;
        for (i, f) in frames.iter().enumerate() {
            let mut v = vec![0u8; value_size];
            match rewrite {
                Rewrite::SourceAndChecksum(csum_off) => {
                    v[..16].copy_from_slice(&f[SRC_OFF as usize..SRC_OFF as usize + 16]);
                    v[16..18].copy_from_slice(&f[csum_off as usize..csum_off as usize + 2]);
                }
                Rewrite::Whole => v[..len].copy_from_slice(f),
            }
            sources
                .update(&(i as u32).to_ne_bytes(), &v)
                .context("fill the generator's sources")?;
        }
        let ld_map = |dst: u8, fd: i32| [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)];
        let n = frames.len() as i32;
        let mut p = vec![
            insn(0xbf, 6, 1, 0, 0),   // r6 = ctx
            insn(0x62, 10, 0, -4, 0), // *(u32 *)(fp - 4) = 0
            insn(0xbf, 2, 10, 0, 0),  // r2 = fp
            insn(0x07, 2, 0, 0, -4),  // r2 -= 4
        ];
        p.extend(ld_map(1, counter.raw_fd())); // r1 = &counter
        p.extend([
            insn(0x85, 0, 0, 0, 1),   // r0 = map_lookup_elem(r1, r2)
            insn(0x15, 0, 0, OUT, 0), // if r0 == 0 goto out
            insn(0x79, 7, 0, 0, 0),   // r7 = *(u64 *)r0
            insn(0xbf, 8, 7, 0, 0),   // r8 = r7
            insn(0x07, 8, 0, 0, 1),   // r8 += 1
            insn(0x7b, 0, 8, 0, 0),   // *(u64 *)r0 = r8
            insn(0x97, 7, 0, 0, n),   // r7 %= n
            insn(0x63, 10, 7, -8, 0), // *(u32 *)(fp - 8) = r7
            insn(0xbf, 2, 10, 0, 0),  // r2 = fp
            insn(0x07, 2, 0, 0, -8),  // r2 -= 8
        ]);
        p.extend(ld_map(1, sources.raw_fd())); // r1 = &sources
        let written_end = match rewrite {
            Rewrite::SourceAndChecksum(csum_off) => csum_off as i32 + 2,
            Rewrite::Whole => len as i32,
        };
        p.extend([
            insn(0x85, 0, 0, 0, 1),           // r0 = map_lookup_elem(r1, r2)
            insn(0x15, 0, 0, OUT, 0),         // if r0 == 0 goto out
            insn(0x61, 2, 6, 0, 0),           // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),           // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),           // r4 = r2
            insn(0x07, 4, 0, 0, written_end), // r4 += end of what is written
            insn(0x2d, 4, 3, OUT, 0),         // if r4 > r3 goto out
        ]);
        match rewrite {
            Rewrite::SourceAndChecksum(csum_off) => p.extend([
                insn(0x79, 5, 0, 0, 0),           // r5 = source[0..8]
                insn(0x7b, 2, 5, SRC_OFF, 0),     // packet source[0..8] = r5
                insn(0x79, 5, 0, 8, 0),           // r5 = source[8..16]
                insn(0x7b, 2, 5, SRC_OFF + 8, 0), // packet source[8..16] = r5
                insn(0x69, 5, 0, 16, 0),          // r5 = checksum
                insn(0x6b, 2, 5, csum_off, 0),    // packet checksum = r5
            ]),
            Rewrite::Whole => {
                // The receiver may have rewritten the frame in place (an
                // XDP_TX reply) before its page came back: all of it anew.
                let words = len / 8;
                for w in 0..words as i16 {
                    p.push(insn(0x79, 5, 0, 8 * w, 0)); // r5 = frame word w
                    p.push(insn(0x7b, 2, 5, 8 * w, 0)); // packet word w = r5
                }
                let mut off = words * 8;
                while off < len {
                    p.push(insn(0x69, 5, 0, off as i16, 0)); // r5 = 2 bytes
                    p.push(insn(0x6b, 2, 5, off as i16, 0)); // packet 2 bytes = r5
                    off += 2;
                }
            }
        }
        p.extend([
            insn(0xb7, 1, 0, 0, ifindex as i32), // r1 = ifindex
            insn(0xb7, 2, 0, 0, 0),              // r2 = 0
            insn(0x85, 0, 0, 0, 23),             // return bpf_redirect(r1, r2)
            insn(0x95, 0, 0, 0, 0),
        ]);
        // Point the jumps marked OUT at the end: return XDP_DROP.
        let out = p.len();
        for (i, ins) in p.iter_mut().enumerate() {
            if (*ins >> 16) as i16 == OUT && matches!(*ins as u8, 0x15 | 0x2d) {
                let off = (out - i - 1) as i16;
                *ins = (*ins & !0xffff_0000) | ((off as u16 as u64) << 16);
            }
        }
        p.extend([insn(0xb7, 0, 0, 0, XDP_DROP as i32), insn(0x95, 0, 0, 0, 0)]);
        Ok(Generator {
            prog: load_xdp(&p).context("load the traffic generator")?,
            _counter: counter,
            _sources: sources,
            template: frames[0].clone(),
        })
    }
}

const XDP_DROP: u32 = 1;

/// Floods for `how_long`: frames sent and seconds it took.
fn flood(lab: &Lab, gen: &Arc<Generator>, cpu: usize, how_long: Duration) -> Result<(u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sender = spawn_sender(lab, gen.clone(), stop.clone(), sent.clone(), cpu)?;
    std::thread::sleep(how_long);
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok((
        sent.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// Waits until the receive path has emptied its ring (its CPU time stops
/// moving).
fn drain(napi: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = thread_cpu_ns(napi)?;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = thread_cpu_ns(napi)?;
        if now == last || Instant::now() > deadline {
            return Ok(());
        }
        last = now;
    }
}

/// Runs the generator in the attacker's namespace, on `cpu`, until `stop`;
/// counts the frames it made in `sent`.
fn spawn_sender(
    lab: &Lab,
    gen: Arc<Generator>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    cpu: usize,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let ns = std::fs::File::open(format!("/run/netns/{}", lab.atk_ns))?;
    Ok(std::thread::spawn(move || -> Result<()> {
        // SAFETY: setns on a valid namespace fd, for this thread only: the
        // redirect looks the interface up in the namespace of the caller.
        ensure!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
            "setns: {}",
            std::io::Error::last_os_error()
        );
        set_affinity(0, cpu)?;
        // Real-time like the receiver: other jobs on its core would make the
        // flood come in bursts. Bounded by the flood's length (and the
        // kernel keeps 5% of the core for others).
        let param = libc::sched_param { sched_priority: 40 };
        // SAFETY: plain syscall on this thread with a valid sched_param.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        ensure!(
            r == 0,
            "make the sender real-time: {}",
            std::io::Error::last_os_error()
        );
        // Each call sets up and tears down a page pool (an RCU grace period,
        // milliseconds, while nothing is sent): calls of ~0.5 s each keep
        // that to a few percent of the flood.
        let mut chunk = CHUNK;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            prog_test_run(&gen.prog, &gen.template, chunk, BPF_F_TEST_XDP_LIVE_FRAMES)
                .context("BPF_PROG_TEST_RUN of the traffic generator (live frames)")?;
            sent.fetch_add(chunk as u64, Ordering::Relaxed);
            let rate = chunk as f64 / t.elapsed().as_secs_f64().max(1e-6);
            chunk = (rate / 2.0).clamp(CHUNK as f64, (1u32 << 24) as f64) as u32;
        }
        Ok(())
    }))
}
