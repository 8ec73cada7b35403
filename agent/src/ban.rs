//! Ban records and the per-jail accounting that decides what the XDP maps hold.
//!
//! One address may be banned by several jails at once. Each jail's ban is kept
//! as its own record; the map entry reflects the *longest* of them (its class
//! too), so a short jail's unban never lifts or softens a longer ban.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
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

/// See [`BanBook::loader`].
pub struct BookLoader<'a> {
    book: &'a mut BanBook,
    /// Into an empty book: gathered, then installed whole.
    bulk: Option<BookRows>,
}

impl BookLoader<'_> {
    pub fn push(&mut self, rec: BanRecord) {
        match &mut self.bulk {
            Some(rows) => rows.push_record(&rec),
            None => {
                self.book.add(rec);
            }
        }
    }

    pub fn finish(self) {
        if let Some(rows) = self.bulk {
            self.book.install(rows.build(), UnixSecs::MIN);
        }
    }
}

/// Many bans gathered away from the book (at start, on the store's reading
/// thread, while the XDP program loads), then made into the book's own
/// structures there ([`build`](Self::build)), so that the book only takes
/// them over ([`BanBook::install`]). Per row: no heap allocation (the jail
/// name is interned from the borrowed text).
#[derive(Default)]
pub struct BookRows {
    jails: JailNames,
    rows: Vec<(Key, Slot)>,
}

impl BookRows {
    /// One jail's ban of one target; a later push of the same target and
    /// jail replaces it.
    pub fn push(
        &mut self,
        target: Target,
        jail: &str,
        class: BanClass,
        banned_at: UnixSecs,
        expires_at: Option<UnixSecs>,
        failures: u32,
    ) {
        let id = self.jails.intern(jail);
        let slot = Slot::new(class, banned_at, expires_at, failures);
        self.rows.push(((target, id), slot));
    }

    pub fn push_record(&mut self, rec: &BanRecord) {
        self.push(
            rec.target,
            &rec.jail,
            rec.class,
            rec.banned_at,
            rec.expires_at,
            rec.failures,
        );
    }

    /// Sorted into the book's map (nodes full), with its expiry heap and
    /// counts (all but the labels, which need the book's labeller).
    pub fn build(self) -> BuiltBook {
        let BookRows { jails, mut rows } = self;
        // Stable: of equal keys the last one pushed stays last. Rows come
        // mostly in order (ban order, or a snapshot's), which this sort
        // finds as runs.
        rows.sort_by_key(|(k, _)| *k);
        rows.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                *earlier = *later;
                true
            } else {
                false
            }
        });
        let expiry: Vec<_> = rows
            .iter()
            .filter_map(|((t, id), s)| s.expiry().map(|e| Reverse((e, *t, *id))))
            .collect();
        let mut built = BuiltBook {
            jails,
            records: rows.into_iter().collect(),
            expiry: BinaryHeap::from(expiry),
            tally: BanTally::default(),
        };
        built.tally = tally_of(&built.records, &built.jails, None);
        built
    }
}

/// A book's content made away from it: see [`BookRows`].
pub struct BuiltBook {
    jails: JailNames,
    records: BTreeMap<Key, Slot>,
    expiry: BinaryHeap<Reverse<(UnixSecs, Target, JailId)>>,
    tally: BanTally,
}

impl BuiltBook {
    /// Records (target and jail pairs) it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A jail name's index in the book: names are few and long-lived, and a
/// million records must not each hold a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct JailId(u32);

impl JailId {
    const FIRST: JailId = JailId(0);
    const LAST: JailId = JailId(u32::MAX);
}

/// The names behind [`JailId`]s. Never shrinks: jails come from the
/// config, the fleet's nodes and a few built-in names.
#[derive(Default)]
struct JailNames {
    names: Vec<Box<str>>,
    ids: std::collections::HashMap<Box<str>, JailId>,
}

impl JailNames {
    fn id(&self, name: &str) -> Option<JailId> {
        self.ids.get(name).copied()
    }

    fn intern(&mut self, name: &str) -> JailId {
        if let Some(id) = self.id(name) {
            return id;
        }
        let id = JailId(u32::try_from(self.names.len()).expect("fewer than 2^32 jail names"));
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: JailId) -> &str {
        &self.names[id.0 as usize]
    }
}

/// `expires_at` of a permanent ban in a [`Slot`].
const PERMANENT: UnixSecs = UnixSecs::MAX;

/// One jail's ban of one target as the book keeps it: fixed size, no heap
/// (the matched lines live in the store only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    banned_at: UnixSecs,
    /// [`PERMANENT`] for a permanent ban.
    expires_at: UnixSecs,
    failures: u32,
    class: BanClass,
}

impl Slot {
    fn of(rec: &BanRecord) -> Slot {
        Slot::new(rec.class, rec.banned_at, rec.expires_at, rec.failures)
    }

    fn new(
        class: BanClass,
        banned_at: UnixSecs,
        expires_at: Option<UnixSecs>,
        failures: u32,
    ) -> Slot {
        Slot {
            banned_at,
            // A finite expiry never reads as permanent.
            expires_at: expires_at.map_or(PERMANENT, |e| e.min(PERMANENT - 1)),
            failures,
            class,
        }
    }

    fn expiry(&self) -> Option<UnixSecs> {
        (self.expires_at != PERMANENT).then_some(self.expires_at)
    }

    /// Lasts longer than `other` (permanent beats any expiry; on a tie the
    /// harsher class).
    fn outlasts(&self, other: &Slot) -> bool {
        self.expires_at > other.expires_at
            || (self.expires_at == other.expires_at && self.class > other.class)
    }
}

type Key = (Target, JailId);

fn target_range(t: &Target) -> std::ops::RangeInclusive<Key> {
    (*t, JailId::FIRST)..=(*t, JailId::LAST)
}

/// All active bans, by target and jail, with an expiry index and running
/// counts. Ordered by target, so a long listing can be read in slices
/// that resume after the last target read, while bans keep changing.
///
/// Compact on purpose (issue 12: a million bans): a record is a fixed-size
/// key and value in one ordered map, jail names are interned, and the
/// expiry index is a heap whose stale entries (a ban replaced or lifted)
/// are dropped when they surface, or all at once when they outnumber the
/// live ones.
#[derive(Default)]
pub struct BanBook {
    records: BTreeMap<Key, Slot>,
    /// Earliest expiry first. Its top is always live (see `settle`).
    expiry: BinaryHeap<Reverse<(UnixSecs, Target, JailId)>>,
    jails: JailNames,
    tally: BanTally,
    labeller: Option<Labeller>,
}

impl fmt::Debug for BanBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BanBook")
            .field("records", &self.records.len())
            .field("tally", &self.tally)
            .field("labelled", &self.labeller.is_some())
            .finish()
    }
}

impl BanBook {
    pub fn len_targets(&self) -> usize {
        // Every banned target has exactly one map entry, of one class.
        self.tally.drop + self.tally.tarpit
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
            let mut by_label = BTreeMap::new();
            for (t, _) in self.effective_all() {
                if let Some(name) = l(&t) {
                    count_up(&mut by_label, &name);
                }
            }
            self.tally.by_label = by_label;
        }
        self.labeller = labeller;
    }

    fn record(&self, key: &Key, slot: &Slot) -> BanRecord {
        BanRecord {
            target: key.0,
            jail: self.jails.name(key.1).to_string(),
            class: slot.class,
            banned_at: slot.banned_at,
            expires_at: slot.expiry(),
            failures: slot.failures,
            matches: Vec::new(),
        }
    }

    fn effective_slot(&self, target: &Target) -> Option<(&Key, &Slot)> {
        self.records
            .range(target_range(target))
            .reduce(|best, r| if r.1.outlasts(best.1) { r } else { best })
    }

    /// The record that decides the map entry: the one lasting longest.
    pub fn effective(&self, target: &Target) -> Option<BanRecord> {
        self.effective_slot(target).map(|(k, s)| self.record(k, s))
    }

    pub fn records(&self, target: &Target) -> Vec<BanRecord> {
        self.records
            .range(target_range(target))
            .map(|(k, s)| self.record(k, s))
            .collect()
    }

    /// Has the target any ban?
    fn holds(&self, target: &Target) -> bool {
        self.records.range(target_range(target)).next().is_some()
    }

    /// Has `jail` an active (not yet due) ban of exactly `target`?
    pub fn has_active(&self, target: &Target, jail: &str, now: UnixSecs) -> bool {
        self.jails.id(jail).is_some_and(|id| {
            self.records
                .get(&(*target, id))
                .is_some_and(|s| s.expires_at > now)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = BanRecord> + '_ {
        self.records.iter().map(|(k, s)| self.record(k, s))
    }

    /// The banned targets after `after` (from the first when `None`), in
    /// order, with their records: one slice of a listing.
    pub fn targets_after(
        &self,
        after: Option<&Target>,
    ) -> impl Iterator<Item = (Target, Vec<BanRecord>)> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = match after {
            Some(t) => Excluded((*t, JailId::LAST)),
            None => Unbounded,
        };
        let mut rest = self.records.range((lower, Unbounded)).peekable();
        std::iter::from_fn(move || {
            let (first, slot) = rest.next()?;
            let mut recs = vec![self.record(first, slot)];
            while let Some((k, s)) = rest.next_if(|(k, _)| k.0 == first.0) {
                recs.push(self.record(k, s));
            }
            Some((first.0, recs))
        })
    }

    /// The banned prefixes that cover `target` (not `target` itself):
    /// one lookup per shorter prefix length, not a walk of the book.
    pub fn covering(&self, target: &Target) -> Vec<Target> {
        (0..target.prefix())
            .filter_map(|len| Target::new(target.addr(), len).ok())
            .filter(|t| self.holds(t))
            .collect()
    }

    /// Each banned target with the class of its map entry, in one pass (no
    /// per-target lookups).
    pub fn effective_all(&self) -> impl Iterator<Item = (Target, BanClass)> + '_ {
        effective_of(&self.records)
    }

    /// Add (or replace) `jail`'s ban of the target. The matched lines are
    /// not kept.
    pub fn add(&mut self, rec: BanRecord) -> MapChange {
        let target = rec.target;
        let before = self.effective_slot(&target).map(|(_, s)| s.class);
        let id = self.jails.intern(&rec.jail);
        let slot = Slot::of(&rec);
        match self.records.insert((target, id), slot) {
            Some(old) => {
                if old.expires_at != slot.expires_at {
                    self.push_expiry(&slot, target, id);
                    self.settle();
                }
            }
            None => {
                count_up(&mut self.tally.records_by_jail, &rec.jail);
                self.push_expiry(&slot, target, id);
            }
        }
        self.change(&target, before)
    }

    /// Fill the book with many records at once (start-up); see
    /// [`BookLoader`].
    pub fn add_all(&mut self, recs: impl IntoIterator<Item = BanRecord>) {
        let mut loader = self.loader();
        for r in recs {
            loader.push(r);
        }
        loader.finish();
    }

    /// A loader for many records. Into an empty book they are sorted and
    /// built in one pass, nodes full (a million adds one by one take
    /// seconds); a book that holds bans already takes them one by one.
    /// Later records replace earlier ones of the same target and jail.
    pub fn loader(&mut self) -> BookLoader<'_> {
        BookLoader {
            bulk: self.records.is_empty().then(BookRows::default),
            book: self,
        }
    }

    /// Takes over `built` (start-up): whole into an empty book, else
    /// record by record as [`add`](Self::add) does. Records that expired
    /// at or before `now` are left out. Returns how many records it took.
    pub fn install(&mut self, built: BuiltBook, now: UnixSecs) -> usize {
        if !self.records.is_empty() || !self.jails.names.is_empty() {
            let mut taken = 0;
            for (k, s) in &built.records {
                if s.expires_at > now {
                    self.add(BanRecord {
                        target: k.0,
                        jail: built.jails.name(k.1).to_string(),
                        class: s.class,
                        banned_at: s.banned_at,
                        expires_at: s.expiry(),
                        failures: s.failures,
                        matches: Vec::new(),
                    });
                    taken += 1;
                }
            }
            return taken;
        }
        let labeller = self.labeller.take();
        self.jails = built.jails;
        self.records = built.records;
        self.expiry = built.expiry;
        self.tally = built.tally;
        // Rows read ahead predate the store's own expiry at start.
        self.expire(now);
        self.settle();
        self.set_labeller(labeller);
        self.records.len()
    }

    fn push_expiry(&mut self, slot: &Slot, target: Target, id: JailId) {
        if let Some(e) = slot.expiry() {
            self.expiry.push(Reverse((e, target, id)));
        }
        // Replacements leave stale entries behind: past twice the live
        // ones, the heap is made again from the records.
        if self.expiry.len() > 2 * self.records.len() + 1024 {
            self.expiry = self
                .records
                .iter()
                .filter_map(|((t, id), s)| s.expiry().map(|e| Reverse((e, *t, *id))))
                .collect();
        }
    }

    /// Is this expiry entry the live record's?
    fn live(&self, exp: UnixSecs, target: &Target, id: JailId) -> bool {
        self.records
            .get(&(*target, id))
            .is_some_and(|s| s.expires_at == exp)
    }

    /// Drop stale entries off the top of the expiry heap, so that
    /// `next_expiry` is exact.
    fn settle(&mut self) {
        while let Some(&Reverse((exp, t, id))) = self.expiry.peek() {
            if self.live(exp, &t, id) {
                break;
            }
            self.expiry.pop();
        }
    }

    /// Remove the target's bans: one jail's, or all of them. Returns the
    /// records removed and what the map must do.
    pub fn remove(&mut self, target: &Target, jail: Option<&str>) -> (Vec<BanRecord>, MapChange) {
        let before = self.effective_slot(target).map(|(_, s)| s.class);
        let keys: Vec<Key> = match jail {
            Some(j) => match self.jails.id(j) {
                Some(id) if self.records.contains_key(&(*target, id)) => vec![(*target, id)],
                _ => Vec::new(),
            },
            None => self
                .records
                .range(target_range(target))
                .map(|(k, _)| *k)
                .collect(),
        };
        if keys.is_empty() {
            return (Vec::new(), MapChange::Unchanged);
        }
        let mut removed = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(s) = self.records.remove(&k) {
                let rec = self.record(&k, &s);
                count_down(&mut self.tally.records_by_jail, &rec.jail);
                removed.push(rec);
            }
        }
        self.settle();
        (removed, self.change(target, before))
    }

    /// Remove every record that expired at or before `now`.
    pub fn expire(&mut self, now: UnixSecs) -> Vec<(BanRecord, MapChange)> {
        let mut out = Vec::new();
        while let Some(&Reverse((exp, target, id))) = self.expiry.peek() {
            if exp > now {
                break;
            }
            self.expiry.pop();
            if !self.live(exp, &target, id) {
                continue;
            }
            let jail = self.jails.name(id).to_string();
            let (removed, change) = self.remove(&target, Some(&jail));
            out.extend(removed.into_iter().map(|r| (r, change)));
        }
        out
    }

    /// The next expiry time, for the timer.
    pub fn next_expiry(&self) -> Option<UnixSecs> {
        self.expiry.peek().map(|Reverse((t, _, _))| *t)
    }

    /// What the map must do, given the class before the change; the
    /// per-class and per-label counts follow the map entry.
    fn change(&mut self, target: &Target, before: Option<BanClass>) -> MapChange {
        let after = self.effective_slot(target).map(|(_, s)| s.class);
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
        tally_of(&self.records, &self.jails, self.labeller.as_ref())
    }
}

/// The counts of `records`, by one walk.
fn tally_of(
    records: &BTreeMap<Key, Slot>,
    jails: &JailNames,
    labeller: Option<&Labeller>,
) -> BanTally {
    let mut t = BanTally::default();
    let mut per_jail = vec![0usize; jails.names.len()];
    for (_, id) in records.keys() {
        per_jail[id.0 as usize] += 1;
    }
    t.records_by_jail = per_jail
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (jails.name(JailId(id as u32)).to_string(), n))
        .collect();
    for (target, class) in effective_of(records) {
        *t.class(class) += 1;
        if let Some(name) = labeller.and_then(|l| l(&target)) {
            count_up(&mut t.by_label, &name);
        }
    }
    t
}

/// Each target of `records` with the class of its map entry (the record
/// lasting longest decides), in one pass.
fn effective_of(records: &BTreeMap<Key, Slot>) -> impl Iterator<Item = (Target, BanClass)> + '_ {
    let mut rest = records.iter().peekable();
    std::iter::from_fn(move || {
        let (first, mut best) = rest.next()?;
        while let Some((_, s)) = rest.next_if(|(k, _)| k.0 == first.0) {
            if s.outlasts(best) {
                best = s;
            }
        }
        Some((first.0, best.class))
    })
}

/// The jail name of bans made by hand with `xban ban`.
pub const MANUAL_JAIL: &str = "manual";

/// A ban or unban that happened, for actions and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BanEvent {
    pub kind: BanEventKind,
    pub record: BanRecord,
    /// Unbans: why (`expired`, `request`, `removed-from-file`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanEventKind {
    Ban,
    Unban,
}

#[cfg(test)]
mod tests;
