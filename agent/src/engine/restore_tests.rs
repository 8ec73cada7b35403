//! Restore when the restore marker vouched for the kernel ("as stored"):
//! what is written, removed and adopted, and the fall back to reading the
//! kernel when its count disagrees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::ADOPTED_JAIL;
use crate::addr::Target;
use crate::ban::{now_secs, BanClass, BanRecord, MapChange};
use crate::config::Config;
use crate::enforce::{Enforcer, KernelBans};
use crate::engine::Agent;
use crate::store::BanStore;

/// A kernel that answers restore "as stored" (with `extra`), and records
/// every write.
#[derive(Clone, Default)]
struct WarmKernel {
    held: Arc<Mutex<HashMap<Target, BanClass>>>,
    writes: Arc<Mutex<Vec<(Target, MapChange)>>>,
    extra: Vec<Target>,
    read_back: Arc<Mutex<bool>>,
}

impl Enforcer for WarmKernel {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        self.writes.lock().unwrap().push((*target, change));
        let mut m = self.held.lock().unwrap();
        crate::engine::test_support::apply_change(&mut m, target, change);
        Ok(())
    }
    fn set_allowlist(&mut self, _list: &[Target]) -> Result<()> {
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        *self.read_back.lock().unwrap() = true;
        let m = self.held.lock().unwrap();
        Ok(m.iter().map(|(t, c)| (*t, Some(*c))).collect())
    }
    fn entries_for_restore(&mut self) -> Result<KernelBans> {
        Ok(KernelBans::AsStored {
            extra: self.extra.clone(),
            since: Default::default(),
        })
    }
    fn entry_count(&self) -> Option<usize> {
        Some(self.held.lock().unwrap().len())
    }
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// A store with a live drop ban, one that expired while stopped, and a
/// live tarpit ban; a kernel as the last agent left it (all three, plus
/// `extra`), the tarpit one with the class a drop-only engine wrote.
fn start(extra: &[&str], unknown: &[&str]) -> (Agent, WarmKernel, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['x <HOST>$']\n",
        dir.path().join("none").display()
    );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    let now = now_secs();
    let mut store = BanStore::open(dir.path()).unwrap();
    let rec = |target: &str, class, expires_at| BanRecord {
        target: t(target),
        jail: "ssh".into(),
        class,
        banned_at: now - 100,
        expires_at,
        failures: 3,
        matches: vec![],
    };
    for r in [
        rec("203.0.113.1", BanClass::Drop, Some(now + 100)),
        rec("203.0.113.2", BanClass::Drop, Some(now - 1)),
        rec("203.0.113.3", BanClass::Tarpit, None),
    ] {
        store.put_ban(&r, now).unwrap();
    }
    let kernel = WarmKernel {
        extra: extra.iter().map(|s| t(s)).collect(),
        ..Default::default()
    };
    {
        let mut held = kernel.held.lock().unwrap();
        for s in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
            .iter()
            .chain(extra)
            .chain(unknown)
        {
            held.insert(t(s), BanClass::Drop);
        }
    }
    let core = Agent::new(&cfg, store, Box::new(kernel.clone()), &[]).unwrap();
    (core, kernel, dir)
}

#[test]
fn a_warm_start_as_stored_writes_only_what_it_cannot_vouch_for() {
    let (mut core, kernel, _dir) = start(&["198.51.100.0/24"], &[]);
    let report = core.restore(now_secs()).unwrap();
    assert!(!*kernel.read_back.lock().unwrap(), "the kernel is not read");
    let writes = kernel.writes.lock().unwrap().clone();
    // The live drop ban is not written again; the expired one is removed;
    // the tarpit one is written with its class; the extra entry (a geo
    // ban no longer configured) is adopted, as a read would have found it.
    assert!(
        !writes.iter().any(|(x, _)| *x == t("203.0.113.1")),
        "{writes:?}"
    );
    assert!(writes.contains(&(t("203.0.113.2"), MapChange::Remove)));
    assert!(writes.contains(&(t("203.0.113.3"), MapChange::Set(BanClass::Tarpit))));
    assert_eq!((report.restored, report.expired, report.adopted), (2, 1, 1));
    assert_eq!(core.bans(Some(ADOPTED_JAIL))[0].address, "198.51.100.0/24");
    let held = kernel.held.lock().unwrap();
    let mut left: Vec<String> = held.keys().map(|x| x.to_string()).collect();
    left.sort();
    assert_eq!(left, ["198.51.100.0/24", "203.0.113.1", "203.0.113.3"]);
}

#[test]
fn a_kernel_holding_more_than_the_marker_says_is_read_back() {
    // An entry the marker does not account for (written while stopped):
    // the counts differ, the kernel is read, and the entry adopted, never
    // lost from the agent's view.
    let (mut core, kernel, _dir) = start(&[], &["203.0.113.99"]);
    let report = core.restore(now_secs()).unwrap();
    assert!(*kernel.read_back.lock().unwrap());
    assert_eq!(report.adopted, 1);
    assert_eq!(core.bans(Some(ADOPTED_JAIL))[0].address, "203.0.113.99");
    assert!(kernel.held.lock().unwrap().contains_key(&t("203.0.113.99")));
}
