//! Bans in batches: counts stay exact under a burst, a failed store or
//! kernel write keeps the invariants, escalation counts the batch's own
//! bans, expiry is one pass.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::ban::MapChange;
use crate::config::Config;
use crate::source::SourceLine;

/// The kernel's view; writes of the targets in `refuse` fail.
#[derive(Clone, Default)]
struct Kernel {
    entries: Arc<Mutex<HashMap<Target, BanClass>>>,
    refuse: Arc<Mutex<HashSet<Target>>>,
    /// Calls of `apply_all`, with their sizes.
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Enforcer for Kernel {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        if self.refuse.lock().unwrap().contains(target) {
            anyhow::bail!("injected: the map refused {target}");
        }
        let mut m = self.entries.lock().unwrap();
        crate::engine::test_support::apply_change(&mut m, target, change);
        Ok(())
    }
    fn apply_all(&mut self, changes: &[(Target, MapChange)]) -> Vec<(Target, anyhow::Error)> {
        self.batches.lock().unwrap().push(changes.len());
        changes
            .iter()
            .filter_map(|(t, c)| self.apply(t, *c).err().map(|e| (*t, e)))
            .collect()
    }
    fn set_allowlist(&mut self, _list: &[Target]) -> Result<()> {
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|(t, c)| (*t, Some(*c)))
            .collect())
    }
}

impl Kernel {
    fn targets(&self) -> BTreeSet<Target> {
        self.entries.lock().unwrap().keys().copied().collect()
    }
}

const T0: u64 = 1_800_000_000;

/// Three jails on one log; maxretry 3, bantime 10m, the default ladder.
const JAILS: &str = "[defaults]\nmaxretry = 3\nbantime = \"10m\"\nignoreself = false\n\
    [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n\
    [jails.web]\nlogpath = [\"/l\"]\nfailregex = ['web fail from <HOST>$']\n\
    [jails.mail]\nlogpath = [\"/l\"]\nfailregex = ['mail fail from <HOST>$']\n";

fn agent(extra: &str) -> (Agent, Kernel, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n{JAILS}{extra}",
        dir.path().join("none").display()
    );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let kernel = Kernel::default();
    let core = Agent::new(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        &[],
    )
    .unwrap();
    (core, kernel, dir)
}

fn line(jail: &str, addr: &str, log_time: u64) -> (Arc<str>, SourceLine) {
    (
        Arc::from(jail),
        SourceLine {
            origin: Arc::from("/l"),
            text: format!("{jail} fail from {addr}"),
            read_at: std::time::SystemTime::now(),
            time: Some(UNIX_EPOCH + Duration::from_secs(log_time)),
            end: Default::default(),
        },
    )
}

/// `n` offenders, 3 failures each, every address once then again then a
/// third time (as the bench writes them).
fn burst(jail: &str, addrs: &[String]) -> Vec<(Arc<str>, SourceLine)> {
    (0..3)
        .flat_map(|_| addrs.iter().map(move |a| line(jail, a, T0)))
        .collect()
}

fn addrs(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{:x}", i + 1)).collect()
}

fn stored(core: &Agent) -> BTreeSet<(Target, String)> {
    core.bans
        .store
        .load_bans()
        .unwrap()
        .into_iter()
        .map(|r| (r.target, r.jail))
        .collect()
}

fn booked(core: &Agent) -> BTreeSet<(Target, String)> {
    core.bans(None)
        .into_iter()
        .map(|b| (b.address.parse().unwrap(), b.jail))
        .collect()
}

#[test]
fn a_burst_in_one_batch_keeps_every_count_exact() {
    let (mut core, kernel, _dir) = agent("");
    let ssh = addrs(600, "2001:db8:1::");
    // 200 of ssh's offenders also fail in web, within the same batch.
    let web = ssh[..200].to_vec();
    let mut lines = burst("ssh", &ssh);
    lines.extend(burst("web", &web));
    // A fourth failure while banned: not counted again.
    lines.push(line("ssh", &ssh[0], T0));
    let banned = core.on_lines(&lines);
    assert_eq!(banned.len(), 800, "one ban per (address, jail)");
    assert_eq!(
        kernel.batches.lock().unwrap().as_slice(),
        &[800],
        "one kernel batch"
    );
    let book = booked(&core);
    assert_eq!(book.len(), 800);
    assert_eq!(stored(&core), book, "store rows = book");
    let targets: BTreeSet<Target> = book.iter().map(|(t, _)| *t).collect();
    assert_eq!(targets.len(), 600, "distinct offenders");
    assert_eq!(
        kernel.targets(),
        targets,
        "kernel entries = distinct offenders"
    );
    let st = core.status(None).unwrap();
    assert_eq!(st.bans_active, 600, "active bans = distinct offenders");
    assert_eq!(st.map_entries, 600);
    assert_eq!(core.take_events().len(), 800, "one event per ban");
    // Each (address, jail) is in the history once.
    let t: Target = ssh[0].parse().unwrap();
    assert_eq!(core.store().ban_count_since(&t, None, 0).unwrap(), 2);
}

#[test]
fn escalation_counts_the_batchs_own_bans_as_one_at_a_time_would() {
    // The same address banned by three jails: the third ban reaches the
    // ladder's first step (3 bans within 1d: 1w), in one batch as when
    // each line is its own batch.
    let a = "203.0.113.77";
    let lines: Vec<_> = ["ssh", "web", "mail"]
        .iter()
        .enumerate()
        .flat_map(|(i, j)| (0..3).map(move |k| line(j, a, T0 + 10 * i as u64 + k)))
        .collect();
    let lengths = |core: &Agent| -> Vec<(String, i64)> {
        let mut v: Vec<_> = core
            .bans(None)
            .into_iter()
            .map(|b| (b.jail, b.expires_at.unwrap() - b.banned_at))
            .collect();
        v.sort();
        v
    };
    let (mut one_batch, _k, _d) = agent("");
    one_batch.on_lines(&lines);
    let (mut one_by_one, _k2, _d2) = agent("");
    for l in &lines {
        one_by_one.on_lines(std::slice::from_ref(l));
    }
    let want = vec![
        ("mail".to_string(), 7 * 86_400),
        ("ssh".to_string(), 600),
        ("web".to_string(), 600),
    ];
    assert_eq!(lengths(&one_batch), want);
    assert_eq!(lengths(&one_by_one), want);
}

#[test]
fn a_failed_store_write_in_a_batch_sends_all_of_it_to_the_kernel_and_the_backlog() {
    let (mut core, kernel, _dir) = agent("[escalation]\nenabled = false\n");
    // One row of the batch fails to insert: the transaction is rolled back.
    core.store()
        .write(|c| {
            c.execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON bans WHEN NEW.target = '203.0.113.5'
                 BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
            )
        })
        .unwrap();
    let ips: Vec<String> = (1..=9).map(|i| format!("203.0.113.{i}")).collect();
    let banned = core.on_lines(&burst("ssh", &ips));
    assert_eq!(banned.len(), 9);
    // Every ban is enforced; none is stored; all wait in the backlog.
    assert_eq!(kernel.targets().len(), 9);
    assert!(stored(&core).is_empty());
    let h = core.store_health();
    assert_eq!(h.backlog, 9);
    assert!(h.last_error.unwrap().contains("injected write failure"));
    // The fault gone, the retry stores them all.
    core.store()
        .write(|c| c.execute_batch("DROP TRIGGER refuse"))
        .unwrap();
    core.bans.backlog = {
        let mut b = backlog::StoreBacklog::default();
        let pending: Vec<_> = core.bans.backlog.pending().cloned().collect();
        b.failed(pending, "test", 0);
        b
    };
    core.retry_store();
    assert_eq!(core.store_health().backlog, 0);
    assert_eq!(stored(&core), booked(&core));
    assert_eq!(stored(&core).len(), 9);
}

#[test]
fn a_failed_kernel_write_in_a_batch_is_reported_and_leaves_nothing_unstored() {
    let (mut core, kernel, _dir) = agent("[escalation]\nenabled = false\n");
    let bad: Target = "203.0.113.3".parse().unwrap();
    kernel.refuse.lock().unwrap().insert(bad);
    let ips: Vec<String> = (1..=6).map(|i| format!("203.0.113.{i}")).collect();
    core.on_lines(&burst("ssh", &ips));
    // The others are in the kernel; everything in the kernel is stored.
    let in_kernel = kernel.targets();
    assert_eq!(in_kernel.len(), 5);
    assert!(!in_kernel.contains(&bad));
    let store: BTreeSet<Target> = stored(&core).into_iter().map(|(t, _)| t).collect();
    assert!(in_kernel.is_subset(&store));
    assert!(store.contains(&bad), "stored before the kernel write");
    // The refused ban is not reported as banned (no event, no log line).
    let events = core.take_events();
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e.record.target != bad));
}

#[test]
fn many_bans_expire_in_one_pass() {
    let (mut core, kernel, dir) = agent("[escalation]\nenabled = false\n");
    let ips = addrs(300, "2001:db8:2::");
    core.on_lines(&burst("ssh", &ips));
    core.take_events();
    assert_eq!(kernel.targets().len(), 300);
    let before = kernel.batches.lock().unwrap().len();
    assert_eq!(core.expire(now_secs() + 601).unwrap(), 300);
    assert_eq!(
        kernel.batches.lock().unwrap().len(),
        before + 1,
        "one kernel batch"
    );
    assert!(kernel.targets().is_empty());
    assert!(stored(&core).is_empty());
    assert!(core.bans(None).is_empty());
    let events = core.take_events();
    assert_eq!(events.len(), 300);
    assert!(events.iter().all(|e| e.reason == "expired"));
    // The rows are gone on disk too (another connection sees it).
    let other = BanStore::open(dir.path()).unwrap();
    assert!(other.load_bans().unwrap().is_empty());
}
