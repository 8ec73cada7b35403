//! Per-connection state: fail2ban's `<F-MLFID>` model, where the lines of
//! one connection (one `host sshd[pid]: ` prefix, one sendmail queue id)
//! are read together.
//!
//! A filter whose prefregex or failregexes carry `<F-MLFID>` reports each
//! line a failregex matched as a [`ConnLine`] (the connection's id, the
//! host and user if the line names them, and its marks); [`Connections`]
//! holds what earlier lines of that connection said and turns the line
//! into a failure or nothing:
//!
//! - a line without a host takes the connection's (sshd's `Disconnecting:
//!   Too many authentication failures [preauth]` follows `Failed password
//!   for root from 198.51.100.7`);
//! - a failure whose connection has no host yet is *pending*: the next
//!   line that names the host (even a `<F-NOFAIL>` one, such as `Connection
//!   from 198.51.100.7`) becomes that failure;
//! - `<F-NOFAIL>` lines are no failure on their own; `<F-MLFGAINED>` (a
//!   login) clears the pending failures, unless the connection tried more
//!   than one user name, which then counts as a failure;
//! - `<F-MLFFORGET>` (a disconnect) ends the connection.
//!
//! The rules are fail2ban's (its filter's failure merge, as its daemon
//! runs it: the first matching failregex decides the line). What differs:
//! the host a line names is always the one its failure is of (fail2ban
//! keeps IPv4 and IPv6 apart and prefers an IPv4 address an earlier line
//! of the connection named: after a reused pid, another peer's);
//! the table holds up to [`CAPACITY`] connections (fail2ban: 100), so a
//! flood of half-open connections cannot push out the one being counted
//! as easily; the oldest goes first, and each such eviction is counted.
//! A connection is forgotten [`TTL`] after its first line, measured on
//! the time lines are read.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::{Failure, Host, LineMatch, TimeFound};

/// Connections held at once, per filter instance.
pub const CAPACITY: usize = 10_000;

/// How long after its first line a connection is remembered (fail2ban's
/// value: longer than sshd's default LoginGraceTime of two minutes).
pub const TTL: Duration = Duration::from_secs(5 * 60);

/// A line a failregex matched in a filter that tracks connections, before
/// the connection's state decides what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLine {
    /// What `<F-MLFID>` captured.
    pub id: Box<str>,
    /// Index of the failregex that matched.
    pub regex: usize,
    /// The host, when this line names one.
    pub host: Option<Host>,
    pub user: Option<String>,
    pub marks: Marks,
    pub time: TimeFound,
}

/// The connection tags a line's match took part in (with a non-empty
/// capture, as fail2ban tests them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub nofail: bool,
    pub forget: bool,
    pub gained: bool,
}

impl Marks {
    pub(crate) fn or(self, o: Marks) -> Marks {
        Marks {
            nofail: self.nofail || o.nofail,
            forget: self.forget || o.forget,
            gained: self.gained || o.gained,
        }
    }
}

/// What a connection holds between its lines.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// Insertion number, to tell this entry from an older one of the same
    /// id in the eviction queue.
    seq: u64,
    expires: Option<SystemTime>,
    host: Option<Host>,
    user: Option<String>,
    /// Every non-empty user name the connection tried.
    users: Vec<String>,
    /// The last line was `<F-NOFAIL>` / `<F-MLFGAINED>`.
    nofail: bool,
    gained: bool,
    /// A failure came before the host was known.
    pending: bool,
    /// Lines that count towards the connection's failure (fail2ban's
    /// `matches`), and no-failure lines kept in case a failure follows.
    lines: u32,
    nofail_lines: u32,
}

/// What the connection knew when it decided a line (for tests and the
/// corpus score, which compare fail2ban's `users` and `attempts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnView {
    pub users: Vec<String>,
    /// Lines counted towards this failure (fail2ban's `len(matches)`).
    pub lines: u32,
}

/// The connections of one filter instance (a jail's, or a match class's).
#[derive(Debug, Default)]
pub struct Connections {
    entries: HashMap<Box<str>, Entry>,
    /// Ids in insertion order, for eviction; may hold ids forgotten since
    /// (their `seq` no longer matches), compacted when they pile up.
    order: VecDeque<(u64, Box<str>)>,
    seq: u64,
    evicted: u64,
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live connections pushed out by newer ones since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Decides a filter's match of a line read at `now`: a
    /// [`LineMatch::Connection`] becomes a failure or nothing; any other
    /// match passes through.
    pub fn resolve(&mut self, found: LineMatch, now: SystemTime) -> LineMatch {
        self.resolve_viewed(found, now).0
    }

    /// [`resolve`](Self::resolve), also telling what the connection knew.
    pub fn resolve_viewed(&mut self, found: LineMatch, now: SystemTime) -> (LineMatch, ConnView) {
        match found {
            LineMatch::Connection(line) => self.decide(*line, now),
            other => (other, ConnView::default()),
        }
    }

    fn decide(&mut self, line: ConnLine, now: SystemTime) -> (LineMatch, ConnView) {
        let ConnLine {
            id,
            regex,
            host,
            user,
            marks,
            time,
        } = line;
        // A login counts as a no-failure line of its own.
        let nofail = marks.nofail || marks.gained;
        let mut counts_nofail = nofail;
        let mut counts_gained = marks.gained;
        let live = match self.entries.get(&*id) {
            Some(e) if e.expires.is_some_and(|t| t <= now) => {
                self.entries.remove(&*id);
                false
            }
            Some(_) => true,
            None => false,
        };
        let mut transient = Entry::default();
        let mut users_tried = 0;
        let e: &mut Entry = if live {
            let e = self.entries.get_mut(&*id).expect("checked live");
            add_user(&mut e.users, user.as_deref());
            users_tried = e.users.len();
            // The previous line's no-failure state ends with it.
            let prev_nofail = std::mem::take(&mut e.nofail) | std::mem::take(&mut e.gained);
            if marks.gained {
                e.pending = false;
            }
            if !prev_nofail && !e.pending {
                // Counted lines were handed out with the last failure.
                e.lines = 0;
            }
            if host.is_some() {
                e.host = host;
            }
            if user.is_some() {
                e.user = user;
            }
            e.nofail = nofail;
            e.gained = marks.gained;
            e
        } else if !marks.forget {
            let mut e = Entry {
                host,
                nofail,
                gained: marks.gained,
                ..Entry::default()
            };
            add_user(&mut e.users, user.as_deref());
            e.user = user;
            self.insert(id.clone(), e, now)
        } else {
            transient.host = host;
            transient.nofail = nofail;
            transient.gained = marks.gained;
            transient.user = user;
            &mut transient
        };
        // A failure waiting for its host, or several user names tried:
        // this line is a failure whatever its marks say.
        if std::mem::take(&mut e.pending) || users_tried > 1 {
            e.nofail = false;
            e.gained = false;
            counts_nofail = false;
            counts_gained = false;
        }
        if !counts_nofail {
            e.lines += std::mem::take(&mut e.nofail_lines) + u32::from(!counts_gained);
        } else if !marks.forget {
            e.nofail_lines += 1;
        }
        let view = ConnView {
            users: e.users.clone(),
            lines: e.lines,
        };
        let found = if e.nofail {
            LineMatch::NoMatch { time }
        } else {
            match &e.host {
                Some(h) => LineMatch::Failure(Failure {
                    host: h.clone(),
                    regex,
                    user: e.user.clone(),
                    time,
                }),
                None => {
                    e.pending = true;
                    LineMatch::NoMatch { time }
                }
            }
        };
        if marks.forget && live {
            self.entries.remove(&*id);
        }
        (found, view)
    }

    /// Holds `e` for connection `id`, pushing out the oldest connection
    /// when the table is full.
    fn insert(&mut self, id: Box<str>, mut e: Entry, now: SystemTime) -> &mut Entry {
        // Ids forgotten or expired since they were queued.
        while let Some((seq, front)) = self.order.front() {
            let stale = self
                .entries
                .get(front)
                .is_none_or(|f| f.seq != *seq || f.expires.is_some_and(|t| t <= now));
            if !stale && self.entries.len() < CAPACITY {
                break;
            }
            let (seq, front) = self.order.pop_front().expect("front exists");
            if self.entries.get(&front).is_some_and(|f| f.seq == seq) {
                self.entries.remove(&front);
                if !stale {
                    self.evicted += 1;
                }
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(seq, k)| entries.get(k).is_some_and(|f| f.seq == *seq));
        }
        self.seq += 1;
        e.seq = self.seq;
        e.expires = now.checked_add(TTL);
        self.order.push_back((self.seq, id.clone()));
        self.entries.entry(id).insert_entry(e).into_mut()
    }
}

/// An empty user name stays the failure's user but is no name tried.
fn add_user(users: &mut Vec<String>, user: Option<&str>) {
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        if !users.iter().any(|x| x == u) {
            users.push(u.to_string());
        }
    }
}

#[cfg(test)]
mod tests;
