//! Routes: which jails a reader's lines go to. Jails that follow the same
//! files share one reader (the daemon's), and its lines come here once, for
//! all of them:
//!
//! - jails whose filters are the same (failregex, ignoreregex, datepattern,
//!   mode) make one *match class*: the line is matched once and the result
//!   counted in each of them;
//! - when a route has several classes, one [`SharedPrefilter`] scan over all
//!   their literals decides which classes can match the line at all; the
//!   others only count it (every jail's `lines` counts every line it saw);
//! - a class whose failregexes are all among another's (sshd's normal and
//!   ddos modes, within aggressive) is not matched when that other class
//!   found no failure: none of its regexes can match either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;

use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanRecord};
use crate::filter::shared::SharedPrefilter;
use crate::filter::LineMatch;
use crate::jail::{Jail, JailVerdict, MatchedLine};
use crate::source::SourceLine;

/// Identifies a reader (one running source) for as long as it runs; a
/// reader started later gets a new one.
pub type ReaderId = u64;

/// A line from a reader.
#[derive(Debug, Clone)]
pub struct ReaderLine {
    pub reader: ReaderId,
    pub line: SourceLine,
    /// Positions (in the route's member list) of jails this line is not
    /// for: they had processed it already (they joined the reader ahead of
    /// it). Empty almost always.
    pub except: Vec<usize>,
}

/// The routes of every running reader.
#[derive(Default)]
pub struct LineRoutes {
    routes: HashMap<ReaderId, Route>,
    /// Reused for the prefilter's verdicts ...
    admitted: Vec<bool>,
    /// ... and for each class's match of the line at hand.
    found: Vec<Option<ClassMatch>>,
}

/// A class's match of a line.
#[derive(Clone)]
struct ClassMatch {
    /// Whether any failregex matched: a class within this one can match
    /// only then. (A connection's line may match and yet be no failure.)
    matched: bool,
    found: LineMatch,
}

/// One reader's jails, as the daemon lists them, and how its lines are
/// matched for them.
struct Route {
    members: Vec<String>,
    classes: Vec<MatchClass>,
    /// Only with more than one class: a single class's own prefilter does
    /// the same work.
    prefilter: Option<SharedPrefilter>,
}

/// Jails whose filters are the same: one match serves them all.
#[derive(Debug, PartialEq)]
struct MatchClass {
    /// The jail whose filter matches the line (any member would do).
    filter_of: usize,
    /// (position in the route's members, jail index, jail name).
    jails: Vec<(usize, usize, Arc<str>)>,
    /// A class whose failregexes include all of this one's (and the same
    /// datepattern): when it finds no failure in a line, neither can this
    /// one.
    within: Option<usize>,
}

/// What makes two jails' filters the same: prefregex, failregexes,
/// ignoreregexes, datepattern and date cut.
type FilterKey = (
    Option<String>,
    Vec<String>,
    Vec<String>,
    (Option<String>, crate::filter::time::DateCut),
);

fn filter_key(jail: &Jail) -> FilterKey {
    let s = &jail.settings;
    // The jail's filter compiled, so its lists resolve.
    let (fail, ignore) = s.filter.lists(s.mode.as_deref()).unwrap_or_default();
    (
        s.filter.prefregex.clone(),
        fail,
        ignore,
        (s.filter.datepattern.clone(), s.filter.date_cut),
    )
}

/// Match classes of `members` (jail names) over `jails`; names no jail has
/// (removed by a reload) are left out.
fn classes_of(members: &[String], jails: &[Jail]) -> Vec<MatchClass> {
    let mut keys: Vec<FilterKey> = Vec::new();
    let mut classes: Vec<MatchClass> = Vec::new();
    for (pos, name) in members.iter().enumerate() {
        let Some(idx) = jails.iter().position(|j| j.name() == name) else {
            continue;
        };
        let key = filter_key(&jails[idx]);
        let entry = (pos, idx, Arc::from(name.as_str()));
        match keys.iter().position(|k| *k == key) {
            Some(c) => classes[c].jails.push(entry),
            None => {
                keys.push(key);
                classes.push(MatchClass {
                    filter_of: idx,
                    jails: vec![entry],
                    within: None,
                });
            }
        }
    }
    for (c, class) in classes.iter_mut().enumerate() {
        class.within = within(&keys, c);
    }
    classes
}

/// The class with the most failregexes among those that have all of
/// class `c`'s, and its prefregex and datepattern (which decide the text
/// matched).
fn within(keys: &[FilterKey], c: usize) -> Option<usize> {
    let (pref, fail, _, date) = &keys[c];
    (0..keys.len())
        .filter(|&o| {
            o != c && keys[o].0 == *pref && keys[o].3 == *date && keys[o].1.len() >= fail.len()
        })
        .filter(|&o| fail.iter().all(|f| keys[o].1.contains(f)))
        .max_by_key(|&o| (keys[o].1.len(), std::cmp::Reverse(o)))
}

impl Route {
    fn new(members: Vec<String>, jails: &[Jail]) -> Route {
        let classes = classes_of(&members, jails);
        let prefilter = (classes.len() > 1).then(|| {
            let filters: Vec<_> = classes
                .iter()
                .map(|c| jails[c.filter_of].filter())
                .collect();
            SharedPrefilter::new(&filters)
        });
        Route {
            members,
            classes,
            prefilter,
        }
    }
}

impl LineRoutes {
    /// Lines of `reader` go to `members` (jail names; `except` positions
    /// refer to this list).
    pub fn set(&mut self, reader: ReaderId, members: Vec<String>, jails: &[Jail]) {
        self.routes.insert(reader, Route::new(members, jails));
    }

    pub fn remove(&mut self, reader: ReaderId) {
        self.routes.remove(&reader);
    }

    /// The jails changed (a reload): match classes again.
    pub(super) fn rebuild(&mut self, jails: &[Jail]) {
        for route in self.routes.values_mut() {
            *route = Route::new(std::mem::take(&mut route.members), jails);
        }
    }

    /// How `reader`'s lines are matched: for each class, its jails' names
    /// (tests and status of the grouping).
    pub fn classes(&self, reader: ReaderId) -> Vec<Vec<String>> {
        self.routes
            .get(&reader)
            .map(|r| {
                r.classes
                    .iter()
                    .map(|c| c.jails.iter().map(|j| j.2.to_string()).collect())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Agent {
    /// Lines of `reader` go to the jails `members`, in that order.
    pub fn set_route(&mut self, reader: ReaderId, members: Vec<String>) {
        self.routes.set(reader, members, &self.jails.list);
    }

    /// A stopped reader: its lines still queued are dropped.
    pub fn remove_route(&mut self, reader: ReaderId) {
        self.routes.remove(reader);
    }

    /// [`on_reader_lines`](Self::on_reader_lines) without the batch around
    /// it: for a caller that batches several calls.
    pub fn feed_reader_lines(&mut self, lines: &[ReaderLine]) -> Vec<SystemTime> {
        let mut routes = std::mem::take(&mut self.routes);
        let mut read_at = Vec::new();
        for l in lines {
            if let Some(route) = routes.routes.get(&l.reader) {
                let scratch = (&mut routes.admitted, &mut routes.found);
                self.route_line(route, scratch, l, &mut read_at);
            }
        }
        self.routes = routes;
        read_at
    }

    /// Class `c`'s match of `line`, made once per line (and decided by
    /// the line's connection, in the state of the jail that matched).
    fn class_match<'f>(
        &mut self,
        route: &Route,
        c: usize,
        line: &SourceLine,
        screened: bool,
        found: &'f mut [Option<ClassMatch>],
    ) -> &'f ClassMatch {
        if found[c].is_none() {
            let jail = &mut self.jails.list[route.classes[c].filter_of];
            let raw = if jail.filter().max_lines() > 1 {
                jail.match_lines(&line.text, line.read_at, line.time)
            } else {
                jail.filter()
                    .match_entry(&line.text, line.read_at, screened, line.time)
            };
            let matched = !matches!(raw, LineMatch::NoMatch { .. });
            let found_now = jail.resolve_connection(raw, line.read_at);
            found[c] = Some(ClassMatch {
                matched,
                found: found_now,
            });
        }
        found[c].as_ref().expect("set above")
    }

    fn route_line(
        &mut self,
        route: &Route,
        (admitted, found): (&mut Vec<bool>, &mut Vec<Option<ClassMatch>>),
        l: &ReaderLine,
        read_at: &mut Vec<SystemTime>,
    ) {
        let line = &l.line;
        let screened = match &route.prefilter {
            Some(p) => {
                p.admit(&line.text, admitted);
                true
            }
            None => false,
        };
        found.clear();
        found.resize(route.classes.len(), None);
        for (c, class) in route.classes.iter().enumerate() {
            let members = class.jails.iter().filter(|j| !l.except.contains(&j.0));
            // Turned away by the prefilter, or by a class whose regexes
            // include all of this one's and found no failure.
            let cannot_match = (screened && !admitted[c])
                || class.within.is_some_and(|o| {
                    (screened && !admitted[o])
                        || !self.class_match(route, o, line, screened, found).matched
                });
            if cannot_match {
                for &(_, idx, _) in members {
                    self.jails.list[idx].take_unmatched();
                }
                continue;
            }
            let found = &self.class_match(route, c, line, screened, found).found;
            // Asked only for failures, by each jail: the clock read once.
            let now = match found {
                LineMatch::Failure(_) => now_secs(),
                _ => 0,
            };
            // Copied once for the jails that keep it; the host's
            // addresses read once for the jails that check them.
            let matched = MatchedLine::new(&line.text);
            let seen = crate::guard::HostSeen::default();
            for (_, idx, name) in members {
                let verdict = {
                    let (book, staged) = (&self.bans.book, &self.bans.staged);
                    let banned = |addr: IpAddr| {
                        let t = Target::host(addr);
                        book.has_active(&t, name, now) || staged.contains(&t, name)
                    };
                    self.jails.list[*idx].take_match(
                        found,
                        &matched,
                        line.read_at,
                        line.time,
                        &banned,
                        &seen,
                    )
                };
                match self.take_verdict(*idx, verdict) {
                    Ok(Some(_)) => read_at.push(line.read_at),
                    Ok(None) => {}
                    Err(e) => tracing::error!("jail {name}: {e:#}"),
                }
            }
        }
    }

    /// Act on what jail `idx` made of a line: ban when it asks.
    pub(super) fn take_verdict(
        &mut self,
        idx: usize,
        verdict: JailVerdict,
    ) -> Result<Option<BanRecord>> {
        let name = || self.jails.list[idx].name();
        match verdict {
            JailVerdict::Ban(req) => self.ban_from_jail(req),
            JailVerdict::AlreadyBanned(addr) => {
                tracing::debug!(jail = %name(), %addr, "failure by an address the jail has banned already: not counted");
                Ok(None)
            }
            JailVerdict::Failure(addr) => {
                tracing::debug!(jail = %name(), %addr, "failure");
                Ok(None)
            }
            JailVerdict::Ignored(addr) => {
                tracing::debug!(jail = %name(), %addr, "failure by an ignored address");
                Ok(None)
            }
            JailVerdict::Nothing => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::config::Config;
    use crate::enforce::DryRunEnforcer;
    use crate::store::BanStore;

    /// a and b: the same sshd filter, other maxretry; c: sshd in ddos mode;
    /// d: a filter of its own; e: d's filter, on no route.
    const JAILS: &str = "\
        [jails.a]\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretry = 2\n\
        [jails.b]\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretry = 3\n\
        [jails.c]\nfilter = \"sshd\"\nmode = \"ddos\"\nlogpath = [\"/l\"]\nmaxretry = 2\n\
        [jails.d]\nlogpath = [\"/l\"]\nfailregex = ['^web fail from <HOST>$']\nmaxretry = 2\n\
        [jails.e]\nlogpath = [\"/m\"]\nfailregex = ['^web fail from <HOST>$']\n";

    fn config(jails: &str, dir: &tempfile::TempDir) -> crate::config::ResolvedConfig {
        let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[defaults]\nignoreself = false\nbantime = \"10m\"\nfindtime = \"10m\"\n{jails}",
            dir.path().join("none").display()
        );
        Config::parse(&text).unwrap().validate().unwrap()
    }

    fn core(jails: &str) -> (Agent, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(jails, &dir);
        let store = BanStore::open(dir.path()).unwrap();
        let core = Agent::new(&cfg, store, Box::new(DryRunEnforcer::default()), &[]).unwrap();
        (core, dir)
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn line(text: &str) -> SourceLine {
        SourceLine {
            origin: Arc::from("/l"),
            text: text.to_string(),
            read_at: SystemTime::now(),
            time: Some(SystemTime::now()),
            end: Default::default(),
        }
    }

    /// `lines` as reader 1 delivers them, no jail excepted.
    fn routed(lines: &[SourceLine]) -> Vec<ReaderLine> {
        lines
            .iter()
            .map(|l| ReaderLine {
                reader: 1,
                line: l.clone(),
                except: Vec::new(),
            })
            .collect()
    }

    fn ssh_fail(addr: &str) -> String {
        format!("Jan  2 03:04:05 host sshd[12]: Failed password for root from {addr} port 22 ssh2")
    }

    fn lines_of(core: &Agent, jail: &str) -> u64 {
        core.jails.find(jail).unwrap().counters.lines
    }

    fn banned(core: &Agent, addr: &str, jail: &str) -> bool {
        let t = Target::host(addr.parse().unwrap());
        core.bans.book.has_active(&t, jail, now_secs())
    }

    #[test]
    fn jails_with_the_same_filter_share_a_match_class() {
        let (mut core, _dir) = core(JAILS);
        core.set_route(1, names(&["a", "b", "c", "d", "gone"]));
        assert_eq!(
            core.routes.classes(1),
            [names(&["a", "b"]), names(&["c"]), names(&["d"])]
        );
        // One class: no shared prefilter, the filter's own does the work.
        core.set_route(2, names(&["a", "b"]));
        assert!(core.routes.routes[&2].prefilter.is_none());
        assert!(core.routes.routes[&1].prefilter.is_some());
        core.remove_route(2);
        assert!(core.routes.classes(2).is_empty());
    }

    #[test]
    fn each_jail_of_a_route_counts_every_line_and_bans_at_its_own_maxretry() {
        let (mut core, _dir) = core(JAILS);
        core.set_route(1, names(&["a", "b", "c", "d"]));
        let x = "203.0.113.7";
        let y = "203.0.113.8";
        let feed = |core: &mut Agent, texts: &[String]| {
            let lines: Vec<SourceLine> = texts.iter().map(|t| line(t)).collect();
            core.on_reader_lines(&routed(&lines)).len()
        };
        let bans = feed(
            &mut core,
            &[
                ssh_fail(x),
                "Jan  2 03:04:06 host cron[1]: (root) CMD (true)".into(),
                ssh_fail(x),
                format!("web fail from {y}"),
            ],
        );
        assert_eq!(bans, 2, "a and c at their second failure");
        assert!(banned(&core, x, "a") && banned(&core, x, "c"));
        assert!(!banned(&core, x, "b"), "b needs 3");
        assert!(!banned(&core, y, "d"));
        let bans = feed(&mut core, &[ssh_fail(x), format!("web fail from {y}")]);
        assert_eq!(bans, 2, "b at its third, d at its second");
        assert!(banned(&core, x, "b") && banned(&core, y, "d"));
        for j in ["a", "b", "c", "d"] {
            assert_eq!(lines_of(&core, j), 6, "jail {j} saw every line");
        }
        assert_eq!(lines_of(&core, "e"), 0, "e is on no route");
        let a = &core.jails.find("a").unwrap().counters;
        assert_eq!(
            (a.matched, a.failures_total, a.failures_while_banned),
            (3, 2, 1)
        );
        let d = &core.jails.find("d").unwrap().counters;
        assert_eq!((d.matched, d.bans_total), (2, 1));
    }

    #[test]
    fn a_line_is_not_for_the_jails_it_excepts() {
        let (mut core, _dir) = core(JAILS);
        core.set_route(1, names(&["a", "b"]));
        let l = ReaderLine {
            reader: 1,
            line: line(&ssh_fail("203.0.113.7")),
            except: vec![1],
        };
        core.on_reader_lines(&[l.clone(), l]);
        assert!(banned(&core, "203.0.113.7", "a"));
        assert_eq!(lines_of(&core, "b"), 0);
        assert_eq!(core.jails.find("b").unwrap().counters.failures_total, 0);
        // A reader with no route (stopped): its lines are dropped.
        let stray = ReaderLine {
            reader: 9,
            line: line(&ssh_fail("203.0.113.9")),
            except: Vec::new(),
        };
        core.on_reader_lines(&[stray]);
        assert_eq!(lines_of(&core, "a"), 2);
    }

    /// The built-in sshd filter's sample lines.
    fn sshd_samples() -> Vec<String> {
        let sample =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/samples/sshd.log");
        std::fs::read_to_string(sample)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    /// The same lines, given per jail ([`Agent::on_lines`], each jail
    /// matching alone) and through one route: the same counters and bans.
    #[test]
    fn a_route_counts_and_bans_as_jails_reading_alone_do() {
        let (mut alone, _d1) = core(JAILS);
        let (mut shared, _d2) = core(JAILS);
        shared.set_route(1, names(&["a", "b", "c", "d"]));
        let mut texts = sshd_samples();
        for i in 0..20 {
            texts.push(format!("web fail from 203.0.113.{}", i % 4));
            texts.push(ssh_fail(&format!("198.18.0.{}", i % 3)));
        }
        let lines: Vec<SourceLine> = texts.iter().map(|t| line(t)).collect();
        for chunk in lines.chunks(7) {
            let per_jail: Vec<(Arc<str>, SourceLine)> = chunk
                .iter()
                .flat_map(|l| ["a", "b", "c", "d"].map(|j| (Arc::from(j), l.clone())))
                .collect();
            let a = alone.on_lines(&per_jail).len();
            assert_eq!(shared.on_reader_lines(&routed(chunk)).len(), a);
        }
        for j in ["a", "b", "c", "d"] {
            let (x, y) = (alone.jails.find(j).unwrap(), shared.jails.find(j).unwrap());
            assert_eq!(x.counters, y.counters, "jail {j}");
            assert!(x.counters.bans_total > 0, "jail {j} banned something");
        }
    }

    /// A filter is within another only with the same prefregex and
    /// datepattern: those decide which text the failregexes see.
    #[test]
    fn within_needs_the_same_prefregex_and_datepattern() {
        use crate::filter::time::DateCut;
        let key_cut = |pref: Option<&str>, fail: &[&str], date: Option<&str>, cut| -> FilterKey {
            (
                pref.map(String::from),
                fail.iter().map(|f| f.to_string()).collect(),
                Vec::new(),
                (date.map(String::from), cut),
            )
        };
        let key = |pref, fail, date| key_cut(pref, fail, date, DateCut::Leading);
        let big = key(None, &["a", "b"], None);
        assert_eq!(within(&[key(None, &["a"], None), big.clone()], 0), Some(1));
        assert_eq!(
            within(&[key(Some("^p"), &["a"], None), big.clone()], 0),
            None
        );
        assert_eq!(
            within(&[key(None, &["a"], Some("%s")), big.clone()], 0),
            None
        );
        assert_eq!(
            within(
                &[key_cut(None, &["a"], None, DateCut::Anywhere), big.clone()],
                0
            ),
            None
        );
        assert_eq!(within(&[key(None, &["c"], None), big], 0), None);
    }

    /// sshd's normal and ddos modes have their failregexes within
    /// aggressive's: they are not matched on a line aggressive finds no
    /// failure in, and every jail still counts as when reading alone.
    #[test]
    fn a_class_within_another_counts_as_when_matched_alone() {
        let jails = format!(
            "{JAILS}[jails.f]\nfilter = \"sshd\"\nmode = \"aggressive\"\nlogpath = [\"/l\"]\nmaxretry = 4\n"
        );
        let (mut alone, _d1) = core(&jails);
        let (mut shared, _d2) = core(&jails);
        let members = ["a", "c", "f", "d"];
        shared.set_route(1, names(&members));
        let within: Vec<Option<usize>> = shared.routes.routes[&1]
            .classes
            .iter()
            .map(|c| c.within)
            .collect();
        assert_eq!(within, [Some(2), Some(2), None, None], "a and c within f");
        let mut texts = sshd_samples();
        for i in 0..10 {
            texts.push(ssh_fail(&format!("198.18.0.{}", i % 3)));
            texts.push(format!("web fail from 203.0.113.{}", i % 4));
        }
        let lines: Vec<SourceLine> = texts.iter().map(|t| line(t)).collect();
        let per_jail: Vec<(Arc<str>, SourceLine)> = lines
            .iter()
            .flat_map(|l| members.map(|j| (Arc::from(j), l.clone())))
            .collect();
        assert_eq!(
            shared.on_reader_lines(&routed(&lines)).len(),
            alone.on_lines(&per_jail).len()
        );
        for j in members {
            let (x, y) = (alone.jails.find(j).unwrap(), shared.jails.find(j).unwrap());
            assert_eq!(x.counters, y.counters, "jail {j}");
            assert!(x.counters.matched > 0, "jail {j} matched something");
        }
        let (a, f) = (
            &shared.jails.find("a").unwrap().counters,
            &shared.jails.find("f").unwrap().counters,
        );
        assert!(f.matched > a.matched, "aggressive matches more than normal");
    }

    #[test]
    fn a_reload_keeps_routing_to_the_jails_that_remain() {
        let (mut core, dir) = core(JAILS);
        core.set_route(1, names(&["a", "b", "d"]));
        // b removed: its lines stop, a's go on with the counters kept.
        let without_b = JAILS.replace(
            "[jails.b]\nfilter = \"sshd\"\nlogpath = [\"/l\"]\nmaxretry = 3\n",
            "",
        );
        core.on_reader_lines(&[ReaderLine {
            reader: 1,
            line: line(&ssh_fail("203.0.113.7")),
            except: Vec::new(),
        }]);
        core.reload(&config(&without_b, &dir)).unwrap();
        assert_eq!(core.routes.classes(1), [names(&["a"]), names(&["d"])]);
        core.on_reader_lines(&[ReaderLine {
            reader: 1,
            line: line(&ssh_fail("203.0.113.7")),
            except: Vec::new(),
        }]);
        assert_eq!(lines_of(&core, "a"), 2);
        assert!(banned(&core, "203.0.113.7", "a"), "a's window was kept");
    }
}
