//! The fast path: the exact-match bucket tables, overflow hashes and
//! region directory the program reads, kept in step with the ban tries
//! (which stay the record). Entries that fit nowhere are trie-only, their
//! regions flagged for a trie lookup, and move into the fast maps once
//! room is made.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use aya::maps::MapError;
use xban_common::{BanValue, NetKey4, NetKey6};

use super::mapped::Table;
use super::maps::{class_of, dump_trie, gone_ok, is_errno, trie_rows};
use super::{AtLoad, FastPathFamily, FastPathStatus, KernelAtLoad, XdpMaps};
use crate::addr::Target;

/// A ban as the fast maps key it: the address bytes as native-endian
/// words, as the program loads them from the packet (the codec's key).
pub(super) use xban_common::fastpath::FastKey as Entry;

/// An [`Entry`] to and from the agent's [`Target`].
pub(super) trait EntryExt: Sized {
    fn of(t: &Target) -> Self;
    fn v6(&self) -> bool;
    fn target(&self) -> Result<Target>;
}

impl EntryExt for Entry {
    fn of(t: &Target) -> Entry {
        let len = t.prefix() as u32;
        match (t.v4_octets(), t.v6_octets()) {
            (Some(a), _) => Entry::v4(a, len),
            (_, Some(a)) => Entry::v6(a, len),
            _ => unreachable!("a target is IPv4 or IPv6"),
        }
    }

    fn v6(&self) -> bool {
        self.is_v6()
    }

    fn target(&self) -> Result<Target> {
        let len = self.prefix_len();
        Ok(match (self.v4_octets(), self.v6_octets()) {
            (Some(a), _) => Target::from_v4(a, len)?,
            (_, Some(a)) => Target::from_v6(a, len)?,
            _ => unreachable!("an entry is IPv4 or IPv6"),
        })
    }
}

/// The directory slots whose region `t` covers or lies in.
pub(super) fn dir_slots(t: &Target) -> Vec<u32> {
    let len = t.prefix() as u32;
    if let Some(a) = t.v4_octets() {
        return xban_common::dir_slots_v4(a, len).collect();
    }
    let a = t.v6_octets().expect("v6 target");
    match xban_common::dir_regions_v6(&a, len) {
        None => (0..xban_common::DIR_SLOTS).collect(),
        Some(regions) => {
            let mut slots: Vec<u32> = regions.map(xban_common::dir_slot_v6).collect();
            slots.sort_unstable();
            slots.dedup();
            slots
        }
    }
}

/// Counts behind the `dir_*` slots: per slot, how many prefix bans of each
/// length and how many allowlist entries touch its region. A bit is set
/// while its count is non-zero.
#[derive(Default)]
pub(super) struct Directory {
    /// (IPv6?, slot) → counts.
    slots: std::collections::HashMap<(bool, u32), SlotCounts>,
    /// Slots with a non-zero fallback count, per family.
    fallback_slots: [usize; 2],
}

#[derive(Default)]
pub(super) struct SlotCounts {
    /// Count per prefix length, indexed by length (0..=127).
    lens: Vec<u32>,
    allow: u32,
    /// Trie-only bans touching the region.
    fallback: u32,
}

impl SlotCounts {
    pub(super) fn words(&self) -> ([u64; 2], u64) {
        let mut w = [0u64; 2];
        for (len, &n) in self.lens.iter().enumerate() {
            if n > 0 {
                let (i, bit) = xban_common::fastpath::dir_len_bit(len as u32);
                w[i] |= bit;
            }
        }
        let mut flags = 0;
        if self.allow > 0 {
            flags |= xban_common::DIR_ALLOW;
        }
        if self.fallback > 0 {
            flags |= xban_common::DIR_FALLBACK;
        }
        (w, flags)
    }
}

pub(super) enum Touch {
    Net(u8),
    Allow,
    Fallback,
}

impl Directory {
    /// Adds (`up`) or removes one entry's touch on each of `slots`.
    pub(super) fn count(&mut self, v6: bool, slots: &[u32], what: &Touch, up: bool) {
        for &slot in slots {
            let c = self.slots.entry((v6, slot)).or_default();
            let n = match what {
                Touch::Net(len) => {
                    let len = *len as usize;
                    if c.lens.len() <= len {
                        c.lens.resize(len + 1, 0);
                    }
                    &mut c.lens[len]
                }
                Touch::Allow => &mut c.allow,
                Touch::Fallback => &mut c.fallback,
            };
            let was = *n;
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
            if matches!(what, Touch::Fallback) && (was == 0) != (*n == 0) {
                let f = &mut self.fallback_slots[v6 as usize];
                *f = if up { *f + 1 } else { f.saturating_sub(1) };
            }
        }
    }

    pub(super) fn words(&self, v6: bool, slot: u32) -> ([u64; 2], u64) {
        self.slots
            .get(&(v6, slot))
            .map(SlotCounts::words)
            .unwrap_or_default()
    }

    /// Slots of a family in trie fallback.
    pub(super) fn fallback_regions(&self, v6: bool) -> usize {
        self.fallback_slots[v6 as usize]
    }
}

/// The trie-only entries, indexed by bucket (a freed way takes one of its
/// own bucket) and counted per family, so that every operation on them is
/// cheap however many there are.
#[derive(Default)]
pub(super) struct TrieOnly {
    values: std::collections::HashMap<Entry, BanValue>,
    by_bucket: std::collections::HashMap<(bool, u32), Vec<Entry>>,
    per_family: [usize; 2],
}

impl TrieOnly {
    pub(super) fn get(&self, e: &Entry) -> Option<&BanValue> {
        self.values.get(e)
    }

    pub(super) fn contains_key(&self, e: &Entry) -> bool {
        self.values.contains_key(e)
    }

    pub(super) fn insert(&mut self, e: Entry, v: BanValue) {
        if self.values.insert(e, v).is_none() {
            self.by_bucket
                .entry((e.v6(), e.bucket()))
                .or_default()
                .push(e);
            self.per_family[e.v6() as usize] += 1;
        }
    }

    pub(super) fn remove(&mut self, e: &Entry) {
        if self.values.remove(e).is_some() {
            let key = (e.v6(), e.bucket());
            if let Some(list) = self.by_bucket.get_mut(&key) {
                list.retain(|x| x != e);
                if list.is_empty() {
                    self.by_bucket.remove(&key);
                }
            }
            self.per_family[e.v6() as usize] -= 1;
        }
    }

    pub(super) fn clear(&mut self) {
        *self = TrieOnly::default();
    }

    pub(super) fn len(&self, v6: bool) -> usize {
        self.per_family[v6 as usize]
    }

    /// An entry of `bucket`, or with `any`, of any bucket of the family.
    pub(super) fn candidate(&self, v6: bool, bucket: u32, any: bool) -> Option<Entry> {
        if let Some(list) = self.by_bucket.get(&(v6, bucket)) {
            return list.first().copied();
        }
        if !any {
            return None;
        }
        self.by_bucket
            .iter()
            .find(|((f, _), _)| *f == v6)
            .and_then(|(_, list)| list.first().copied())
    }
}

/// What `read_state` read: the ban tries' entries and the fast maps',
/// each sorted by entry.
pub(super) struct Read {
    trie: Vec<(Entry, Target, BanValue)>,
    fast: Vec<(Entry, u32)>,
}

/// Where an entry is in the fast maps.
pub(super) enum Place {
    Way(usize),
    Over,
    /// In the trie only, its regions in fallback.
    TrieOnly,
    Absent,
}

/// A full kernel hash answers E2BIG (preallocated or not, at max_entries);
/// ENOMEM when elements cannot be allocated.
pub(super) fn is_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<MapError>()
            .is_some_and(|m| is_errno(m, libc::E2BIG) || is_errno(m, libc::ENOMEM))
    })
}

impl XdpMaps {
    pub(super) fn table(&self, e: &Entry) -> &Table {
        if e.v6() {
            &self.tab_v6
        } else {
            &self.tab_v4
        }
    }

    /// Every entry of the overflow hashes, read once, in batches where the
    /// kernel has them.
    pub(super) fn over_rows(&self) -> Result<Vec<(Entry, BanValue)>> {
        use aya::maps::IterableMap;
        let mut out = Vec::new();
        match dump_trie::<4>(self.over_v4.map()).context("read over_v4 in batches")? {
            Some(rows) => out.extend(rows.into_iter().map(|(len, a, v)| (Entry::v4(a, len), v))),
            None => {
                for item in self.over_v4.iter() {
                    let (k, v) = item.context("read over_v4")?;
                    out.push((Entry::v4(k.addr, k.prefix_len), v));
                }
            }
        }
        match dump_trie::<16>(self.over_v6.map()).context("read over_v6 in batches")? {
            Some(rows) => out.extend(rows.into_iter().map(|(len, a, v)| (Entry::v6(a, len), v))),
            None => {
                for item in self.over_v6.iter() {
                    let (k, v) = item.context("read over_v6")?;
                    out.push((Entry::v6(k.addr, k.prefix_len), v));
                }
            }
        }
        Ok(out)
    }

    /// Rebuild the in-memory counts (overflow, table, directory) from the
    /// fast maps and the allowlist, each read once. Trie-only entries are
    /// not known here (see `read_state`). Returns the fast maps' entries
    /// with their class, sorted, when `list` asks for them (a warm start
    /// with a restore marker needs the counts only).
    pub(super) fn read_fast(&mut self, list: bool) -> Result<Vec<(Entry, u32)>> {
        let over = self.over_rows()?;
        self.spilled.clear();
        self.in_over = [0; 2];
        for (e, _) in &over {
            *self.spilled.entry((e.v6(), e.bucket())).or_default() += 1;
            self.in_over[e.v6() as usize] += 1;
        }
        self.dir = Directory::default();
        self.trie_only.clear();
        for t in self.allow_entries()? {
            self.dir
                .count(!t.is_ipv4(), &dir_slots(&t), &Touch::Allow, true);
        }
        if !list {
            // Counted where they are. An entry in two places (a crash
            // between writes) counts twice here, so the counts differ from
            // the marker's and the start reads everything back.
            let mut in_table = [0; 2];
            let mut nets = Vec::new();
            for tab in [&self.tab_v4, &self.tab_v6] {
                tab.for_each(|e, _| {
                    in_table[e.v6() as usize] += 1;
                    if !e.is_host() {
                        nets.push(e);
                    }
                });
            }
            self.in_table = in_table;
            nets.extend(over.iter().map(|(e, _)| *e).filter(|e| !e.is_host()));
            for e in nets {
                self.count_net(&e)?;
            }
            return Ok(Vec::new());
        }
        // Sorted, and joined by a merge in `read_state`: hash sets of a
        // million entries took seconds at start.
        let mut fast = self.tab_v4.entries();
        fast.extend(self.tab_v6.entries());
        fast.extend(over.iter().map(|(e, v)| (*e, v.class)));
        drop(over);
        fast.sort_unstable_by_key(|(e, _)| *e);
        // One entry in two places (a crash between writes) counts once.
        fast.dedup_by_key(|(e, _)| *e);
        // The overflow hashes' entries are counted in `in_over` already.
        self.in_table = [false, true].map(|v6| {
            fast.iter().filter(|(e, _)| e.v6() == v6).count() - self.in_over[v6 as usize]
        });
        for (e, _) in &fast {
            if !e.is_host() {
                self.count_net(e)?;
            }
        }
        Ok(fast)
    }

    /// A prefix entry of the fast maps into the directory's counts.
    fn count_net(&mut self, e: &Entry) -> Result<()> {
        let t = e.target()?;
        self.dir
            .count(e.v6(), &dir_slots(&t), &Touch::Net(t.prefix()), true);
        Ok(())
    }

    /// Rebuild the in-memory counts (directory, overflow, trie-only) from
    /// the maps. Returns what it read of the ban tries and of the fast
    /// maps: with a million bans each read takes a second or more.
    pub(super) fn read_state(&mut self) -> Result<Read> {
        let fast = self.read_fast(true)?;
        // What the trie holds beyond the fast maps is trie-only: its
        // regions stay in fallback until it finds room.
        let mut trie: Vec<(Entry, Target, BanValue)> = self
            .trie_entries()?
            .into_iter()
            .map(|(t, v)| (Entry::of(&t), t, v))
            .collect();
        trie.sort_unstable_by_key(|(e, _, _)| *e);
        let mut f = fast.iter().peekable();
        for (e, t, v) in &trie {
            while f.next_if(|(x, _)| x < e).is_some() {}
            if f.peek().is_none_or(|(x, _)| x != e) {
                self.mark_trie_only(e, t, *v);
            }
        }
        Ok(Read { trie, fast })
    }

    /// Every entry of the ban tries, with its raw value: in batches where
    /// the kernel has them (a million entries are two million calls one by
    /// one).
    pub(super) fn trie_entries(&self) -> Result<Vec<(Target, BanValue)>> {
        let mut out = Vec::new();
        for (len, data, v) in trie_rows(&self.bans_v4, "bans_v4")? {
            out.push((Target::from_v4(data, len)?, v));
        }
        for (len, data, v) in trie_rows(&self.bans_v6, "bans_v6")? {
            out.push((Target::from_v6(data, len)?, v));
        }
        Ok(out)
    }

    /// Counts `e` (already in the trie) as trie-only, its regions in
    /// fallback; the caller writes the slots.
    pub(super) fn mark_trie_only(&mut self, e: &Entry, t: &Target, value: BanValue) -> Vec<u32> {
        let slots = dir_slots(t);
        if !t.is_host() {
            self.dir
                .count(e.v6(), &slots, &Touch::Net(t.prefix()), true);
        }
        self.trie_only.insert(*e, value);
        self.dir.count(e.v6(), &slots, &Touch::Fallback, true);
        slots
    }

    /// Make the table, overflow hash and directory hold exactly what the ban
    /// and allow tries say. Only differences are written: the program may be
    /// reading them (a restarted agent adopting its predecessor's maps).
    /// With a restore marker that the maps still match, the tries are not
    /// read: the fast maps held them at the last stop (see `warm`).
    pub(super) fn sync(&mut self, warm: Option<super::WarmMaps>) -> Result<()> {
        if let Some(w) = warm {
            if self.sync_warm(w)? {
                self.write_flags_and_slots();
                return Ok(());
            }
        }
        let read = self.read_state()?;
        // Both sorted by entry: one merge finds what differs.
        let mut stale: Vec<Entry> = Vec::new();
        let mut differ = Vec::new();
        let mut f = read.fast.iter().peekable();
        for (e, t, v) in &read.trie {
            while let Some((x, _)) = f.next_if(|(x, _)| x < e) {
                stale.push(*x);
            }
            let have = f.next_if(|(x, _)| x == e).map(|(_, c)| *c);
            if self.trie_only.contains_key(e) || have != Some(v.class) {
                differ.push((*e, *t, *v));
            }
        }
        stale.extend(f.map(|(x, _)| *x));
        let fast_only = self.write_fast_only(&read.fast, &stale)?;
        self.at_load = Some(AtLoad {
            read: KernelAtLoad::Read(
                read.trie
                    .iter()
                    .map(|(_, t, v)| (*t, class_of(v)))
                    .chain(fast_only)
                    .collect(),
            ),
            since: Default::default(),
        });
        for (e, t, v) in differ {
            if self.trie_only.contains_key(&e) {
                // Room may have been made since: try the fast maps again.
                self.promote(&e)?;
            } else {
                self.fast_set(&t, v)?;
            }
        }
        self.write_flags_and_slots();
        Ok(())
    }

    /// Entries the fast maps hold and the tries lack (`stale`, of `fast`):
    /// a crash while a cold start's tries were filled behind the fast path
    /// (see `fill`), or a trie entry deleted by hand. The program drops them,
    /// so they are written into the tries, never removed: restore keeps,
    /// adopts or expires them like any kernel entry. Returns them with
    /// their class.
    fn write_fast_only(
        &mut self,
        fast: &[(Entry, u32)],
        stale: &[Entry],
    ) -> Result<Vec<(Target, Option<crate::ban::BanClass>)>> {
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(stale.len());
        for e in stale {
            let Ok(i) = fast.binary_search_by_key(e, |(x, _)| *x) else {
                continue;
            };
            let value = BanValue {
                class: fast[i].1,
                flags: 0,
            };
            rows.push((e.target()?, value));
        }
        let out = rows
            .iter()
            .map(|(t, v)| (*t, class_of(v)))
            .collect::<Vec<_>>();
        let (rows4, rows6) = super::maps::rows_by_family(rows);
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        super::maps::update_trie::<4>(self.bans_v4.map().fd().as_fd().as_raw_fd(), &rows4)
            .context("write into bans_v4 the entries only the fast path held")?;
        super::maps::update_trie::<16>(self.bans_v6.map().fd().as_fd().as_raw_fd(), &rows6)
            .context("write into bans_v6 the entries only the fast path held")?;
        tracing::warn!(
            entries = out.len(),
            "the fast path held bans the ban tries lacked (a crash while a cold start filled them, or entries deleted by hand): written into the tries, never removed"
        );
        Ok(out)
    }

    /// Overflow flags and directory slots as the counts say, whatever a
    /// crash left.
    fn write_flags_and_slots(&mut self) {
        self.warn_occupancy();
        for v6 in [false, true] {
            let tab = if v6 { &self.tab_v6 } else { &self.tab_v4 };
            for b in 0..xban_common::TAB_BUCKETS {
                let on = self.spilled.get(&(v6, b)).is_some_and(|&n| n > 0) as u64;
                if tab.overflow(b).load(Ordering::Acquire) != on {
                    tab.overflow(b).store(on, Ordering::Release);
                }
            }
        }
        for slot in 0..xban_common::DIR_SLOTS {
            let (nets, allow) = self.dir.words(false, slot);
            self.dir_v4.set(slot, nets, allow);
            let (nets, allow) = self.dir.words(true, slot);
            self.dir_v6.set(slot, nets, allow);
        }
    }

    /// Write the directory slots of `t`'s regions from the counts.
    pub(super) fn write_slots(&mut self, t: &Target, slots: &[u32]) {
        let dir = if t.is_ipv4() {
            &self.dir_v4
        } else {
            &self.dir_v6
        };
        for &slot in slots {
            let (nets, allow) = self.dir.words(!t.is_ipv4(), slot);
            dir.set(slot, nets, allow);
        }
    }

    /// Where `e` is: a way of its bucket, the overflow hash, or nowhere.
    pub(super) fn place(&self, e: &Entry) -> Result<Place> {
        if let Some((i, _)) = self.table(e).find(e) {
            return Ok(Place::Way(i));
        }
        if self.trie_only.contains_key(e) {
            return Ok(Place::TrieOnly);
        }
        if !self.spilled.contains_key(&(e.v6(), e.bucket())) {
            return Ok(Place::Absent);
        }
        let r = match *e {
            Entry::V4 { addr, len } => self.over_v4.get(
                &NetKey4 {
                    prefix_len: len,
                    addr: addr.to_ne_bytes(),
                },
                0,
            ),
            Entry::V6 { .. } => {
                let t = e.target()?;
                self.over_v6.get(
                    &NetKey6 {
                        prefix_len: t.prefix() as u32,
                        addr: t.v6_octets().expect("v6 target"),
                    },
                    0,
                )
            }
        };
        match r {
            Ok(_) => Ok(Place::Over),
            Err(MapError::KeyNotFound) => Ok(Place::Absent),
            Err(e) => Err(e).context("read the XDP overflow hash"),
        }
    }

    pub(super) fn over_insert(&mut self, t: &Target, value: BanValue) -> Result<()> {
        if t.is_ipv4() {
            self.over_v4.insert(
                NetKey4 {
                    prefix_len: t.prefix() as u32,
                    addr: t.v4_octets().expect("v4 target"),
                },
                value,
                0,
            )
        } else {
            self.over_v6.insert(
                NetKey6 {
                    prefix_len: t.prefix() as u32,
                    addr: t.v6_octets().expect("v6 target"),
                },
                value,
                0,
            )
        }
        .with_context(|| format!("write ban of {t} into the XDP overflow hash (is it full?)"))
    }

    /// Puts `e` into a free way of its bucket, else the overflow hash.
    /// `Ok(false)`: both are full (nothing written).
    pub(super) fn try_place(&mut self, e: &Entry, t: &Target, value: BanValue) -> Result<bool> {
        let f = e.v6() as usize;
        if self.in_table[f] + self.in_over[f] >= self.capacity {
            return Ok(false);
        }
        if let Some(i) = self.table(e).free_way(e) {
            self.table(e).put(e, i, value);
            self.in_table[e.v6() as usize] += 1;
            return Ok(true);
        }
        // Entry first, then the flag that sends readers to it.
        match self.over_insert(t, value) {
            Ok(()) => {}
            Err(err) if is_full(&err) => return Ok(false),
            Err(err) => return Err(err),
        }
        self.in_over[e.v6() as usize] += 1;
        let n = self.spilled.entry((e.v6(), e.bucket())).or_default();
        *n += 1;
        if *n == 1 {
            self.table(e)
                .overflow(e.bucket())
                .store(1, Ordering::Release);
        }
        Ok(true)
    }

    /// The fast-map half of `set_ban`. An entry the fast maps cannot hold
    /// stays in the trie only, its regions flagged for a trie lookup.
    pub(super) fn fast_set(&mut self, t: &Target, value: BanValue) -> Result<()> {
        let e = Entry::of(t);
        match self.place(&e)? {
            Place::Way(i) => self.table(&e).put(&e, i, value),
            Place::Over => self.over_insert(t, value)?,
            // The trie, which the program reads there, has the new value.
            Place::TrieOnly => {
                self.trie_only.insert(e, value);
            }
            Place::Absent => {
                if !self.try_place(&e, t, value)? {
                    let slots = self.mark_trie_only(&e, t, value);
                    self.write_slots(t, &slots);
                    tracing::warn!(
                        target = %t,
                        "XDP fast path full: {t} is enforced from the ban trie (slower lookups for its region)"
                    );
                    self.warn_occupancy();
                    return Ok(());
                }
                if !t.is_host() {
                    let slots = dir_slots(t);
                    self.dir
                        .count(e.v6(), &slots, &Touch::Net(t.prefix()), true);
                    self.write_slots(t, &slots);
                }
                self.warn_occupancy();
            }
        }
        Ok(())
    }

    /// Moves trie-only `e` into the fast maps if they have room now, and
    /// lifts its regions' fallback (entry first, then the flag).
    pub(super) fn promote(&mut self, e: &Entry) -> Result<bool> {
        let Some(&value) = self.trie_only.get(e) else {
            return Ok(false);
        };
        let t = e.target()?;
        if !self.try_place(e, &t, value)? {
            return Ok(false);
        }
        self.trie_only.remove(e);
        let slots = dir_slots(&t);
        self.dir.count(e.v6(), &slots, &Touch::Fallback, false);
        self.write_slots(&t, &slots);
        Ok(true)
    }

    /// After an entry left bucket `bucket` (or the overflow hash, `any`),
    /// one trie-only entry of the family that now fits is moved in.
    pub(super) fn promote_after_free(&mut self, v6: bool, bucket: u32, any: bool) -> Result<()> {
        if self.trie_only.len(v6) == 0 {
            return Ok(());
        }
        let candidate = self.trie_only.candidate(v6, bucket, any);
        if let Some(c) = candidate {
            self.promote(&c)?;
        }
        Ok(())
    }

    /// Occupancy of the fast path.
    pub fn fast_path_status(&self) -> FastPathStatus {
        let family = |v6: bool| {
            let ways = if v6 {
                xban_common::TAB_V6_WAYS
            } else {
                xban_common::TAB_V4_WAYS
            };
            FastPathFamily {
                capacity: self.capacity.min(xban_common::BANS_MAX_ENTRIES as usize),
                table_entries: self.in_table[v6 as usize],
                table_capacity: xban_common::TAB_BUCKETS as usize * ways,
                overflow_entries: self.in_over[v6 as usize],
                overflow_capacity: self.over_capacity,
                trie_only: self.trie_only.len(v6),
                fallback_regions: self.dir.fallback_regions(v6),
                trie_pending: self.fill.family(v6).pending(),
            }
        };
        FastPathStatus {
            v4: family(false),
            v6: family(true),
        }
    }

    /// Logs once per crossing when the overflow hash (what decides whether
    /// an entry still fits) passes 80 % and 95 %.
    pub(super) fn warn_occupancy(&mut self) {
        let st = self.fast_path_status();
        for (i, (name, f)) in [("IPv4", st.v4), ("IPv6", st.v6)].into_iter().enumerate() {
            // Whichever is nearer full: the overflow hash (what decides
            // whether an entry that misses its bucket fits) or the capacity.
            let pct = (f.overflow_entries * 100 / f.overflow_capacity.max(1))
                .max((f.table_entries + f.overflow_entries) * 100 / f.capacity.max(1));
            let level = if f.trie_only > 0 || pct >= 95 {
                95
            } else if pct >= 80 {
                80
            } else {
                0
            };
            if level > self.warned[i] {
                tracing::warn!(
                    family = name,
                    table = f.table_entries,
                    overflow = f.overflow_entries,
                    overflow_capacity = f.overflow_capacity,
                    capacity = f.capacity,
                    trie_only = f.trie_only,
                    "XDP fast path {pct}% full for {name}: beyond it ([agent] fast_path_capacity, the overflow hash), bans are enforced from the ban trie (slower per packet in their regions)"
                );
            }
            self.warned[i] = level;
        }
    }

    /// The fast-map half of `remove_ban`.
    pub(super) fn fast_remove(&mut self, t: &Target) -> Result<()> {
        let e = Entry::of(t);
        let place = self.place(&e)?;
        let freed_over = matches!(place, Place::Over);
        match place {
            Place::Way(i) => {
                self.table(&e).clear(&e, i);
                self.in_table[e.v6() as usize] -= 1;
            }
            Place::TrieOnly => {
                self.trie_only.remove(&e);
                let slots = dir_slots(t);
                self.dir.count(e.v6(), &slots, &Touch::Fallback, false);
            }
            Place::Over => {
                gone_ok(if t.is_ipv4() {
                    self.over_v4.remove(&NetKey4 {
                        prefix_len: t.prefix() as u32,
                        addr: t.v4_octets().expect("v4 target"),
                    })
                } else {
                    self.over_v6.remove(&NetKey6 {
                        prefix_len: t.prefix() as u32,
                        addr: t.v6_octets().expect("v6 target"),
                    })
                })
                .with_context(|| format!("remove {t} from the XDP overflow hash"))?;
                let key = (e.v6(), e.bucket());
                self.in_over[e.v6() as usize] = self.in_over[e.v6() as usize].saturating_sub(1);
                let n = self.spilled.get(&key).copied().unwrap_or(1) - 1;
                if n == 0 {
                    self.spilled.remove(&key);
                    self.table(&e)
                        .overflow(e.bucket())
                        .store(0, Ordering::Release);
                } else {
                    self.spilled.insert(key, n);
                }
            }
            Place::Absent => return Ok(()),
        }
        let slots = dir_slots(t);
        if !t.is_host() {
            self.dir
                .count(e.v6(), &slots, &Touch::Net(t.prefix()), false);
        }
        self.write_slots(t, &slots);
        // Room was made: a trie-only entry of the same bucket (a way) or of
        // the family (the overflow hash, or the capacity) may move into the
        // fast maps.
        let f = e.v6() as usize;
        let at_capacity = self.in_table[f] + self.in_over[f] + 1 >= self.capacity;
        self.promote_after_free(e.v6(), e.bucket(), freed_over || at_capacity)
    }
}
