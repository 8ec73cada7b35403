//! The core with host names in ignoreip and geo rules, against a recording
//! enforcer that keeps the order of kernel writes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;

use super::Agent;
use crate::addr::Target;
use crate::api::handler::BanText;
use crate::ban::BanEventKind;
use crate::ban::{BanClass, MapChange};
use crate::config::Config;
use crate::dns::Lookup;
use crate::enforce::Enforcer;
use crate::geo::{compile_networks, GeoAction, GeoRule, GEO_JAIL};
use crate::source::SourceLine;
use crate::store::BanStore;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Set(Target),
    Remove(Target),
    Allow(Vec<Target>),
}

#[derive(Clone, Default)]
struct Kernel {
    bans: Arc<Mutex<HashMap<Target, BanClass>>>,
    allow: Arc<Mutex<Vec<Target>>>,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Enforcer for Kernel {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        let mut m = self.bans.lock().unwrap();
        match change {
            MapChange::Set(c) => {
                m.insert(*target, c);
                self.ops.lock().unwrap().push(Op::Set(*target));
            }
            MapChange::Remove => {
                m.remove(target);
                self.ops.lock().unwrap().push(Op::Remove(*target));
            }
            MapChange::Unchanged => {}
        }
        Ok(())
    }
    fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        *self.allow.lock().unwrap() = list.to_vec();
        self.ops.lock().unwrap().push(Op::Allow(list.to_vec()));
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        Ok(self
            .bans
            .lock()
            .unwrap()
            .iter()
            .map(|(t, c)| (*t, Some(*c)))
            .collect())
    }
}

impl Kernel {
    /// Does XDP drop `ip`: not allowlisted, and some ban prefix covers it?
    fn drops(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        !self.allow.lock().unwrap().iter().any(|a| a.contains(ip))
            && self.bans.lock().unwrap().keys().any(|t| t.contains(ip))
    }
    fn allowed(&self) -> BTreeSet<String> {
        self.allow
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect()
    }
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn found(addrs: &[&str]) -> Lookup {
    Lookup::Found(
        addrs.iter().map(|a| a.parse().unwrap()).collect(),
        Duration::from_secs(60),
    )
}

struct Fx {
    core: Agent,
    kernel: Kernel,
    _dir: tempfile::TempDir,
}

fn fixture(extra: &str, tweak: impl FnOnce(&mut crate::config::ResolvedConfig)) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n[defaults]\nmaxretry = 2\nbantime = \"10m\"\nignoreself = false\n\
         ignoreip = [\"198.51.100.0/25\", \"home.example.org\"]\n\
         [jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n\
         [jails.web]\nlogpath = [\"/l\"]\nfailregex = ['web fail from <HOST>$']\nignoreip = [\"office.example.org\"]\n{extra}",
        dir.path().join("none").display()
    );
    let mut cfg = Config::parse(&text).unwrap().validate().unwrap();
    tweak(&mut cfg);
    let kernel = Kernel::default();
    let self_addrs = vec![t("203.0.113.200")];
    let mut core = Agent::new(
        &cfg,
        BanStore::open(dir.path()).unwrap(),
        Box::new(kernel.clone()),
        &self_addrs,
    )
    .unwrap();
    core.restore(crate::ban::now_secs()).unwrap();
    Fx {
        core,
        kernel,
        _dir: dir,
    }
}

impl Fx {
    fn fail(&mut self, jail: &str, addr: &str, at: u64) -> bool {
        let line = SourceLine {
            origin: Arc::from("/l"),
            text: format!("{jail} fail from {addr}"),
            read_at: std::time::SystemTime::now(),
            time: Some(UNIX_EPOCH + Duration::from_secs(at)),
            end: Default::default(),
        };
        self.core.on_line(jail, &line).unwrap().is_some()
    }
}

#[test]
fn a_defaults_name_follows_its_record_and_lifts_bans() {
    let mut f = fixture("", |_| {});
    assert_eq!(
        f.core.dns_names(),
        ["home.example.org", "office.example.org"]
    );
    f.core
        .ban_text("203.0.113.5", Some("ssh"), None, None)
        .unwrap();
    f.core
        .ban_text("203.0.113.5", Some("web"), None, None)
        .unwrap();
    assert!(f.kernel.drops("203.0.113.5"));
    f.core.take_events();

    f.core
        .dns_result("home.example.org", &found(&["203.0.113.5", "2001:db8::5"]))
        .unwrap();
    // In the allowlist, and every jail's ban of it lifted and logged.
    assert!(f.kernel.allowed().contains("203.0.113.5"));
    assert!(f.kernel.allowed().contains("2001:db8::5"));
    assert!(!f
        .kernel
        .bans
        .lock()
        .unwrap()
        .contains_key(&t("203.0.113.5")));
    let ev = f.core.take_events();
    assert_eq!(ev.len(), 2);
    assert!(ev
        .iter()
        .all(|e| e.kind == BanEventKind::Unban && e.reason == "allowlisted"));
    assert!(f.core.bans(None).is_empty());
    assert!(!f.fail("ssh", "203.0.113.5", 1000) && !f.fail("ssh", "203.0.113.5", 1001));

    // The record moves: the old address leaves, the new one enters.
    f.core
        .dns_result("home.example.org", &found(&["203.0.113.6"]))
        .unwrap();
    assert!(f.kernel.allowed().contains("203.0.113.6"));
    assert!(!f.kernel.allowed().contains("203.0.113.5"));
    assert!(!f.kernel.allowed().contains("2001:db8::5"));
    assert!(
        f.kernel.allowed().contains("198.51.100.0/25"),
        "configured entries stay"
    );
    assert!(!f.fail("ssh", "203.0.113.5", 2000));
    assert!(
        f.fail("ssh", "203.0.113.5", 2001),
        "the old address is bannable again"
    );

    // An outage keeps the last addresses.
    f.core
        .dns_result("home.example.org", &Lookup::Failed("timed out".into()))
        .unwrap();
    assert!(f.kernel.allowed().contains("203.0.113.6"));
    let st = f.core.status(None).unwrap();
    assert_eq!(st.dns.len(), 2);
    let home = st
        .dns
        .iter()
        .find(|n| n.name == "home.example.org")
        .unwrap();
    assert_eq!(home.addresses, ["203.0.113.6"]);
    assert_eq!(home.last_error.as_deref(), Some("timed out"));
    assert_eq!(st.dns_unresolved, ["office.example.org"]);
}

#[test]
fn a_jail_name_only_stops_that_jail() {
    let mut f = fixture("", |_| {});
    f.core
        .ban_text("203.0.113.9", Some("ssh"), None, None)
        .unwrap();
    f.core
        .ban_text("203.0.113.9", Some("web"), None, None)
        .unwrap();
    f.core
        .dns_result("office.example.org", &found(&["203.0.113.9"]))
        .unwrap();
    let left: Vec<String> = f.core.bans(None).iter().map(|b| b.jail.clone()).collect();
    assert_eq!(left, ["ssh"], "only web ignores the office address");
    assert!(
        !f.kernel.allowed().contains("203.0.113.9"),
        "not in the XDP allowlist"
    );
    assert!(f.kernel.drops("203.0.113.9"));
    f.core.unban(&t("203.0.113.9"), None).unwrap();
    assert!(!f.fail("web", "203.0.113.9", 10) && !f.fail("web", "203.0.113.9", 11));
    assert!(!f.fail("ssh", "203.0.113.9", 10));
    assert!(f.fail("ssh", "203.0.113.9", 11));
}

fn geo_rules() -> Vec<GeoRule> {
    vec![
        GeoRule {
            countries: vec!["XA".into()],
            ..Default::default()
        },
        GeoRule {
            countries: vec!["XB".into()],
            action: GeoAction::Allow,
            ..Default::default()
        },
    ]
}

fn geo_set(nets: &[(&str, &str)]) -> crate::geo::GeoSet {
    let rules = geo_rules();
    compile_networks(
        &rules,
        nets.iter().map(|(label, n)| {
            let rule = if *label == "XA" { 0 } else { 1 };
            (rule, Arc::<str>::from(*label), n.parse().unwrap())
        }),
    )
}

#[test]
fn geo_bans_load_with_holes_and_move_without_a_gap() {
    let mut f = fixture("", |cfg| {
        cfg.geo.rules = geo_rules();
        cfg.geo_set = Arc::new(geo_set(&[
            ("XA", "203.0.113.0/24"),
            ("XA", "198.51.100.0/24"),
            ("XA", "2001:db8:a::/48"),
            ("XB", "192.0.0.0/24"),
        ]));
    });
    // Dropped: the country's prefixes. Passed: the allowlisted part
    // (ignoreip wins), the host's own address, the allowed country.
    assert!(f.kernel.drops("203.0.113.7"));
    assert!(f.kernel.drops("198.51.100.200"));
    assert!(f.kernel.drops("2001:db8:a::1"));
    assert!(!f.kernel.drops("198.51.100.7"), "ignoreip wins");
    assert!(
        !f.kernel.drops("203.0.113.200"),
        "the host's own address is cut out"
    );
    assert!(f.kernel.allowed().contains("192.0.0.0/24"));
    let geo = f.core.bans(Some(GEO_JAIL));
    assert!(geo.iter().all(|b| b.expires_at.is_none()));
    // A geo prefix is not lifted by hand, nor by unban --all.
    let e = f.core.unban(&t("198.51.100.0/24"), None).unwrap_err();
    assert!(e.to_string().contains("geo rule"), "{e}");
    f.core.unban_all(None).unwrap();
    assert!(f.kernel.drops("203.0.113.7"));
    // A jail still bans inside a geo prefix (a longer, own record).
    assert!(!f.fail("ssh", "203.0.113.8", 1) && f.fail("ssh", "203.0.113.8", 2));

    // A new database version: 203.0.113.0/24 splits into halves, the /25
    // upper one moves to another country, 2001:db8:b::/48 is new.
    f.kernel.ops.lock().unwrap().clear();
    f.core.dynamic.geo.compiled = Arc::new(geo_set(&[
        ("XA", "203.0.113.0/25"),
        ("XA", "198.51.100.0/24"),
        ("XA", "2001:db8:a::/48"),
        ("XA", "2001:db8:b::/48"),
        ("XB", "203.0.113.128/25"),
    ]));
    f.core.sync_geo(true).unwrap();
    let ops = f.kernel.ops.lock().unwrap().clone();
    let first_remove = ops.iter().position(|o| matches!(o, Op::Remove(_))).unwrap();
    let last_set = ops.iter().rposition(|o| matches!(o, Op::Set(_))).unwrap();
    assert!(
        last_set < first_remove,
        "every prefix added before any is removed: {ops:?}"
    );
    assert!(f.kernel.drops("203.0.113.7"));
    assert!(f.kernel.drops("2001:db8:b::1"));
    assert!(!f.kernel.drops("203.0.113.130"), "now an allowed country");
    assert!(!f.kernel.drops("192.0.0.1"));
    assert!(
        !f.kernel.allowed().contains("192.0.0.0/24"),
        "gone from the allow rule"
    );

    // The rules removed by a reload: the prefixes go.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n[defaults]\nignoreip = [\"198.51.100.0/25\"]\n[jails.ssh]\nlogpath = [\"/l\"]\nfailregex = ['ssh fail from <HOST>$']\n",
        dir.path().join("none").display()
    );
    let cfg = Config::parse(&text).unwrap().validate().unwrap();
    f.core.reload(&cfg).unwrap();
    assert!(f.core.bans(Some(GEO_JAIL)).is_empty());
    assert!(!f.kernel.drops("203.0.113.7"));
    assert!(f.kernel.drops("203.0.113.8"), "the jail's own ban stays");
}
