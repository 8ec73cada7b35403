//! Protection kept through faults (issue 9, items 3–10): a full disk, bad
//! blocklist files, an empty database, a stop with lines queued, a refused
//! reload, floods of connections, a second agent on the same directories.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xban_tests::*;

const SSHD_JAIL: &str = "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n";

fn jail_maxretry(n: u32) -> String {
    format!("[defaults]\nmaxretry = {n}\n{SSHD_JAIL}")
}

/// `xban status --json`.
fn status(dir: &AgentDir) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap()
}

fn sqlite_count(db: &Path, sql: &str) -> i64 {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Agent CPU time (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn set_nofile(pid: u32, n: usize) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{n}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent with the sshd jail and `list` as its blocklist file.
fn start_with_blocklist(lab: &Lab, dir: &AgentDir, list: &Path) -> AgentProcess {
    dir.write_config_with_agent(
        lab,
        &format!("blocklist_files = [\"{}\"]\n", list.display()),
        SSHD_JAIL,
    )
    .unwrap();
    AgentProcess::start(lab, dir).unwrap()
}

/// This test process needs many descriptors of its own (client sockets).
fn raise_own_nofile(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// A small tmpfs mounted on `path`, unmounted on drop (before the directory
/// holding it is removed: declare it after the `AgentDir`).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(path.to_path_buf())
    }

    /// Fill the filesystem to the last byte.
    fn fill(&self) -> PathBuf {
        let fill = self.0.join("fill");
        let mut f = std::fs::File::create(&fill).unwrap();
        let block = vec![0u8; 4096];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        // Whatever is left below a block.
        while f.write_all(&[0]).is_ok() {}
        fill
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_still_bans_and_stores_the_backlog_when_space_returns() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let state = dir.path("state");
    let fs = SmallFs::mount(&state, "4m");
    dir.write_config(&lab, &jail_maxretry(2)).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let fill = fs.fill();

    // Failures while nothing can be written: banned at XDP all the same.
    // More bans than the room the write-ahead log already has (it is
    // reused in place after a checkpoint, so a few bans may still fit).
    const V6: usize = 300;
    const ALL: usize = V6 + 1;
    let v6: Vec<String> = (1..=V6).map(|i| format!("2001:db8:3::{i:x}")).collect();
    let mut lines = vec![sshd_failure(ATK_V4, 1), sshd_failure(ATK_V4, 2)];
    for a in &v6 {
        lines.push(sshd_failure(a, 1));
        lines.push(sshd_failure(a, 2));
    }
    dir.append_log(&lines).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || !lab.udp_reaches(ATK_V4, SRV_V4)),
        "banned at XDP with the disk full:\n{}",
        agent.log()
    );
    assert!(wait_for(Duration::from_secs(10), || dir
        .banned_addresses()
        .unwrap()
        .len()
        == ALL));
    // What fitted in the log's room already went to the database; the
    // rest waits in the backlog: none is lost, none counted twice.
    let st = status(&dir);
    let backlog = st["store"]["backlog"].as_i64().unwrap();
    assert!(backlog >= 1, "{st}");
    assert!(st["store"]["failing_since"].is_i64(), "{st}");
    let log = agent.log();
    assert!(
        log.contains("ban database write failed") && log.contains("retrying every"),
        "the condition is logged:\n{log}"
    );
    let db = state.join("xban.sqlite3");
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM bans") + backlog,
        ALL as i64,
        "{st}"
    );

    // Space again: the backlog is written within a retry period.
    std::fs::remove_file(&fill).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || sqlite_count(
            &db,
            "SELECT count(*) FROM bans"
        ) == ALL as i64),
        "backlog written:\n{}",
        agent.log()
    );
    let st = status(&dir);
    assert_eq!(st["store"]["backlog"], 0, "{st}");
    assert!(st["store"]["failing_since"].is_null(), "{st}");
    // Restart: the bans are restored from the store.
    agent.stop().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let banned = dir.banned().unwrap();
    assert_eq!(banned.len(), ALL);
    assert!(banned.iter().all(|b| b["jail"] == "sshd"), "{banned:?}");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();
}

#[test]
fn blocklist_bad_bytes_rewrites_and_manual_unbans() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let list = dir.path("blocklist.txt");
    let mut text = b"# list kept by hand, caf\xe9\n".to_vec();
    text.extend_from_slice(format!("{ATK_V4}  # scanner ").as_bytes());
    text.extend_from_slice(b"\xff\xfe\n");
    text.extend_from_slice(b"\xc3\x28 not text\n");
    text.extend_from_slice(format!("{ATK3_V4}\n").as_bytes());
    std::fs::write(&list, &text).unwrap();
    let agent = start_with_blocklist(&lab, &dir, &list);
    // One bad byte skips its line alone.
    assert!(
        !lab.udp_reaches(ATK_V4, SRV_V4),
        "entry with a non-UTF-8 comment"
    );
    assert!(!lab.udp_reaches(ATK3_V4, SRV_V4), "entry after a bad line");
    assert_eq!(status(&dir)["blocklists"]["bad_lines"], 1);
    assert!(agent.log().contains(&format!("{}:3", list.display())));

    // A rewrite in place, paused half way: ATK3 is never unbanned.
    let mut f = std::fs::File::create(&list).unwrap();
    f.write_all(format!("{ATK_V4}\n").as_bytes()).unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(
            !lab.udp_reaches(ATK3_V4, SRV_V4),
            "half-written file read:\n{}",
            agent.log()
        );
    }
    f.write_all(format!("{ATK3_V4}\n{ATK2_V4}\n").as_bytes())
        .unwrap();
    drop(f);
    assert!(
        wait_for(Duration::from_secs(10), || !lab
            .udp_reaches(ATK2_V4, SRV_V4)),
        "the finished file is read"
    );
    assert!(!lab.udp_reaches(ATK3_V4, SRV_V4));

    // A manual unban holds until the file changes; then the file is the truth.
    dir.xban_ok(&["unban", ATK_V4]).unwrap();
    assert!(wait_for(Duration::from_secs(5), || lab.udp_reaches(ATK_V4, SRV_V4)));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&list)
        .unwrap();
    f.write_all(b"203.0.113.9\n").unwrap();
    drop(f);
    assert!(
        wait_for(Duration::from_secs(10), || !lab.udp_reaches(ATK_V4, SRV_V4)),
        "the file, re-read, bans its entry again:\n{}",
        agent.log()
    );
    agent.stop().unwrap();
}

#[test]
fn an_empty_database_adopts_the_pinned_bans() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SSHD_JAIL).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    dir.xban_ok(&["ban", ATK3_V4, "--class", "tarpit"]).unwrap();
    // Without TARPIT steering the kernel holds tarpit bans as drop entries.
    // The XDP tarpit (engine xdp) keeps the class in the kernel too.
    let tarpit = &status(&dir)["tarpit"];
    let kernel_class = if tarpit["active"] == true || tarpit["engine"] == "xdp" {
        "tarpit"
    } else {
        "drop"
    };
    dir.xban_ok(&["ban", "203.0.113.0/24"]).unwrap();
    agent.stop().unwrap();
    // The database is lost: 0 bytes, no WAL.
    let db = dir.path("state").join("xban.sqlite3");
    std::fs::write(&db, b"").unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "never unbanned");
    let banned = dir.banned().unwrap();
    assert_eq!(banned.len(), 3, "{banned:?}");
    assert!(banned.iter().all(|b| b["jail"] == "adopted"), "{banned:?}");
    let tarpit = banned.iter().find(|b| b["address"] == ATK3_V4).unwrap();
    assert_eq!(tarpit["class"], kernel_class, "class kept as in the kernel");
    assert!(
        agent.log().contains("kept as jail=adopted"),
        "{}",
        agent.log()
    );
    assert_eq!(
        sqlite_count(&db, "SELECT count(*) FROM bans WHERE jail = 'adopted'"),
        3,
        "stored"
    );
    agent.stop().unwrap();
}

#[test]
fn a_clean_stop_with_lines_queued_loses_none() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &jail_maxretry(1)).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    const N: usize = 5000;
    let lines: Vec<String> = (0..N)
        .map(|i| sshd_failure(&format!("2001:db8:6::{:x}", i + 1), i))
        .collect();
    dir.append_log(&lines).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    agent.stop().unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let mut count = 0;
    wait_for(Duration::from_secs(60), || {
        count = dir.banned().unwrap().len();
        count >= N
    });
    // Let any extra (re-read twice) show before counting.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dir.banned().unwrap().len(), N, "{}", agent.log());
    agent.stop().unwrap();
}

#[test]
fn a_refused_reload_leaves_the_jail_banning() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, &jail_maxretry(2)).unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    // The same jail reading from a directory that does not exist.
    let missing = dir.path("no-such-dir").join("auth.log");
    dir.write_config(
        &lab,
        &format!(
            "[defaults]\nmaxretry = 2\n[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{}\"]\n",
            missing.display()
        ),
    )
    .unwrap();
    // The file itself is valid; this machine lacks the directory, which
    // both `check` (its machine checks) and the reload say.
    assert!(
        dir.xban_ok(&["check", "--config-only"]).is_ok(),
        "the file alone passes"
    );
    let check = dir.xban(&["check"]).unwrap();
    assert!(
        !check.status.success() && String::from_utf8_lossy(&check.stderr).contains("no-such-dir"),
        "check names the missing directory: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let out = dir.xban(&["reload"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused"), "{err}");
    assert!(err.contains("no-such-dir"), "names the place: {err}");
    dir.append_log(&[sshd_failure(ATK_V4, 1), sshd_failure(ATK_V4, 2)])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || !lab.udp_reaches(ATK_V4, SRV_V4)),
        "the running jail still bans from its log:\n{}",
        agent.log()
    );
    agent.stop().unwrap();
}

#[test]
fn idle_connections_and_fd_exhaustion_do_not_starve_banning() {
    require_root();
    raise_own_nofile(8192);
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16;
    dir.write_config_with_agent(
        &lab,
        &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
        &jail_maxretry(2),
    )
    .unwrap();
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    let pid = agent.pid();
    // Room for what the agent holds now and a rotation, far less than the
    // connections below.
    let base = fd_count(pid);
    set_nofile(pid, base + 200);

    // 1,100 control connections that never say anything.
    let sock = dir.path("xban.sock");
    let idle: Vec<_> = (0..1100)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&sock).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    status(&dir);
    eprintln!(
        "{} idle control connections: status answered in {:?}",
        idle.len(),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
    // A rotated log is reopened and followed.
    let log = dir.log_path();
    std::fs::rename(&log, dir.path("auth.log.1")).unwrap();
    std::fs::write(&log, "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    dir.append_log(&[sshd_failure(ATK_V4, 1), sshd_failure(ATK_V4, 2)])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || !lab.udp_reaches(ATK_V4, SRV_V4)),
        "a ban from the rotated log:\n{}",
        agent.log()
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));

    // Metrics: connections past every descriptor the agent has left. The
    // accept loop backs off instead of spinning.
    set_nofile(pid, fd_count(pid) + 4);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let held = Lab::in_ns(&lab.srv_ns, || {
        (0..400)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect::<Vec<_>>()
    });
    assert!(held.len() > 100, "only {} connections", held.len());
    let cpu0 = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_time(pid) - cpu0;
    eprintln!(
        "metrics flood: {} connections held, agent CPU {spent:?} in 3 s",
        held.len()
    );
    assert!(
        spent < Duration::from_millis(600),
        "agent used {spent:?} of CPU in 3 s with its listeners flooded"
    );
    // Once the clients go, the agent's own descriptors fit again (the limit
    // is only ever lowered: raising it needs CAP_SYS_RESOURCE).
    drop(held);
    let scrape = || {
        Lab::in_ns(&lab.srv_ns, || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        })
    };
    let mut body = None;
    assert!(
        wait_for(Duration::from_secs(15), || {
            body = scrape().filter(|b| b.starts_with("HTTP/1.1 200"));
            body.is_some()
        }),
        "metrics recover:\n{}",
        agent.log()
    );
    assert!(body.unwrap().contains("xban_store_backlog 0"));
    agent.stop().unwrap();
}

/// Item 8, the slow paths: with hundreds of thousands of bans, `banned`
/// lists them all while a ban and a `status` asked after it are answered
/// first, and no turn of the event loop takes long (the loop used to build
/// the whole listing, and walk the book for `status`, in one turn).
#[test]
fn a_long_listing_holds_no_ban_back() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    // Map contents only: no packet is sent from or to these.
    const ENTRIES: usize = 300_000;
    let list = dir.path("blocklist.txt");
    let mut text = String::with_capacity(ENTRIES * 16);
    for i in 0..ENTRIES {
        text.push_str(&format!("10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255));
    }
    std::fs::write(&list, text).unwrap();
    let agent = start_with_blocklist(&lab, &dir, &list);
    assert_eq!(status(&dir)["bans_active"], ENTRIES);

    let listing = {
        let child = dir.xban_spawn(&["banned", "--json"]).unwrap();
        let listing = std::thread::spawn(move || {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (Instant::now(), String::from_utf8(out.stdout).unwrap())
        });
        // Let the listing's request reach the agent first.
        std::thread::sleep(Duration::from_millis(30));
        dir.xban_ok(&["ban", ATK_V4]).unwrap();
        let banned_at = Instant::now();
        let st = status(&dir);
        let status_at = Instant::now();
        assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "the ban drops");
        let (listed_at, out) = listing.join().unwrap();
        assert!(
            banned_at < listed_at && status_at < listed_at,
            "the ban and status were answered after the listing"
        );
        assert_eq!(st["bans_active"], ENTRIES + 1, "status counts the new ban");
        out
    };
    let views: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap();
    let addresses: std::collections::BTreeSet<&str> = views
        .iter()
        .map(|v| v["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses.len(), views.len(), "each ban listed once");
    assert!(
        views.len() == ENTRIES || views.len() == ENTRIES + 1,
        "{} listed",
        views.len()
    );
    assert!(addresses.contains("10.4.147.223"), "the last entry listed");
    let times: Vec<i64> = views
        .iter()
        .map(|v| v["banned_at"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    // Read in slices of a couple of thousand: a few milliseconds each. The
    // whole listing in one turn took about 100 ms here (1 s and more
    // before the sort and the reply left the loop).
    let turns = &status(&dir)["event_loop"];
    eprintln!("event loop after a listing of {ENTRIES}: {turns}");
    for work in ["listing", "status"] {
        let w = &turns["by_work"][work];
        assert!(w["turns"].as_u64().unwrap() >= 1, "{turns}");
        assert!(w["slowest_ms"].as_f64().unwrap() < 50.0, "{work}: {turns}");
    }
    assert!(
        turns["by_work"]["listing"]["turns"].as_u64().unwrap() > 100,
        "{turns}"
    );
    agent.stop().unwrap();
}

#[test]
fn a_second_agent_on_the_same_pins_or_state_is_refused() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    dir.write_config(&lab, SSHD_JAIL).unwrap();
    let first = AgentProcess::start(&lab, &dir).unwrap();
    let config = std::fs::read_to_string(dir.config_path()).unwrap();
    let other = AgentDir::new().unwrap();
    other.write_config(&lab, SSHD_JAIL).unwrap();
    let own = std::fs::read_to_string(other.config_path()).unwrap();
    let line_of = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .to_string()
    };
    for key in ["bpf_pin_dir", "state_dir"] {
        // Its own socket (and everything else), but the first's `key`.
        let text = own.replace(&line_of(&own, key), &line_of(&config, key));
        std::fs::write(other.config_path(), text).unwrap();
        let e = match AgentProcess::start(&lab, &other) {
            Ok(_) => panic!("a second agent on the same {key} started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains(&format!("pid {}", first.pid())) && e.contains(key),
            "the refusal names the first agent and the key: {e}"
        );
        assert!(e.contains(&dir.config_path().display().to_string()), "{e}");
    }
    // The first one is untouched.
    dir.xban_ok(&["ban", ATK_V4]).unwrap();
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    first.stop().unwrap();
}
