//! Failure detection: turns log lines into "address X failed at time T".
//!
//! A jail's filter is a list of *failregexes* (any match is a failure) and
//! *ignoreregexes* (a failure line that also matches one is dropped).
//! [`FilterSet::compile`] builds one matcher for the whole list:
//!
//! 1. the line's timestamp is found by a byte scanner ([`time`]); if it is
//!    the line's leading field it is cut off, so patterns see
//!    `host sshd[12]: Failed ...` whether the line came from a syslog file or
//!    (without timestamp and host) from the journal;
//! 2. an Aho-Corasick scan for literals every failregex requires rejects
//!    most uninteresting lines;
//! 3. when every failregex is anchored at the start of the text (`^`, as
//!    all built-in ones are), one lazy-DFA search of all of them at once,
//!    leftmost-first, gives the first failregex in list order that matches
//!    and the end of its match; only that failregex is then run for captures,
//!    on that span only, into slots on the stack: when its host and user
//!    groups are items of its top-level concatenation, by anchored lazy-DFA
//!    passes over its pieces ([`split`]), else (or when those decline) by a
//!    bounded backtracker. If its captured address does not validate, the
//!    general path below decides;
//! 4. otherwise a [`regex::RegexSet`] tells which failregexes match, and
//!    only those are run again for captures, in list order, and the first
//!    whose captured address survives validation wins;
//! 5. ignoreregexes are checked only for lines that produced a failure.
//!
//! # Tags in patterns
//!
//! * `<HOST>`: an IPv4 address, an IPv6 address in any textual form
//!   (compressed, embedded IPv4, `[bracketed]`, `%zone`), or a hostname.
//!   The hostname is returned as [`Host::Name`]; the caller resolves it or
//!   not according to [`UseDns`].
//! * `<ADDR>`: an address only, never a hostname. `<IP4>` / `<IP6>`: one
//!   family only.
//! * `<F-USER>...</F-USER>`: captures the user name matched by the enclosed
//!   sub-pattern. A lone `<F-USER>` (no closing tag before the next
//!   `<F-USER>`) means `(?P<user>\S+)`.
//! * Macros (xban's own, expanded before the tags above):
//!   * `<PREFIX>`: the optional syslog host field, `(?:[\w.@:-]+ )?`;
//!   * `<SSHD>`: `<PREFIX>` plus `sshd[pid]: ` (also `sshd-session`,
//!     `sshd-auth`, `[sshd]`), Solaris `[ID n auth.info] ` and an optional
//!     `error: `/`fatal: `;
//!   * `<APACHE_CLIENT>`: an Apache error-log head through
//!     `[client <HOST>(:port)] ` and an optional `AHnnnnn: `, for the log
//!     file and for `ErrorLog syslog`;
//!   * `<NGINX_ERROR>`: an nginx error-log head through `pid#tid: *conn `.
//!
//! Every captured address is parsed by `std`; a match whose capture is not a
//! real address (`999.1.1.1`, `05:28:31`) or is glued to neighbouring
//! characters (`1.2.3.4.5`, `1.2.3.4x`) is not a failure. `::ffff:a.b.c.d` is
//! reported as the IPv4 address.
//!
//! `\d`, `\w`, `\s` (and `\D`, `\W`, `\S`) and `\b` are ASCII-only in
//! xban patterns: the Unicode classes compile to automata many times larger
//! and a Unicode `\b` disables the DFA. Log formats are ASCII; `\pN` or
//! `\p{L}` are there for Unicode.
//!
//! Any other `<...>` text is literal (`from=<>`). fail2ban's other field
//! tags (`<F-NOFAIL>`, `<F-MLFID>`, ...), `<CIDR>`, `<SUBNET>`, `<DNS>`,
//! `<SKIPLINES>` and `%(name)s` interpolation are rejected with an error:
//! xban matches single lines and has no interpolation.

pub mod builtin;
pub mod host;
mod prefilter;
pub mod regex_tool;
pub mod shared;
mod split;
pub mod time;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use regex::RegexSet;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::{meta, Anchored, Input, PatternID};
use serde::{Deserialize, Serialize};

use self::host::HostKind;
use self::prefilter::Prefilter;
use self::split::SplitPlan;
use self::time::DatePattern;

/// Errors from compiling filters or loading filter files. Each message names
/// the place (regex index, file, mode) and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{place} has no <HOST> or <ADDR> tag: add one so xban knows whom to ban")]
    NoHostTag { place: String },
    #[error("{place} is not a valid regex: {reason}; fix the pattern (after tag expansion it reads: {expanded})")]
    BadRegex {
        place: String,
        expanded: String,
        reason: String,
    },
    #[error("{place}: bad tag {tag}: {fix}")]
    BadTag {
        place: String,
        tag: String,
        fix: String,
    },
    #[error("the filter has no failregex: add at least one pattern with <HOST> or <ADDR>")]
    NoFailregex,
    #[error("unknown mode {mode:?}: {}", known_modes_hint(.known))]
    UnknownMode { mode: String, known: Vec<String> },
    #[error("datepattern {pattern:?} is invalid: {reason}")]
    DatePattern { pattern: String, reason: String },
    #[error("cannot read {}: {source}; check that the path exists and is readable", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid filter file: {source}; fix the TOML (keys: failregex, ignoreregex, datepattern, modes, default_mode, description)", .path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<FilterError>,
    },
    #[error("--mode applies to named filters and .toml files, not to a literal regex: drop --mode or name a filter")]
    ModeOnRegex,
    #[error("{place}: {source}")]
    InMode {
        place: String,
        #[source]
        source: Box<FilterError>,
    },
}

fn known_modes_hint(known: &[String]) -> String {
    if known.is_empty() {
        "this filter has no modes; remove the mode setting".to_string()
    } else {
        format!("use one of {} or leave mode unset", known.join(", "))
    }
}

/// A failregex/ignoreregex list added by a named mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterMode {
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
}

/// A filter definition as written in config (`[filters.NAME]`) or a
/// built-in TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterDef {
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub datepattern: Option<String>,
    /// Named modes (e.g. sshd: normal, ddos, aggressive): each adds its
    /// failregex list to the base list.
    pub modes: BTreeMap<String, FilterMode>,
    pub default_mode: Option<String>,
    pub description: Option<String>,
}

/// Whether hostnames captured by `<HOST>` are resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UseDns {
    /// Resolve and ban the addresses.
    Yes,
    /// Resolve, ban, and log a warning (names are attacker-influenced).
    #[default]
    Warn,
    /// Ignore failures that carry only a hostname.
    No,
}

/// Who failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Addr(IpAddr),
    /// A hostname captured by `<HOST>`, lower-cased.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Addr(a) => a.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// The time a line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFound {
    Parsed(SystemTime),
    /// No timestamp recognised: the caller uses the read time (and counts it).
    Missing,
}

/// One detected failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host: Host,
    /// Index of the failregex that matched.
    pub regex: usize,
    /// From `<F-USER>`.
    pub user: Option<String>,
    pub time: TimeFound,
}

/// Result of [`FilterSet::match_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineMatch {
    NoMatch {
        time: TimeFound,
    },
    /// A failregex matched but ignoreregex `regex` did too.
    Ignored {
        regex: usize,
        time: TimeFound,
    },
    Failure(Failure),
}

#[derive(Debug, Clone)]
struct FailRegex {
    /// Built without DFAs: it only runs on lines the set already matched,
    /// so a DFA pass to find the match bounds first would be wasted work;
    /// the bounded backtracker resolves the groups directly.
    regex: meta::Regex,
    /// (capture index, kind) of each host tag.
    hosts: Vec<(usize, HostKind)>,
    users: Vec<usize>,
    /// Slots needed to resolve every host and user group: 2 per group up
    /// to the highest one used.
    slots: usize,
    /// The expanded pattern, to plan [`FailRegex::split`] from.
    pattern: String,
    /// Host and user spans from DFA passes ([`split`]), planned on the
    /// first match of this failregex (most are never matched, so a jail
    /// does not pay for planning them); `None` when the groups do not allow
    /// it.
    split: OnceLock<Option<SplitPlan>>,
}

impl FailRegex {
    fn split_plan(&self) -> Option<&SplitPlan> {
        self.split
            .get_or_init(|| {
                let groups: Vec<usize> = self
                    .hosts
                    .iter()
                    .map(|h| h.0)
                    .chain(self.users.iter().copied())
                    .collect();
                SplitPlan::new(&self.pattern, &groups)
            })
            .as_ref()
    }
}

/// Capture slots kept on the stack; a failregex whose tags sit in later
/// groups uses a heap buffer instead.
const STACK_SLOTS: usize = 32;

/// A compiled filter: all failregexes of a jail in one matcher.
#[derive(Debug, Clone)]
pub struct FilterSet {
    /// All failregexes as one leftmost-first regex, when every one of them
    /// is anchored at the text start: its match names the first failregex
    /// that matches and where that match ends.
    first: Option<meta::Regex>,
    fail_set: RegexSet,
    fails: Vec<FailRegex>,
    ignore_set: Option<RegexSet>,
    prefilter: Prefilter,
    datepattern: Option<DatePattern>,
    sources: Vec<String>,
}

/// Bound on re-searches when a match's address does not validate, so that a
/// hostile line cannot make matching quadratic.
const MAX_ATTEMPTS: usize = 8;

fn compile_one(pattern: &str, place: &str) -> Result<(meta::Regex, host::Expanded), FilterError> {
    let exp = host::expand(pattern, place)?;
    let built = meta::Regex::builder()
        .configure(meta::Config::new().hybrid(false).dfa(false))
        .build(&exp.pattern);
    match built {
        Ok(regex) => Ok((regex, exp)),
        // The regex crate words syntax errors best (with a caret).
        Err(e) => Err(FilterError::BadRegex {
            place: place.to_string(),
            expanded: exp.pattern.clone(),
            reason: match regex::Regex::new(&exp.pattern) {
                Err(re) => re.to_string(),
                Ok(_) => e.to_string(),
            },
        }),
    }
}

impl FilterSet {
    /// Compiles a failregex/ignoreregex list. Every failregex needs a host
    /// tag; ignoreregexes may use tags too (their captures are unused).
    pub fn compile(
        failregex: &[String],
        ignoreregex: &[String],
        datepattern: Option<&str>,
    ) -> Result<FilterSet, FilterError> {
        if failregex.is_empty() {
            return Err(FilterError::NoFailregex);
        }
        let mut fails = Vec::with_capacity(failregex.len());
        let mut expanded = Vec::with_capacity(failregex.len());
        for (i, src) in failregex.iter().enumerate() {
            let place = format!("failregex[{i}]");
            let (regex, exp) = compile_one(src, &place)?;
            if exp.hosts.is_empty() {
                return Err(FilterError::NoHostTag { place });
            }
            let index_of = |name: &str| -> usize {
                regex
                    .group_info()
                    .to_index(PatternID::ZERO, name)
                    .expect("tag group exists")
            };
            let hosts: Vec<(usize, HostKind)> =
                exp.hosts.iter().map(|(n, k)| (index_of(n), *k)).collect();
            let users: Vec<usize> = exp.users.iter().map(|n| index_of(n)).collect();
            let top = hosts
                .iter()
                .map(|h| h.0)
                .chain(users.iter().copied())
                .max()
                .unwrap_or(0);
            fails.push(FailRegex {
                regex,
                hosts,
                users,
                slots: 2 * (top + 1),
                pattern: exp.pattern.clone(),
                split: OnceLock::new(),
            });
            expanded.push(exp.pattern);
        }
        let fail_set = RegexSet::new(&expanded).map_err(|e| FilterError::BadRegex {
            place: "failregex (combined set)".to_string(),
            expanded: "all failregexes".to_string(),
            reason: e.to_string(),
        })?;

        let mut ignore_expanded = Vec::with_capacity(ignoreregex.len());
        for (i, src) in ignoreregex.iter().enumerate() {
            let (_, exp) = compile_one(src, &format!("ignoreregex[{i}]"))?;
            ignore_expanded.push(exp.pattern);
        }
        let ignore_set = if ignore_expanded.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(&ignore_expanded).map_err(|e| FilterError::BadRegex {
                    place: "ignoreregex (combined set)".to_string(),
                    expanded: "all ignoreregexes".to_string(),
                    reason: e.to_string(),
                })?,
            )
        };
        let datepattern = datepattern.map(DatePattern::parse).transpose()?;
        let first = if expanded.iter().all(|p| anchored_at_start(p)) {
            meta::Regex::builder()
                .configure(
                    meta::Config::new()
                        .which_captures(regex_automata::nfa::thompson::WhichCaptures::Implicit),
                )
                .build_many(&expanded)
                .ok()
        } else {
            None
        };
        Ok(FilterSet {
            first,
            prefilter: Prefilter::new(&expanded),
            fail_set,
            fails,
            ignore_set,
            datepattern,
            sources: failregex.to_vec(),
        })
    }

    /// Compiles a definition with its base lists plus those of `mode`
    /// (or `default_mode` when `mode` is `None`).
    pub fn from_def(def: &FilterDef, mode: Option<&str>) -> Result<FilterSet, FilterError> {
        let (fail, ignore) = def.lists(mode)?;
        let place = mode.or(def.default_mode.as_deref());
        FilterSet::compile(&fail, &ignore, def.datepattern.as_deref()).map_err(|e| match place {
            Some(m) => FilterError::InMode {
                place: format!("mode {m:?}"),
                source: Box::new(e),
            },
            None => e,
        })
    }

    /// Number of failregexes (indices in [`Failure::regex`] are below it).
    pub fn failregex_count(&self) -> usize {
        self.fails.len()
    }

    /// Literals of which every line this filter can match contains one
    /// (the line's timestamp is cut before matching, so they lie in the
    /// rest); `None` when no such set is known and any line may match.
    /// Jails on one file share one search for all their filters' literals
    /// ([`shared`]).
    pub fn required_literals(&self) -> Option<&[Vec<u8>]> {
        self.prefilter.literals()
    }

    /// The failregex sources, in index order.
    pub fn failregex_sources(&self) -> &[String] {
        &self.sources
    }

    /// Matches one log line. `now` is used for year inference.
    pub fn match_line(&self, line: &str, now: SystemTime) -> LineMatch {
        self.match_screened(line, now, false)
    }

    /// [`match_line`](Self::match_line) for a line a [`shared::SharedPrefilter`]
    /// (`shared`) admitted for this filter when `admitted`: its own
    /// literal scan would only say so again.
    pub fn match_screened(&self, line: &str, now: SystemTime, admitted: bool) -> LineMatch {
        let line = line.trim_end_matches(['\n', '\r']);
        let (time, text) = match time::parse_time(line, now, self.datepattern.as_ref()) {
            Some((t, range)) => {
                let text = match time::leading_stamp_end(line, &range) {
                    Some(end) => &line[end..],
                    None => line,
                };
                (TimeFound::Parsed(t), text)
            }
            None => (TimeFound::Missing, line),
        };
        if !admitted && !self.prefilter.may_match(text) {
            return LineMatch::NoMatch { time };
        }
        if let Some(first) = &self.first {
            let Some(m) = first.search(&Input::new(text)) else {
                return LineMatch::NoMatch { time };
            };
            let idx = m.pattern().as_usize();
            if let Some((host, user)) = self.capture_first(idx, text, m.end()) {
                return self.failure(text, idx, host, user, time);
            }
            // The first matching failregex captured no valid address: the
            // general path tries the others (and that one again, bounded).
        }
        self.match_all(text, time)
    }

    /// A failure of failregex `idx`, unless an ignoreregex matches too.
    fn failure(
        &self,
        text: &str,
        idx: usize,
        host: Host,
        user: Option<String>,
        time: TimeFound,
    ) -> LineMatch {
        if let Some(ign) = &self.ignore_set {
            if let Some(regex) = ign.matches(text).iter().next() {
                return LineMatch::Ignored { regex, time };
            }
        }
        LineMatch::Failure(Failure {
            host,
            regex: idx,
            user,
            time,
        })
    }

    /// The general path: every failregex that matches, in list order.
    fn match_all(&self, text: &str, time: TimeFound) -> LineMatch {
        let matched = self.fail_set.matches(text);
        if !matched.matched_any() {
            return LineMatch::NoMatch { time };
        }
        for idx in matched.iter() {
            if let Some((host, user)) = self.capture(idx, text) {
                return self.failure(text, idx, host, user, time);
            }
        }
        LineMatch::NoMatch { time }
    }

    /// Runs failregex `idx` for captures. If the address it captured is not
    /// valid, searches again after the match start (bounded), so that a
    /// decoy earlier in the line does not hide a real address later.
    fn capture(&self, idx: usize, text: &str) -> Option<(Host, Option<String>)> {
        let mut start = 0;
        for _ in 0..MAX_ATTEMPTS {
            let input = Input::new(text).range(start..);
            match self.capture_step(idx, text, &input)? {
                Ok(found) => return Some(found),
                Err(match_start) => {
                    // Step one character past the match start.
                    let next = text[match_start..].chars().next().map_or(1, char::len_utf8);
                    start = match_start + next;
                    if start > text.len() {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Captures of failregex `idx`, whose match (found by the set's DFA)
    /// is `0..end`: from DFA passes when the regex allows it, else from the
    /// backtracker on that span. No retry.
    fn capture_first(&self, idx: usize, text: &str, end: usize) -> Option<(Host, Option<String>)> {
        let fr = &self.fails[idx];
        with_slots(fr.slots, |slots| {
            let split = fr
                .split_plan()
                .is_some_and(|plan| plan.spans(text, end, slots));
            if !split {
                let input = Input::new(text).span(0..end).anchored(Anchored::Yes);
                fr.regex.search_slots(&input, slots)?;
            }
            resolve(fr, text, slots)?.ok()
        })
    }

    /// One capture search: `None` if nothing matches, `Err(match start)` if
    /// the match's address does not validate.
    fn capture_step(
        &self,
        idx: usize,
        text: &str,
        input: &Input<'_>,
    ) -> Option<Result<(Host, Option<String>), usize>> {
        let fr = &self.fails[idx];
        with_slots(fr.slots, |slots| {
            fr.regex.search_slots(input, slots)?;
            resolve(fr, text, slots)
        })
    }
}

/// Runs `f` with `n` empty capture slots, on the stack when they fit.
fn with_slots<T>(n: usize, f: impl FnOnce(&mut [Option<NonMaxUsize>]) -> T) -> T {
    if n <= STACK_SLOTS {
        let mut stack = [None; STACK_SLOTS];
        f(&mut stack[..n])
    } else {
        f(&mut vec![None; n])
    }
}

/// The host and user of a match whose groups are in `slots`: `None` if
/// the whole match is not there, `Err(match start)` if no host group holds
/// a valid address.
fn resolve(
    fr: &FailRegex,
    text: &str,
    slots: &[Option<NonMaxUsize>],
) -> Option<Result<(Host, Option<String>), usize>> {
    let group = |g: usize| -> Option<(usize, usize)> {
        Some((slots[2 * g]?.get(), slots[2 * g + 1]?.get()))
    };
    let host = fr.hosts.iter().find_map(|&(g, kind)| {
        let (s, e) = group(g)?;
        if !host::boundary_ok(text, s, e) {
            return None;
        }
        host::parse_host(&text[s..e], kind)
    });
    match host {
        Some(host) => {
            let user = fr
                .users
                .iter()
                .find_map(|&g| group(g))
                .map(|(s, e)| text[s..e].to_string());
            Some(Ok((host, user)))
        }
        None => Some(Err(group(0)?.0)),
    }
}

/// Whether every match of `pattern` starts at the start of the text (`^`
/// without multi-line mode, on every branch).
fn anchored_at_start(pattern: &str) -> bool {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .is_ok_and(|hir| {
            hir.properties()
                .look_set_prefix()
                .contains(regex_syntax::hir::Look::Start)
        })
}

impl FilterDef {
    /// Base lists plus the chosen mode's lists.
    pub fn lists(&self, mode: Option<&str>) -> Result<(Vec<String>, Vec<String>), FilterError> {
        let mut fail = self.failregex.clone();
        let mut ignore = self.ignoreregex.clone();
        if let Some(m) = mode.or(self.default_mode.as_deref()) {
            let Some(fm) = self.modes.get(m) else {
                return Err(FilterError::UnknownMode {
                    mode: m.to_string(),
                    known: self.modes.keys().cloned().collect(),
                });
            };
            fail.extend(fm.failregex.iter().cloned());
            ignore.extend(fm.ignoreregex.iter().cloned());
        }
        Ok((fail, ignore))
    }

    /// Compiles the base lists and every mode, to report errors at load.
    pub fn validate(&self) -> Result<(), FilterError> {
        if self.modes.is_empty() {
            FilterSet::from_def(self, None)?;
        }
        for m in self.modes.keys() {
            FilterSet::from_def(self, Some(m))?;
        }
        if let Some(d) = &self.default_mode {
            if !self.modes.contains_key(d) {
                return Err(FilterError::UnknownMode {
                    mode: d.clone(),
                    known: self.modes.keys().cloned().collect(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod split_tests;
#[cfg(test)]
mod tests;
