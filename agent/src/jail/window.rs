//! A jail's failure window: per address, the times of its failures within
//! `findtime` and the last few matched lines, for at most `max_tracked`
//! addresses.
//!
//! Compact on purpose (issue 12): every jail that follows a file under
//! attack records most of its lines, so a record is a fixed-size address key
//! and a small value; an address failing once holds its time and one shared
//! line in place, with no allocation of its own. The matched line is copied
//! once per line ([`MatchedLine`]), however many jails count it, and an
//! address keeps at most [`KEPT_LINES`] of them for its ban record.

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Matched lines kept per failure are cut to this, so a hostile log line
/// cannot make the window hold megabytes per address.
pub(crate) const MAX_KEPT_LINE: usize = 512;

/// Matched lines an address keeps for its ban record: the newest ones. Its
/// failures are all counted (times only); with a large maxretry the ban
/// record carries the last `KEPT_LINES` lines and the full count.
pub(crate) const KEPT_LINES: usize = 32;

/// A failure line, shared by the jails that count it: cut and copied once,
/// the first time a jail keeps it.
pub struct MatchedLine<'a> {
    text: &'a str,
    kept: OnceCell<Arc<str>>,
}

impl<'a> MatchedLine<'a> {
    pub fn new(text: &'a str) -> MatchedLine<'a> {
        MatchedLine {
            text,
            kept: OnceCell::new(),
        }
    }

    /// The line as kept, at most [`MAX_KEPT_LINE`] characters.
    fn kept(&self) -> Arc<str> {
        self.kept
            .get_or_init(|| {
                let line = self.text;
                // A line of at most MAX_KEPT_LINE bytes has at most as many
                // characters: no need to count them.
                let cut = match line.len() > MAX_KEPT_LINE {
                    true => line.char_indices().nth(MAX_KEPT_LINE).map(|(cut, _)| cut),
                    false => None,
                };
                Arc::from(&line[..cut.unwrap_or(line.len())])
            })
            .clone()
    }
}

impl<'a> From<&'a str> for MatchedLine<'a> {
    fn from(text: &'a str) -> MatchedLine<'a> {
        MatchedLine::new(text)
    }
}

/// What an address that reached maxretry leaves for its ban.
#[derive(Debug, PartialEq)]
pub struct Caught {
    /// Its failures within findtime (maxretry).
    pub failures: u32,
    /// The newest of their lines (at most [`KEPT_LINES`]), oldest first.
    pub lines: Vec<Arc<str>>,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An address as a fixed-size key: IPv6 as its 128 bits, IPv4 as its
/// IPv4-mapped IPv6 form, so `::ffff:a.b.c.d` counts as `a.b.c.d` (which
/// the jails hand over anyway, `addr::canonical_ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct AddrKey([u64; 2]);

impl AddrKey {
    fn of(addr: IpAddr) -> AddrKey {
        let bits = match addr {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        AddrKey([(bits >> 64) as u64, bits as u64])
    }

    fn addr(self) -> IpAddr {
        let v6 = Ipv6Addr::from((u128::from(self.0[0]) << 64) | u128::from(self.0[1]));
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// Hashes an [`AddrKey`] with two folded multiplications under a secret
/// per-window seed: much cheaper than SipHash for a 16-byte key (every
/// failure of every jail looks its address up), and an attacker who cannot
/// see the seed cannot aim addresses at one bucket.
#[derive(Clone)]
struct AddrHashSeed(u64);

impl AddrHashSeed {
    fn random() -> AddrHashSeed {
        AddrHashSeed(fastrand::u64(..))
    }
}

impl BuildHasher for AddrHashSeed {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(self.0)
    }
}

struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only the u64 words of a key come here in practice; bytes are
        // folded in the same way, eight at a time.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let p = u128::from(self.0 ^ n) * 0x9E37_79B9_7F4A_7C15_u128;
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The failures of one address within findtime.
#[derive(Debug)]
enum Failures {
    /// The common case, in place: one failure (time, line).
    One(i64, Arc<str>),
    /// Several, by time, oldest first; only the newest [`KEPT_LINES`]
    /// carry their line.
    Many(VecDeque<(i64, Option<Arc<str>>)>),
}

impl Failures {
    fn len(&self) -> usize {
        match self {
            Failures::One(..) => 1,
            Failures::Many(q) => q.len(),
        }
    }

    fn newest(&self) -> i64 {
        match self {
            Failures::One(t, _) => *t,
            Failures::Many(q) => q.back().map_or(i64::MIN, |f| f.0),
        }
    }

    /// Adds a failure at `at`, then drops those more than `findtime_ms`
    /// before the newest. Lines may arrive slightly out of order (several
    /// files): the newest time seen counts, not the last one added.
    fn add(&mut self, at: i64, line: Arc<str>, findtime_ms: i64) {
        let q = match self {
            Failures::One(t, l) => {
                let mut q = VecDeque::with_capacity(2);
                q.push_back((*t, Some(l.clone())));
                *self = Failures::Many(q);
                match self {
                    Failures::Many(q) => q,
                    Failures::One(..) => unreachable!("just replaced"),
                }
            }
            Failures::Many(q) => q,
        };
        let n = q.len();
        // In order almost always: at the back.
        let pos = match q.back().is_none_or(|f| f.0 <= at) {
            true => n,
            false => q.iter().rposition(|f| f.0 <= at).map_or(0, |p| p + 1),
        };
        // Lines are kept in the newest KEPT_LINES places only.
        if pos + KEPT_LINES < n + 1 {
            q.insert(pos, (at, None));
        } else {
            match pos == n {
                true => q.push_back((at, Some(line))),
                false => q.insert(pos, (at, Some(line))),
            }
            if n >= KEPT_LINES {
                q[n - KEPT_LINES].1 = None;
            }
        }
        let newest = q.back().map_or(at, |f| f.0);
        while q.front().is_some_and(|f| newest - f.0 > findtime_ms) {
            q.pop_front();
        }
    }

    fn into_caught(self) -> Caught {
        match self {
            Failures::One(_, line) => Caught {
                failures: 1,
                lines: vec![line],
            },
            Failures::Many(q) => Caught {
                failures: q.len() as u32,
                lines: q.into_iter().filter_map(|f| f.1).collect(),
            },
        }
    }
}

#[derive(Debug)]
struct Tracked {
    /// When it last failed, in the window's own order (eviction).
    seq: u64,
    failures: Failures,
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
    failures: HashMap<AddrKey, Tracked, AddrHashSeed>,
    /// Eviction order, oldest first: `(seq, addr)` of addresses with one
    /// failure, and of those with more. An entry whose address has been
    /// touched since (another `seq`) is stale and skipped.
    pub(super) singles: VecDeque<(u64, AddrKey)>,
    pub(super) repeats: VecDeque<(u64, AddrKey)>,
    next_seq: u64,
    /// Addresses forgotten at the cap since the last `take_evictions`.
    evicted: u64,
}

impl std::fmt::Debug for AddrHashSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddrHashSeed")
    }
}

impl JailWindow {
    pub fn new(findtime: Duration, maxretry: u32) -> Self {
        JailWindow {
            findtime_ms: findtime.as_millis() as i64,
            maxretry,
            max_tracked: crate::config::DEFAULT_MAX_TRACKED,
            failures: HashMap::with_hasher(AddrHashSeed::random()),
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
            while let Some((seq, key)) = queue.pop_front() {
                if self.failures.get(&key).is_some_and(|t| t.seq == seq) {
                    self.failures.remove(&key);
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
        let mut live: Vec<(u64, AddrKey, bool)> = self
            .failures
            .iter()
            .map(|(k, t)| (t.seq, *k, t.failures.len() == 1))
            .collect();
        live.sort_unstable_by_key(|(seq, _, _)| *seq);
        self.singles = live.iter().filter(|l| l.2).map(|l| (l.0, l.1)).collect();
        self.repeats = live.iter().filter(|l| !l.2).map(|l| (l.0, l.1)).collect();
    }

    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }

    /// Count one failure at `at` (log time). When this one reaches
    /// `maxretry`, returns the address's failures and forgets them: the ban
    /// takes over.
    pub fn record(&mut self, addr: IpAddr, at: SystemTime, line: &MatchedLine) -> Option<Caught> {
        use std::collections::hash_map::Entry;
        let at = millis(at);
        let key = AddrKey::of(addr);
        // At the cap only: the common case looks the address up once.
        if self.failures.len() >= self.max_tracked && !self.failures.contains_key(&key) {
            self.evict_one();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let count = match self.failures.entry(key) {
            Entry::Vacant(v) => {
                let failures = Failures::One(at, line.kept());
                if self.maxretry <= 1 {
                    return Some(failures.into_caught());
                }
                v.insert(Tracked { seq, failures });
                1
            }
            Entry::Occupied(mut o) => {
                let tracked = o.get_mut();
                tracked.seq = seq;
                tracked.failures.add(at, line.kept(), self.findtime_ms);
                let count = tracked.failures.len();
                if count >= self.maxretry as usize {
                    return Some(o.remove().failures.into_caught());
                }
                count
            }
        };
        if count == 1 {
            self.singles.push_back((seq, key));
        } else {
            self.repeats.push_back((seq, key));
        }
        self.compact();
        None
    }

    /// Drop addresses whose newest failure left the window before `now`.
    pub fn prune(&mut self, now: SystemTime) {
        let now = millis(now);
        let findtime = self.findtime_ms;
        self.failures
            .retain(|_, t| now - t.failures.newest() <= findtime);
        self.compact();
    }

    pub fn forget(&mut self, addr: &IpAddr) {
        self.failures.remove(&AddrKey::of(*addr));
    }

    /// Addresses failing now, with their failure counts.
    pub fn failing(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.failures
            .iter()
            .map(|(k, t)| (k.addr(), t.failures.len()))
    }

    pub fn failing_count(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests;
