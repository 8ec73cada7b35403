//! Restore across restarts: a clean stop leaves a restore marker so that
//! the next start need not read the ban tries back; a marker that no longer
//! tells the truth (the database edited, a map entry deleted with bpftool,
//! a crash instead of a clean stop) is detected and the kernel is read and
//! compared in full. Every way, the kernel ends up holding the store's bans.

use std::path::Path;

use xban_tests::*;

const NET: &str = "203.0.113.0/24";
const SSHD_JAIL: &str = "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n";
const USED: &str = "the ban tries are not read back";

fn sqlite(db: &Path, sql: &str) -> String {
    run("sqlite3", &[db.to_str().unwrap(), sql])
        .unwrap()
        .trim()
        .to_string()
}

/// Every key of a pinned ban trie, as bpftool prints it.
fn trie_keys(dir: &AgentDir, name: &str) -> Vec<String> {
    let pin = dir.pin_dir.join(name);
    let out = run(
        "bpftool",
        &["-j", "map", "dump", "pinned", pin.to_str().unwrap()],
    )
    .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.iter().map(|r| r["key"].to_string()).collect()
}

/// The kernel holds exactly the agent's bans (one trie entry per target),
/// and the banned addresses drop.
fn kernel_equals_store(lab: &Lab, dir: &AgentDir, expect: &[&str]) {
    let mut banned = dir.banned_addresses().unwrap();
    banned.sort();
    let mut want: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(banned, want);
    let db = dir.path("state").join("xban.sqlite3");
    let stored: usize = sqlite(&db, "SELECT count(DISTINCT target) FROM bans")
        .parse()
        .unwrap();
    assert_eq!(stored, expect.len());
    let in_tries = trie_keys(dir, "bans_v4").len() + trie_keys(dir, "bans_v6").len();
    assert_eq!(in_tries, expect.len(), "one trie entry per stored target");
    for a in [ATK_V4, ATK2_V4] {
        if expect.contains(&a) {
            assert!(!lab.udp_reaches(a, SRV_V4), "{a} drops");
        }
    }
    assert!(lab.udp_reaches(ATK3_V4, SRV_V4), "unbanned passes");
}

#[test]
fn restore_trusts_a_clean_stops_marker_and_detects_every_lie() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SSHD_JAIL).unwrap();
    let db = dir.path("state").join("xban.sqlite3");
    let marker = dir.path("state").join("restore-marker.json");
    let all = [ATK_V4, ATK2_V4, ATK_V6, NET];

    // Cold: nothing pinned, no marker.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains("restore marker not used: no marker"));
    for a in all {
        dir.xban_ok(&["ban", a]).unwrap();
    }
    kernel_equals_store(&lab, &dir, &all);
    agent.stop().unwrap();
    assert!(marker.exists(), "a clean stop leaves a marker");

    // Warm, marker true: the tries are not read back, and hold the store.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains(USED), "{}", agent.log());
    assert!(!marker.exists(), "taken at start");
    kernel_equals_store(&lab, &dir, &all);
    agent.stop().unwrap();

    // The database edited while stopped (a ban row deleted): the marker is
    // refused, the kernel read, and its entry adopted, never lost.
    sqlite(&db, &format!("DELETE FROM bans WHERE target = '{ATK2_V4}'"));
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("the ban database changed"), "{log}");
    assert!(!log.contains(USED), "{log}");
    kernel_equals_store(&lab, &dir, &all);
    let adopted = dir.banned().unwrap();
    assert!(
        adopted
            .iter()
            .any(|b| b["address"] == ATK2_V4 && b["jail"] == "adopted"),
        "{adopted:?}"
    );
    agent.stop().unwrap();

    // A trie entry deleted with bpftool while stopped: the maps no longer
    // match, they are read, and the entry written back.
    // Key: prefix_len 32 then 198.51.100.3.
    let del = std::process::Command::new("bpftool")
        .args(["map", "delete", "pinned"])
        .arg(dir.pin_dir.join("bans_v4"))
        .args(["key", "hex", "20", "00", "00", "00", "c6", "33", "64", "03"])
        .output()
        .unwrap();
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(trie_keys(&dir, "bans_v4").len(), 2);
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("changed since the last clean stop"), "{log}");
    assert!(!log.contains(USED), "{log}");
    kernel_equals_store(&lab, &dir, &all);

    // A crash: no marker, the next start reads the kernel.
    agent.kill9().unwrap();
    assert!(!marker.exists());
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("restore marker not used: no marker"), "{log}");
    kernel_equals_store(&lab, &dir, &all);

    // An unban, a clean stop, a warm start: the unbanned stays out.
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    agent.stop().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains(USED), "{}", agent.log());
    kernel_equals_store(&lab, &dir, &[ATK2_V4, ATK_V6, NET]);
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "unbanned passes");
    agent.stop().unwrap();
}
