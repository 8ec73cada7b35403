//! A jail: one filter over one source, counting failures per address in a
//! window (`findtime`) and asking for a ban at `maxretry`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::addr::{canonical_ip, Target};
use crate::ban::BanClass;
use crate::config::JailSettings;
use crate::filter::{FilterSet, Host, LineMatch, TimeFound, UseDns};
use crate::units::BanTime;

/// Matched lines kept per failure are cut to this, so a hostile log line
/// cannot make the window hold megabytes per address.
const MAX_KEPT_LINE: usize = 512;

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Failures per address within `findtime`, in log time, for at most
/// `max_tracked` addresses.
///
/// At the cap, the address to forget is the oldest one with a single
/// failure; only when there is none, the least recently failing one. So a
/// flood of one-time (spoofed, random) addresses churns among themselves
/// and an address failing repeatedly keeps its count.
#[derive(Debug)]
pub struct JailWindow {
    findtime_ms: i64,
    maxretry: u32,
    max_tracked: usize,
    failures: HashMap<IpAddr, Tracked>,
    /// Eviction order, oldest first: `(seq, addr)` of addresses with one
    /// failure, and of those with more. An entry whose address has been
    /// touched since (another `seq`) is stale and skipped.
    singles: VecDeque<(u64, IpAddr)>,
    repeats: VecDeque<(u64, IpAddr)>,
    next_seq: u64,
    /// Addresses forgotten at the cap since the last `take_evictions`.
    evicted: u64,
}

#[derive(Debug)]
struct Tracked {
    seq: u64,
    failures: VecDeque<(i64, String)>,
}

impl JailWindow {
    pub fn new(findtime: Duration, maxretry: u32) -> Self {
        JailWindow {
            findtime_ms: findtime.as_millis() as i64,
            maxretry,
            max_tracked: crate::config::DEFAULT_MAX_TRACKED,
            failures: HashMap::new(),
            singles: VecDeque::new(),
            repeats: VecDeque::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Cap the addresses tracked at once (evicting down to it now).
    pub fn set_max_tracked(&mut self, max: usize) {
        self.max_tracked = max.max(1);
        while self.failures.len() > self.max_tracked {
            if !self.evict_one() {
                break;
            }
        }
    }

    /// Evictions since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Forget the address that matters least (see the type's doc).
    fn evict_one(&mut self) -> bool {
        for queue in [&mut self.singles, &mut self.repeats] {
            while let Some((seq, addr)) = queue.pop_front() {
                if self.failures.get(&addr).is_some_and(|t| t.seq == seq) {
                    self.failures.remove(&addr);
                    self.evicted += 1;
                    return true;
                }
            }
        }
        false
    }

    /// Drop stale queue entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.singles.len() + self.repeats.len() <= 2 * self.failures.len() + 64 {
            return;
        }
        let mut live: Vec<(u64, IpAddr, bool)> = self
            .failures
            .iter()
            .map(|(a, t)| (t.seq, *a, t.failures.len() == 1))
            .collect();
        live.sort_unstable_by_key(|(seq, _, _)| *seq);
        self.singles = live.iter().filter(|l| l.2).map(|l| (l.0, l.1)).collect();
        self.repeats = live.iter().filter(|l| !l.2).map(|l| (l.0, l.1)).collect();
    }

    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }

    /// Count one failure at `at` (log time). Returns the failures' lines when
    /// this one reaches `maxretry`, and forgets them: the ban takes over.
    pub fn record(&mut self, addr: IpAddr, at: SystemTime, line: &str) -> Option<Vec<String>> {
        let at = millis(at);
        // At the cap only: the common case looks the address up once.
        if self.failures.len() >= self.max_tracked && !self.failures.contains_key(&addr) {
            self.evict_one();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        // Most addresses fail once or twice: room for one, not the four a
        // first push reserves (a million failing addresses, ~100 MB).
        let tracked = self.failures.entry(addr).or_insert_with(|| Tracked {
            seq,
            failures: VecDeque::with_capacity(1),
        });
        tracked.seq = seq;
        let q = &mut tracked.failures;
        // A line of at most MAX_KEPT_LINE bytes has at most as many
        // characters: no need to count them.
        let cut = match line.len() > MAX_KEPT_LINE {
            true => line.char_indices().nth(MAX_KEPT_LINE).map(|(cut, _)| cut),
            false => None,
        };
        let kept = line[..cut.unwrap_or(line.len())].to_string();
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
                .map(|t| t.failures.into_iter().map(|(_, l)| l).collect())
                .unwrap_or_default();
            return Some(lines);
        }
        if q.len() == 1 {
            self.singles.push_back((seq, addr));
        } else {
            self.repeats.push_back((seq, addr));
        }
        self.compact();
        None
    }

    /// Drop addresses whose newest failure left the window before `now`.
    pub fn prune(&mut self, now: SystemTime) {
        let now = millis(now);
        let findtime = self.findtime_ms;
        self.failures.retain(|_, t| {
            t.failures
                .iter()
                .map(|(t, _)| *t)
                .max()
                .is_some_and(|t| now - t <= findtime)
        });
        self.compact();
    }

    pub fn forget(&mut self, addr: &IpAddr) {
        self.failures.remove(addr);
    }

    /// Addresses failing now, with their failure counts.
    pub fn failing(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.failures.iter().map(|(a, t)| (*a, t.failures.len()))
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
    /// A failure by an address this jail has banned already: not counted,
    /// so a burst (or a re-read) cannot turn one offence into several bans.
    AlreadyBanned(IpAddr),
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

/// Running counters of a jail; `status` shows them as they are (their field
/// names are the wire format), and the CLI reads them back.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JailCounters {
    pub lines: u64,
    pub matched: u64,
    pub ignored_lines: u64,
    pub failures_total: u64,
    pub ignored_addresses: u64,
    pub bans_total: u64,
    pub lines_without_time: u64,
    pub hostnames_skipped: u64,
    /// Failures by addresses the jail had banned already (not counted).
    pub failures_while_banned: u64,
    /// Addresses forgotten because the jail tracked `max_tracked` already.
    pub window_evictions: u64,
    /// Searches of the filter's look-around / back-reference regexes that
    /// gave up at the backtrack limit (each counted as no match). Jails
    /// with the same filter share one match: the jail that ran it counts.
    pub backtrack_limit_hits: u64,
}

pub struct Jail {
    pub settings: JailSettings,
    filter: FilterSet,
    pub window: JailWindow,
    /// ignoreip of the jail.
    ignore: Vec<Target>,
    /// This machine's addresses now, ignored with `ignoreself`.
    host: crate::guard::HostAddrs,
    /// The current addresses of the host names in ignoreip ([`crate::dns`]).
    ignore_resolved: Vec<Target>,
    pub counters: JailCounters,
    /// Warnings caused by log content, rate-limited (a flood of lines with
    /// hostnames would otherwise log one warning each).
    warnings: crate::ratelimit::WarnLimiter,
}

impl Jail {
    /// A jail whose `ignoreself` means `self_addrs` (and loopback).
    pub fn new(
        settings: JailSettings,
        self_addrs: &[Target],
    ) -> Result<Jail, crate::filter::FilterError> {
        Jail::with_host(
            settings,
            crate::guard::HostAddrs::fixed(self_addrs.to_vec()),
        )
    }

    /// A jail whose `ignoreself` follows `host` (the live view in the agent).
    pub fn with_host(
        settings: JailSettings,
        host: crate::guard::HostAddrs,
    ) -> Result<Jail, crate::filter::FilterError> {
        let filter = FilterSet::from_def(&settings.filter, settings.mode.as_deref())?;
        let mut window = JailWindow::new(settings.findtime, settings.maxretry);
        window.set_max_tracked(settings.max_tracked);
        Ok(Jail {
            window,
            ignore: settings.ignoreip.clone(),
            settings,
            filter,
            host,
            ignore_resolved: Vec::new(),
            counters: JailCounters::default(),
            warnings: crate::ratelimit::WarnLimiter::default(),
        })
    }

    /// The jail's own ignoreip (the guard checks its bans against it too).
    pub fn ignoreip(&self) -> Vec<Target> {
        self.ignore
            .iter()
            .chain(&self.ignore_resolved)
            .copied()
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Logs the summaries of rate-limited warnings whose minute is over;
    /// run periodically. Returns how many were logged.
    pub fn flush_warnings(&mut self) -> usize {
        let done = self.warnings.flush(std::time::Instant::now());
        for s in &done {
            tracing::warn!(jail = %self.settings.name, warning = %s.key, suppressed = s.suppressed,
                "{} more warnings like this were not logged in the last {} s", s.suppressed, s.over.as_secs());
        }
        done.len()
    }

    /// Warnings rate-limited away so far.
    pub fn warnings_suppressed(&self) -> u64 {
        self.warnings.suppressed_total
    }

    pub fn is_ignored(&self, addr: IpAddr) -> bool {
        self.ignore
            .iter()
            .chain(&self.ignore_resolved)
            .any(|t| t.contains(addr))
            || (self.settings.ignoreself && self.host.contains(addr))
    }

    /// The addresses the jail's ignoreip names resolve to now.
    pub fn set_resolved_ignore(&mut self, targets: Vec<Target>) {
        self.ignore_resolved = targets;
    }

    /// Read one line. `read_at` is when it was read; the line's own
    /// timestamp, when it has one, is the failure's time. (The agent
    /// matches once per filter and hands the match to each jail,
    /// [`take_match`](Self::take_match); this is the one-jail way, for tests.)
    #[cfg(test)]
    pub fn process(
        &mut self,
        text: &str,
        read_at: SystemTime,
        known_time: Option<SystemTime>,
    ) -> JailVerdict {
        self.process_with(text, read_at, known_time, &|_| false)
    }

    /// [`process`](Self::process), where `banned(addr)` says whether this
    /// jail has banned `addr` already: its failures then do not count.
    #[cfg(test)]
    pub fn process_with(
        &mut self,
        text: &str,
        read_at: SystemTime,
        known_time: Option<SystemTime>,
        banned: &dyn Fn(IpAddr) -> bool,
    ) -> JailVerdict {
        let found = self.filter.match_line(text, read_at);
        self.take_match(&found, text, read_at, known_time, banned)
    }

    /// The jail's filter: jails with the same one share its match of a
    /// line ([`take_match`](Self::take_match)).
    pub fn filter(&self) -> &FilterSet {
        &self.filter
    }

    /// A line this jail's filter cannot match (a shared prefilter said
    /// so): counted, nothing else.
    pub fn take_unmatched(&mut self) {
        self.counters.lines += 1;
    }

    /// [`process_with`](Self::process_with) for a line already matched by
    /// this jail's filter, or by an identical one (`found`).
    pub fn take_match(
        &mut self,
        found: &LineMatch,
        text: &str,
        read_at: SystemTime,
        known_time: Option<SystemTime>,
        banned: &dyn Fn(IpAddr) -> bool,
    ) -> JailVerdict {
        self.counters.lines += 1;
        let failure = match found {
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
        let addr = match &failure.host {
            Host::Addr(a) => canonical_ip(*a),
            Host::Name(name) => match self.resolve(name) {
                Some(a) => a,
                None => return JailVerdict::Nothing,
            },
        };
        if self.is_ignored(addr) {
            self.counters.ignored_addresses += 1;
            return JailVerdict::Ignored(addr);
        }
        if banned(addr) {
            self.counters.failures_while_banned += 1;
            return JailVerdict::AlreadyBanned(addr);
        }
        self.counters.failures_total += 1;
        let verdict = self.window.record(addr, at, text);
        self.counters.window_evictions += self.window.take_evictions();
        match verdict {
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
                crate::warn_limited!(self.warnings, "hostname in a failure line skipped",
                    jail = %self.settings.name, host = name,
                    "hostname in a failure line skipped (usedns = \"warn\"; set usedns = \"yes\" to resolve it)");
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
mod tests;
