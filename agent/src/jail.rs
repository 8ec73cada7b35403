//! A jail: one filter over one source, counting failures per address in a
//! window (`findtime`) and asking for a ban at `maxretry`.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::addr::{canonical_ip, Target};
use crate::ban::BanClass;
use crate::config::JailSettings;
use crate::filter::conn::Connections;
use crate::filter::lines::LineBuffer;
use crate::filter::{FilterSet, Host, LineMatch, TimeFound, UseDns};
use crate::guard::HostSeen;
use crate::units::BanTime;

mod window;
pub(crate) use window::{JailWindow, MatchedLine};

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
    /// Connections (`<F-MLFID>`) pushed out of the full table by newer
    /// ones before they ended.
    pub connection_evictions: u64,
}

pub struct Jail {
    pub settings: JailSettings,
    filter: FilterSet,
    pub window: JailWindow,
    /// The connections its filter's lines belong to (`<F-MLFID>`); jails
    /// that share a match share the state of the one that matched.
    pub connections: Connections,
    /// The last lines, for a filter with `maxlines` above 1.
    pub lines: LineBuffer,
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
            connections: Connections::new(),
            lines: LineBuffer::new(),
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

    /// `addr` is in ignoreip (or its names' addresses), or is the host's
    /// own with ignoreself; `seen` holds the host's addresses once read.
    pub fn is_ignored(&self, addr: IpAddr, seen: &HostSeen) -> bool {
        self.ignore
            .iter()
            .chain(&self.ignore_resolved)
            .any(|t| t.contains(addr))
            || (self.settings.ignoreself && self.host.contains_seen(addr, seen))
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
        let found = self.lines.match_entry(&self.filter, text, read_at, None);
        let found = self.resolve_connection(found, read_at);
        let line = MatchedLine::new(text);
        self.take_match(
            &found,
            &line,
            read_at,
            known_time,
            banned,
            &HostSeen::default(),
        )
    }

    /// The jail's filter: jails with the same one share its match of a
    /// line ([`take_match`](Self::take_match)).
    pub fn filter(&self) -> &FilterSet {
        &self.filter
    }

    /// Its filter's match of a line through its [`LineBuffer`], for a
    /// filter with `maxlines` above 1.
    pub fn match_lines(
        &mut self,
        text: &str,
        read_at: SystemTime,
        entry_time: Option<SystemTime>,
    ) -> LineMatch {
        self.lines
            .match_entry(&self.filter, text, read_at, entry_time)
    }

    /// Its filter's match of a line read at `read_at`, decided by the
    /// line's connection when the filter tracks them.
    pub fn resolve_connection(&mut self, found: LineMatch, read_at: SystemTime) -> LineMatch {
        if !matches!(found, LineMatch::Connection(_)) {
            return found;
        }
        let found = self.connections.resolve(found, read_at);
        self.counters.connection_evictions += self.connections.take_evictions();
        found
    }

    /// A line this jail's filter cannot match (a shared prefilter said
    /// so): counted, nothing else.
    pub fn take_unmatched(&mut self) {
        self.counters.lines += 1;
    }

    /// [`process_with`](Self::process_with) for a line already matched by
    /// this jail's filter, or by an identical one (`found`). `line` is
    /// shared by the jails that count it: its copy is made once; so is
    /// the read of the host's addresses (`seen`).
    pub fn take_match(
        &mut self,
        found: &LineMatch,
        line: &MatchedLine,
        read_at: SystemTime,
        known_time: Option<SystemTime>,
        banned: &dyn Fn(IpAddr) -> bool,
        seen: &HostSeen,
    ) -> JailVerdict {
        self.counters.lines += 1;
        let failure = match found {
            // Decided by `resolve_connection` before it gets here.
            LineMatch::NoMatch { .. } | LineMatch::Connection(_) => return JailVerdict::Nothing,
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
        if self.is_ignored(addr, seen) {
            self.counters.ignored_addresses += 1;
            return JailVerdict::Ignored(addr);
        }
        if banned(addr) {
            self.counters.failures_while_banned += 1;
            return JailVerdict::AlreadyBanned(addr);
        }
        self.counters.failures_total += 1;
        let verdict = self.window.record(addr, at, line);
        self.counters.window_evictions += self.window.take_evictions();
        match verdict {
            None => JailVerdict::Failure(addr),
            Some(caught) => {
                self.counters.bans_total += 1;
                JailVerdict::Ban(BanRequest {
                    addr,
                    at,
                    jail: self.settings.name.clone(),
                    class: self.settings.class,
                    bantime: self.settings.bantime,
                    failures: caught.failures,
                    matches: caught.lines.iter().map(|l| l.to_string()).collect(),
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
