//! Ban records and the per-jail accounting that decides what the XDP maps hold.
//!
//! One address may be banned by several jails at once. Each jail's ban is kept
//! as its own record; the map entry reflects the *longest* of them (its class
//! too), so a short jail's unban never lifts or softens a longer ban.

use std::collections::{BTreeMap, BTreeSet};
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

/// Names a target for a count kept per name (its country): `None` when the
/// target has no name.
pub type Labeller = std::sync::Arc<dyn Fn(&Target) -> Option<String> + Send + Sync>;

/// Counts kept as bans change, so that `status` and `/metrics` never walk
/// the book: with a million bans a walk holds the event loop for tens of
/// milliseconds, and every ban waits behind it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BanTally {
    /// Records per owning jail (one target banned by two jails counts in
    /// both).
    pub records_by_jail: BTreeMap<String, usize>,
    /// Banned targets by the class of their map entry.
    pub drop: usize,
    pub tarpit: usize,
    /// Banned targets per label (see [`BanBook::set_labeller`]).
    pub by_label: BTreeMap<String, usize>,
}

impl BanTally {
    fn class(&mut self, class: BanClass) -> &mut usize {
        match class {
            BanClass::Drop => &mut self.drop,
            BanClass::Tarpit => &mut self.tarpit,
        }
    }
}

fn count_up(counts: &mut BTreeMap<String, usize>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

fn count_down(counts: &mut BTreeMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// All active bans, by target and jail, with an expiry index and running
/// counts. Ordered by target, so a long listing can be read in slices
/// that resume after the last target read, while bans keep changing.
#[derive(Default)]
pub struct BanBook {
    by_target: BTreeMap<Target, Vec<BanRecord>>,
    expiry: BTreeSet<(UnixSecs, Target, String)>,
    tally: BanTally,
    labeller: Option<Labeller>,
}

impl fmt::Debug for BanBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BanBook")
            .field("targets", &self.by_target.len())
            .field("tally", &self.tally)
            .field("labelled", &self.labeller.is_some())
            .finish()
    }
}

impl BanBook {
    pub fn len_targets(&self) -> usize {
        self.by_target.len()
    }

    /// The running counts.
    pub fn tally(&self) -> &BanTally {
        &self.tally
    }

    /// Has `jail` any ban now?
    pub fn has_jail(&self, jail: &str) -> bool {
        self.tally.records_by_jail.contains_key(jail)
    }

    /// Count banned targets per label from now on (`None`: stop). The
    /// labels of the bans already held are counted again, once.
    pub fn set_labeller(&mut self, labeller: Option<Labeller>) {
        self.tally.by_label.clear();
        if let Some(l) = &labeller {
            for t in self.by_target.keys() {
                if let Some(name) = l(t) {
                    count_up(&mut self.tally.by_label, &name);
                }
            }
        }
        self.labeller = labeller;
    }

    /// The record that decides the map entry: the one lasting longest.
    pub fn effective(&self, target: &Target) -> Option<&BanRecord> {
        self.by_target.get(target).and_then(|recs| longest(recs))
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

    /// The banned targets after `after` (from the first when `None`), in
    /// order, with their records: one slice of a listing.
    pub fn targets_after(
        &self,
        after: Option<&Target>,
    ) -> impl Iterator<Item = (&Target, &[BanRecord])> {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = match after {
            Some(t) => Excluded(*t),
            None => Unbounded,
        };
        self.by_target
            .range((lower, Unbounded))
            .map(|(t, recs)| (t, recs.as_slice()))
    }

    /// The banned prefixes that cover `target` (not `target` itself):
    /// one lookup per shorter prefix length, not a walk of the book.
    pub fn covering(&self, target: &Target) -> Vec<Target> {
        (0..target.prefix())
            .filter_map(|len| Target::new(target.addr(), len).ok())
            .filter(|t| self.by_target.contains_key(t))
            .collect()
    }

    /// Each banned target with the record that decides its map entry, in
    /// one pass (no per-target lookups).
    pub fn effective_all(&self) -> impl Iterator<Item = (&Target, &BanRecord)> {
        self.by_target
            .iter()
            .filter_map(|(t, recs)| longest(recs).map(|r| (t, r)))
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
            count_up(&mut self.tally.records_by_jail, &rec.jail);
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
            count_down(&mut self.tally.records_by_jail, &r.jail);
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

    /// What the map must do, given the class before the change; the
    /// per-class and per-label counts follow the map entry.
    fn change(&mut self, target: &Target, before: Option<BanClass>) -> MapChange {
        let after = self.effective(target).map(|r| r.class);
        if before == after {
            return MapChange::Unchanged;
        }
        if let Some(b) = before {
            *self.tally.class(b) -= 1;
        }
        if let Some(a) = after {
            *self.tally.class(a) += 1;
        }
        if before.is_none() != after.is_none() {
            if let Some(name) = self.labeller.as_ref().and_then(|l| l(target)) {
                if after.is_some() {
                    count_up(&mut self.tally.by_label, &name);
                } else {
                    count_down(&mut self.tally.by_label, &name);
                }
            }
        }
        match after {
            Some(class) => MapChange::Set(class),
            None => MapChange::Remove,
        }
    }

    /// The counts made again by walking the book: what the running ones
    /// must always equal.
    pub fn recount(&self) -> BanTally {
        let mut t = BanTally::default();
        for r in self.iter() {
            count_up(&mut t.records_by_jail, &r.jail);
        }
        for (target, r) in self.effective_all() {
            *t.class(r.class) += 1;
            if let Some(name) = self.labeller.as_ref().and_then(|l| l(target)) {
                count_up(&mut t.by_label, &name);
            }
        }
        t
    }
}

fn longest(recs: &[BanRecord]) -> Option<&BanRecord> {
    recs.iter()
        .reduce(|best, r| if r.outlasts(best) { r } else { best })
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

    /// The running counts equal a recount after any sequence of adds,
    /// replacements, removals and expiries, labels included.
    #[test]
    fn running_counts_equal_a_recount() {
        let mut b = BanBook::default();
        let label: Labeller = std::sync::Arc::new(|t: &Target| {
            Some(if t.is_ipv4() { "v4" } else { "v6" }.to_string())
        });
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let targets = [
            "203.0.113.1",
            "203.0.113.2",
            "203.0.113.0/24",
            "198.51.100.7",
            "2001:db8::1",
            "2001:db8::/64",
        ];
        let jails = ["ssh", "web", "manual"];
        for step in 0..5000 {
            if step == 1000 {
                // A labeller set late counts what is already held.
                b.set_labeller(Some(label.clone()));
                assert_eq!(b.tally(), &b.recount());
            }
            let t = targets[next(targets.len() as u64) as usize];
            let j = jails[next(jails.len() as u64) as usize];
            let class = if next(2) == 0 {
                BanClass::Drop
            } else {
                BanClass::Tarpit
            };
            let expires = match next(3) {
                0 => None,
                n => Some(step + n as i64 * 7),
            };
            match next(5) {
                0 | 1 => {
                    b.add(rec(t, j, class, expires));
                }
                2 => {
                    b.remove(&t.parse().unwrap(), Some(j));
                }
                3 => {
                    b.remove(&t.parse().unwrap(), None);
                }
                _ => {
                    b.expire(step);
                }
            }
            assert_eq!(b.tally(), &b.recount(), "after step {step}");
            assert_eq!(b.tally().drop + b.tally().tarpit, b.len_targets());
        }
        b.set_labeller(None);
        assert!(b.tally().by_label.is_empty());
        assert_eq!(b.tally(), &b.recount());
    }

    #[test]
    fn covering_prefixes_are_found_by_lookup() {
        let mut b = BanBook::default();
        b.add(rec("203.0.113.0/24", "a", BanClass::Drop, None));
        b.add(rec("203.0.0.0/16", "a", BanClass::Drop, None));
        b.add(rec("203.0.113.5", "a", BanClass::Drop, None));
        b.add(rec("2001:db8::/32", "a", BanClass::Drop, None));
        let host: Target = "203.0.113.5".parse().unwrap();
        let mut cover: Vec<String> = b.covering(&host).iter().map(|t| t.to_string()).collect();
        cover.sort();
        assert_eq!(cover, ["203.0.0.0/16", "203.0.113.0/24"]);
        let v6: Target = "2001:db8:1::9".parse().unwrap();
        assert_eq!(b.covering(&v6).len(), 1);
        let other: Target = "198.51.100.1".parse().unwrap();
        assert!(b.covering(&other).is_empty());
    }

    #[test]
    fn a_listing_resumes_after_the_last_target_read() {
        let mut b = BanBook::default();
        for i in 0..10 {
            b.add(rec(&format!("198.51.100.{i}"), "a", BanClass::Drop, None));
        }
        let first: Vec<Target> = b.targets_after(None).take(4).map(|(t, _)| *t).collect();
        // A ban removed and one added between slices: the rest still comes
        // once each, in order.
        b.remove(&"198.51.100.5".parse().unwrap(), None);
        b.add(rec("198.51.100.200", "a", BanClass::Drop, None));
        let rest: Vec<Target> = b.targets_after(first.last()).map(|(t, _)| *t).collect();
        let all: Vec<Target> = first.iter().chain(&rest).copied().collect();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 10);
    }
}
