//! Ban records and the per-jail accounting that decides what the XDP maps hold.
//!
//! One address may be banned by several jails at once. Each jail's ban is kept
//! as its own record; the map entry reflects the *longest* of them (its class
//! too), so a short jail's unban never lifts or softens a longer ban.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::Target;

/// Unix time in seconds.
pub type UnixSecs = i64;

pub fn now_secs() -> UnixSecs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a ban does to the offender's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BanClass {
    /// Dropped at XDP.
    Drop,
    /// Passed by XDP and held by iptables' TARPIT.
    Tarpit,
}

impl BanClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BanClass::Drop => "drop",
            BanClass::Tarpit => "tarpit",
        }
    }

    pub fn to_kernel(self) -> xban_common::BanClass {
        match self {
            BanClass::Drop => xban_common::BanClass::Drop,
            BanClass::Tarpit => xban_common::BanClass::Tarpit,
        }
    }
}

impl fmt::Display for BanClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BanClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(BanClass::Drop),
            "tarpit" => Ok(BanClass::Tarpit),
            other => Err(format!("`{other}` is not a ban class (use drop or tarpit)")),
        }
    }
}

/// One jail's ban of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    pub target: Target,
    pub jail: String,
    pub class: BanClass,
    pub banned_at: UnixSecs,
    /// `None`: permanent.
    pub expires_at: Option<UnixSecs>,
    pub failures: u32,
    /// The log lines that earned the ban (bounded by the jail's maxretry).
    pub matches: Vec<String>,
}

impl BanRecord {
    fn outlasts(&self, other: &BanRecord) -> bool {
        match (self.expires_at, other.expires_at) {
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => self.class > other.class,
            (Some(a), Some(b)) => a > b || (a == b && self.class > other.class),
        }
    }
}

/// What the kernel maps must hold for a target after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapChange {
    /// Insert or update the entry with this class.
    Set(BanClass),
    /// No ban left: remove the entry.
    Remove,
    /// The entry is already right.
    Unchanged,
}

/// All active bans, by target and jail, with an expiry index.
#[derive(Debug, Default)]
pub struct BanBook {
    by_target: HashMap<Target, Vec<BanRecord>>,
    expiry: BTreeSet<(UnixSecs, Target, String)>,
}

impl BanBook {
    pub fn len_targets(&self) -> usize {
        self.by_target.len()
    }

    /// The record that decides the map entry: the one lasting longest.
    pub fn effective(&self, target: &Target) -> Option<&BanRecord> {
        self.by_target.get(target).and_then(|recs| {
            recs.iter()
                .reduce(|best, r| if r.outlasts(best) { r } else { best })
        })
    }

    pub fn records(&self, target: &Target) -> &[BanRecord] {
        self.by_target.get(target).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Has `jail` an active (not yet due) ban of exactly `target`?
    pub fn has_active(&self, target: &Target, jail: &str, now: UnixSecs) -> bool {
        self.by_target.get(target).is_some_and(|recs| {
            recs.iter()
                .any(|r| r.jail == jail && r.expires_at.is_none_or(|e| e > now))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &BanRecord> {
        self.by_target.values().flatten()
    }

    /// Each banned target with the record that decides its map entry, in
    /// one pass (no per-target lookups).
    pub fn effective_all(&self) -> impl Iterator<Item = (&Target, &BanRecord)> {
        self.by_target.iter().filter_map(|(t, recs)| {
            recs.iter()
                .reduce(|best, r| if r.outlasts(best) { r } else { best })
                .map(|r| (t, r))
        })
    }

    /// Add (or replace) `jail`'s ban of the target.
    pub fn add(&mut self, rec: BanRecord) -> MapChange {
        let before = self.effective(&rec.target).map(|r| r.class);
        let target = rec.target;
        if let Some(exp) = rec.expires_at {
            self.expiry.insert((exp, target, rec.jail.clone()));
        }
        // Almost every target has one ban: room for exactly one, not the
        // four a first push reserves (a million bans, a few hundred MB).
        let recs = self
            .by_target
            .entry(target)
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(old) = recs.iter_mut().find(|r| r.jail == rec.jail) {
            if let Some(exp) = old.expires_at {
                if Some(exp) != rec.expires_at {
                    self.expiry.remove(&(exp, target, old.jail.clone()));
                }
            }
            *old = rec;
        } else {
            recs.push(rec);
        }
        self.change(&target, before)
    }

    /// Remove the target's bans: one jail's, or all of them. Returns the
    /// records removed and what the map must do.
    pub fn remove(&mut self, target: &Target, jail: Option<&str>) -> (Vec<BanRecord>, MapChange) {
        let before = self.effective(target).map(|r| r.class);
        let Some(recs) = self.by_target.get_mut(target) else {
            return (Vec::new(), MapChange::Unchanged);
        };
        let (removed, kept): (Vec<_>, Vec<_>) = recs
            .drain(..)
            .partition(|r| jail.is_none_or(|j| r.jail == j));
        *recs = kept;
        if recs.is_empty() {
            self.by_target.remove(target);
        }
        for r in &removed {
            if let Some(exp) = r.expires_at {
                self.expiry.remove(&(exp, r.target, r.jail.clone()));
            }
        }
        (removed, self.change(target, before))
    }

    /// Remove every record that expired at or before `now`.
    pub fn expire(&mut self, now: UnixSecs) -> Vec<(BanRecord, MapChange)> {
        let mut out = Vec::new();
        while let Some((exp, target, jail)) = self.expiry.first().cloned() {
            if exp > now {
                break;
            }
            self.expiry.pop_first();
            let still_due = self
                .by_target
                .get(&target)
                .and_then(|recs| recs.iter().find(|r| r.jail == jail))
                .is_some_and(|r| r.expires_at == Some(exp));
            if !still_due {
                continue;
            }
            let (removed, change) = self.remove(&target, Some(&jail));
            out.extend(removed.into_iter().map(|r| (r, change)));
        }
        out
    }

    /// The next expiry time, for the timer.
    pub fn next_expiry(&self) -> Option<UnixSecs> {
        self.expiry.first().map(|(t, _, _)| *t)
    }

    fn change(&self, target: &Target, before: Option<BanClass>) -> MapChange {
        match (before, self.effective(target).map(|r| r.class)) {
            (_, None) => {
                if before.is_some() {
                    MapChange::Remove
                } else {
                    MapChange::Unchanged
                }
            }
            (b, Some(now)) if b == Some(now) => MapChange::Unchanged,
            (_, Some(now)) => MapChange::Set(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(target: &str, jail: &str, class: BanClass, expires: Option<i64>) -> BanRecord {
        BanRecord {
            target: target.parse().unwrap(),
            jail: jail.into(),
            class,
            banned_at: 0,
            expires_at: expires,
            failures: 1,
            matches: vec![],
        }
    }

    #[test]
    fn short_jail_unban_never_lifts_longer_ban() {
        let mut b = BanBook::default();
        let t: Target = "203.0.113.5".parse().unwrap();
        assert_eq!(
            b.add(rec("203.0.113.5", "long", BanClass::Tarpit, Some(1000))),
            MapChange::Set(BanClass::Tarpit)
        );
        // A shorter drop ban from another jail does not change the class.
        assert_eq!(
            b.add(rec("203.0.113.5", "short", BanClass::Drop, Some(100))),
            MapChange::Unchanged
        );
        let expired = b.expire(100);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0.jail, "short");
        assert_eq!(expired[0].1, MapChange::Unchanged);
        assert_eq!(b.effective(&t).unwrap().jail, "long");
        let expired = b.expire(1000);
        assert_eq!(expired[0].1, MapChange::Remove);
        assert!(b.effective(&t).is_none());
    }

    #[test]
    fn longer_ban_takes_over_class() {
        let mut b = BanBook::default();
        b.add(rec("203.0.113.5", "a", BanClass::Drop, Some(100)));
        assert_eq!(
            b.add(rec("203.0.113.5", "b", BanClass::Tarpit, None)),
            MapChange::Set(BanClass::Tarpit)
        );
        // Unbanning jail b leaves jail a's drop ban.
        let t: Target = "203.0.113.5".parse().unwrap();
        let (removed, change) = b.remove(&t, Some("b"));
        assert_eq!(removed.len(), 1);
        assert_eq!(change, MapChange::Set(BanClass::Drop));
        let (removed, change) = b.remove(&t, None);
        assert_eq!(removed.len(), 1);
        assert_eq!(change, MapChange::Remove);
        assert_eq!(b.next_expiry(), None);
    }

    #[test]
    fn rebanning_replaces_the_jails_record_and_its_expiry() {
        let mut b = BanBook::default();
        b.add(rec("2001:db8::1", "a", BanClass::Drop, Some(100)));
        assert_eq!(
            b.add(rec("2001:db8::1", "a", BanClass::Drop, Some(500))),
            MapChange::Unchanged
        );
        assert!(b.expire(100).is_empty(), "old expiry must not fire");
        assert_eq!(b.next_expiry(), Some(500));
        assert_eq!(b.expire(500).len(), 1);
        assert_eq!(b.len_targets(), 0);
    }
}
