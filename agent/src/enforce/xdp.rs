//! The XDP side of enforcement: load (or adopt) the program and its pinned
//! maps, attach it through pinned bpf_links, and keep the ban maps in step
//! with the agent's bans: the LPM tries (the record) and the exact-match
//! table, overflow hash and directory the program reads (see `xban_common`).
//!
//! Everything is pinned under the pin directory so that bans keep dropping
//! while the agent is stopped: maps by name, the program as `prog_xdp`, one
//! link per interface under `links/`. A new agent reuses the maps, brings the
//! program's maps in line with the tries (an older agent's pin directory has
//! none of them), and only then swaps its program into the existing links
//! atomically (bpf_link_update), so there is no moment without a program
//! attached or with bans missing.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use xban_common::{stats, AllowValue, BanValue, NetKey4, NetKey6};

use crate::addr::Target;
use crate::ban::BanClass;
use crate::sys::paths::pins;

/// `[agent] xdp_mode`: how XDP attaches.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    Auto,
    Native,
    Generic,
}

impl std::fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpModeSetting::Auto => "auto",
            XdpModeSetting::Native => "native",
            XdpModeSetting::Generic => "generic",
        })
    }
}

/// The XDP object, embedded at build time (see build.rs).
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xban-xdp.o"));
pub(super) const PROGRAM_NAME: &str = "xban_xdp";

/// Per-CPU counters summed, by `xban_common::stats` index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpStats {
    pub seen: u64,
    pub dropped: u64,
    pub passed_allowlisted: u64,
    pub passed_tarpit: u64,
    pub passed_clean: u64,
    pub passed_not_ip: u64,
    /// The XDP tarpit's replies and drops (zero where its map is missing).
    #[serde(flatten, serialize_with = "tarpit_prefixed")]
    pub tarpit: super::tarpit::TarpitStats,
}

/// The tarpit counters as `tarpit_<name>` keys beside the others.
fn tarpit_prefixed<S: serde::Serializer>(
    t: &super::tarpit::TarpitStats,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(8))?;
    for (k, v) in [
        ("tarpit_synack", t.synack),
        ("tarpit_ack", t.ack),
        ("tarpit_rst", t.rst),
        ("tarpit_ignored", t.ignored),
        ("tarpit_over_limit", t.over_limit),
        ("tarpit_not_tcp", t.not_tcp),
        ("tarpit_unanswerable", t.unanswerable),
        ("tarpit_passed_nd", t.passed_nd),
    ] {
        m.serialize_entry(k, &v)?;
    }
    m.end()
}

impl XdpStats {
    fn from_counters(c: &[u64; stats::COUNT as usize]) -> Self {
        XdpStats {
            seen: c[stats::SEEN as usize],
            dropped: c[stats::DROPPED as usize],
            passed_allowlisted: c[stats::PASSED_ALLOWED as usize],
            passed_tarpit: c[stats::PASSED_TARPIT as usize],
            passed_clean: c[stats::PASSED_CLEAN as usize],
            passed_not_ip: c[stats::PASSED_NOT_IP as usize],
            tarpit: Default::default(),
        }
    }
}

type Trie4<V> = LpmTrie<MapData, [u8; 4], V>;
type Trie6<V> = LpmTrie<MapData, [u8; 16], V>;

/// The ban and allow maps, owned by the running agent.
///
/// `bans_v4`/`bans_v6` (LPM tries) hold every ban and are the record the
/// agent reads back. The XDP program reads copies laid out for speed (see
/// `xban_common`): an exact-match bucket table per family that this agent
/// writes through a shared mapping, an overflow hash for entries whose
/// bucket is full, and per region a directory slot listing the prefix
/// lengths banned there and whether the allowlist has entries there. The
/// agent is the only writer; the counts behind the directory and the
/// overflow flags are kept here.
pub struct XdpMaps {
    allow_v4: Trie4<AllowValue>,
    allow_v6: Trie6<AllowValue>,
    bans_v4: Trie4<BanValue>,
    bans_v6: Trie6<BanValue>,
    tab_v4: Table,
    tab_v6: Table,
    over_v4: HashMap<MapData, NetKey4, BanValue>,
    over_v6: HashMap<MapData, NetKey6, BanValue>,
    dir_v4: Dir,
    dir_v6: Dir,
    stats: PerCpuArray<MapData, u64>,
    /// The XDP tarpit's maps (absent in a pin directory an older agent left).
    pub tarpit: Option<super::tarpit::TarpitMaps>,
    /// (IPv6?, bucket) → how many of its entries are in the overflow hash.
    spilled: std::collections::HashMap<(bool, u32), u32>,
    /// Bans that fit neither their bucket nor the overflow hash: in the trie
    /// only, their regions flagged so that the program looks there.
    trie_only: TrieOnly,
    /// Entries in the overflow hashes, per family (the sum of `spilled`).
    in_over: [usize; 2],
    /// Entries in the bucket tables, per family (IPv4, IPv6).
    in_table: [usize; 2],
    /// The highest occupancy warning given (0, 80 or 95 % of the overflow
    /// hash), per family, so that each is logged once per crossing.
    warned: [u8; 2],
    dir: Directory,
    /// The ban tries as read at load, and what was written since, until
    /// restore takes them (see `bans_for_restore`).
    at_load: Option<AtLoad>,
}

/// The ban tries as read at load and every change written since: what
/// restore compares with the store, without a second read of a million
/// entries.
struct AtLoad {
    read: Vec<(Target, Option<BanClass>)>,
    /// `None`: removed since.
    since: std::collections::HashMap<Target, Option<BanClass>>,
}

/// How full the fast path is, per family (`status --json`, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FastPathFamily {
    /// Entries in the exact-match bucket table.
    pub table_entries: usize,
    pub table_capacity: usize,
    /// Entries in the overflow hash (their bucket was full).
    pub overflow_entries: usize,
    pub overflow_capacity: usize,
    /// Bans held by the trie only: neither table nor overflow had room.
    pub trie_only: usize,
    /// Directory slots whose sources are looked up in the trie for that reason.
    pub fallback_regions: usize,
}

/// [`FastPathFamily`] for both families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FastPathStatus {
    pub v4: FastPathFamily,
    pub v6: FastPathFamily,
}

/// The loaded program. Dropping it leaves pinned things in place.
pub struct XdpEnforcer {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    /// Interfaces configured.
    pub attached: Vec<String>,
    /// Each configured interface's link, as last checked (see `links`).
    pub(super) links: Vec<super::links::LinkWatch>,
    pub(super) mode: XdpModeSetting,
    /// Times lost pins (maps, program) were re-created.
    pub(super) pin_repairs: u64,
}

/// A ban trie's entry: prefix length, address, value.
type TrieRow<const N: usize> = (u32, [u8; N], BanValue);

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own "operation not supported" (not in libc), what bpf(2)
/// answers for a batch command the map type lacks.
const ENOTSUPP: i32 = 524;
/// Entries per batch call.
const BATCH: usize = 8192;

/// Every entry of a ban trie with `N`-byte addresses (prefix length,
/// address, value), by BPF_MAP_LOOKUP_BATCH. `None` when the kernel has
/// no batch lookup for the map (then the caller iterates).
fn dump_trie<const N: usize>(map: &MapData) -> Result<Option<Vec<TrieRow<N>>>> {
    let key_size = 4 + N;
    let value_size = std::mem::size_of::<BanValue>();
    let mut keys = vec![0u8; BATCH * key_size];
    let mut values = vec![0u8; BATCH * value_size];
    let mut in_batch = vec![0u8; key_size];
    let mut out_batch = vec![0u8; key_size];
    let fd = map.fd().as_fd().as_raw_fd() as u32 as u64;
    let mut out = Vec::new();
    let mut first = true;
    loop {
        // struct { in_batch, out_batch, keys, values; u32 count, map_fd;
        // u64 elem_flags, flags } of union bpf_attr.
        let mut attr = [
            if first { 0 } else { in_batch.as_ptr() as u64 },
            out_batch.as_mut_ptr() as u64,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            BATCH as u64 | (fd << 32),
            0,
            0,
        ];
        let r = super::links::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = ((attr[4] & 0xffff_ffff) as usize).min(BATCH);
        for i in 0..n {
            let k = &keys[i * key_size..(i + 1) * key_size];
            let len = u32::from_ne_bytes(k[..4].try_into().expect("4 bytes"));
            let data: [u8; N] = k[4..].try_into().expect("N bytes");
            let v = &values[i * value_size..(i + 1) * value_size];
            // SAFETY: `v` holds `size_of::<BanValue>()` bytes the kernel
            // wrote; BanValue is plain old data, read without alignment.
            let value = unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<BanValue>()) };
            out.push((len, data, value));
        }
        match r {
            Ok(_) => {
                in_batch.copy_from_slice(&out_batch);
                first = false;
            }
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Some(out)),
            Err(e)
                if first
                    && out.is_empty()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOTTY | ENOTSUPP)
                    ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every entry of one ban trie: in batches, or one by one where the
/// kernel has no batch lookup for it.
fn trie_rows<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], BanValue>,
    name: &str,
) -> Result<Vec<TrieRow<N>>> {
    if let Some(all) = dump_trie::<N>(aya::maps::IterableMap::map(trie))
        .with_context(|| format!("read {name} in batches"))?
    {
        return Ok(all);
    }
    let mut out = Vec::new();
    for item in trie.iter() {
        let (k, v) = item.with_context(|| format!("read {name}"))?;
        out.push((k.prefix_len(), k.data(), v));
    }
    Ok(out)
}

/// The class a ban value holds (`None`: a value no xban writes).
fn class_of(v: &BanValue) -> Option<BanClass> {
    match xban_common::BanClass::from_u32(v.class) {
        Some(xban_common::BanClass::Drop) => Some(BanClass::Drop),
        Some(xban_common::BanClass::Tarpit) => Some(BanClass::Tarpit),
        None => None,
    }
}

fn key4(t: &Target) -> Key<[u8; 4]> {
    Key::new(t.prefix() as u32, t.v4_octets().expect("v4 target"))
}

fn key6(t: &Target) -> Key<[u8; 16]> {
    Key::new(t.prefix() as u32, t.v6_octets().expect("v6 target"))
}

fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(SyscallError { io_error, .. }) if io_error.raw_os_error() == Some(errno))
}

/// Removing what is not there is the state we want.
fn gone_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn ban_value(class: BanClass) -> BanValue {
    BanValue {
        class: class.to_kernel() as u32,
        flags: 0,
    }
}

/// A ban as the fast maps key it: the address bytes as native-endian words,
/// as the program loads them from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Entry {
    V4 { addr: u32, len: u32 },
    V6 { hi: u64, lo: u64, len: u32 },
}

impl Entry {
    fn of(t: &Target) -> Entry {
        let len = t.prefix() as u32;
        match (t.v4_octets(), t.v6_octets()) {
            (Some(a), _) => Entry::V4 {
                addr: u32::from_ne_bytes(a),
                len,
            },
            (_, Some(a)) => Entry::V6 {
                hi: u64::from_ne_bytes(a[..8].try_into().expect("8 bytes")),
                lo: u64::from_ne_bytes(a[8..].try_into().expect("8 bytes")),
                len,
            },
            _ => unreachable!("a target is IPv4 or IPv6"),
        }
    }

    fn v6(&self) -> bool {
        matches!(self, Entry::V6 { .. })
    }

    fn is_host(&self) -> bool {
        matches!(
            *self,
            Entry::V4 { len: 32, .. } | Entry::V6 { len: 128, .. }
        )
    }

    fn bucket(&self) -> u32 {
        match *self {
            Entry::V4 { addr, len } => xban_common::tab_bucket_v4(addr, len),
            Entry::V6 { hi, lo, len } => xban_common::tab_bucket_v6(hi, lo, len),
        }
    }

    fn target(&self) -> Result<Target> {
        Ok(match *self {
            Entry::V4 { addr, len } => Target::from_v4(addr.to_ne_bytes(), len)?,
            Entry::V6 { hi, lo, len } => {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&hi.to_ne_bytes());
                a[8..].copy_from_slice(&lo.to_ne_bytes());
                Target::from_v6(a, len)?
            }
        })
    }
}

/// An array map (created with BPF_F_MMAPABLE) mapped into this process,
/// as u64 words. The program reads it concurrently, so every word is
/// written with one atomic store.
struct Mapped {
    /// Keeps the map (and the mapping's backing) alive.
    _map: MapData,
    base: *mut u64,
    bytes: usize,
}

// SAFETY: the mapping is owned by the Mapped and only touched through
// atomics; moving it to another thread is fine.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(map: Map, name: &str, bytes: usize) -> Result<Mapped> {
        let Map::Array(data) = map else {
            bail!(
                "map {name} is not an array: run `xban teardown` to clear maps an older xban left"
            );
        };
        // SAFETY: a fresh shared mapping of the map's values (the kernel checks
        // the size against the map); unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("map the XDP map {name} into memory (created without BPF_F_MMAPABLE by another xban? run `xban teardown`)")
            });
        }
        Ok(Mapped {
            _map: data,
            base: base.cast(),
            bytes,
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.bytes / 8);
        // SAFETY: in bounds (checked), 8-aligned (page-aligned base), and
        // valid while self lives.
        unsafe { AtomicU64::from_ptr(self.base.add(i)) }
    }

    /// Stores `v` unless the word already holds it.
    fn set(&self, i: usize, v: u64) {
        let w = self.word(i);
        if w.load(Ordering::Acquire) != v {
            w.store(v, Ordering::Release);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Mapped::new, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// A bucket table (`tab_v4` / `tab_v6`), laid out as `xban_common` says.
struct Table {
    mem: Mapped,
    v6: bool,
}

const V4_BUCKET_WORDS: usize = std::mem::size_of::<xban_common::TabBucketV4>() / 8;
const V6_BUCKET_WORDS: usize = std::mem::size_of::<xban_common::TabBucketV6>() / 8;

impl Table {
    fn new(map: Map, v6: bool, name: &str) -> Result<Table> {
        let words = if v6 { V6_BUCKET_WORDS } else { V4_BUCKET_WORDS };
        let bytes = xban_common::TAB_BUCKETS as usize * words * 8;
        Ok(Table {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.mem.word(i)
    }

    fn bucket_words(&self) -> usize {
        if self.v6 {
            V6_BUCKET_WORDS
        } else {
            V4_BUCKET_WORDS
        }
    }

    fn ways(&self) -> usize {
        if self.v6 {
            xban_common::TAB_V6_WAYS
        } else {
            xban_common::TAB_V4_WAYS
        }
    }

    /// Word index of way `i` of `bucket` (for IPv6, of its `hi` word).
    fn way(&self, bucket: u32, i: usize) -> usize {
        let base = bucket as usize * self.bucket_words() + 1;
        if self.v6 {
            base + 3 * i
        } else {
            base + i
        }
    }

    fn overflow(&self, bucket: u32) -> &AtomicU64 {
        self.word(bucket as usize * self.bucket_words())
    }

    /// The way holding `e`, and its class.
    fn find(&self, e: &Entry) -> Option<(usize, u32)> {
        let b = e.bucket();
        (0..self.ways()).find_map(|i| self.read(b, i, e).map(|c| (i, c)))
    }

    /// The class in way `i` of bucket `b` if it holds `e`.
    fn read(&self, b: u32, i: usize, e: &Entry) -> Option<u32> {
        let w = self.way(b, i);
        match *e {
            Entry::V4 { addr, len } => xban_common::tab_match_v4(
                self.word(w).load(Ordering::Acquire),
                xban_common::tab_key_v4(addr, len),
            ),
            Entry::V6 { hi, lo, len } => {
                let meta = self.word(w + 2).load(Ordering::Acquire);
                let same = self.word(w).load(Ordering::Relaxed) == hi
                    && self.word(w + 1).load(Ordering::Relaxed) == lo;
                xban_common::tab_meta_match_v6(meta, len).filter(|_| same)
            }
        }
    }

    fn free_way(&self, e: &Entry) -> Option<usize> {
        let b = e.bucket();
        (0..self.ways()).find(|&i| {
            let w = self.way(b, i);
            if self.v6 {
                xban_common::tab_meta_free_v6(self.word(w + 2).load(Ordering::Acquire))
            } else {
                self.word(w).load(Ordering::Acquire) >> 40 == 0
            }
        })
    }

    /// Writes `e` with its value (class, geo label) into way `i` (free, or
    /// already holding `e`).
    fn put(&self, e: &Entry, i: usize, value: BanValue) {
        let (class, label) = (value.class, value.flags & 0xffff);
        let w = self.way(e.bucket(), i);
        match *e {
            Entry::V4 { addr, len } => self.word(w).store(
                xban_common::tab_way_v4_labelled(addr, len, class, label),
                Ordering::Release,
            ),
            Entry::V6 { hi, lo, len } => {
                let meta = self.word(w + 2).load(Ordering::Acquire);
                let version = xban_common::tab_meta_version_v6(meta);
                // A new key: address first (the way still reads as free),
                // then meta with a new version. The same key: meta only.
                let version = if xban_common::tab_meta_free_v6(meta) {
                    self.word(w).store(hi, Ordering::Relaxed);
                    self.word(w + 1).store(lo, Ordering::Relaxed);
                    version.wrapping_add(1)
                } else {
                    version
                };
                self.word(w + 2).store(
                    xban_common::tab_meta_v6_labelled(len, class, version, label),
                    Ordering::Release,
                );
            }
        }
    }

    fn clear(&self, e: &Entry, i: usize) {
        let w = self.way(e.bucket(), i);
        if self.v6 {
            let version =
                xban_common::tab_meta_version_v6(self.word(w + 2).load(Ordering::Acquire));
            // Free, with a new version: a reader halfway through sees it changed.
            self.word(w + 2)
                .store((version.wrapping_add(1) as u64) << 32, Ordering::Release);
        } else {
            self.word(w).store(0, Ordering::Release);
        }
    }

    /// Every entry in the table, with its class.
    fn entries(&self) -> Vec<(Entry, u32)> {
        let mut out = Vec::new();
        for b in 0..xban_common::TAB_BUCKETS {
            for i in 0..self.ways() {
                let w = self.way(b, i);
                if self.v6 {
                    let meta = self.word(w + 2).load(Ordering::Acquire);
                    if xban_common::tab_meta_free_v6(meta) {
                        continue;
                    }
                    let len = ((meta >> 8) & 0xff) as u32;
                    if let Some(c) = xban_common::tab_meta_match_v6(meta, len) {
                        let hi = self.word(w).load(Ordering::Relaxed);
                        let lo = self.word(w + 1).load(Ordering::Relaxed);
                        out.push((Entry::V6 { hi, lo, len }, c));
                    }
                } else {
                    let way = self.word(w).load(Ordering::Acquire);
                    let (addr, len) = (way as u32, ((way >> 32) & 0xff) as u32);
                    if let Some(c) =
                        xban_common::tab_match_v4(way, xban_common::tab_key_v4(addr, len))
                    {
                        out.push((Entry::V4 { addr, len }, c));
                    }
                }
            }
        }
        out
    }
}

/// A directory (`dir_v4`: nets, allow; `dir_v6`: nets[0], nets[1], allow).
struct Dir {
    mem: Mapped,
    v6: bool,
}

impl Dir {
    fn new(map: Map, v6: bool, name: &str) -> Result<Dir> {
        let words = if v6 { 3 } else { 2 };
        let bytes = xban_common::DIR_SLOTS as usize * words * 8;
        Ok(Dir {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    /// Writes slot `slot` (words that change only).
    fn set(&self, slot: u32, nets: [u64; 2], allow: u64) {
        let s = slot as usize;
        if self.v6 {
            self.mem.set(3 * s, nets[0]);
            self.mem.set(3 * s + 1, nets[1]);
            self.mem.set(3 * s + 2, allow);
        } else {
            self.mem.set(2 * s, nets[0]);
            self.mem.set(2 * s + 1, allow);
        }
    }
}

/// The directory slots whose region `t` covers or lies in.
fn dir_slots(t: &Target) -> Vec<u32> {
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
struct Directory {
    /// (IPv6?, slot) → counts.
    slots: std::collections::HashMap<(bool, u32), SlotCounts>,
    /// Slots with a non-zero fallback count, per family.
    fallback_slots: [usize; 2],
}

#[derive(Default)]
struct SlotCounts {
    /// Count per prefix length, indexed by length (0..=127).
    lens: Vec<u32>,
    allow: u32,
    /// Trie-only bans touching the region.
    fallback: u32,
}

impl SlotCounts {
    fn words(&self) -> ([u64; 2], u64) {
        let mut w = [0u64; 2];
        for (len, &n) in self.lens.iter().enumerate() {
            if n > 0 {
                w[len / 64] |= 1 << (len % 64);
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

enum Touch {
    Net(u8),
    Allow,
    Fallback,
}

impl Directory {
    /// Adds (`up`) or removes one entry's touch on each of `slots`.
    fn count(&mut self, v6: bool, slots: &[u32], what: &Touch, up: bool) {
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

    fn words(&self, v6: bool, slot: u32) -> ([u64; 2], u64) {
        self.slots
            .get(&(v6, slot))
            .map(SlotCounts::words)
            .unwrap_or_default()
    }

    /// Slots of a family in trie fallback.
    fn fallback_regions(&self, v6: bool) -> usize {
        self.fallback_slots[v6 as usize]
    }
}

/// The trie-only entries, indexed by bucket (a freed way takes one of its
/// own bucket) and counted per family, so that every operation on them is
/// cheap however many there are.
#[derive(Default)]
struct TrieOnly {
    values: std::collections::HashMap<Entry, BanValue>,
    by_bucket: std::collections::HashMap<(bool, u32), Vec<Entry>>,
    per_family: [usize; 2],
}

impl TrieOnly {
    fn get(&self, e: &Entry) -> Option<&BanValue> {
        self.values.get(e)
    }

    fn contains_key(&self, e: &Entry) -> bool {
        self.values.contains_key(e)
    }

    fn insert(&mut self, e: Entry, v: BanValue) {
        if self.values.insert(e, v).is_none() {
            self.by_bucket
                .entry((e.v6(), e.bucket()))
                .or_default()
                .push(e);
            self.per_family[e.v6() as usize] += 1;
        }
    }

    fn remove(&mut self, e: &Entry) {
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

    fn clear(&mut self) {
        *self = TrieOnly::default();
    }

    fn len(&self, v6: bool) -> usize {
        self.per_family[v6 as usize]
    }

    /// An entry of `bucket`, or with `any`, of any bucket of the family.
    fn candidate(&self, v6: bool, bucket: u32, any: bool) -> Option<Entry> {
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
struct Read {
    trie: Vec<(Entry, Target, BanValue)>,
    fast: Vec<(Entry, u32)>,
}

/// Where an entry is in the fast maps.
enum Place {
    Way(usize),
    Over,
    /// In the trie only, its regions in fallback.
    TrieOnly,
    Absent,
}

/// A full kernel hash answers E2BIG (preallocated or not, at max_entries);
/// ENOMEM when elements cannot be allocated.
fn is_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<MapError>()
            .is_some_and(|m| is_errno(m, libc::E2BIG) || is_errno(m, libc::ENOMEM))
    })
}

impl XdpMaps {
    /// Open the pinned maps of a pin directory (for commands run while the
    /// agent is stopped, and for tests). The counts behind the directory and
    /// the overflow flags are read back from the maps; nothing is written.
    pub fn from_pins(pin_dir: &Path) -> Result<XdpMaps> {
        let mut maps = XdpMaps::assemble(|name: &str| open_pinned(pin_dir, name))?;
        maps.read_state()?;
        Ok(maps)
    }

    /// The maps of a freshly loaded object (pinned ones reused), with the
    /// fast maps brought in line with the ban tries: after an upgrade from
    /// an agent without them they start empty, and the program must not
    /// be swapped in before they hold every ban.
    fn from_ebpf(ebpf: &mut Ebpf) -> Result<XdpMaps> {
        let mut maps = XdpMaps::assemble(|name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the XDP object has no map `{name}`"))
        })?;
        let Some(tarpit) = maps.tarpit.as_mut() else {
            bail!("the XDP object lacks the tarpit maps");
        };
        tarpit.ensure_key()?;
        maps.sync()?;
        Ok(maps)
    }

    fn assemble(mut get: impl FnMut(&str) -> Result<Map>) -> Result<XdpMaps> {
        use xban_common as c;
        let tab_v4 = Table::new(get(c::MAP_TAB_V4)?, false, c::MAP_TAB_V4)?;
        let tab_v6 = Table::new(get(c::MAP_TAB_V6)?, true, c::MAP_TAB_V6)?;
        let dir_v4 = Dir::new(get(c::MAP_DIR_V4)?, false, c::MAP_DIR_V4)?;
        let dir_v6 = Dir::new(get(c::MAP_DIR_V6)?, true, c::MAP_DIR_V6)?;
        Ok(XdpMaps {
            allow_v4: get(c::MAP_ALLOW_V4)?.try_into()?,
            allow_v6: get(c::MAP_ALLOW_V6)?.try_into()?,
            bans_v4: get(c::MAP_BANS_V4)?.try_into()?,
            bans_v6: get(c::MAP_BANS_V6)?.try_into()?,
            tab_v4,
            tab_v6,
            over_v4: get(c::MAP_OVER_V4)?.try_into()?,
            over_v6: get(c::MAP_OVER_V6)?.try_into()?,
            dir_v4,
            dir_v6,
            stats: get(c::MAP_STATS)?.try_into()?,
            tarpit: super::tarpit::TarpitMaps::assemble(&mut get).ok(),
            spilled: Default::default(),
            trie_only: Default::default(),
            in_over: [0; 2],
            in_table: [0; 2],
            warned: [0; 2],
            dir: Directory::default(),
            at_load: None,
        })
    }

    fn table(&self, e: &Entry) -> &Table {
        if e.v6() {
            &self.tab_v6
        } else {
            &self.tab_v4
        }
    }

    /// Every entry of the fast maps (table and overflow), with its class.
    fn fast_entries(&self) -> Result<Vec<(Entry, u32)>> {
        let mut out = self.tab_v4.entries();
        out.extend(self.tab_v6.entries());
        for item in self.over_v4.iter() {
            let (k, v) = item.context("read over_v4")?;
            let addr = u32::from_ne_bytes(k.addr);
            out.push((
                Entry::V4 {
                    addr,
                    len: k.prefix_len,
                },
                v.class,
            ));
        }
        for item in self.over_v6.iter() {
            let (k, v) = item.context("read over_v6")?;
            let hi = u64::from_ne_bytes(k.addr[..8].try_into().expect("8 bytes"));
            let lo = u64::from_ne_bytes(k.addr[8..].try_into().expect("8 bytes"));
            out.push((
                Entry::V6 {
                    hi,
                    lo,
                    len: k.prefix_len,
                },
                v.class,
            ));
        }
        Ok(out)
    }

    /// Rebuild the in-memory counts (directory, overflow) from the maps.
    /// Returns what it read of the ban tries and of the fast maps: with a
    /// million bans each read takes a second or more.
    fn read_state(&mut self) -> Result<Read> {
        self.spilled.clear();
        for k in self.over_v4.keys() {
            let k = k.context("read over_v4")?;
            let e = Entry::V4 {
                addr: u32::from_ne_bytes(k.addr),
                len: k.prefix_len,
            };
            *self.spilled.entry((false, e.bucket())).or_default() += 1;
        }
        for k in self.over_v6.keys() {
            let k = k.context("read over_v6")?;
            let t = Target::from_v6(k.addr, k.prefix_len)?;
            *self
                .spilled
                .entry((true, Entry::of(&t).bucket()))
                .or_default() += 1;
        }
        self.in_over = [false, true].map(|v6| {
            self.spilled
                .iter()
                .filter(|((f, _), _)| *f == v6)
                .map(|(_, &n)| n as usize)
                .sum()
        });
        self.dir = Directory::default();
        // Sorted, and joined by a merge below: hash sets of a million
        // entries took seconds at start.
        let mut fast = self.fast_entries()?;
        fast.sort_unstable_by_key(|(e, _)| *e);
        // One entry in two places (a crash between writes) counts once.
        fast.dedup_by_key(|(e, _)| *e);
        // The overflow hashes' entries are counted in `in_over` already.
        self.in_table = [false, true].map(|v6| {
            fast.iter().filter(|(e, _)| e.v6() == v6).count() - self.in_over[v6 as usize]
        });
        for (e, _) in &fast {
            if !e.is_host() {
                let t = e.target()?;
                self.dir
                    .count(e.v6(), &dir_slots(&t), &Touch::Net(t.prefix()), true);
            }
        }
        // What the trie holds beyond the fast maps is trie-only: its
        // regions stay in fallback until it finds room.
        self.trie_only.clear();
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
        for t in self.allow_entries()? {
            self.dir
                .count(!t.is_ipv4(), &dir_slots(&t), &Touch::Allow, true);
        }
        Ok(Read { trie, fast })
    }

    /// Every entry of the ban tries, with its raw value: in batches where
    /// the kernel has them (a million entries are two million calls one by
    /// one).
    fn trie_entries(&self) -> Result<Vec<(Target, BanValue)>> {
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
    fn mark_trie_only(&mut self, e: &Entry, t: &Target, value: BanValue) -> Vec<u32> {
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
    fn sync(&mut self) -> Result<()> {
        let read = self.read_state()?;
        // Both sorted by entry: one merge finds what differs.
        let mut stale = Vec::new();
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
        self.at_load = Some(AtLoad {
            read: read
                .trie
                .iter()
                .map(|(_, t, v)| (*t, class_of(v)))
                .collect(),
            since: Default::default(),
        });
        // Stale entries first, to make room.
        for e in stale {
            self.fast_remove(&e.target()?)?;
        }
        for (e, t, v) in differ {
            if self.trie_only.contains_key(&e) {
                // Room may have been made since: try the fast maps again.
                self.promote(&e)?;
            } else {
                self.fast_set(&t, v)?;
            }
        }
        self.warn_occupancy();
        // Flags and slots as the counts say, whatever a crash left.
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
        Ok(())
    }

    /// Write the directory slots of `t`'s regions from the counts.
    fn write_slots(&mut self, t: &Target, slots: &[u32]) {
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
    fn place(&self, e: &Entry) -> Result<Place> {
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

    fn over_insert(&mut self, t: &Target, value: BanValue) -> Result<()> {
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
    fn try_place(&mut self, e: &Entry, t: &Target, value: BanValue) -> Result<bool> {
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
    fn fast_set(&mut self, t: &Target, value: BanValue) -> Result<()> {
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
    fn promote(&mut self, e: &Entry) -> Result<bool> {
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
    fn promote_after_free(&mut self, v6: bool, bucket: u32, any: bool) -> Result<()> {
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
                table_entries: self.in_table[v6 as usize],
                table_capacity: xban_common::TAB_BUCKETS as usize * ways,
                overflow_entries: self.in_over[v6 as usize],
                overflow_capacity: xban_common::OVER_MAX_ENTRIES as usize,
                trie_only: self.trie_only.len(v6),
                fallback_regions: self.dir.fallback_regions(v6),
            }
        };
        FastPathStatus {
            v4: family(false),
            v6: family(true),
        }
    }

    /// Logs once per crossing when the overflow hash (what decides whether
    /// an entry still fits) passes 80 % and 95 %.
    fn warn_occupancy(&mut self) {
        let st = self.fast_path_status();
        for (i, (name, f)) in [("IPv4", st.v4), ("IPv6", st.v6)].into_iter().enumerate() {
            let pct = f.overflow_entries * 100 / f.overflow_capacity.max(1);
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
                    trie_only = f.trie_only,
                    "XDP fast path {pct}% full for {name}: beyond it, bans are enforced from the ban trie (slower per packet in their regions)"
                );
            }
            self.warned[i] = level;
        }
    }

    /// The fast-map half of `remove_ban`.
    fn fast_remove(&mut self, t: &Target) -> Result<()> {
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
        // the family (the overflow hash) may move into the fast maps.
        self.promote_after_free(e.v6(), e.bucket(), freed_over)
    }

    pub fn set_ban(&mut self, target: &Target, class: BanClass) -> Result<()> {
        self.set_ban_labelled(target, class, 0)
    }

    /// A ban whose drops count for a geo label ([`xban_common::GEO_LABELS`]).
    pub fn set_ban_labelled(&mut self, target: &Target, class: BanClass, label: u32) -> Result<()> {
        let value = BanValue {
            flags: label & 0xffff,
            ..ban_value(class)
        };
        // The trie first: it is the record a restarted agent rebuilds from.
        if target.is_ipv4() {
            self.bans_v4.insert(&key4(target), value, 0)
        } else {
            self.bans_v6.insert(&key6(target), value, 0)
        }
        .with_context(|| format!("write ban of {target} into the XDP map (is it full?)"))?;
        if let Some(a) = self.at_load.as_mut() {
            a.since.insert(*target, Some(class));
        }
        self.fast_set(target, value)
    }

    pub fn remove_ban(&mut self, target: &Target) -> Result<()> {
        if let Some(a) = self.at_load.as_mut() {
            a.since.insert(*target, None);
        }
        self.fast_remove(target)?;
        gone_ok(if target.is_ipv4() {
            self.bans_v4.remove(&key4(target))
        } else {
            self.bans_v6.remove(&key6(target))
        })
        .with_context(|| format!("remove {target} from the XDP map"))
    }

    /// Every entry of the ban tries, as the load read them plus what was
    /// written since; read from the kernel when that is not known (maps
    /// opened from pins, or asked a second time).
    pub fn bans_for_restore(&mut self) -> Result<Vec<(Target, Option<BanClass>)>> {
        let Some(AtLoad {
            mut read,
            mut since,
        }) = self.at_load.take()
        else {
            return self.bans();
        };
        read.retain_mut(|(t, c)| match since.remove(t) {
            Some(Some(now)) => {
                *c = Some(now);
                true
            }
            Some(None) => false,
            None => true,
        });
        read.extend(
            since
                .into_iter()
                .filter_map(|(t, c)| c.map(|c| (t, Some(c)))),
        );
        Ok(read)
    }

    /// Every entry of the ban tries.
    pub fn bans(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        Ok(self
            .trie_entries()?
            .into_iter()
            .map(|(t, v)| (t, class_of(&v)))
            .collect())
    }

    fn allow_entries(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for k in self.allow_v4.keys() {
            let k = k.context("read allow_v4")?;
            out.push(Target::from_v4(k.data(), k.prefix_len())?);
        }
        for k in self.allow_v6.keys() {
            let k = k.context("read allow_v6")?;
            out.push(Target::from_v6(k.data(), k.prefix_len())?);
        }
        Ok(out)
    }

    /// Make the allow tries hold exactly `list`: add first, then remove the
    /// stale ones, so an address on both the old and new list never drops.
    pub fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        let value = AllowValue { reserved: 0 };
        let have: HashSet<Target> = self.allow_entries()?.into_iter().collect();
        let want: HashSet<Target> = list.iter().copied().collect();
        for t in list {
            if t.is_ipv4() {
                self.allow_v4.insert(&key4(t), value, 0)
            } else {
                self.allow_v6.insert(&key6(t), value, 0)
            }
            .with_context(|| format!("write {t} into the XDP allowlist"))?;
        }
        // The program looks at the allowlist only where a slot says so.
        for t in want.difference(&have) {
            let slots = dir_slots(t);
            self.dir.count(!t.is_ipv4(), &slots, &Touch::Allow, true);
            self.write_slots(t, &slots);
        }
        for t in have.difference(&want) {
            let r = if t.is_ipv4() {
                self.allow_v4.remove(&key4(t))
            } else {
                self.allow_v6.remove(&key6(t))
            };
            r.with_context(|| format!("remove {t} from the XDP allowlist"))?;
            let slots = dir_slots(t);
            self.dir.count(!t.is_ipv4(), &slots, &Touch::Allow, false);
            self.write_slots(t, &slots);
        }
        Ok(())
    }

    pub fn allowlist(&self) -> Result<Vec<Target>> {
        self.allow_entries()
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats> {
        let mut s = stats_of(&self.stats)?;
        if let Some(t) = &self.tarpit {
            s.tarpit = t.stats()?;
        }
        Ok(s)
    }

    /// Does the XDP program see `ip` as banned (longest-prefix match)?
    pub fn lookup(&self, ip: IpAddr) -> Option<BanClass> {
        let t = Target::host(ip);
        let v = if t.is_ipv4() {
            self.bans_v4.get(&key4(&t), 0).ok()
        } else {
            self.bans_v6.get(&key6(&t), 0).ok()
        }?;
        match xban_common::BanClass::from_u32(v.class)? {
            xban_common::BanClass::Drop => Some(BanClass::Drop),
            xban_common::BanClass::Tarpit => Some(BanClass::Tarpit),
        }
    }
}

fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "open pinned map {} (is the agent set up? run `xban run` once)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
}

fn stats_of(map: &PerCpuArray<MapData, u64>) -> Result<XdpStats> {
    let mut c = [0u64; stats::COUNT as usize];
    for (i, slot) in c.iter_mut().enumerate() {
        let per_cpu = map.get(&(i as u32), 0).context("read XDP stats")?;
        *slot = per_cpu.iter().sum();
    }
    Ok(XdpStats::from_counters(&c))
}

/// The XDP counters of a pin directory, needing only the `stats` map (so
/// that it also reads a pin directory an older agent left).
pub fn stats_from_pins(pin_dir: &Path) -> Result<XdpStats> {
    let map: PerCpuArray<MapData, u64> =
        open_pinned(pin_dir, xban_common::MAP_STATS)?.try_into()?;
    let mut s = stats_of(&map)?;
    if let Ok(m) = open_pinned(pin_dir, xban_common::tarpit::MAP_STATS) {
        let m: PerCpuArray<MapData, u64> = m.try_into()?;
        s.tarpit = super::tarpit::stats_of(&m)?;
    }
    Ok(s)
}

pub(super) fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(pins::LINKS)
}

impl XdpEnforcer {
    /// Load the program, reusing maps already pinned in `pin_dir` (so bans
    /// written by a previous agent stay), or creating and pinning them.
    pub fn load(pin_dir: &Path) -> Result<(XdpEnforcer, XdpMaps)> {
        if XDP_OBJECT.is_empty() {
            bail!("this xban binary was built without its XDP program: build it with `cargo xtask build` (it runs build-ebpf first)");
        }
        crate::sys::setup::private_dir(pin_dir)?;
        crate::sys::setup::private_dir(&link_dir(pin_dir))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(XDP_OBJECT)
            .with_context(|| {
                format!(
                    "load the XDP program with maps pinned in {} (if an older xban left incompatible maps there, run `xban teardown`)",
                    pin_dir.display()
                )
            })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .context("the XDP object has no program xban_xdp")?
            .try_into()?;
        prog.load()
            .context("the kernel's verifier refused the XDP program")?;
        // Re-pin the program for bpftool (`bpftool prog run pinned ...`).
        let prog_pin = pin_dir.join(pins::PROGRAM);
        let _ = std::fs::remove_file(&prog_pin);
        prog.pin(&prog_pin)
            .with_context(|| format!("pin program at {}", prog_pin.display()))?;
        let maps = XdpMaps::from_ebpf(&mut ebpf)?;
        let enforcer = XdpEnforcer {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attached: Vec::new(),
            links: Vec::new(),
            mode: XdpModeSetting::Auto,
            pin_repairs: 0,
        };
        Ok((enforcer, maps))
    }

    /// Attach to each interface, adopting links a previous agent pinned
    /// (atomic program swap), replacing severed ones, and detaching from
    /// interfaces no longer listed. An interface that does not exist is
    /// reported and attached when it appears (see `links`); any other
    /// failure to attach is an error.
    pub fn attach(&mut self, interfaces: &[String], mode: XdpModeSetting) -> Result<()> {
        let links = link_dir(&self.pin_dir);
        self.mode = mode;
        self.links = interfaces
            .iter()
            .map(|i| super::links::LinkWatch::new(i))
            .collect();
        for idx in 0..self.links.len() {
            self.ensure_link(idx, true)?;
        }
        // Interfaces dropped from the config: unpinning the link detaches it.
        for entry in
            std::fs::read_dir(&links).with_context(|| format!("read {}", links.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !interfaces.contains(&name) {
                std::fs::remove_file(entry.path())?;
                tracing::info!(interface = %name, "detached XDP from an interface no longer configured");
            }
        }
        self.attached = interfaces.to_vec();
        Ok(())
    }
}

pub(super) fn xdp_mode(m: XdpModeSetting) -> XdpMode {
    match m {
        XdpModeSetting::Auto => XdpMode::Default,
        XdpModeSetting::Native => XdpMode::Driver,
        XdpModeSetting::Generic => XdpMode::Skb,
    }
}

/// Remove everything pinned under `pin_dir`: links first (which detaches the
/// program from every interface), then the program and the maps. Returns what
/// was removed.
pub fn teardown(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let links = link_dir(pin_dir);
    if links.exists() {
        for entry in std::fs::read_dir(&links)? {
            let path = entry?.path();
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            removed.push(path);
        }
        std::fs::remove_dir(&links).with_context(|| format!("remove {}", links.display()))?;
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            bail!(
                "unexpected directory {} in the pin directory: remove it by hand",
                path.display()
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        removed.push(path);
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("remove {}", pin_dir.display()))?;
    Ok(removed)
}

/// Interfaces with a pinned xban link (attached even while no agent runs).
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(link_dir(pin_dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
