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
//! A regex the `regex` crate cannot build (look-around, back-references,
//! conditionals, atomic groups) runs in a backtracker ([`fancy`]) behind a
//! `regex`-crate superset of it, which takes its place in steps 2 to 4: the
//! backtracker only resolves lines the superset matched.
//!
//! A filter may have a `prefregex` (fail2ban's): it is searched after step
//! 2 and a line it does not match is no failure; its
//! `<F-CONTENT>...</F-CONTENT>` span is the text steps 3 to 5 see, and a
//! `<HOST>` (or `<F-USER>`) in it stands for failregexes that have none.
//!
//! # Tags in patterns
//!
//! * `<HOST>`: an IPv4 address (also `[bracketed]`), an IPv6 address in
//!   any textual form (compressed, embedded IPv4, `[bracketed]`, `%zone`),
//!   or a hostname.
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
//!   * `<SSHD_PID>`: `<SSHD>` with a pid, its `host sshd[pid]: ` part as
//!     the connection (`<F-MLFID>`);
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
//! * `<F-ALT_USER>...</F-ALT_USER>`: the user when `<F-USER>` captured none.
//! * Connection tags, each a pair around a sub-pattern ([`conn`]):
//!   `<F-MLFID>` (the connection's identity, e.g. `host sshd[pid]: `),
//!   `<F-NOFAIL>` (a line of the connection that is no failure),
//!   `<F-MLFFORGET>` (the connection ended), `<F-MLFGAINED>` (it logged
//!   in). With `<F-MLFID>` in the prefregex or a failregex, a failregex
//!   may leave out the host: the connection's earlier lines give it.
//!
//! Any other `<...>` text is literal (`from=<>`). `<F-CONTENT>` is for a
//! prefregex only. fail2ban's other field tags (`<F-ID>`, ...), `<CIDR>`,
//! `<SUBNET>`, `<DNS>` and `%(name)s` interpolation are rejected with an
//! error: xban has no interpolation.
//!
//! # Several lines at once
//!
//! A filter with `maxlines = N` (fail2ban's key; 1 to [`lines::MAX_LINES`],
//! default 1) has its failregexes see the last N lines, each after its date
//! cut, joined with newlines, in multi-line mode (`^` and `$` at every
//! line); a failregex's matched lines then leave the buffer
//! ([`lines::LineBuffer`], per jail). `<SKIPLINES>` in a failregex is a
//! newline followed by any whole lines, which stay in the buffer. The
//! failure's time is the newest line's. With N = 1 (every built-in filter)
//! none of this runs.

pub mod builtin;
mod compile;
pub mod conn;
mod dfa;
pub(crate) mod fancy;
pub mod host;
pub mod lines;
mod prefilter;
pub mod regex_tool;
pub mod shared;
mod split;
pub mod time;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use regex::RegexSet;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::{meta, Anchored, Input, PatternID};
use regex_syntax::hir::Hir;
use serde::{Deserialize, Serialize};

use self::conn::{ConnLine, Marks};
use self::dfa::ForwardDfa;
use self::fancy::Fancy;
use self::host::{HostKind, Mark};
use self::prefilter::{Prefilter, PrefilterGauge, Screen};
use self::split::SplitPlan;
use self::time::{DateCut, DatePattern};

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
    #[error("{}: invalid filter file: {source}; fix the TOML (keys: prefregex, failregex, ignoreregex, datepattern, date_cut, modes, default_mode, description)", .path.display())]
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
    #[error("maxlines = {value}: it must be 1 to {max} (1 reads lines one by one); set a value in that range or remove the key")]
    MaxLines { value: usize, max: usize },
    #[error("maxlines = {value} with a prefregex: xban runs a prefregex on single lines only; set maxlines = 1 or fold the prefregex into the failregexes")]
    MaxLinesPrefregex { value: usize },
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
    /// fail2ban's `prefregex`: matched first on every line (after the
    /// timestamp cut); a line it does not match is no failure. Its
    /// `<F-CONTENT>...</F-CONTENT>` part is what the failregexes and
    /// ignoreregexes then see (the whole line when it has none), and a
    /// `<HOST>` in it serves the failregexes that have none of their own.
    pub prefregex: Option<String>,
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub datepattern: Option<String>,
    /// Where a line's date is looked for and what is cut ([`DateCut`]):
    /// `leading` (default) or `anywhere` (fail2ban's line model, with its
    /// datepattern syntax).
    pub date_cut: DateCut,
    /// Named modes (e.g. sshd: normal, ddos, aggressive): each adds its
    /// failregex list to the base list.
    pub modes: BTreeMap<String, FilterMode>,
    pub default_mode: Option<String>,
    pub description: Option<String>,
    /// fail2ban's `maxlines`: how many lines (each after its date cut,
    /// joined with newlines) the failregexes see at once; unset means 1.
    /// Above 1 the failregexes run in multi-line mode (`^`/`$` at each
    /// line) and a line's match goes through a [`lines::LineBuffer`].
    pub maxlines: Option<usize>,
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
    /// A failregex matched in a filter that tracks connections
    /// ([`FilterSet::tracks_connections`]): what the line is, failure or
    /// not, is for the connection's state to say ([`conn::Connections`]).
    Connection(Box<ConnLine>),
}

/// Group indices of a regex's field tags besides the hosts.
#[derive(Debug, Clone, Default)]
struct FieldGroups {
    users: Vec<usize>,
    /// `<F-ALT_USER>`: the user when no `<F-USER>` captured a non-empty one.
    alt_users: Vec<usize>,
    marks: Vec<(usize, Mark)>,
}

impl FieldGroups {
    /// The user span: the first `<F-USER>` that took part, unless it is
    /// empty and an `<F-ALT_USER>` captured something.
    fn user(&self, slots: &[Option<NonMaxUsize>]) -> Option<Span> {
        let user = first_span(slots, &self.users);
        if user.is_some_and(|(s, e)| s < e) || self.alt_users.is_empty() {
            return user;
        }
        self.alt_users
            .iter()
            .filter_map(|&g| group_span(slots, g))
            .find(|(s, e)| s < e)
            .or(user)
    }

    /// The connection id's span and the marks that took part with a
    /// non-empty capture (fail2ban tests a field's truth).
    fn marks(&self, slots: &[Option<NonMaxUsize>]) -> (Option<Span>, Marks) {
        let mut id = None;
        let mut marks = Marks::default();
        for &(g, mark) in &self.marks {
            let Some((s, e)) = group_span(slots, g) else {
                continue;
            };
            match mark {
                Mark::Id => id = id.or(Some((s, e))),
                Mark::NoFail => marks.nofail |= s < e,
                Mark::Forget => marks.forget |= s < e,
                Mark::Gained => marks.gained |= s < e,
            }
        }
        (id, marks)
    }

    /// The highest group index used.
    fn top(&self) -> usize {
        self.users
            .iter()
            .chain(&self.alt_users)
            .chain(self.marks.iter().map(|m| &m.0))
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn all(&self) -> impl Iterator<Item = usize> + '_ {
        self.users
            .iter()
            .chain(&self.alt_users)
            .chain(self.marks.iter().map(|m| &m.0))
            .copied()
    }
}

#[derive(Debug, Clone)]
struct FailRegex {
    /// Built without DFAs: it only runs on lines the set already matched,
    /// so a DFA pass to find the match bounds first would be wasted work;
    /// the bounded backtracker resolves the groups directly.
    regex: meta::Regex,
    /// (capture index, kind) of each host tag.
    hosts: Vec<(usize, HostKind)>,
    fields: FieldGroups,
    /// In a filter that tracks connections, a match whose host groups
    /// took no part is still a match: the connection may know the host.
    host_optional: bool,
    /// Slots needed to resolve every tag group: 2 per group up to the
    /// highest one used.
    slots: usize,
    /// The parsed pattern, to plan [`FailRegex::split`] from.
    hir: Hir,
    /// Host and user spans from DFA passes ([`split`]), planned on the
    /// first match of this failregex (most are never matched, so a jail
    /// does not pay for planning them); `None` when the groups do not allow
    /// it.
    split: OnceLock<Option<SplitPlan>>,
    /// When the regex needs the backtracker ([`fancy`]): `regex` and `hir`
    /// are then its superset's, and `hosts`/`users` index this.
    fancy: Option<Fancy>,
}

impl FailRegex {
    fn split_plan(&self) -> Option<&SplitPlan> {
        if self.fancy.is_some() {
            return None;
        }
        self.split
            .get_or_init(|| {
                let groups: Vec<usize> = self
                    .hosts
                    .iter()
                    .map(|h| h.0)
                    .chain(self.fields.all())
                    .collect();
                SplitPlan::new(&self.hir, &groups)
            })
            .as_ref()
    }
}

/// A captured group's byte range in the matched text.
type Span = (usize, usize);

/// Capture slots kept on the stack; a failregex whose tags sit in later
/// groups uses a heap buffer instead.
const STACK_SLOTS: usize = 32;

/// A compiled filter: all failregexes of a jail in one matcher.
#[derive(Debug, Clone)]
pub struct FilterSet {
    /// All failregexes as one leftmost-first regex, when every one of them
    /// is anchored at the text start: its match names the first failregex
    /// that matches and where that match ends.
    first: Option<ForwardDfa>,
    /// Which failregexes match, for the general path. With `first`, that
    /// path runs only when the first matching failregex captured no valid
    /// address, so the set is built on that first need: `xban regex` and
    /// a jail under attack rarely pay for it.
    fail_set: OnceLock<Option<RegexSet>>,
    /// The expanded failregexes, to build `fail_set` from.
    expanded: Vec<String>,
    fails: Vec<FailRegex>,
    ignore_set: Option<RegexSet>,
    /// Per ignoreregex, the backtracker when it needs one (`ignore_set`
    /// then holds its superset).
    ignore_fancy: Vec<Option<Fancy>>,
    /// Searches of this filter's backtracker regexes that hit the limit.
    limit_hits: Arc<AtomicU64>,
    prefilter: Prefilter,
    /// Whether `prefilter` pays on this log (only with `first` and no
    /// prefregex: see [`PrefilterGauge`]).
    gauge: PrefilterGauge,
    /// The prefregex or a failregex has `<F-MLFID>`: matches are
    /// [`LineMatch::Connection`]s.
    connections: bool,
    /// `maxlines`: above 1, lines are matched through a
    /// [`lines::LineBuffer`].
    max_lines: usize,
    datepattern: Option<DatePattern>,
    date_cut: DateCut,
    sources: Vec<String>,
    prefix: Option<Prefix>,
    /// With a prefregex and many more failregexes than ignoreregexes,
    /// fail2ban tries the ignoreregexes on the whole line before anything
    /// else; this keeps that behaviour (it differs from the content check
    /// when an ignoreregex matches the prefix part).
    ignore_whole_line: bool,
}

/// A compiled `prefregex`.
#[derive(Debug, Clone)]
struct Prefix {
    regex: meta::Regex,
    /// The match's end by a DFA, its groups by a split walk ([`split`]),
    /// when the prefregex is anchored and its groups allow it.
    walk: Option<(ForwardDfa, SplitPlan)>,
    fancy: Option<Fancy>,
    /// Group of `<F-CONTENT>`, when it has one.
    content: Option<usize>,
    hosts: Vec<(usize, HostKind)>,
    fields: FieldGroups,
    slots: usize,
}

/// What a prefregex found on a line.
struct PrefixMatch<'a> {
    content: std::ops::Range<usize>,
    host: Option<Host>,
    /// Copied only when a failure needs it.
    user: Option<&'a str>,
    /// `<F-MLFID>`'s capture.
    id: Option<&'a str>,
    marks: Marks,
}

impl Prefix {
    fn search<'a>(&self, text: &'a str) -> Option<PrefixMatch<'a>> {
        with_slots(self.slots, |slots| {
            let walked = match &self.walk {
                // An error (the lazy DFA gave up) or a declined walk leaves
                // it to the search below.
                Some((dfa, plan)) => match dfa.find(text, 0, false) {
                    Ok(None) => return None,
                    Ok(Some(m)) => plan.spans(text, m.offset(), slots),
                    Err(_) => false,
                },
                None => false,
            };
            if !walked {
                slots.fill(None);
                match &self.fancy {
                    Some(f) => f.search_slots(text, 0, slots)?,
                    None => {
                        self.regex.search_slots(&Input::new(text), slots)?;
                    }
                }
            }
            let content = match self.content {
                Some(g) => {
                    let (s, e) = group_span(slots, g)?;
                    s..e
                }
                None => 0..text.len(),
            };
            let (id, marks) = self.fields.marks(slots);
            Some(PrefixMatch {
                content,
                host: first_host(text, slots, &self.hosts),
                user: self.fields.user(slots).map(|(s, e)| &text[s..e]),
                id: id.map(|(s, e)| &text[s..e]),
                marks,
            })
        })
    }
}

/// Bound on re-searches when a match's address does not validate, so that a
/// hostile line cannot make matching quadratic.
const MAX_ATTEMPTS: usize = 8;

impl FilterSet {
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
        // A date cut from mid-line joins text a literal may span; a
        // multi-line filter needs every line in its buffer.
        if self.date_cut == DateCut::Anywhere || self.max_lines > 1 {
            return None;
        }
        self.prefilter.literals()
    }

    /// Whether the filter reads lines by connection (`<F-MLFID>`): its
    /// matches then go through a [`conn::Connections`].
    pub fn tracks_connections(&self) -> bool {
        self.connections
    }

    /// fail2ban's `maxlines`: above 1, feed lines through a
    /// [`lines::LineBuffer`] rather than [`match_entry`](Self::match_entry).
    pub fn max_lines(&self) -> usize {
        self.max_lines
    }

    /// The failregex sources, in index order.
    pub fn failregex_sources(&self) -> &[String] {
        &self.sources
    }

    /// Matches one log line. `now` is used for year inference.
    pub fn match_line(&self, line: &str, now: SystemTime) -> LineMatch {
        self.match_line_with(line, now, true, false)
    }

    /// [`FilterSet::match_line`] for a caller that only counts: a failure's
    /// `user` is left `None`, which saves copying it out of every line.
    pub fn match_line_uncopied_user(&self, line: &str, now: SystemTime) -> LineMatch {
        self.match_line_with(line, now, false, false)
    }

    /// [`match_line`](Self::match_line) for a line a [`shared::SharedPrefilter`]
    /// (`shared`) admitted for this filter when `admitted`: its own
    /// literal scan would only say so again.
    pub fn match_screened(&self, line: &str, now: SystemTime, admitted: bool) -> LineMatch {
        self.match_line_with(line, now, true, admitted)
    }

    /// [`match_screened`](Self::match_screened) for a line whose source
    /// knows its time (`entry_time`, the journal's): under fail2ban's line
    /// model no date is looked for in it, as fail2ban does not.
    pub fn match_entry(
        &self,
        line: &str,
        now: SystemTime,
        admitted: bool,
        entry_time: Option<SystemTime>,
    ) -> LineMatch {
        match entry_time {
            Some(t) if self.date_cut == DateCut::Anywhere => {
                let line = line.trim_end_matches(['\n', '\r']);
                self.match_text(line, TimeFound::Parsed(t), true, admitted)
            }
            _ => self.match_line_with(line, now, true, admitted),
        }
    }

    fn match_line_with(
        &self,
        line: &str,
        now: SystemTime,
        keep_user: bool,
        admitted: bool,
    ) -> LineMatch {
        let line = line.trim_end_matches(['\n', '\r']);
        if self.date_cut == DateCut::Anywhere {
            return self.match_cut_anywhere(line, now, keep_user, admitted);
        }
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
        self.match_text(text, time, keep_user, admitted)
    }

    /// fail2ban's line model: the date cut out wherever it stands, the
    /// text before and after it joined.
    fn match_cut_anywhere(
        &self,
        line: &str,
        now: SystemTime,
        keep_user: bool,
        admitted: bool,
    ) -> LineMatch {
        let found = self
            .datepattern
            .as_ref()
            .and_then(|d| time::find_date(line, now, d));
        let Some((t, range)) = found else {
            return self.match_text(line, TimeFound::Missing, keep_user, admitted);
        };
        let time = t.map_or(TimeFound::Missing, TimeFound::Parsed);
        if range.start == 0 {
            return self.match_text(&line[range.end..], time, keep_user, admitted);
        }
        let mut joined = String::with_capacity(line.len() - range.len());
        joined.push_str(&line[..range.start]);
        joined.push_str(&line[range.end..]);
        self.match_text(&joined, time, keep_user, admitted)
    }

    /// The prefregex and failregexes on `text` (the line after its date cut).
    /// Inlined: on the leading-cut path a call costs more than the rest of
    /// a line that the prefilter turns away.
    #[inline(always)]
    fn match_text(
        &self,
        text: &str,
        time: TimeFound,
        keep_user: bool,
        admitted: bool,
    ) -> LineMatch {
        if !admitted && !self.screen(text) {
            return LineMatch::NoMatch { time };
        }
        let Some(prefix) = &self.prefix else {
            return self.match_content(text, time, keep_user, None);
        };
        if self.ignore_whole_line {
            if let Some(regex) = self.ignored(text) {
                return LineMatch::Ignored { regex, time };
            }
        }
        match prefix.search(text) {
            Some(pm) => self.match_content(&text[pm.content.clone()], time, keep_user, Some(&pm)),
            None => LineMatch::NoMatch { time },
        }
    }

    /// The literal prefilter's verdict on `text`: `false` when no
    /// failregex can match it. With an anchored first-match DFA (and no
    /// prefregex to spare) the scan is a shortcut the gauge may skip.
    fn screen(&self, text: &str) -> bool {
        let first = match &self.first {
            Some(first) if self.prefix.is_none() && self.prefilter.literals().is_some() => first,
            _ => return self.prefilter.may_match(text),
        };
        match self.gauge.next() {
            Screen::Scan => self.prefilter.may_match(text),
            Screen::Skip => true,
            Screen::Sample => {
                let started = std::time::Instant::now();
                let may = self.prefilter.may_match(text);
                let scan = started.elapsed();
                let spared = (!may).then(|| {
                    let started = std::time::Instant::now();
                    let _ = std::hint::black_box(first.find(text, 0, false));
                    started.elapsed()
                });
                self.gauge.record(scan, spared);
                may
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn gauge(&self) -> &PrefilterGauge {
        &self.gauge
    }

    /// The failregexes on `text` (the line after its timestamp, or the
    /// prefregex's content).
    fn match_content(
        &self,
        text: &str,
        time: TimeFound,
        keep_user: bool,
        pm: Option<&PrefixMatch>,
    ) -> LineMatch {
        if let Some(first) = &self.first {
            // An error (the lazy DFA gave up) leaves it to the general path.
            if let Ok(found) = first.find(text, 0, false) {
                let Some(m) = found else {
                    return LineMatch::NoMatch { time };
                };
                let idx = m.pattern().as_usize();
                if let Some(found) = self.capture_first(idx, text, m.offset()) {
                    if let Some(hit) = self.failure(text, idx, found, keep_user, pm, time) {
                        return hit;
                    }
                }
            }
            // The first matching failregex captured no valid address: the
            // general path tries the others (and that one again, bounded).
        }
        self.match_all(text, time, keep_user, pm)
    }

    /// A failure of failregex `idx`, unless an ignoreregex matches too;
    /// `None` when neither the failregex nor the prefregex gave a host
    /// (or a connection that may know it).
    fn failure(
        &self,
        text: &str,
        idx: usize,
        cap: Captured,
        keep_user: bool,
        pm: Option<&PrefixMatch>,
        time: TimeFound,
    ) -> Option<LineMatch> {
        let host = cap.host.or_else(|| pm.and_then(|p| p.host.clone()));
        let id = cap
            .id
            .map(|(s, e)| &text[s..e])
            .or_else(|| pm.and_then(|p| p.id));
        if id.is_none() && host.is_none() {
            return None;
        }
        if let Some(regex) = self.ignored(text) {
            return Some(LineMatch::Ignored { regex, time });
        }
        let marks = cap.marks.or(pm.map_or(Marks::default(), |p| p.marks));
        // A connection's state needs its user names.
        let user = if keep_user || id.is_some() {
            cap.user
                .map(|(s, e)| text[s..e].to_string())
                .or_else(|| pm.and_then(|p| p.user.map(str::to_string)))
        } else {
            None
        };
        if let Some(id) = id {
            return Some(LineMatch::Connection(Box::new(ConnLine {
                id: conn::ConnId::new(id),
                regex: idx,
                host,
                user,
                marks,
                time,
            })));
        }
        // Outside a connection, a no-failure line is just that.
        if marks.nofail || marks.gained {
            return Some(LineMatch::NoMatch { time });
        }
        Some(LineMatch::Failure(Failure {
            host: host?,
            regex: idx,
            user,
            time,
        }))
    }

    /// The first ignoreregex that matches `text`.
    fn ignored(&self, text: &str) -> Option<usize> {
        let set = self.ignore_set.as_ref()?;
        set.matches(text).iter().find(|&i| {
            self.ignore_fancy[i]
                .as_ref()
                .is_none_or(|f| f.is_match(text))
        })
    }

    /// Searches of this filter's look-around / back-reference regexes that
    /// gave up at the backtrack limit (each counted as no match).
    pub fn backtrack_limit_hits(&self) -> u64 {
        self.limit_hits.load(Ordering::Relaxed)
    }

    /// The general path: every failregex that matches, in list order.
    fn match_all(
        &self,
        text: &str,
        time: TimeFound,
        keep_user: bool,
        pm: Option<&PrefixMatch>,
    ) -> LineMatch {
        let set = self
            .fail_set
            .get_or_init(|| RegexSet::new(&self.expanded).ok());
        let Some(set) = set else {
            // `first` built from the same patterns, so the set builds too;
            // should it not, each failregex is tried in list order, which
            // is what the set's answer is used for.
            return self.capture_in_order(0..self.fails.len(), text, time, keep_user, pm);
        };
        let matched = set.matches(text);
        if !matched.matched_any() {
            return LineMatch::NoMatch { time };
        }
        self.capture_in_order(matched.iter(), text, time, keep_user, pm)
    }

    /// The first of failregexes `idxs` whose captured address is valid.
    fn capture_in_order(
        &self,
        idxs: impl Iterator<Item = usize>,
        text: &str,
        time: TimeFound,
        keep_user: bool,
        pm: Option<&PrefixMatch>,
    ) -> LineMatch {
        for idx in idxs {
            if let Some(found) = self.capture(idx, text) {
                if let Some(hit) = self.failure(text, idx, found, keep_user, pm, time) {
                    return hit;
                }
            }
        }
        LineMatch::NoMatch { time }
    }

    /// Runs failregex `idx` for captures. If the address it captured is not
    /// valid, searches again after the match start (bounded), so that a
    /// decoy earlier in the line does not hide a real address later.
    fn capture(&self, idx: usize, text: &str) -> Option<Captured> {
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
    fn capture_first(&self, idx: usize, text: &str, end: usize) -> Option<Captured> {
        let fr = &self.fails[idx];
        if let Some(f) = &fr.fancy {
            return with_slots(fr.slots, |slots| {
                f.search_slots(text, 0, slots)?;
                resolve(fr, text, slots)?.ok()
            });
        }
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
    ) -> Option<Result<Captured, usize>> {
        let fr = &self.fails[idx];
        with_slots(fr.slots, |slots| {
            match &fr.fancy {
                Some(f) => f.search_slots(text, input.start(), slots)?,
                None => {
                    fr.regex.search_slots(input, slots)?;
                }
            }
            resolve(fr, text, slots)
        })
    }
}

/// What a failregex captured: its host (`None` when it has no host tag
/// and leaves it to the prefregex or the connection), user span,
/// connection id span and marks.
struct Captured {
    host: Option<Host>,
    user: Option<Span>,
    id: Option<Span>,
    marks: Marks,
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
) -> Option<Result<Captured, usize>> {
    let (id, marks) = fr.fields.marks(slots);
    let captured = |host| Captured {
        host,
        user: fr.fields.user(slots),
        id,
        marks,
    };
    if fr.hosts.is_empty() {
        // The prefregex or the connection holds the host (compile checked
        // that one can); the caller has the match.
        return Some(Ok(captured(None)));
    }
    match first_host(text, slots, &fr.hosts) {
        Some(host) => Some(Ok(captured(Some(host)))),
        None if fr.host_optional && fr.hosts.iter().all(|h| group_span(slots, h.0).is_none()) => {
            Some(Ok(captured(None)))
        }
        None => Some(Err(group_span(slots, 0)?.0)),
    }
}

/// The span of group `g`, when it took part in the match.
fn group_span(slots: &[Option<NonMaxUsize>], g: usize) -> Option<Span> {
    Some((slots[2 * g]?.get(), slots[2 * g + 1]?.get()))
}

/// The span of the first of `groups` that took part.
fn first_span(slots: &[Option<NonMaxUsize>], groups: &[usize]) -> Option<Span> {
    groups.iter().find_map(|&g| group_span(slots, g))
}

/// The first host group holding a valid address, not glued to its
/// neighbours.
fn first_host(
    text: &str,
    slots: &[Option<NonMaxUsize>],
    hosts: &[(usize, HostKind)],
) -> Option<Host> {
    hosts.iter().find_map(|&(g, kind)| {
        let (s, e) = group_span(slots, g)?;
        if !host::boundary_ok(text, s, e) {
            return None;
        }
        host::parse_host(&text[s..e], kind)
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
mod prefix_tests;
#[cfg(test)]
mod split_tests;
#[cfg(test)]
mod tests;
