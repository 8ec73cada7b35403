//! XDP lost behind the agent's back is put back: the pin directory removed,
//! the link detached with bpftool, the interface deleted and created again.
//! Each repair is logged, counted in `status` and the metrics, and banned
//! traffic is dropped again within about a second. A start over a stale,
//! severed link pin replaces it instead of failing, and an interface that
//! does not exist yet is attached when it appears.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use xban_tests::*;

fn status(dir: &AgentDir) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap()
}

fn link<'a>(st: &'a serde_json::Value, ifname: &str) -> &'a serde_json::Value {
    st["links"]["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["interface"] == ifname))
        .unwrap_or_else(|| panic!("no link for {ifname} in {st}"))
}

fn repairs(dir: &AgentDir, ifname: &str) -> u64 {
    link(&status(dir), ifname)["repairs"].as_u64().unwrap()
}

/// `GET /metrics` from the agent's metrics listener in the server namespace.
fn metrics(lab: &Lab, port: u16) -> String {
    Lab::in_ns(&lab.srv_ns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Polls (bounded) until XDP is on the server's interface again; returns
/// how long it took.
fn reattached_within(lab: &Lab, bound: Duration) -> Duration {
    let t0 = Instant::now();
    while !lab.xdp_attached() {
        assert!(
            t0.elapsed() < bound,
            "XDP not back on {} within {bound:?}",
            lab.srv_if
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn link_id(dir: &AgentDir, ifname: &str) -> u64 {
    let pin = dir.pin_dir.join("links").join(ifname);
    let out = std::process::Command::new("bpftool")
        .args(["link", "show", "pinned"])
        .arg(&pin)
        .arg("-j")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_u64().unwrap()
}

const PORT: u16 = 9741;

fn start(lab: &Lab, dir: &AgentDir) -> AgentProcess {
    dir.write_config_with_agent(
        lab,
        &format!("metrics_listen = \"127.0.0.1:{PORT}\"\n"),
        "[defaults]\nignoreip = []\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    AgentProcess::start(lab, dir).unwrap()
}

#[test]
fn xdp_lost_three_ways_is_repaired_within_a_second() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let agent = start(&lab, &dir);
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    let ifname = lab.srv_if.clone();

    // 1. rm -rf of the pin directory: before, the link went with its pin.
    std::fs::remove_dir_all(&dir.pin_dir).unwrap();
    let removed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(2), || {
            ["links", "prog_xdp", "bans_v4", "tab_v4", "dir_v4", "stats"]
                .iter()
                .all(|p| dir.pin_dir.join(p).exists())
                && dir.pin_dir.join("links").join(&ifname).exists()
        }),
        "pins re-created:\n{}",
        agent.log()
    );
    eprintln!(
        "rm -rf of the pin directory: pins back after {:?}",
        removed.elapsed()
    );
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "still dropped after rm -rf"
    );
    assert!(status(&dir)["links"]["pin_repairs"].as_u64().unwrap() >= 1);
    // The re-pinned maps are the live ones: a ban through them drops.
    dir.xban_ok(&["ban", ATK2_V4]).unwrap();
    assert!(!lab.udp_reaches(ATK2_V4, SRV_V4));

    // 2. bpftool link detach: before, traffic flowed and status said attached.
    let before = repairs(&dir, &ifname);
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &link_id(&dir, &ifname).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = reattached_within(&lab, Duration::from_millis(1500));
    eprintln!("bpftool link detach: XDP back after {took:?}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropped again ({took:?})");
    assert!(
        wait_for(Duration::from_secs(1), || repairs(&dir, &ifname) > before),
        "the repair is counted"
    );
    assert_eq!(link(&status(&dir), &ifname)["state"], "attached");

    // 3. The interface deleted and created again (a new ifindex).
    let before = repairs(&dir, &ifname);
    lab.recreate_veth().unwrap();
    let took = reattached_within(&lab, Duration::from_millis(1500));
    eprintln!("interface re-created: XDP back after {took:?}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropped again ({took:?})");
    assert!(lab.udp_reaches(ATK3_V4, SRV_V4), "others pass");
    assert!(wait_for(Duration::from_secs(1), || repairs(&dir, &ifname) > before));

    let log = agent.log();
    assert!(
        log.contains("XDP repaired"),
        "each repair is logged:\n{log}"
    );
    let m = metrics(&lab, PORT);
    assert!(
        metric(
            &m,
            &format!("xban_xdp_repairs_total{{interface=\"{ifname}\"}}")
        ) >= 2,
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("xban_xdp_attached{{interface=\"{ifname}\"}}")),
        1
    );
    agent.stop().unwrap();
}

#[test]
fn a_start_over_a_severed_link_pin_replaces_it_and_drops() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let agent = start(&lab, &dir);
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    agent.stop().unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "stopped: still dropped");

    // The interface goes and comes back while no agent runs: the pinned link
    // is severed, and before, the next start failed on bpf_link_update.
    lab.recreate_veth().unwrap();
    assert!(dir.pin_dir.join("links").join(&lab.srv_if).exists());
    assert!(
        lab.udp_reaches(ATK_V4, SRV_V4),
        "no XDP on the new interface"
    );
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(lab.xdp_attached());
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "dropped again");
    let st = status(&dir);
    assert_eq!(link(&st, &lab.srv_if)["state"], "attached", "{st}");
    assert!(
        link(&st, &lab.srv_if)["repairs"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert!(agent.log().contains("severed"), "{}", agent.log());
    agent.stop().unwrap();
}

#[test]
fn an_interface_created_after_start_is_attached_when_it_appears() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let late = format!("{}l", lab.srv_if);
    let cfg = dir.config_path();
    dir.write_config(
        &lab,
        "[defaults]\nignoreip = []\n\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        &format!("interfaces = [\"{}\"]", lab.srv_if),
        &format!("interfaces = [\"{}\", \"{late}\"]", lab.srv_if),
        1,
    );
    std::fs::write(&cfg, text).unwrap();

    // Before: the start failed ("does the interface exist?").
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        lab.xdp_attached(),
        "the existing interface is attached at start"
    );
    let st = status(&dir);
    assert_eq!(link(&st, &late)["state"], "waiting-for-interface", "{st}");
    assert!(agent.log().contains("does not exist"), "{}", agent.log());

    lab.in_srv(
        "ip",
        &[
            "link",
            "add",
            &late,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{late}p"),
        ],
    )
    .unwrap();
    lab.in_srv("ip", &["link", "set", &late, "up"]).unwrap();
    assert!(
        wait_for(Duration::from_millis(1500), || {
            lab.in_srv("ip", &["-d", "link", "show", "dev", &late])
                .is_ok_and(|o| o.contains("prog/xdp"))
        }),
        "attached when it appeared:\n{}",
        agent.log()
    );
    assert_eq!(link(&status(&dir), &late)["state"], "attached");
    agent.stop().unwrap();
}
