//! Restarts, crashes and teardown: bans keep dropping whenever the agent is
//! away, and teardown leaves nothing behind.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xban_tests::*;

const CONFIG: &str = r#"
[defaults]
maxretry = 2
findtime = "1m"
bantime = "1h"

[jails.sshd]
filter = "sshd"
logpath = ["{LOG}"]
"#;

fn ban_attacker(dir: &AgentDir, agent: &AgentProcess) {
    dir.append_log(&[
        sshd_failure(ATK_V4, 0),
        sshd_failure(ATK_V6, 1),
        sshd_failure(ATK_V4, 2),
        sshd_failure(ATK_V6, 3),
    ])
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || dir
            .banned()
            .map(|b| b.len() == 2)
            .unwrap_or(false)),
        "both addresses banned:\n{}",
        agent.log()
    );
}

/// Sends a datagram from the banned address every 5 ms and counts what the
/// server receives, for as long as the guard lives.
struct Prober {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab, src: &str, dst: &str) -> Prober {
        let server = Lab::in_ns(&lab.srv_ns, || {
            UdpSocket::bind(SocketAddr::new(dst.parse().unwrap(), 0)).unwrap()
        });
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let to = server.local_addr().unwrap();
        let client = Lab::in_ns(&lab.atk_ns, || {
            UdpSocket::bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap()
        });
        let (stop, received, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut threads = Vec::new();
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if client.send_to(b"probe", to).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        {
            let (stop, received) = (stop.clone(), received.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    if server.recv_from(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Prober {
            stop,
            received,
            sent,
            threads,
        }
    }

    /// (sent, received)
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn bans_keep_dropping_across_restart_with_no_gap() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, CONFIG).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    ban_attacker(&dir, &agent);
    let before = dir.banned().unwrap();

    let probe = Prober::start(&lab, ATK_V4, SRV_V4);
    std::thread::sleep(Duration::from_millis(300));
    let status = agent.stop().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // Stopped: still attached, still dropping.
    assert!(
        lab.xdp_attached(),
        "XDP stays attached while the agent is stopped"
    );
    assert!(
        !lab.udp_reaches(ATK_V6, SRV_V6),
        "IPv6 ban holds while stopped"
    );
    let dropped_stopped = dir.stats().unwrap()["dropped"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        dir.stats().unwrap()["dropped"].as_u64().unwrap() > dropped_stopped,
        "drops counted while stopped"
    );

    let agent = AgentProcess::start(&lab, &dir).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (sent, received) = probe.finish();
    assert!(sent > 100, "the prober ran throughout ({sent} sent)");
    assert_eq!(
        received, 0,
        "not one datagram of {sent} got through during stop and restart"
    );
    assert!(
        agent.log().contains("adopted pinned XDP link"),
        "{}",
        agent.log()
    );

    // The new agent knows the bans, with their original times.
    assert_eq!(dir.banned().unwrap(), before);
    assert!(!lab.tcp_connects(ATK_V4, SRV_V4));
    agent.stop().unwrap();
}

#[test]
fn kill9_keeps_dropping_and_new_agent_adopts_without_duplicates() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, CONFIG).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    ban_attacker(&dir, &agent);
    agent.kill9().unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropping after kill -9");

    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let bans = dir.banned().unwrap();
    assert_eq!(
        bans.len(),
        2,
        "exactly the two bans, no duplicates: {bans:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["map_entries"], 2, "one trie entry per ban");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();
}

#[test]
fn teardown_leaves_nothing_attached_or_pinned() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, CONFIG).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    ban_attacker(&dir, &agent);
    assert!(dir.pin_dir.join("links").join(&lab.srv_if).exists());

    // Teardown of a running agent stops it first.
    let out = dir.xban_ok(&["teardown"]).unwrap();
    assert!(out.contains("removed"), "{out}");
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    assert!(!dir.pin_dir.exists(), "pin directory removed");
    assert!(!lab.xdp_attached(), "XDP detached");
    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "traffic flows once torn down"
    );

    // The bans are still in the database: a new agent brings them back.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert_eq!(dir.banned().unwrap().len(), 2);
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();
    // Offline teardown (no agent running) works too.
    let out = dir.xban_ok(&["teardown"]).unwrap();
    assert!(out.contains("pins removed"), "{out}");
    assert!(!dir.pin_dir.exists());
    assert!(!lab.xdp_attached());
}

#[test]
fn keep_on_exit_false_tears_down_on_stop() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config_with_agent(&lab, "keep_on_exit = false\n", CONFIG)
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(lab.xdp_attached());
    agent.stop().unwrap();
    assert!(!lab.xdp_attached());
    assert!(!dir.pin_dir.exists());
}

#[test]
fn broken_config_is_refused_and_running_state_untouched() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, CONFIG).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    ban_attacker(&dir, &agent);
    agent.stop().unwrap();

    let good = std::fs::read_to_string(dir.config_path()).unwrap();
    std::fs::write(
        dir.config_path(),
        good.replace(
            "filter = \"sshd\"",
            "filter = \"sshd\"\nfailregex = ['no host tag here']",
        ),
    )
    .unwrap();
    let err = AgentProcess::start(&lab, &dir)
        .err()
        .expect("a broken config must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("jails.sshd.failregex") && msg.contains("<HOST>"),
        "{msg}"
    );
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "the failed start left the bans dropping"
    );

    std::fs::write(dir.config_path(), good).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert_eq!(dir.banned().unwrap().len(), 2, "nothing stored was lost");
    agent.stop().unwrap();
}
