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

use std::collections::hash_map::Entry as Entry_;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, SystemTime};

use super::{Failure, Host, LineMatch, TimeFound};

/// Connections held at once, per filter instance: forty times fail2ban's,
/// and far above sshd's own limit on connections not yet logged in
/// (MaxStartups, 100 by default); small enough to stay in cache.
pub const CAPACITY: usize = 4_096;

/// How long after its first line a connection is remembered (fail2ban's
/// value: longer than sshd's default LoginGraceTime of two minutes).
pub const TTL: Duration = Duration::from_secs(5 * 60);

/// A connection's id: what `<F-MLFID>` captured, held inline up to
/// [`ConnId::INLINE`] bytes (`host sshd[pid]: ` fits), so that matching a
/// line allocates nothing for it.
#[derive(Clone)]
pub struct ConnId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Inline {
        len: u8,
        bytes: [u8; ConnId::INLINE],
    },
    Heap(Box<[u8]>),
}

impl ConnId {
    pub const INLINE: usize = 46;

    pub fn new(id: &str) -> ConnId {
        let b = id.as_bytes();
        if b.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..b.len()].copy_from_slice(b);
            ConnId(IdRepr::Inline {
                len: b.len() as u8,
                bytes,
            })
        } else {
            ConnId(IdRepr::Heap(b.into()))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            IdRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdRepr::Heap(b) => b,
        }
    }
}

impl PartialEq for ConnId {
    fn eq(&self, o: &ConnId) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl Eq for ConnId {}

// Hashed as its bytes, so that a `&[u8]` finds it.
impl Hash for ConnId {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h)
    }
}

impl std::borrow::Borrow<[u8]> for ConnId {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        String::from_utf8_lossy(self.as_bytes()).fmt(f)
    }
}

/// A line a failregex matched in a filter that tracks connections, before
/// the connection's state decides what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLine {
    /// What `<F-MLFID>` captured.
    pub id: ConnId,
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
    /// Unix seconds after which the entry is forgotten.
    expires: u64,
    host: Option<Host>,
    user: Option<String>,
    /// Hash of the first non-empty user name tried; whether another
    /// followed is all the rules need.
    first_user: Option<u64>,
    several_users: bool,
    /// The names themselves, only for a [`ConnView`] (tests, scoring).
    names: Vec<String>,
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
    entries: HashMap<ConnId, Entry, foldhash::fast::RandomState>,
    /// Ids in insertion order, for eviction; may hold ids forgotten since
    /// (their `seq` no longer matches), compacted when they pile up.
    order: VecDeque<(u64, ConnId)>,
    seq: u64,
    evicted: u64,
    /// Keep user names for [`ConnView`]s.
    keep_names: bool,
    hasher: foldhash::fast::RandomState,
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    /// Connections that also keep the user names each tried, for
    /// [`resolve_viewed`](Self::resolve_viewed).
    pub fn with_names() -> Connections {
        Connections {
            keep_names: true,
            ..Connections::default()
        }
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
        match found {
            LineMatch::Connection(line) => self.decide(*line, now, None),
            other => other,
        }
    }

    /// [`resolve`](Self::resolve), also telling what the connection knew
    /// (its user names only [`with_names`](Self::with_names)).
    pub fn resolve_viewed(&mut self, found: LineMatch, now: SystemTime) -> (LineMatch, ConnView) {
        let mut view = ConnView::default();
        let found = match found {
            LineMatch::Connection(line) => self.decide(*line, now, Some(&mut view)),
            other => other,
        };
        (found, view)
    }

    fn decide(
        &mut self,
        line: ConnLine,
        now: SystemTime,
        view: Option<&mut ConnView>,
    ) -> LineMatch {
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
        let user_hash = user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| self.hasher.hash_one(u));
        let keep_names = self.keep_names;
        let secs = unix_secs(now);
        let live = match self.entries.get(id.as_bytes()) {
            Some(e) if e.expires <= secs => {
                self.entries.remove(id.as_bytes());
                false
            }
            Some(_) => true,
            None => false,
        };
        let mut transient = Entry::default();
        let mut several_users = false;
        let e: &mut Entry = if live {
            let e = self.entries.get_mut(id.as_bytes()).expect("checked live");
            add_user(e, user_hash, user.as_deref(), keep_names);
            several_users = e.several_users;
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
        } else {
            let e = if marks.forget {
                &mut transient
            } else {
                self.insert(id.clone(), secs)
            };
            e.host = host;
            e.nofail = nofail;
            e.gained = marks.gained;
            add_user(e, user_hash, user.as_deref(), keep_names);
            e.user = user;
            e
        };
        // A failure waiting for its host, or several user names tried:
        // this line is a failure whatever its marks say.
        if std::mem::take(&mut e.pending) || several_users {
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
        if let Some(v) = view {
            v.users = e.names.clone();
            v.lines = e.lines;
        }
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
            self.entries.remove(id.as_bytes());
        }
        found
    }

    /// A new entry for connection `id`, pushing out the oldest connection
    /// when the table is full.
    fn insert(&mut self, id: ConnId, secs: u64) -> &mut Entry {
        while self.entries.len() >= CAPACITY {
            let Some((seq, front)) = self.order.pop_front() else {
                break;
            };
            // Ids forgotten since they were queued have no entry of theirs.
            if let Entry_::Occupied(o) = self.entries.entry(front) {
                if o.get().seq == seq {
                    if o.get().expires > secs {
                        self.evicted += 1;
                    }
                    o.remove();
                }
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(seq, k)| entries.get(k.as_bytes()).is_some_and(|f| f.seq == *seq));
        }
        self.seq += 1;
        self.order.push_back((self.seq, id.clone()));
        let e = Entry {
            seq: self.seq,
            expires: secs.saturating_add(TTL.as_secs()),
            ..Entry::default()
        };
        self.entries.entry(id).insert_entry(e).into_mut()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LineMatch {
    /// The match as the only line of its connection: for a caller that
    /// looks at one line on its own (a line that names its host and is a
    /// failure stays one; one that needs earlier lines is none).
    pub fn alone(self, now: SystemTime) -> LineMatch {
        match self {
            LineMatch::Connection(_) => Connections::new().resolve(self, now),
            other => other,
        }
    }
}

/// Notes a user name the connection tried (an empty one is none).
fn add_user(e: &mut Entry, hash: Option<u64>, user: Option<&str>, keep_names: bool) {
    let Some(h) = hash else { return };
    match e.first_user {
        None => e.first_user = Some(h),
        Some(f) if f != h => e.several_users = true,
        Some(_) => {}
    }
    if keep_names {
        let u = user.unwrap_or_default();
        let names = &mut e.names;
        if !names.iter().any(|x| x == u) {
            names.push(u.to_string());
        }
    }
}

#[cfg(test)]
mod tests;
