//! Bans the store could not write (a full disk, an I/O error): they are in
//! the kernel and the ban book already, and wait here, bounded, until the
//! store takes them again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ban::{BanRecord, UnixSecs};

/// Bans held at most. Each is kept without its matched lines (those could be
/// 64 KiB each), so the backlog stays within a few tens of megabytes. When it
/// is full the oldest ban leaves it: that ban stays in the kernel until it
/// expires or the agent stops, but a restart before the disk has space
/// again does not restore it.
pub const BACKLOG_MAX: usize = 100_000;

/// How often a write is tried again while bans wait.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// How often the condition is logged again while it lasts.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What `status` and the metrics show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// Bans in the kernel waiting to be written to the store.
    pub backlog: usize,
    pub backlog_max: usize,
    /// Bans that left a full backlog unwritten (kept in the kernel only).
    pub backlog_dropped: u64,
    /// Failed writes of bans to the store, since start.
    pub write_failures: u64,
    /// Unix time since when writes fail; `None` while the store is healthy.
    pub failing_since: Option<UnixSecs>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub struct StoreBacklog {
    bans: VecDeque<(BanRecord, UnixSecs)>,
    health: StoreHealth,
    last_try: Option<Instant>,
    last_reminder: Option<Instant>,
}

impl StoreBacklog {
    /// A write failed; `bans` (with their history time) wait for the next.
    pub fn failed(&mut self, bans: Vec<(BanRecord, UnixSecs)>, error: &str, now: UnixSecs) {
        self.health.write_failures += 1;
        self.health.last_error = Some(error.to_string());
        let first = self.health.failing_since.is_none();
        if first {
            self.health.failing_since = Some(now);
            self.last_reminder = Some(Instant::now());
        }
        for (rec, at) in bans {
            if self.bans.len() >= BACKLOG_MAX {
                if let Some((old, _)) = self.bans.pop_front() {
                    self.health.backlog_dropped += 1;
                    tracing::error!(
                        "store backlog full ({BACKLOG_MAX} bans): the oldest, {} jail={}, stays in the kernel but will not survive a restart",
                        old.target,
                        old.jail
                    );
                }
            }
            self.bans.push_back((
                BanRecord {
                    matches: Vec::new(),
                    ..rec
                },
                at,
            ));
        }
        self.health.backlog = self.bans.len();
        if first {
            tracing::error!(
                "ban database write failed: {error}: bans still go to the kernel and wait in memory (up to {BACKLOG_MAX}) to be written; retrying every {}s. Free space on the state directory's filesystem",
                RETRY_EVERY.as_secs()
            );
        }
    }

    /// Time to try writing the backlog again? Also logs the reminder.
    pub fn due(&mut self) -> bool {
        if self.bans.is_empty() && self.health.failing_since.is_none() {
            return false;
        }
        if self
            .last_reminder
            .is_some_and(|t| t.elapsed() >= REMIND_EVERY)
        {
            self.last_reminder = Some(Instant::now());
            tracing::error!(
                backlog = self.bans.len(),
                dropped = self.health.backlog_dropped,
                "ban database still not writable ({}): bans are enforced but {} wait to be stored",
                self.health.last_error.as_deref().unwrap_or("?"),
                self.bans.len()
            );
        }
        let due = self.last_try.is_none_or(|t| t.elapsed() >= RETRY_EVERY);
        if due {
            self.last_try = Some(Instant::now());
        }
        due
    }

    /// The bans to write, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &(BanRecord, UnixSecs)> {
        self.bans.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// The backlog was written.
    pub fn written(&mut self) {
        let n = self.bans.len();
        self.bans.clear();
        self.health.backlog = 0;
        if let Some(since) = self.health.failing_since.take() {
            tracing::info!(
                written = n,
                "ban database writable again (it failed from unix time {since}): the waiting bans are stored"
            );
        }
        self.health.last_error = None;
    }

    /// A ban lifted (expired, unbanned) before it was stored.
    pub fn forget(&mut self, target: &crate::addr::Target, jail: Option<&str>) {
        self.bans
            .retain(|(r, _)| !(r.target == *target && jail.is_none_or(|j| r.jail == j)));
        self.health.backlog = self.bans.len();
    }

    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            backlog_max: BACKLOG_MAX,
            ..self.health.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ban::BanClass;

    fn rec(i: usize) -> BanRecord {
        BanRecord {
            target: crate::addr::Target::host(std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            ))),
            jail: "ssh".into(),
            class: BanClass::Drop,
            banned_at: 1,
            expires_at: Some(100),
            failures: 3,
            matches: vec!["a matched line".into()],
        }
    }

    #[test]
    fn bounded_drops_the_oldest_and_recovers() {
        let mut b = StoreBacklog::default();
        let many: Vec<_> = (0..BACKLOG_MAX + 3).map(|i| (rec(i), 7)).collect();
        b.failed(many, "database or disk is full", 1000);
        let h = b.health();
        assert_eq!((h.backlog, h.backlog_dropped), (BACKLOG_MAX, 3));
        assert_eq!(h.failing_since, Some(1000));
        assert_eq!(b.pending().next().unwrap().0.target, rec(3).target);
        assert!(b.pending().all(|(r, _)| r.matches.is_empty()));
        assert!(b.due());
        assert!(!b.due(), "retried every RETRY_EVERY, not every tick");
        b.forget(&rec(3).target, None);
        assert_eq!(b.health().backlog, BACKLOG_MAX - 1);
        b.written();
        let h = b.health();
        assert_eq!((h.backlog, h.failing_since), (0, None));
        assert_eq!(h.write_failures, 1);
    }
}
