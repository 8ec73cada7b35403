//! The agent under load: ban latency (log write to XDP map entry, and to
//! the first dropped packet), fail2ban alongside; and the helpers the scale
//! area ([`crate::scale`]) shares.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use xban_lab::{syslog_now, Control};

use crate::bpf::PinnedTrie;
use crate::loggen::{attacker_addr, sshd_failure};
use crate::rig::AgentRig;
use crate::{dur, percentile, thousands, wait_for, Ctx, Section, Table};

pub(crate) const MAXRETRY: u64 = 3;

pub(crate) const STATUS_REQ: &str = xban_lab::STATUS_REQUEST;

/// `status` asked every `every` from another thread, round trips recorded,
/// while the agent is busy with something else.
pub(crate) struct StatusProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl StatusProbe {
    pub(crate) fn start(req: Control, every: Duration) -> StatusProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ms = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((t, _)) = req.timed(STATUS_REQ) {
                    ms.push(t);
                }
                std::thread::sleep(every);
            }
            ms
        });
        StatusProbe { stop, thread }
    }

    /// The round trips, in milliseconds.
    pub(crate) fn stop(self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The agent's own event-loop timings from a `status` reply, as a note.
pub(crate) fn loop_turns_note(status: &serde_json::Value, when: &str) -> String {
    let turns = &status["event_loop"];
    let mut by_work: Vec<String> = turns["by_work"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(work, w)| {
            format!(
                "{work} {:.1} ms ({} turns)",
                w["slowest_ms"].as_f64().unwrap_or(f64::NAN),
                w["turns"]
            )
        })
        .collect();
    by_work.sort();
    format!(
        "Slowest event-loop turn per kind of work, {when} (the agent's own `status` → `event_loop`; `lines` is one turn of lines, chunks of 128 until 5 ms are spent, `listing` one slice of a `banned` reply): {}; {} turns over 10 ms.",
        by_work.join(", "),
        turns["slow_turns"]
    )
}

/// "p50 / max" of round trips in milliseconds.
pub(crate) fn p50_max(ms: &mut [f64]) -> (String, String) {
    if ms.is_empty() {
        return ("?".into(), "?".into());
    }
    let p50 = percentile(ms, 50.0);
    let max = ms.iter().copied().fold(0.0, f64::max);
    (format!("{p50:.2} ms"), format!("{max:.2} ms"))
}

/// With `bans` held: `status` and `metrics` round trips, a whole `banned`
/// listing, and a ban asked while that listing is read; then the slowest
/// event-loop turn per kind of work, as the agent measured them.
pub(crate) fn responsiveness(
    rig: &AgentRig,
    bans: u64,
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<()> {
    let req = rig.requester();
    let held = thousands(bans);
    for (name, json) in [("status", STATUS_REQ), ("metrics", "{\"cmd\":\"metrics\"}")] {
        let mut ms = Vec::new();
        for _ in 0..30 {
            ms.push(req.timed(json)?.0);
        }
        let (p50, max) = p50_max(&mut ms);
        table.row(vec![
            format!("`{name}`, {held} bans held"),
            "30".into(),
            p50,
            max,
        ]);
    }
    let lister = req.clone();
    let listing =
        std::thread::spawn(move || lister.timed_raw("{\"cmd\":\"banned\",\"jail\":null}"));
    std::thread::sleep(Duration::from_millis(20));
    let (ban_ms, _) = req.timed(
        "{\"cmd\":\"ban\",\"target\":\"203.0.113.250\",\"jail\":null,\"bantime\":null,\"class\":null}",
    )?;
    let raw = listing
        .join()
        .map_err(|_| anyhow::anyhow!("the listing thread panicked"))??;
    let listed = raw.text.matches("\"address\":").count();
    table.row(vec![
        format!(
            "`banned`, whole listing of {} ({} MB): first byte / last byte",
            thousands(listed as u64),
            raw.text.len() / 1_000_000
        ),
        "1".into(),
        format!("{:.0} ms", raw.first_byte_ms),
        format!("{:.0} ms", raw.last_byte_ms),
    ]);
    table.row(vec![
        "`ban`, asked while that listing is read".into(),
        "1".into(),
        format!("{ban_ms:.2} ms"),
        format!("{ban_ms:.2} ms"),
    ]);
    req.request(
        "{\"cmd\":\"unban\",\"target\":\"203.0.113.250\",\"jail\":null,\"all\":false,\"local\":false}",
    )?;
    let st = req.request(STATUS_REQ)?;
    notes.push(loop_turns_note(&st, &format!("with {held} bans")));
    Ok(())
}

/// The failure lines that ban `addr` (the `i`th address of a run): the
/// first maxretry - 1, and the one that reaches maxretry, written apart so
/// the clock can start at the last.
pub(crate) fn ban_lines(addr: IpAddr, i: u64) -> (String, String) {
    let stamp = syslog_now();
    let mut first = String::new();
    for k in 0..MAXRETRY - 1 {
        first.push_str(&sshd_failure(&stamp, addr, i * MAXRETRY + k));
        first.push('\n');
    }
    let last = format!(
        "{}\n",
        sshd_failure(&stamp, addr, i * MAXRETRY + MAXRETRY - 1)
    );
    (first, last)
}

pub(crate) fn jail_config(maxretry: u64) -> String {
    format!(
        "[defaults]\nmaxretry = {maxretry}\nfindtime = \"10m\"\nbantime = \"1d\"\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{{LOG}}\"]\n"
    )
}

/// Sleeps in the polling loops are then as short as asked (the default
/// timer slack of 50 µs would dominate them).
pub(crate) fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

pub(crate) struct Tries {
    v4: PinnedTrie,
    v6: PinnedTrie,
}

impl Tries {
    pub(crate) fn open(pin_dir: &Path) -> Result<Tries> {
        Ok(Tries {
            v4: PinnedTrie::open(&pin_dir.join("bans_v4"))?,
            v6: PinnedTrie::open(&pin_dir.join("bans_v6"))?,
        })
    }

    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.v4.contains(addr),
            IpAddr::V6(_) => self.v6.contains(addr),
        }
    }
}

// ---- latency ----------------------------------------------------------------

/// Attacker indices for the latency run, away from the other runs' ranges.
const LATENCY_BASE: u32 = 3_000_000;

pub(crate) fn latency(ctx: &Ctx) -> Result<Vec<Section>> {
    let n = ctx.size(10_000, 300);
    fine_timer_slack();
    let mut rig = AgentRig::new(ctx, &jail_config(MAXRETRY))?;
    rig.start_and_wait()?;
    let tries = Tries::open(&rig.dir.pin_dir)?;
    let mut log = rig.log_writer()?;
    let mut lat_us = Vec::with_capacity(n as usize);
    let mut missing = 0u64;
    let poll = Duration::from_micros(20);
    let timeout = Duration::from_secs(5);
    let started = Instant::now();
    for i in 0..n {
        let addr = attacker_addr(LATENCY_BASE + i as u32);
        let (first, last) = ban_lines(addr, i);
        log.write_all(first.as_bytes())?;
        // The clock starts at the write of the failure that reaches maxretry.
        let t0 = Instant::now();
        log.write_all(last.as_bytes())?;
        loop {
            if tries.contains(addr) {
                lat_us.push(t0.elapsed().as_secs_f64() * 1e6);
                break;
            }
            if t0.elapsed() > timeout {
                missing += 1;
                break;
            }
            std::thread::sleep(poll);
        }
    }
    let total = started.elapsed();
    let active = rig.status()?["bans_active"].as_u64().unwrap_or(0);
    let probes = ctx.size(300, 20);
    let (mut drop_us, lost_early) = drop_latency(&rig, &tries, &mut log, probes)?;
    let cmd = rig.run_command_text();
    rig.stop()?;
    drop(rig);
    if lat_us.is_empty() {
        bail!("no ban reached the XDP map within {timeout:?}");
    }

    let mut table = Table::new(&["", "bans", "p50", "p90", "p99", "max", "mean"]);
    let mean = lat_us.iter().sum::<f64>() / lat_us.len() as f64;
    let us = |x: f64| dur(Duration::from_secs_f64(x / 1e6));
    table.row(vec![
        "xban: failure line written → XDP map entry".into(),
        thousands(lat_us.len() as u64),
        us(percentile(&mut lat_us, 50.0)),
        us(percentile(&mut lat_us, 90.0)),
        us(percentile(&mut lat_us, 99.0)),
        us(percentile(&mut lat_us, 100.0)),
        us(mean),
    ]);
    let mut notes = vec![format!(
        "{} of {} bans reached the map within {}{}; the agent reported {} active bans at the end. The {} bans took {:.1} s in all, one address at a time.",
        thousands(lat_us.len() as u64),
        thousands(n),
        dur(timeout),
        if missing > 0 {
            format!(" ({missing} did not: a failure)")
        } else {
            String::new()
        },
        thousands(active),
        thousands(n),
        total.as_secs_f64()
    )];
    if !drop_us.is_empty() {
        let mean = drop_us.iter().sum::<f64>() / drop_us.len() as f64;
        table.row(vec![
            "xban: failure line written → first dropped packet".into(),
            thousands(drop_us.len() as u64),
            us(percentile(&mut drop_us, 50.0)),
            us(percentile(&mut drop_us, 90.0)),
            us(percentile(&mut drop_us, 99.0)),
            us(percentile(&mut drop_us, 100.0)),
            us(mean),
        ]);
    }
    notes.push(format!(
        "First dropped packet: for {} more IPv4 addresses (each added to the peer's end of the veth), the peer sends a numbered UDP packet from the address to the agent's side every {} µs, from before the failure lines are written until {} ms after the trie entry appears; the first dropped packet is the one after the last that arrived, and its send time minus the write time is the figure. It includes up to one packet interval.{}",
        thousands(probes),
        PROBE_INTERVAL.as_micros(),
        PROBE_TAIL.as_millis(),
        if lost_early > 0 {
            format!(" {lost_early} address(es) lost a packet before the ban and were left out.")
        } else {
            String::new()
        }
    ));
    let f2b = fail2ban_latency(ctx, ctx.size(300, 20));
    match f2b {
        Ok((mut lats, count, backend)) => {
            let mean = lats.iter().sum::<f64>() / lats.len() as f64;
            table.row(vec![
                "fail2ban 1.0.2: failure line written → actionban runs".into(),
                thousands(lats.len() as u64),
                us(percentile(&mut lats, 50.0)),
                us(percentile(&mut lats, 90.0)),
                us(percentile(&mut lats, 99.0)),
                us(percentile(&mut lats, 100.0)),
                us(mean),
            ]);
            notes.push(format!(
                "fail2ban ran as its own daemon (`fail2ban-server -f` with a private config dir, backend `{F2B_BACKEND}` which chose `{backend}`, one sshd jail, maxretry {MAXRETRY}) on its own log, with a dummy action `actionban = echo \"$(date +%s.%N) <ip>\" >> FILE`: its figure is write → the action's timestamp, i.e. before any firewall work, so it flatters fail2ban. {count} bans, fewer than xban's because each takes fail2ban far longer.",
            ));
        }
        Err(e) => notes.push(format!(
            "fail2ban's latency could not be measured in this run ({e:#}); it is left out rather than estimated."
        )),
    }
    Ok(vec![Section {
        title: "Ban latency: log line to XDP map entry".into(),
        method: format!(
            "The real agent in its own network namespace (XDP on a veth, native mode), one sshd jail, maxretry {MAXRETRY}. For each of {} distinct addresses (IPv4 and every 7th IPv6), {} failure lines are appended to the followed log, then the {}rd; the clock starts just before that last write(2) and stops when the address's entry is found in the pinned LPM trie (`bans_v4`/`bans_v6`, looked up with the bpf(2) syscall every 20 µs, timer slack 1 ns). Addresses go one at a time, each after the previous one's entry appeared.",
            thousands(n),
            MAXRETRY - 1,
            MAXRETRY
        ),
        commands: vec![cmd],
        table,
        notes,
    }])
}

/// Attacker indices for the packet probes, away from the other runs' ranges.
const PROBE_BASE: u32 = 3_600_000;
const PROBE_INTERVAL: Duration = Duration::from_micros(50);
/// Probing goes on this long after the trie entry appeared.
const PROBE_TAIL: Duration = Duration::from_millis(5);
const PROBE_PORT_ANY: u16 = 0;

/// What the sender in the peer namespace is told.
enum Probe {
    /// Send numbered packets from this address to `to` until `Stop`.
    Start(std::net::Ipv4Addr, std::net::SocketAddr),
    Stop,
    Quit,
}

/// Write → first dropped packet, for `n` IPv4 addresses one at a time.
/// Returns the latencies in µs and how many addresses lost a packet before
/// their ban (left out).
fn drop_latency(
    rig: &AgentRig,
    tries: &Tries,
    log: &mut std::fs::File,
    n: u64,
) -> Result<(Vec<f64>, u64)> {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};

    let addrs: Vec<Ipv4Addr> = (PROBE_BASE..)
        .filter_map(|i| match attacker_addr(i) {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .take(n as usize)
        .collect();
    for a in &addrs {
        rig.lab.add_atk_v4(*a)?;
    }
    // The receiver keeps the (probe, sequence number) of the latest packet.
    let latest = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = {
        let (latest, stop) = (latest.clone(), stop.clone());
        xban_lab::spawn_in_ns(&rig.lab.srv_ns, move || -> Result<()> {
            let sock = UdpSocket::bind((xban_lab::SRV_V4, PROBE_PORT_ANY))?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            port_tx.send(sock.local_addr()?)?;
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((8, _)) = sock.recv_from(&mut buf) {
                    latest.store(u64::from_le_bytes(buf[..8].try_into()?), Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };
    let to: SocketAddr = port_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the probe receiver did not start")?;
    let (cmd_tx, cmd_rx) = mpsc::channel::<Probe>();
    let (sent_tx, sent_rx) = mpsc::channel::<Vec<Instant>>();
    let sender = xban_lab::spawn_in_ns(&rig.lab.atk_ns, move || -> Result<()> {
        fine_timer_slack();
        loop {
            let (from, to) = match cmd_rx.recv()? {
                Probe::Start(from, to) => (from, to),
                Probe::Stop => continue,
                Probe::Quit => return Ok(()),
            };
            let sock = UdpSocket::bind((from, 0))?;
            let mut sent = Vec::new();
            // The probe index travels in the high half of the payload.
            let probe = u64::from(u32::from(from));
            loop {
                let word = probe << 32 | sent.len() as u64;
                sent.push(Instant::now());
                sock.send_to(&word.to_le_bytes(), to)?;
                match cmd_rx.try_recv() {
                    Ok(_) => break,
                    Err(mpsc::TryRecvError::Empty) => std::thread::sleep(PROBE_INTERVAL),
                    Err(e) => return Err(e.into()),
                }
            }
            sent_tx.send(sent)?;
        }
    });

    let mut lats = Vec::new();
    let mut lost_early = 0;
    let result = (|| -> Result<()> {
        for (i, a) in addrs.iter().enumerate() {
            let probe = u64::from(u32::from(*a));
            cmd_tx.send(Probe::Start(*a, to))?;
            // Packets must flow first (the first one waits for ARP).
            wait_for(Duration::from_secs(2), Duration::from_micros(100), || {
                (latest.load(Ordering::Relaxed) >> 32 == probe).then_some(())
            })
            .with_context(|| format!("no probe packet from {a} reached the agent's side"))?;
            let stamp = syslog_now();
            let addr = IpAddr::V4(*a);
            let line = |k: u64| sshd_failure(&stamp, addr, (i as u64) * MAXRETRY + k) + "\n";
            let first: String = (0..MAXRETRY - 1).map(line).collect();
            log.write_all(first.as_bytes())?;
            let t0 = Instant::now();
            log.write_all(line(MAXRETRY - 1).as_bytes())?;
            let banned = wait_for(Duration::from_secs(5), Duration::from_micros(20), || {
                tries.contains(addr).then_some(())
            });
            std::thread::sleep(PROBE_TAIL);
            cmd_tx.send(Probe::Stop)?;
            let sent = sent_rx.recv_timeout(Duration::from_secs(5))?;
            // Let the last packets that got through be read.
            std::thread::sleep(Duration::from_millis(2));
            if banned.is_none() {
                bail!("{a} was not banned within 5 s");
            }
            let last = latest.load(Ordering::Relaxed);
            if last >> 32 != probe {
                bail!("no packet from {a} arrived at all");
            }
            let first_dropped = (last & 0xffff_ffff) as usize + 1;
            match sent.get(first_dropped) {
                Some(t) if *t >= t0 => lats.push(t.duration_since(t0).as_secs_f64() * 1e6),
                Some(_) => lost_early += 1,
                None => bail!("every probe packet from {a} arrived: nothing was dropped"),
            }
        }
        Ok(())
    })();
    let _ = cmd_tx.send(Probe::Quit);
    stop.store(true, Ordering::Relaxed);
    let sender_result = sender.join();
    let _ = receiver.join();
    result?;
    if let Ok(Ok(Err(e))) = sender_result {
        return Err(e.context("probe sender"));
    }
    Ok((lats, lost_early))
}

/// fail2ban's backend: pyinotify when installed, else polling (the jail
/// config says `auto`).
const F2B_BACKEND: &str = "auto";

/// fail2ban-server on a private config, its own log and socket; returns
/// write → actionban latencies in µs. Runs in the root namespace: its only
/// action is a `date` into a file, so it touches no firewall.
fn fail2ban_latency(ctx: &Ctx, n: u64) -> Result<(Vec<f64>, u64, String)> {
    let dir = ctx.scratch.join("fail2ban");
    let conf = dir.join("conf");
    std::fs::create_dir_all(conf.join("action.d"))?;
    std::fs::create_dir_all(conf.join("filter.d"))?;
    std::fs::create_dir_all(conf.join("jail.d"))?;
    // The stock sshd filter and what it includes.
    for f in ["sshd.conf", "common.conf"] {
        std::fs::copy(
            Path::new("/etc/fail2ban/filter.d").join(f),
            conf.join("filter.d").join(f),
        )
        .with_context(|| format!("/etc/fail2ban/filter.d/{f} (is fail2ban installed?)"))?;
    }
    let log = dir.join("auth.log");
    let bans = dir.join("bans.txt");
    let sock = dir.join("fail2ban.sock");
    let pid = dir.join("fail2ban.pid");
    std::fs::write(&log, "")?;
    std::fs::write(&bans, "")?;
    std::fs::write(
        conf.join("fail2ban.conf"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = {}\nsocket = {}\npidfile = {}\ndbfile = {}\ndbpurgeage = 1d\n",
            dir.join("fail2ban.log").display(),
            sock.display(),
            pid.display(),
            dir.join("fail2ban.sqlite3").display()
        ),
    )?;
    std::fs::write(
        conf.join("action.d").join("stamp.conf"),
        format!(
            "[Definition]\nactionstart =\nactionstop =\nactioncheck =\nactionban = echo \"$(date +%%s.%%N) <ip>\" >> {}\nactionunban =\n",
            bans.display()
        ),
    )?;
    std::fs::write(
        conf.join("jail.conf"),
        format!(
            "[DEFAULT]\nbackend = {F2B_BACKEND}\nusedns = no\nmaxretry = {MAXRETRY}\nfindtime = 10m\nbantime = 1d\n\n[sshd]\nenabled = true\nfilter = sshd\nlogpath = {}\naction = stamp\n",
            log.display()
        ),
    )?;
    let mut server = Command::new("fail2ban-server");
    server
        .arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&sock)
        .arg("-p")
        .arg(&pid)
        .arg("-x")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("server.out"))?)
        .stderr(std::fs::File::create(dir.join("server.err"))?);
    let child = server.spawn().context("start fail2ban-server")?;
    let mut guard = ChildGuard(Some(child));
    // Ready when the jail answers on the socket.
    let ready = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let out = Command::new("fail2ban-client")
            .arg("-s")
            .arg(&sock)
            .args(["status", "sshd"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    if ready.is_none() {
        bail!(
            "fail2ban-server did not answer within 30 s: {}",
            std::fs::read_to_string(dir.join("server.err")).unwrap_or_default()
        );
    }
    let mut lats = Vec::new();
    let mut out = std::fs::OpenOptions::new().append(true).open(&log)?;
    for i in 0..n {
        // One line per ban in the stamp file so far.
        let seen = i as usize;
        let addr = attacker_addr(LATENCY_BASE + 500_000 + i as u32);
        let (first, last) = ban_lines(addr, i);
        out.write_all(first.as_bytes())?;
        let written = SystemTime::now();
        out.write_all(last.as_bytes())?;
        let want = addr.to_string();
        let stamp_line = wait_for(Duration::from_secs(10), Duration::from_millis(1), || {
            let text = std::fs::read_to_string(&bans).ok()?;
            let line = text.lines().nth(seen)?;
            line.ends_with(&want).then(|| line.to_string())
        });
        let Some(line) = stamp_line else {
            bail!(
                "fail2ban did not ban {addr} within 10 s (ban {} of {n})",
                i + 1
            );
        };
        let at: f64 = line
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("unreadable stamp line {line:?}"))?;
        let w = written.duration_since(UNIX_EPOCH)?.as_secs_f64();
        lats.push((at - w) * 1e6);
    }
    let _ = Command::new("fail2ban-client")
        .arg("-s")
        .arg(&sock)
        .arg("stop")
        .output();
    if let Some(mut c) = guard.0.take() {
        let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            c.try_wait().ok().flatten()
        });
        let _ = c.kill();
        let _ = c.wait();
    }
    // "Initiated 'pyinotify' backend" in its log says what `auto` chose.
    let backend = std::fs::read_to_string(dir.join("fail2ban.log"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.split_once("Initiated '")
                .and_then(|(_, r)| r.split_once('\''))
        })
        .map_or_else(|| "?".to_string(), |(b, _)| b.to_string());
    Ok((lats, n, backend))
}

/// Kills the child on drop (a benchmark that fails midway leaves nothing).
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
