use super::*;
use crate::api::handler::BanText;
use crate::api::protocol::Request;
use crate::ban::MapChange;
use crate::blocklist::BLOCKLIST_JAIL;
use crate::config::Config;
use crate::engine::backlog::StoreBacklog;
use crate::escalation::SUBNET_JAIL;
use crate::source::SourceLine;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::UNIX_EPOCH;

/// The kernel's view, as an enforcer would leave it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<std::collections::HashMap<Target, BanClass>>>);

impl Recorder {
    /// An entry a previous agent left in the kernel.
    fn preload(&self, target: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(target.parse().unwrap(), BanClass::Drop);
    }
}

impl Enforcer for Recorder {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        let mut m = self.0.lock().unwrap();
        crate::engine::test_support::apply_change(&mut m, target, change);
        Ok(())
    }
    fn set_allowlist(&mut self, _list: &[Target]) -> Result<()> {
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, c)| (*t, Some(*c)))
            .collect())
    }
}

fn kernel_has(k: &Recorder, t: &str) -> bool {
    k.0.lock().unwrap().contains_key(&t.parse().unwrap())
}

struct Fixture {
    core: Agent,
    kernel: Recorder,
    _dir: tempfile::TempDir,
}

fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[defaults]\nmaxretry = 2\nbantime = \"10m\"\nignoreself = false\nignoreip = [\"198.51.100.0/24\"]\n\
             [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n\
             [jails.web]\nlogpath = [\"/l\"]\nfailregex = ['web fail from <HOST>$']\nbantime = \"1h\"\n{extra}",
            dir.path().join("none").display()
        );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let store = BanStore::open(dir.path()).unwrap();
    let kernel = Recorder::default();
    let core = Agent::new(&cfg, store, Box::new(kernel.clone()), &[]).unwrap();
    Fixture {
        core,
        kernel,
        _dir: dir,
    }
}

impl Fixture {
    /// Feed `jail` a failure line for `addr` logged at `log_time` (unix s).
    fn fail(&mut self, jail: usize, addr: &str, log_time: u64) -> Option<BanRecord> {
        let name = if jail == 0 { "ssh" } else { "web" };
        let line = SourceLine {
            origin: Arc::from("/l"),
            text: format!("{name} fail from {addr}"),
            read_at: std::time::SystemTime::now(),
            time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
            end: Default::default(),
        };
        self.core.on_line(name, &line).unwrap()
    }

    /// Every finite ban runs out (as time passes between offences).
    fn bans_run_out(&mut self) {
        self.core.expire(now_secs() + 20 * 365 * 86_400).unwrap();
    }

    fn kernel(&self, t: &str) -> Option<BanClass> {
        self.kernel
            .0
            .lock()
            .unwrap()
            .get(&t.parse::<Target>().unwrap())
            .copied()
    }
}

const T0: u64 = 1_800_000_000;

#[test]
fn ladder_escalates_over_several_jails_in_log_time() {
    let mut f = fixture("");
    let a = "203.0.113.9";
    // Ban 1 (ssh) and ban 2 (web) within a day: the jails' own bantimes.
    assert!(f.fail(0, a, T0).is_none());
    let b1 = f.fail(0, a, T0 + 10).unwrap();
    assert_eq!(b1.expires_at.unwrap() - b1.banned_at, 600);
    f.fail(1, a, T0 + 3600);
    let b2 = f.fail(1, a, T0 + 3610).unwrap();
    assert_eq!(b2.expires_at.unwrap() - b2.banned_at, 3600);
    f.bans_run_out();
    // Ban 3 within a day, in log time: one week, whichever jail.
    f.fail(0, a, T0 + 7200);
    let b3 = f.fail(0, a, T0 + 7210).unwrap();
    assert_eq!(b3.expires_at.unwrap() - b3.banned_at, 7 * 86_400);
    assert_eq!(b3.class, BanClass::Drop);
    f.bans_run_out();
    // Bans 4 and 5, days later but within 30 d: the fifth is tarpit.
    f.fail(1, a, T0 + 5 * 86_400);
    f.fail(1, a, T0 + 5 * 86_400 + 1).unwrap();
    f.bans_run_out();
    f.fail(0, a, T0 + 9 * 86_400);
    let b5 = f.fail(0, a, T0 + 9 * 86_400 + 1).unwrap();
    assert_eq!(
        (b5.class, b5.expires_at.unwrap() - b5.banned_at),
        (BanClass::Tarpit, 30 * 86_400)
    );
    assert_eq!(f.kernel(a), Some(BanClass::Tarpit));
}

#[test]
fn per_jail_counting_when_overalljails_is_off() {
    let mut f = fixture("[escalation]\noveralljails = false\n");
    let a = "203.0.113.10";
    for (jail, t) in [(0, T0), (1, T0 + 100), (1, T0 + 200)] {
        f.bans_run_out();
        f.fail(jail, a, t);
        f.fail(jail, a, t + 1).unwrap();
    }
    // Three bans overall, but only two by web: no escalation.
    assert_eq!(
        f.core.bans(Some("web"))[0].expires_at.unwrap() - f.core.bans(Some("web"))[0].banned_at,
        3600
    );
}

#[test]
fn a_short_jails_unban_never_lifts_a_longer_ban() {
    let mut f = fixture("[escalation]\nenabled = false\n");
    let a = "203.0.113.11";
    f.fail(1, a, T0);
    f.fail(1, a, T0 + 1).unwrap(); // web: 1 h
    f.fail(0, a, T0 + 2);
    f.fail(0, a, T0 + 3).unwrap(); // ssh: 10 min
    let t: Target = a.parse().unwrap();
    assert_eq!(f.core.bans(None).len(), 2);
    // ssh's ban ends (expiry, or an unban of that jail): web's stays in the kernel.
    f.core.unban(&t, Some("ssh")).unwrap();
    assert_eq!(f.kernel(a), Some(BanClass::Drop));
    let ended = f.core.expire(now_secs() + 601).unwrap();
    assert_eq!(ended, 0, "only web's ban is left and it runs 1 h");
    assert_eq!(f.kernel(a), Some(BanClass::Drop));
    assert_eq!(f.core.expire(now_secs() + 3601).unwrap(), 1);
    assert_eq!(f.kernel(a), None);
}

#[test]
fn subnet_widening_writes_a_cidr_entry() {
    let mut f = fixture(
        "[escalation.subnet]\nenabled = true\nhosts = 3\nwithin = \"1h\"\nbantime = \"1d\"\n",
    );
    for (i, host) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        f.fail(0, host, T0 + i as u64 * 10);
        f.fail(0, host, T0 + i as u64 * 10 + 1).unwrap();
    }
    assert_eq!(f.kernel("203.0.113.0/24"), Some(BanClass::Drop));
    let subnet = f.core.bans(Some(SUBNET_JAIL));
    assert_eq!(subnet.len(), 1);
    assert_eq!(subnet[0].address, "203.0.113.0/24");
    assert_eq!(subnet[0].expires_at.unwrap() - subnet[0].banned_at, 86_400);
}

#[test]
fn subnet_widening_never_covers_the_allowlist() {
    // 198.51.100.0/24 is allowlisted; its hosts are never banned anyway,
    // and a manual ban of a prefix containing it is refused.
    let mut f = fixture("");
    let e = f
        .core
        .ban_text("198.51.0.0/16", None, None, None)
        .unwrap_err();
    assert!(e.to_string().contains("allowlist"), "{e}");
    assert!(f.fail(0, "198.51.100.7", T0).is_none());
    assert!(
        f.fail(0, "198.51.100.7", T0 + 1).is_none(),
        "allowlisted: never banned"
    );
}

#[test]
fn blocklists_load_before_reconcile_reload_and_append() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block.txt");
    std::fs::write(
        &list,
        "# operator's list
203.0.113.50
203.0.113.64/26
bogus
198.51.100.7
",
    )
    .unwrap();
    let text = format!(
            "[agent]\nfilters_dir = \"{}\"\nblocklist_files = [\"{}\"]\nblocklist_append = true\n\
             [defaults]\nignoreip = [\"198.51.100.0/24\"]\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display(),
            list.display()
        );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let kernel = Recorder::default();
    // A previous agent left the blocklisted /26 in the kernel.
    kernel.preload("203.0.113.64/26");
    let mut core = Agent::new(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        &[],
    )
    .unwrap();
    let report = core.restore(now_secs()).unwrap();
    assert_eq!(
        report.stale_map_entries, 0,
        "blocklisted entries are not removed at start"
    );
    let keys = |k: &Recorder| {
        let mut v: Vec<String> = k.0.lock().unwrap().keys().map(|t| t.to_string()).collect();
        v.sort();
        v
    };
    // The allowlisted 198.51.100.7 and the bogus line are skipped.
    assert_eq!(keys(&kernel), ["203.0.113.50", "203.0.113.64/26"]);
    assert!(core
        .bans(Some(BLOCKLIST_JAIL))
        .iter()
        .all(|b| b.expires_at.is_none()));

    // Edit the file: one entry gone, one added.
    std::fs::write(
        &list,
        "203.0.113.64/26
2001:db8:bad::/48
",
    )
    .unwrap();
    core.blocklists_changed();
    std::thread::sleep(crate::blocklist::QUIET);
    assert!(core.blocklists_changed());
    core.sync_blocklists(true).unwrap();
    assert_eq!(keys(&kernel), ["2001:db8:bad::/48", "203.0.113.64/26"]);

    // A permanent ban is appended with a dated comment, and read back.
    core.ban_text("203.0.113.99", None, Some("permanent"), None)
        .unwrap();
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(
        text.lines().last().unwrap().starts_with("203.0.113.99  # "),
        "{text}"
    );
    assert!(text.ends_with("jail=manual permanent\n"));
    core.sync_blocklists(true).unwrap();
    assert_eq!(core.bans(Some(BLOCKLIST_JAIL)).len(), 3);
    // A manual unban of a listed entry lasts until the file is re-read:
    // the file is the truth for its own entries.
    core.unban(&"203.0.113.99".parse().unwrap(), None).unwrap();
    assert!(!kernel_has(&kernel, "203.0.113.99"));
    core.sync_blocklists(true).unwrap();
    assert!(kernel_has(&kernel, "203.0.113.99"), "back from the file");
    assert_eq!(core.bans(Some(BLOCKLIST_JAIL)).len(), 3);
    // Finite bans are not appended.
    core.ban_text("203.0.113.98", None, Some("1h"), None)
        .unwrap();
    assert!(!std::fs::read_to_string(&list)
        .unwrap()
        .contains("203.0.113.98"));
}

#[test]
fn restore_rebuilds_the_kernel_view_and_drops_stale_entries() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display()
        );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let now = now_secs();
    {
        let mut store = BanStore::open(dir.path()).unwrap();
        let rec = |t: &str, exp: Option<i64>| BanRecord {
            target: t.parse().unwrap(),
            jail: "ssh".into(),
            class: BanClass::Drop,
            banned_at: now - 100,
            expires_at: exp,
            failures: 5,
            matches: vec![],
        };
        store
            .put_ban(&rec("203.0.113.1", Some(now + 100)), now)
            .unwrap();
        store
            .put_ban(&rec("203.0.113.2", Some(now - 1)), now)
            .unwrap();
        store.put_ban(&rec("2001:db8::/48", None), now).unwrap();
    }
    let kernel = Recorder::default();
    // Left by a previous agent: one live ban, one that expired while
    // down, and one the store does not know.
    kernel.preload("203.0.113.1");
    kernel.preload("203.0.113.2");
    kernel.preload("203.0.113.99");
    let mut core = Agent::new(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        &[],
    )
    .unwrap();
    let report = core.restore(now).unwrap();
    assert_eq!(
        (
            report.restored,
            report.expired,
            report.stale_map_entries,
            report.adopted
        ),
        (2, 1, 1, 1)
    );
    let mut left: Vec<String> = kernel
        .0
        .lock()
        .unwrap()
        .keys()
        .map(|t| t.to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec!["2001:db8::/48", "203.0.113.1", "203.0.113.99"]);
    let adopted = core.bans(Some(ADOPTED_JAIL));
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].address, "203.0.113.99");
}

#[test]
fn a_full_store_still_bans_and_writes_the_backlog_when_space_returns() {
    let mut f = fixture("[escalation]\nenabled = false\n");
    // The database may not grow: writes fail with SQLITE_FULL, as on a
    // full disk.
    let pages = f.core.bans.store.page_count();
    f.core.bans.store.set_max_pages(pages);
    let line = |addr: &str| {
        (
            Arc::<str>::from("ssh"),
            SourceLine {
                origin: Arc::from("/l"),
                text: format!("ssh fail from {addr}"),
                read_at: std::time::SystemTime::now(),
                time: Some(UNIX_EPOCH + Duration::from_secs(T0)),
                end: Default::default(),
            },
        )
    };
    // Enough bans in one batch to need new pages.
    let addrs: Vec<String> = (0..400).map(|i| format!("2001:db8:9::{i:x}")).collect();
    let batch: Vec<_> = addrs.iter().flat_map(|a| [line(a), line(a)]).collect();
    let banned = f.core.on_lines(&batch);
    assert_eq!(banned.len(), 400, "every ban applied");
    for a in &addrs {
        assert_eq!(f.kernel(a), Some(BanClass::Drop), "{a} in the kernel");
    }
    let h = f.core.store_health();
    assert_eq!(h.backlog, 400);
    assert!(h.failing_since.is_some() && h.write_failures >= 1);
    assert!(h.last_error.unwrap().contains("full"), "names the cause");
    assert_eq!(f.core.status(None).unwrap().store.backlog, 400);
    // Still full: the retry fails and keeps them.
    f.core.retry_store();
    assert_eq!(f.core.store_health().backlog, 400);
    assert_eq!(f.core.bans.store.load_bans().unwrap().len(), 0);
    // Space again: the next retry (after RETRY_EVERY) writes them all.
    f.core.bans.store.set_max_pages(1 << 30);
    f.core.bans.backlog = {
        let mut b = StoreBacklog::default();
        let pending: Vec<_> = f.core.bans.backlog.pending().cloned().collect();
        b.failed(pending, "test", 0);
        b
    };
    f.core.retry_store();
    assert_eq!(f.core.store_health().backlog, 0);
    assert_eq!(f.core.store_health().failing_since, None);
    let rows = f.core.bans.store.load_bans().unwrap();
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r.jail == "ssh"));
}

#[test]
fn an_empty_database_adopts_the_kernels_bans_instead_of_removing_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[defaults]\nbantime = \"2h\"\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
            dir.path().join("none").display()
        );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    // A 0-byte database file, as a full disk or an operator leaves it.
    std::fs::write(dir.path().join(crate::sys::paths::STATE_DB), b"").unwrap();
    let kernel = Recorder::default();
    kernel.preload("203.0.113.5");
    kernel.preload("2001:db8:1::/48");
    kernel
        .0
        .lock()
        .unwrap()
        .insert("203.0.113.6".parse().unwrap(), BanClass::Tarpit);
    let now = now_secs();
    let mut core = Agent::new(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        &[],
    )
    .unwrap();
    let report = core.restore(now).unwrap();
    assert_eq!((report.adopted, report.stale_map_entries), (3, 0));
    assert_eq!(kernel.0.lock().unwrap().len(), 3, "nothing removed");
    assert_eq!(
        kernel.0.lock().unwrap()[&"203.0.113.6".parse().unwrap()],
        BanClass::Tarpit,
        "class kept"
    );
    drop(core);
    // Stored: the next start knows them as adopted bans of [defaults] bantime.
    let store = BanStore::open(dir.path()).unwrap();
    let rows = store.load_bans().unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.jail, ADOPTED_JAIL);
        let left = r.expires_at.unwrap() - now;
        assert!((7199..=7201).contains(&left), "{left}");
    }
    let tarpit = rows.iter().find(|r| r.target.to_string() == "203.0.113.6");
    assert_eq!(tarpit.unwrap().class, BanClass::Tarpit);
}

/// A core on `config` (after an `[agent]` header), with this host's
/// addresses fixed to `host`.
fn core_on(config: &str, host: &[&str]) -> (Agent, Recorder, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n{config}",
        dir.path().join("none").display()
    );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let kernel = Recorder::default();
    let host: Vec<Target> = host.iter().map(|h| h.parse().unwrap()).collect();
    let core = Agent::with_host(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        HostAddrs::fixed(host),
    )
    .unwrap();
    (core, kernel, dir)
}

fn line(text: String, log_time: u64) -> (Arc<str>, SourceLine) {
    (
        Arc::from("ssh"),
        SourceLine {
            origin: Arc::from("/l"),
            text,
            read_at: std::time::SystemTime::now(),
            time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
            end: Default::default(),
        },
    )
}

const SSH: &str = "[defaults]\nmaxretry = 3\nbantime = \"10m\"\n\
        [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n";

#[test]
fn offences_in_the_same_second_of_log_time_each_count() {
    // Log time has whole seconds: three offences, each lifted by hand,
    // all written within one second, are three bans; the third reaches
    // the ladder's first step (3 bans within 1d: 1w).
    let (mut core, _k, _dir) = core_on(SSH, &[]);
    let a = "203.0.113.41";
    let t: Target = a.parse().unwrap();
    for offence in 0..3u64 {
        let lines: Vec<_> = (0..3)
            .map(|i| line(format!("[{offence}{i}] ssh fail from {a}"), T0))
            .collect();
        core.on_lines(&lines);
        let bans = core.bans(None);
        assert_eq!(bans.len(), 1, "offence {offence}: {bans:?}");
        let len = bans[0].expires_at.unwrap() - bans[0].banned_at;
        assert_eq!(
            len,
            if offence < 2 { 600 } else { 7 * 86400 },
            "offence {offence}"
        );
        core.unban(&t, None).unwrap();
    }
    assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 3);
}

#[test]
fn a_burst_is_one_ban_and_a_replay_records_nothing_twice() {
    let (mut core, _k, dir) = core_on(SSH, &[]);
    let a = "203.0.113.40";
    // 15 failures written at once, read in one batch.
    let burst: Vec<_> = (0..15)
        .map(|i| line(format!("ssh fail from {a}"), T0 + i / 5))
        .collect();
    core.on_lines(&burst);
    let bans = core.bans(None);
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        bans[0].expires_at.unwrap() - bans[0].banned_at,
        600,
        "not escalated"
    );
    let t: Target = a.parse().unwrap();
    assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
    let st = core.status(Some("ssh")).unwrap();
    assert_eq!(st.jails[0].counters.failures_while_banned, 12);
    assert_eq!(
        st.jails[0].failing_now, 0,
        "failures while banned are not kept"
    );
    drop(core);

    // A crash before the file position was saved: the next agent reads
    // the same lines again. The ban is restored; nothing is added.
    let reopen = || {
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n{SSH}",
            dir.path().join("none").display()
        );
        let cfg = Config::parse(&text).unwrap().validate().unwrap();
        let mut core = Agent::new(
            &cfg,
            BanStore::open(dir.path()).unwrap(),
            Box::new(Recorder::default()),
            &[],
        )
        .unwrap();
        core.restore(now_secs()).unwrap();
        core
    };
    let mut core = reopen();
    core.on_lines(&burst);
    assert_eq!(core.bans(None).len(), 1);
    assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
    // Even when the ban has run out by then, the replay's ban is the
    // same offence: the history holds it once and it is not escalated.
    core.expire(now_secs() + 601).unwrap();
    assert!(core.bans(None).is_empty());
    core.on_lines(&burst);
    let bans = core.bans(None);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].expires_at.unwrap() - bans[0].banned_at, 600);
    assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 1);
}

#[test]
fn the_guard_refuses_wide_allowlisted_and_own_addresses() {
    let (mut core, kernel, _d) = core_on(SSH, &["203.0.113.1", "2001:db8:1::1"]);
    let refused = |core: &mut Agent, t: &str, force: bool| {
        core.ban_text_forced(t, None, None, None, force)
            .unwrap_err()
            .to_string()
    };
    // With an empty ignoreip, the whole Internet is still refused.
    for wide in ["0.0.0.0/0", "::/0", "2000::/3", "8000::/1", "10.0.0.0/7"] {
        let e = refused(&mut core, wide, false);
        assert!(
            e.contains("min_prefix_v") && e.contains("--force"),
            "{wide}: {e}"
        );
    }
    // --force lifts the width rule only.
    core.ban_text_forced("4000::/3", None, None, None, true)
        .unwrap();
    let e = refused(&mut core, "0.0.0.0/0", true);
    assert!(e.contains("own address"), "{e}");
    // This host's own address, or a prefix holding it.
    for own in [
        "203.0.113.1",
        "203.0.113.0/24",
        "127.0.0.1",
        "2001:db8:1::/64",
    ] {
        let e = refused(&mut core, own, false);
        assert!(e.contains("own address"), "{own}: {e}");
    }
    core.ban_text("203.0.113.2", None, None, None).unwrap();
    let st = core.status(None).unwrap();
    let count = |rule: &str| {
        st.ban_refusals
            .iter()
            .filter(|r| r.rule == rule && r.origin == "manual")
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!((count("min_prefix"), count("host_address")), (5, 5));
    assert_eq!(
        kernel.0.lock().unwrap().len(),
        2,
        "only the two allowed bans"
    );
}

#[test]
fn jail_subnet_and_blocklist_bans_pass_the_guard_too() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block.txt");
    std::fs::write(&list, "0.0.0.0/1\n203.0.113.1\n198.51.100.0/24\n").unwrap();
    let (mut core, kernel, _d) = core_on(
        &format!(
            "blocklist_files = [\"{}\"]\n[defaults]\nmaxretry = 1\nignoreself = false\n\
                 [escalation.subnet]\nenabled = true\nhosts = 2\n\
                 [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
            list.display()
        ),
        &["203.0.113.1"],
    );
    core.restore(now_secs()).unwrap();
    // Blocklist: the /1 and the host's own address are skipped.
    let keys = || {
        let mut v: Vec<String> = kernel
            .0
            .lock()
            .unwrap()
            .keys()
            .map(|t| t.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(keys(), ["198.51.100.0/24"]);
    // A jail with ignoreself = false still never bans this host.
    core.on_lines(&[line("ssh fail from 203.0.113.1".into(), T0)]);
    assert!(core.bans(Some("ssh")).is_empty());
    // Two hosts of the host's own /24 banned: the /24 would cover it.
    core.on_lines(&[line("ssh fail from 203.0.113.7".into(), T0)]);
    core.on_lines(&[line("ssh fail from 203.0.113.8".into(), T0 + 1)]);
    assert!(core.bans(Some(SUBNET_JAIL)).is_empty());
    assert_eq!(keys(), ["198.51.100.0/24", "203.0.113.7", "203.0.113.8"]);
    let st = core.status(None).unwrap();
    let mut seen: Vec<(String, String)> = st
        .ban_refusals
        .iter()
        .map(|r| (r.rule.clone(), r.origin.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("host_address".into(), "blocklist".into()),
            ("host_address".into(), "jail".into()),
            ("host_address".into(), "subnet".into()),
            ("min_prefix".into(), "blocklist".into()),
        ]
    );
    let text = crate::api::metrics::Metrics::default().render(&st, 1);
    assert!(
        text.contains("xban_ban_refusals_total{rule=\"host_address\",origin=\"subnet\"} 1"),
        "{text}"
    );
}

#[test]
fn ignoreself_follows_the_hosts_addresses() {
    let (mut core, _k, _d) = core_on(
            "[defaults]\nmaxretry = 1\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
            &[],
        );
    core.guard
        .host
        .set_fixed(vec!["203.0.113.50".parse().unwrap()]);
    core.on_lines(&[line("ssh fail from 203.0.113.50".into(), T0)]);
    assert!(core.bans(None).is_empty());
    let st = core.status(Some("ssh")).unwrap();
    assert_eq!(st.jails[0].counters.ignored_addresses, 1);
    assert!(st.ban_refusals.is_empty(), "ignored, not even asked");
    // The address moves away: its failures count again.
    core.guard.host.set_fixed(vec![]);
    core.on_lines(&[line("ssh fail from 203.0.113.50".into(), T0 + 1)]);
    assert_eq!(core.bans(None).len(), 1);
}

/// A listing read a few targets at a time, with bans added and lifted
/// between slices, lists every ban that stayed once, sorted, and the
/// counts in status agree with the book.
#[test]
fn a_listing_in_slices_equals_the_whole_and_survives_changes() {
    let mut f = fixture("");
    for i in 1..=20 {
        f.core
            .ban_text(&format!("203.0.113.{i}"), None, None, None)
            .unwrap();
    }
    for i in 1..=5 {
        f.fail(1, &format!("2001:db8::{i}"), 1000);
        f.fail(1, &format!("2001:db8::{i}"), 1001);
    }
    let whole = f.core.bans(None);
    assert_eq!(whole.len(), 25);
    let mut listing = f.core.start_listing(None).unwrap();
    let mut slices = 0;
    while !listing.is_finished() {
        f.core.continue_listing(&mut listing, 3);
        slices += 1;
        if slices == 2 {
            // Behind the cursor (not listed) and ahead of it (listed).
            f.core.ban_text("10.9.0.0/16", None, None, None).unwrap();
            f.core
                .unban(&"203.0.113.20".parse().unwrap(), None)
                .unwrap();
            f.core.ban_text("2001:db8::ff", None, None, None).unwrap();
        }
    }
    assert!(slices >= 9, "{slices} slices");
    let listed = listing.into_sorted();
    let addrs: Vec<&str> = listed.iter().map(|v| v.address.as_str()).collect();
    assert!(
        !addrs.contains(&"203.0.113.20"),
        "lifted ahead of the cursor"
    );
    assert!(addrs.contains(&"2001:db8::ff"), "added ahead of the cursor");
    assert!(!addrs.contains(&"10.9.0.0/16"), "added behind the cursor");
    assert_eq!(listed.len(), 25);
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), listed.len());
    assert!(listed
        .windows(2)
        .all(|w| (w[0].banned_at, &w[0].address) <= (w[1].banned_at, &w[1].address)));
    // One jail's listing.
    let mut web = f.core.start_listing(Some("web")).unwrap();
    while !web.is_finished() {
        f.core.continue_listing(&mut web, 2);
    }
    assert_eq!(web.into_sorted().len(), 5);
    assert!(f.core.start_listing(Some("nope")).is_err());
    let st = f.core.status(None).unwrap();
    assert_eq!(st.bans_active, f.core.bans(None).len());
    assert_eq!(
        st.jails.iter().find(|j| j.name == "web").unwrap().bans_now,
        5
    );
    assert_eq!(f.core.bans.book.tally(), &f.core.bans.book.recount());
}

#[test]
fn unknown_jails_in_unban_and_banned_are_named() {
    let (mut core, _k, _d) = core_on(SSH, &[]);
    core.ban_text("203.0.113.9", None, None, None).unwrap();
    for req in [
        Request::Unban {
            target: None,
            jail: Some("nope".into()),
            all: true,
            local: false,
        },
        Request::Unban {
            target: Some("203.0.113.9".into()),
            jail: Some("nope".into()),
            all: false,
            local: false,
        },
        Request::Banned {
            jail: Some("nope".into()),
        },
    ] {
        let r = crate::api::handler::handle(&mut core, &req);
        let e = r.error.unwrap_or_default();
        assert!(
            !r.ok && e.contains("no jail named `nope`") && e.contains("ssh"),
            "{req:?}: {e}"
        );
    }
    assert_eq!(core.bans(None).len(), 1, "nothing was unbanned");
    for ok in ["ssh", MANUAL_JAIL, BLOCKLIST_JAIL, SUBNET_JAIL] {
        let r = crate::api::handler::handle(
            &mut core,
            &Request::Unban {
                target: None,
                jail: Some(ok.into()),
                all: true,
                local: false,
            },
        );
        assert!(r.ok, "{ok}: {:?}", r.error);
    }
}

#[test]
fn ban_lengths_are_bounded() {
    let (mut core, _k, _d) = core_on(SSH, &[]);
    for huge in ["18446744073709551615", "9223372036854775807", "3651d"] {
        let e = core
            .ban_text("203.0.113.9", None, Some(huge), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--bantime:") && e.contains("maximum") && e.contains("permanent"),
            "{e}"
        );
    }
    let e = core
        .ban_text("203.0.113.9", None, Some("0"), None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--bantime:"), "{e}");
    let b = core
        .ban_text("203.0.113.9", None, Some("3650d"), None)
        .unwrap();
    assert_eq!(b.expires_at.unwrap() - b.banned_at, 3650 * 86_400);
    assert!(b.expires_at.unwrap() > now_secs());
    assert_eq!(
        expiry(i64::MAX - 5, BanTime::Finite(Duration::from_secs(600))),
        Some(i64::MAX)
    );
}

#[test]
fn max_tracked_keeps_repeat_offenders_under_a_flood() {
    let (mut core, _k, _d) = core_on(
        "[defaults]\nmaxretry = 3\nmax_tracked = 1000\n\
             [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
        &[],
    );
    let attacker = "203.0.113.66";
    let mut lines = vec![line(format!("ssh fail from {attacker}"), T0)];
    lines.push(line(format!("ssh fail from {attacker}"), T0 + 1));
    // 50,000 one-time addresses, fifty times the cap.
    for i in 0..50_000u32 {
        let ip = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(i));
        lines.push(line(format!("ssh fail from {ip}"), T0 + 2));
    }
    lines.push(line(format!("ssh fail from {attacker}"), T0 + 3));
    for chunk in lines.chunks(1024) {
        core.on_lines(chunk);
    }
    let bans = core.bans(None);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].address, attacker);
    let st = core.status(Some("ssh")).unwrap();
    assert!(st.jails[0].failing_now <= 1000);
    // 50,001 addresses tracked in all, 1,000 at a time.
    assert_eq!(st.jails[0].counters.window_evictions, 50_001 - 1000);
    let text = crate::api::metrics::Metrics::default().render(&st, 1);
    assert!(
        text.contains("xban_window_evictions_total{jail=\"ssh\"} 49001"),
        "{text}"
    );
}
