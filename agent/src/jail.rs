//! A jail: one filter over one source, counting failures per address in a
//! window (`findtime`) and asking for a ban at `maxretry`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::addr::{canonical_ip, Target};
use crate::ban::BanClass;
use crate::config::{BanTime, JailSettings};
use crate::filter::{FilterSet, Host, LineMatch, TimeFound, UseDns};

/// Matched lines kept per failure are cut to this, so a hostile log line
/// cannot make the window hold megabytes per address.
const MAX_KEPT_LINE: usize = 512;

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Failures per address within `findtime`, in log time.
#[derive(Debug)]
pub struct JailWindow {
    findtime_ms: i64,
    maxretry: u32,
    failures: HashMap<IpAddr, VecDeque<(i64, String)>>,
}

impl JailWindow {
    pub fn new(findtime: Duration, maxretry: u32) -> Self {
        JailWindow {
            findtime_ms: findtime.as_millis() as i64,
            maxretry,
            failures: HashMap::new(),
        }
    }

    /// Count one failure at `at` (log time). Returns the failures' lines when
    /// this one reaches `maxretry`, and forgets them: the ban takes over.
    pub fn record(&mut self, addr: IpAddr, at: SystemTime, line: &str) -> Option<Vec<String>> {
        let at = millis(at);
        // Most addresses fail once or twice: room for one, not the four a
        // first push reserves (a million failing addresses, ~100 MB).
        let q = self
            .failures
            .entry(addr)
            .or_insert_with(|| VecDeque::with_capacity(1));
        let kept = match line.char_indices().nth(MAX_KEPT_LINE) {
            Some((cut, _)) => line[..cut].to_string(),
            None => line.to_string(),
        };
        q.push_back((at, kept));
        // Failures older than findtime before this one no longer count.
        // Lines may arrive slightly out of order (several files): compare
        // against the newest time seen, not just the front.
        let newest = q.iter().map(|(t, _)| *t).max().unwrap_or(at);
        q.retain(|(t, _)| newest - *t <= self.findtime_ms);
        if q.len() >= self.maxretry as usize {
            let lines = self
                .failures
                .remove(&addr)
                .map(|q| q.into_iter().map(|(_, l)| l).collect())
                .unwrap_or_default();
            return Some(lines);
        }
        None
    }

    /// Drop addresses whose newest failure left the window before `now`.
    pub fn prune(&mut self, now: SystemTime) {
        let now = millis(now);
        let findtime = self.findtime_ms;
        self.failures
            .retain(|_, q| q.back().is_some_and(|(t, _)| now - *t <= findtime));
    }

    pub fn forget(&mut self, addr: &IpAddr) {
        self.failures.remove(addr);
    }

    /// Addresses failing now, with their failure counts.
    pub fn failing(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.failures.iter().map(|(a, q)| (*a, q.len()))
    }

    pub fn failing_count(&self) -> usize {
        self.failures.len()
    }
}

/// What a jail wants after reading a line.
#[derive(Debug, PartialEq)]
pub enum JailVerdict {
    Nothing,
    /// A failure counted (not yet a ban).
    Failure(IpAddr),
    /// A failure by an ignored address (ignoreip / self).
    Ignored(IpAddr),
    Ban(BanRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BanRequest {
    pub addr: IpAddr,
    /// Log time of the failure that reached maxretry.
    pub at: SystemTime,
    pub jail: String,
    pub class: BanClass,
    pub bantime: BanTime,
    pub failures: u32,
    pub matches: Vec<String>,
}

/// Running counters of a jail.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct JailCounters {
    pub lines: u64,
    pub matched: u64,
    pub ignored_lines: u64,
    pub failures_total: u64,
    pub ignored_addresses: u64,
    pub bans_total: u64,
    pub lines_without_time: u64,
    pub hostnames_skipped: u64,
}

pub struct Jail {
    pub settings: JailSettings,
    filter: FilterSet,
    pub window: JailWindow,
    /// ignoreip of the jail plus, with ignoreself, this machine's addresses.
    ignore: Vec<Target>,
    /// The current addresses of the host names in ignoreip ([`crate::dns`]).
    ignore_resolved: Vec<Target>,
    pub counters: JailCounters,
}

impl Jail {
    pub fn new(
        settings: JailSettings,
        self_addrs: &[Target],
    ) -> Result<Jail, crate::filter::FilterError> {
        let filter = FilterSet::from_def(&settings.filter, settings.mode.as_deref())?;
        let mut ignore = settings.ignoreip.clone();
        if settings.ignoreself {
            ignore.extend_from_slice(self_addrs);
        }
        Ok(Jail {
            window: JailWindow::new(settings.findtime, settings.maxretry),
            settings,
            filter,
            ignore,
            ignore_resolved: Vec::new(),
            counters: JailCounters::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn is_ignored(&self, addr: IpAddr) -> bool {
        self.ignore
            .iter()
            .chain(&self.ignore_resolved)
            .any(|t| t.contains(addr))
    }

    /// The addresses the jail's ignoreip names resolve to now.
    pub fn set_resolved_ignore(&mut self, targets: Vec<Target>) {
        self.ignore_resolved = targets;
    }

    /// Read one line. `read_at` is when it was read; the line's own
    /// timestamp, when it has one, is the failure's time.
    pub fn process(
        &mut self,
        text: &str,
        read_at: SystemTime,
        known_time: Option<SystemTime>,
    ) -> JailVerdict {
        self.counters.lines += 1;
        let failure = match self.filter.match_line(text, read_at) {
            LineMatch::NoMatch { .. } => return JailVerdict::Nothing,
            LineMatch::Ignored { .. } => {
                self.counters.ignored_lines += 1;
                return JailVerdict::Nothing;
            }
            LineMatch::Failure(f) => f,
        };
        self.counters.matched += 1;
        let at = match (known_time, &failure.time) {
            (Some(t), _) => t,
            (None, TimeFound::Parsed(t)) => *t,
            (None, TimeFound::Missing) => {
                self.counters.lines_without_time += 1;
                read_at
            }
        };
        let addr = match failure.host {
            Host::Addr(a) => canonical_ip(a),
            Host::Name(name) => match self.resolve(&name) {
                Some(a) => a,
                None => return JailVerdict::Nothing,
            },
        };
        if self.is_ignored(addr) {
            self.counters.ignored_addresses += 1;
            return JailVerdict::Ignored(addr);
        }
        self.counters.failures_total += 1;
        match self.window.record(addr, at, text) {
            None => JailVerdict::Failure(addr),
            Some(matches) => {
                self.counters.bans_total += 1;
                JailVerdict::Ban(BanRequest {
                    addr,
                    at,
                    jail: self.settings.name.clone(),
                    class: self.settings.class,
                    bantime: self.settings.bantime,
                    failures: matches.len() as u32,
                    matches,
                })
            }
        }
    }

    /// A hostname in `<HOST>`: only resolved when the jail says usedns = yes,
    /// since whoever controls that name's DNS would choose whom we ban.
    fn resolve(&mut self, name: &str) -> Option<IpAddr> {
        match self.settings.usedns {
            UseDns::Yes => {
                use std::net::ToSocketAddrs;
                let addr = (name, 0).to_socket_addrs().ok()?.next()?.ip();
                Some(canonical_ip(addr))
            }
            UseDns::Warn => {
                self.counters.hostnames_skipped += 1;
                tracing::warn!(jail = %self.settings.name, host = name, "hostname in a failure line skipped (usedns = \"warn\"; set usedns = \"yes\" to resolve it)");
                None
            }
            UseDns::No => {
                self.counters.hostnames_skipped += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn bans_at_maxretry_within_findtime() {
        let mut w = JailWindow::new(Duration::from_secs(60), 3);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(w.record(a, t(1000), "one").is_none());
        assert!(w.record(a, t(1030), "two").is_none());
        let lines = w.record(a, t(1059), "three").unwrap();
        assert_eq!(lines, vec!["one", "two", "three"]);
        // Counting starts over after a ban.
        assert_eq!(w.failing_count(), 0);
    }

    #[test]
    fn failures_outside_findtime_do_not_count() {
        let mut w = JailWindow::new(Duration::from_secs(60), 3);
        let a: IpAddr = "2001:db8::7".parse().unwrap();
        assert!(w.record(a, t(1000), "1").is_none());
        assert!(w.record(a, t(1050), "2").is_none());
        // 1000 is more than 60 s before 1061: only two failures in the window.
        assert!(w.record(a, t(1061), "3").is_none());
        assert_eq!(w.failing().next(), Some((a, 2)));
        assert!(w.record(a, t(1070), "4").is_some());
    }

    #[test]
    fn addresses_are_counted_separately_and_pruned() {
        let mut w = JailWindow::new(Duration::from_secs(60), 2);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        assert!(w.record(a, t(1000), "a").is_none());
        assert!(w.record(b, t(1000), "b").is_none());
        assert_eq!(w.failing_count(), 2);
        w.prune(t(1061));
        assert_eq!(w.failing_count(), 0);
        assert!(w.record(a, t(1100), "a").is_none());
    }

    #[test]
    fn kept_lines_are_bounded() {
        let mut w = JailWindow::new(Duration::from_secs(60), 1);
        let long = "é".repeat(10_000);
        let lines = w
            .record("203.0.113.1".parse().unwrap(), t(1), &long)
            .unwrap();
        assert_eq!(lines[0].chars().count(), MAX_KEPT_LINE);
    }
}
