//! `[fleet]`: how fast a ban made on one host is in the XDP maps of the
//! others, through a real `nats-server` (JetStream) in a hub namespace,
//! with three agents each in its own lab (the integration tests' harness).

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xban_lab::fleet::{Hub, NatsServer};
use xban_lab::{sshd_failure, AgentDir, AgentProcess, Lab};

use super::{dur, percentile, thousands, Ctx, Section, Table};
use crate::bpf::PinnedTrie;

/// CrowdSec's firewall bouncer pulls decisions every `update_frequency`,
/// 10 s by default (its documented configuration).
const CROWDSEC_POLL: Duration = Duration::from_secs(10);

/// Fields in drop order: the agent, its directory, then the namespaces.
struct Host {
    agent: Option<AgentProcess>,
    dir: AgentDir,
    lab: Lab,
}

impl Host {
    fn new(hub: &Hub, name: &str, url: &str) -> Result<Host> {
        let lab = Lab::new()?;
        hub.join(&lab)?;
        let dir = AgentDir::new()?;
        dir.write_config(
            &lab,
            &format!(
                "[defaults]\nmaxretry = 1\nbantime = \"1d\"\n[escalation]\nenabled = false\n\
                 [jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{{LOG}}\"]\n\
                 [fleet]\nservers = [\"{url}\"]\nnode = \"{name}\"\n"
            ),
        )?;
        let mut h = Host {
            lab,
            dir,
            agent: None,
        };
        h.start()?;
        Ok(h)
    }

    fn start(&mut self) -> Result<()> {
        self.agent = Some(AgentProcess::start(&self.lab, &self.dir)?);
        let ready = super::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            let f = self.fleet().ok()?;
            (f["connected"] == true && f["consumer"]["ready"] == true).then_some(())
        });
        if ready.is_none() {
            bail!("fleet not ready:\n{}", self.log());
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(a) = self.agent.take() {
            a.stop()?;
        }
        Ok(())
    }

    fn log(&self) -> String {
        self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
    }

    fn fleet(&self) -> Result<serde_json::Value> {
        let st: serde_json::Value =
            serde_json::from_str(&self.dir.xban_ok(&["status", "--json"])?)?;
        Ok(st["fleet"].clone())
    }

    fn trie(&self) -> Result<PinnedTrie> {
        PinnedTrie::open(&self.dir.pin_dir.join("bans_v6"))
    }

    fn write(&self, addrs: &[IpAddr], first: usize) -> Result<()> {
        let lines: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| sshd_failure(&a.to_string(), first + i))
            .collect();
        self.dir.append_log(&lines)
    }
}

fn addr(block: u16, i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xf1,
        block,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ))
}

/// Waits until every address is in the trie; returns when the last was seen.
fn wait_all(trie: &PinnedTrie, addrs: &[IpAddr], timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut left: Vec<IpAddr> = addrs.to_vec();
    while started.elapsed() < timeout {
        left.retain(|a| !trie.contains(*a));
        if left.is_empty() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

pub(crate) fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    // The test harness finds the agent under test here.
    std::env::set_var("XBAN_BIN", &ctx.xban);
    let n_conv = ctx.size(1000, 100) as u32;
    let n_burst = ctx.size(10_000, 1000) as u32;
    let n_catch = ctx.size(50_000, 2000) as u32;
    let hub = Hub::new()?;
    let store = tempfile::tempdir()?;
    let server = NatsServer::start(&hub, store.path(), 4222)?;
    let url = server.url();
    let a = Host::new(&hub, "a", &url)?;
    let mut b = Host::new(&hub, "b", &url)?;
    let c = Host::new(&hub, "c", &url)?;
    let (ta, tb, tc) = (a.trie()?, b.trie()?, c.trie()?);

    // 1. One ban at a time: A's map entry to B's and C's.
    let mut lat_ms = Vec::with_capacity(2 * n_conv as usize);
    let mut missing = 0;
    for i in 0..n_conv {
        let x = addr(1, i);
        a.write(&[x], i as usize)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let t0 = loop {
            if ta.contains(x) {
                break Some(Instant::now());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        let Some(t0) = t0 else {
            missing += 2;
            continue;
        };
        let (mut seen_b, mut seen_c) = (None, None);
        while (seen_b.is_none() || seen_c.is_none()) && Instant::now() < deadline {
            if seen_b.is_none() && tb.contains(x) {
                seen_b = Some(t0.elapsed());
            }
            if seen_c.is_none() && tc.contains(x) {
                seen_c = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        for s in [seen_b, seen_c] {
            match s {
                Some(d) => lat_ms.push(d.as_secs_f64() * 1e3),
                None => missing += 1,
            }
        }
    }
    if lat_ms.is_empty() {
        bail!("no ban converged:\n{}", a.log());
    }
    let p50 = percentile(&mut lat_ms, 50.0);
    let p99 = percentile(&mut lat_ms, 99.0);
    let max = percentile(&mut lat_ms, 100.0);

    // 2. A burst on A until every host has all of it; several runs, each
    // with fresh addresses, since one run moves with whatever else the
    // machine does.
    let burst_runs = if ctx.quick { 1 } else { 3 };
    let mut bursts: Vec<(Duration, Duration, Duration)> = Vec::new();
    for run in 0..burst_runs {
        let burst: Vec<IpAddr> = (0..n_burst).map(|i| addr(10 + run, i)).collect();
        let t0 = Instant::now();
        a.write(&burst, 1_000_000 + run as usize * n_burst as usize)?;
        let timeout = Duration::from_secs(120);
        let on_a = wait_all(&ta, &burst, timeout).context("burst: A's own bans")?;
        let on_b = wait_all(&tb, &burst, timeout.saturating_sub(t0.elapsed()))
            .map(|_| t0.elapsed())
            .context("burst: B")?;
        let on_c = wait_all(&tc, &burst, timeout.saturating_sub(t0.elapsed()))
            .map(|_| t0.elapsed())
            .context("burst: C")?;
        bursts.push((on_a, on_b, on_c));
    }
    // The run whose slowest host is the median of the runs' slowest.
    bursts.sort_by_key(|(_, b, c)| *b.max(c));
    let (on_a, on_b, on_c) = bursts[bursts.len() / 2];
    let all_runs: Vec<String> = bursts.iter().map(|(_, b, c)| dur(*b.max(c))).collect();

    // 3. B down while A bans; then B catches up.
    b.stop()?;
    let catch: Vec<IpAddr> = (0..n_catch).map(|i| addr(3, i)).collect();
    for (k, chunk) in catch.chunks(5000).enumerate() {
        a.write(chunk, 2_000_000 + k * 5000)?;
    }
    wait_all(&ta, &catch, Duration::from_secs(300)).context("catch-up: A's own bans")?;
    super::wait_for(Duration::from_secs(300), Duration::from_millis(200), || {
        (a.fleet().ok()?["outbox"] == 0).then_some(())
    })
    .context("catch-up: A's outbox did not drain")?;
    let t0 = Instant::now();
    b.start()?;
    let tb = b.trie()?;
    let caught = wait_all(&tb, &catch, Duration::from_secs(300))
        .map(|_| t0.elapsed())
        .context("catch-up: B")?;
    let cmd = "cargo xtask bench fleet".to_string();
    drop((a, b, c, server));

    let mut table = Table::new(&["scenario", "bans", "result", "target"]);
    table.row(vec![
        "A's map entry → B's and C's maps (one ban at a time)".into(),
        thousands(n_conv as u64),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms"),
        "p99 ≤ 50 ms".into(),
    ]);
    table.row(vec![
        format!("burst on A until every host has all (median of {burst_runs} runs)"),
        thousands(n_burst as u64),
        format!(
            "A {}, B {}, C {} (every host, each run: {})",
            dur(on_a),
            dur(on_b),
            dur(on_c),
            all_runs.join(", ")
        ),
        "≤ 2 s".into(),
    ]);
    table.row(vec![
        "catch-up: B down while A bans, B start → all in B's map".into(),
        thousands(n_catch as u64),
        dur(caught),
        "-".into(),
    ]);
    let mut notes = vec![
        format!(
            "Convergence p99 {p99:.2} ms: target ≤ 50 ms {}.",
            if p99 <= 50.0 { "met" } else { "MISSED" }
        ),
        format!(
            "Burst of {} bans on every host within {}: target ≤ 2 s {}.",
            thousands(n_burst as u64),
            dur(on_b.max(on_c)),
            if on_b.max(on_c) <= Duration::from_secs(2) {
                "met"
            } else {
                "MISSED"
            }
        ),
        format!(
            "For comparison, CrowdSec's firewall bouncer pulls decisions every {} s by default (`update_frequency`), so a ban takes up to that long to reach a host: {:.0}× this p99.",
            CROWDSEC_POLL.as_secs(),
            CROWDSEC_POLL.as_secs_f64() * 1e3 / p99
        ),
        "One nats-server 2.9 (Debian) with file storage; all three agents and the server share this machine's cores.".into(),
    ];
    if missing > 0 {
        notes.push(format!(
            "{missing} host-ban pairs did not converge within 5 s."
        ));
    }
    Ok(vec![Section {
        title: "Fleet: bans shared through NATS JetStream".into(),
        method: "Three agents, each in its own network namespace, share bans through one nats-server in a hub namespace. Bans are made on A from its log (maxretry 1); each host's pinned ban trie is polled through bpf(2), and the time is taken from A's entry to B's and C's.".into(),
        commands: vec![cmd],
        table,
        notes,
    }])
}
