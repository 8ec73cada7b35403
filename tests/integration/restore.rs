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

/// The pinned program's kernel id, and the program id of every pinned link.
fn program_ids(dir: &AgentDir) -> (u64, Vec<u64>) {
    let pin = dir.pin_dir.join("prog_xdp");
    let out = run(
        "bpftool",
        &["-j", "prog", "show", "pinned", pin.to_str().unwrap()],
    )
    .unwrap();
    let prog: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut links = Vec::new();
    for e in std::fs::read_dir(dir.pin_dir.join("links")).unwrap() {
        let p = e.unwrap().path();
        let out = run(
            "bpftool",
            &["-j", "link", "show", "pinned", p.to_str().unwrap()],
        )
        .unwrap();
        let l: serde_json::Value = serde_json::from_str(&out).unwrap();
        links.push(l["prog_id"].as_u64().unwrap());
    }
    (prog["id"].as_u64().unwrap(), links)
}

/// Rewrites the marker's program mark (`[id, object digest]`).
fn edit_program_mark(marker: &Path, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(marker).unwrap()).unwrap();
    let mark = m["program"]
        .as_array_mut()
        .expect("the marker has a program mark");
    assert_eq!(mark.len(), 2);
    edit(mark);
    std::fs::write(marker, serde_json::to_vec(&m).unwrap()).unwrap();
}

const ADOPTED: &str = "adopted the pinned XDP program";

#[test]
fn a_warm_start_adopts_the_pinned_program_only_while_it_is_the_same() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SSHD_JAIL).unwrap();
    let marker = dir.path("state").join("restore-marker.json");

    // Cold: the program is loaded (and verified) by the kernel.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(!agent.log().contains(ADOPTED));
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    let (first, links) = program_ids(&dir);
    assert_eq!(links, vec![first], "the link runs the pinned program");
    agent.stop().unwrap();

    // Warm: the same program goes on running, and the agent works through
    // it: an old ban drops, a new ban drops, an unban passes.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains(ADOPTED), "{}", agent.log());
    assert!(
        agent
            .log()
            .contains("adopted pinned XDP link, already running this program"),
        "{}",
        agent.log()
    );
    assert_eq!(program_ids(&dir), (first, vec![first]));
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "restored ban drops");
    dir.xban_ok(&["ban", ATK2_V4]).unwrap();
    assert!(!lab.udp_reaches(ATK2_V4, SRV_V4), "new ban drops");
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(lab.udp_reaches(ATK_V4, SRV_V4), "unbanned passes");
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    agent.stop().unwrap();

    // The mark names another program (as after a reload by another
    // agent): loaded again, swapped into the link, bans kept.
    edit_program_mark(&marker, |m| m[0] = serde_json::json!(first + 100_000));
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("not the"), "{log}");
    assert!(!log.contains(ADOPTED), "{log}");
    let (second, links) = program_ids(&dir);
    assert_ne!(second, first);
    assert_eq!(links, vec![second], "the link was swapped to the new one");
    kernel_equals_store(&lab, &dir, &[ATK_V4, ATK2_V4]);
    agent.stop().unwrap();

    // Another binary's object: loaded again.
    edit_program_mark(&marker, |m| {
        m[1] = serde_json::json!(m[1].as_u64().unwrap() ^ 1)
    });
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        agent.log().contains("another XDP object"),
        "{}",
        agent.log()
    );
    let (third, links) = program_ids(&dir);
    assert_ne!(third, second);
    assert_eq!(links, vec![third]);
    agent.stop().unwrap();

    // A map made again (the overflow hashes grown): the pinned program
    // still uses the old one, so it is not adopted.
    dir.write_config_with_agent(&lab, "fast_path_capacity = 2000000\n", SSHD_JAIL)
        .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let log = agent.log();
    assert!(log.contains("is no longer the pinned one"), "{log}");
    let (fourth, links) = program_ids(&dir);
    assert_ne!(fourth, third);
    assert_eq!(links, vec![fourth]);
    kernel_equals_store(&lab, &dir, &[ATK_V4, ATK2_V4]);
    agent.stop().unwrap();
    // The same configuration again: adopted.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains(ADOPTED), "{}", agent.log());
    assert_eq!(program_ids(&dir), (fourth, vec![fourth]));

    // A crash leaves no marker: loaded again.
    agent.kill9().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(!agent.log().contains(ADOPTED), "{}", agent.log());
    let (fifth, links) = program_ids(&dir);
    assert_ne!(fifth, fourth);
    assert_eq!(links, vec![fifth]);
    kernel_equals_store(&lab, &dir, &[ATK_V4, ATK2_V4]);
    agent.stop().unwrap();
}

/// Bans in the bulk of the large cold start below (2001:db8:f11::/48).
/// Written as the agent writes addresses (canonical text: no zero group
/// before the `::`), so that an unban finds the stored row.
const BULK: u32 = 150_000;

fn bulk_addr(i: u32) -> std::net::Ipv6Addr {
    format!("2001:db8:f11:{:x}::{:x}", (i >> 15) + 1, (i & 0x7fff) + 1)
        .parse()
        .unwrap()
}

/// Is `addr` (a host) in the pinned bans_v6 trie? An exact-key lookup.
fn in_trie_v6(dir: &AgentDir, addr: std::net::Ipv6Addr) -> bool {
    let pin = dir.pin_dir.join("bans_v6");
    let mut args: Vec<String> = [
        "map",
        "lookup",
        "pinned",
        pin.to_str().unwrap(),
        "key",
        "hex",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // struct { u32 prefix_len (little-endian); u8 addr[16] }.
    args.extend(["80", "00", "00", "00"].map(String::from));
    args.extend(addr.octets().iter().map(|b| format!("{b:02x}")));
    std::process::Command::new("bpftool")
        .args(&args)
        .output()
        .unwrap()
        .status
        .success()
}

/// A store holding `ATK_V6`'s ban and `BULK` more (`bulk_addr`), made
/// `expires` (SQL), with nothing pinned: the next start is a large cold
/// one. Returns the database's path.
fn bulk_store(lab: &Lab, dir: &AgentDir, expires: &str) -> std::path::PathBuf {
    dir.write_config(lab, SSHD_JAIL).unwrap();
    let db = dir.path("state").join("xban.sqlite3");
    // A first run creates the schema; the attacker's ban is stored.
    let agent = AgentProcess::start(lab, dir).unwrap();
    dir.xban_ok(&["ban", ATK_V6]).unwrap();
    agent.stop().unwrap();
    dir.xban_ok(&["teardown"]).unwrap();
    sqlite(
        &db,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO bans (target, jail, class, banned_at, expires_at, failures, matches)
             SELECT printf('2001:db8:f11:%x::%x', (i >> 15) + 1, (i & 32767) + 1), 'sshd', 'drop',
                    strftime('%s', 'now'), {expires}, 3, '[]' FROM n",
            last = BULK - 1,
        ),
    );
    db
}

fn trie_pending(dir: &AgentDir) -> u64 {
    let st = dir.json(&["status"]).unwrap();
    ["v4", "v6"]
        .iter()
        .map(|f| st["fast_path"][f]["trie_pending"].as_u64().unwrap_or(0))
        .sum()
}

/// A large cold start answers before its ban tries are complete: the fast
/// path drops every ban meanwhile, and the tries are filled behind it. An
/// unban and a ban made during the fill stay as made (the fill never adds
/// back what the agent removed), and once it ends the tries hold exactly
/// the store, which the next (warm) start trusts.
#[test]
fn a_large_cold_starts_tries_are_filled_behind_the_fast_path_and_equal_the_store() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let db = bulk_store(&lab, &dir, "strftime('%s', 'now') + 86400");

    // Cold: empty maps, no marker.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let pending_at_ready = trie_pending(&dir);
    assert!(
        !lab.udp_reaches(ATK_V6, SRV_V6),
        "a ban drops from ready on"
    );
    // The last entry the fill writes (the highest address) and the first,
    // unbanned; a new ban.
    let (last, first) = (bulk_addr(BULK - 1), bulk_addr(0));
    let new = "2001:db8:f12::1";
    dir.xban_ok(&["unban", &last.to_string()]).unwrap();
    dir.xban_ok(&["unban", &first.to_string()]).unwrap();
    dir.xban_ok(&["ban", new]).unwrap();
    eprintln!("entries still to write at ready: {pending_at_ready}");
    assert!(
        wait_for(std::time::Duration::from_secs(120), || trie_pending(&dir)
            == 0),
        "the fill ends"
    );
    let log = agent.log();
    assert!(
        log.contains("ban tries: written behind the fast path"),
        "{log}"
    );
    assert!(log.contains(" written"), "{log}");
    assert!(
        !in_trie_v6(&dir, last),
        "an unban during the fill never comes back"
    );
    assert!(!in_trie_v6(&dir, first));
    assert!(in_trie_v6(&dir, new.parse().unwrap()));
    assert!(in_trie_v6(&dir, bulk_addr(BULK / 2)));
    assert!(in_trie_v6(&dir, ATK_V6.parse().unwrap()));
    // The tries equal the store: one entry per stored target.
    let stored: usize = sqlite(&db, "SELECT count(DISTINCT target) FROM bans")
        .parse()
        .unwrap();
    assert_eq!(stored, BULK as usize - 2 + 2);
    let in_tries = trie_keys(&dir, "bans_v4").len() + trie_keys(&dir, "bans_v6").len();
    assert_eq!(in_tries, stored, "one trie entry per stored target");
    assert!(!lab.udp_reaches(ATK_V6, SRV_V6));
    agent.stop().unwrap();

    // Warm: the marker written after the fill holds.
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(agent.log().contains(USED), "{}", agent.log());
    assert!(!in_trie_v6(&dir, last));
    assert_eq!(
        trie_keys(&dir, "bans_v4").len() + trie_keys(&dir, "bans_v6").len(),
        stored
    );
    agent.stop().unwrap();
}

/// A crash while the tries are still being filled: the next start finds
/// bans the fast path holds and the tries lack, and writes them into the
/// tries instead of removing them (they are live bans).
#[test]
fn a_crash_during_the_fill_loses_no_ban() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    bulk_store(&lab, &dir, "NULL");
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    agent.kill9().unwrap();
    let partial = trie_keys(&dir, "bans_v6").len();
    eprintln!("entries in bans_v6 at the crash: {partial} of {}", BULK + 1);
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(
        !lab.udp_reaches(ATK_V6, SRV_V6),
        "the ban never stopped dropping"
    );
    assert!(
        wait_for(std::time::Duration::from_secs(120), || trie_pending(&dir)
            == 0),
        "any fill ends"
    );
    assert_eq!(trie_keys(&dir, "bans_v6").len(), BULK as usize + 1);
    let banned = dir.json(&["status"]).unwrap();
    assert_eq!(banned["bans_active"].as_u64(), Some(BULK as u64 + 1));
    agent.stop().unwrap();
}
