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
//!
//! The module follows that split: `program` loads, pins, attaches and
//! tears down (the link swap), `maps` owns the ban and allow tries, the
//! stats and their batch reads, and `fastpath` keeps the exact-match fast
//! tables and directory in step with the tries, through the shared
//! mappings of `mapped` and the layout of `xban_common::fastpath`.

mod fastpath;
mod fill;
pub mod links;
mod mapped;
mod maps;
mod program;
mod warm;

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray};
use xban_common::{stats, AllowValue, BanValue, NetKey4, NetKey6};

use crate::addr::Target;
use crate::ban::BanClass;
use fastpath::{Directory, TrieOnly};
use mapped::{Dir, Table};

pub use maps::stats_from_pins;
pub(super) use program::{link_dir, xdp_mode, PROGRAM_NAME};
pub use program::{pinned_interfaces, teardown, ProgramMark, XdpEnforcer};
pub use warm::WarmMaps;

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

/// Per-CPU counters summed, by `xban_common::stats` index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct XdpStats {
    pub seen: u64,
    pub dropped: u64,
    pub passed_allowlisted: u64,
    pub passed_tarpit: u64,
    pub passed_clean: u64,
    pub passed_not_ip: u64,
    /// The XDP tarpit's replies and drops (zero where its map is missing).
    #[serde(
        flatten,
        serialize_with = "tarpit_prefixed",
        deserialize_with = "tarpit_unprefixed"
    )]
    pub tarpit: crate::enforce::tarpit::TarpitStats,
}

/// The tarpit counters as `tarpit_<name>` keys beside the others.
fn tarpit_prefixed<S: serde::Serializer>(
    t: &crate::enforce::tarpit::TarpitStats,
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

/// The `tarpit_<name>` keys read back (`status` and `stats` replies).
fn tarpit_unprefixed<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<crate::enforce::tarpit::TarpitStats, D::Error> {
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct Prefixed {
        tarpit_synack: u64,
        tarpit_ack: u64,
        tarpit_rst: u64,
        tarpit_ignored: u64,
        tarpit_over_limit: u64,
        tarpit_not_tcp: u64,
        tarpit_unanswerable: u64,
        tarpit_passed_nd: u64,
    }
    let p = <Prefixed as serde::Deserialize>::deserialize(d)?;
    Ok(crate::enforce::tarpit::TarpitStats {
        synack: p.tarpit_synack,
        ack: p.tarpit_ack,
        rst: p.tarpit_rst,
        ignored: p.tarpit_ignored,
        over_limit: p.tarpit_over_limit,
        not_tcp: p.tarpit_not_tcp,
        unanswerable: p.tarpit_unanswerable,
        passed_nd: p.tarpit_passed_nd,
    })
}

impl XdpStats {
    /// Every counter with its name in the JSON, names sorted: what `stats`
    /// prints and the metrics label `verdict` carry.
    pub fn named(&self) -> [(&'static str, u64); 14] {
        let t = &self.tarpit;
        [
            ("dropped", self.dropped),
            ("passed_allowlisted", self.passed_allowlisted),
            ("passed_clean", self.passed_clean),
            ("passed_not_ip", self.passed_not_ip),
            ("passed_tarpit", self.passed_tarpit),
            ("seen", self.seen),
            ("tarpit_ack", t.ack),
            ("tarpit_ignored", t.ignored),
            ("tarpit_not_tcp", t.not_tcp),
            ("tarpit_over_limit", t.over_limit),
            ("tarpit_passed_nd", t.passed_nd),
            ("tarpit_rst", t.rst),
            ("tarpit_synack", t.synack),
            ("tarpit_unanswerable", t.unanswerable),
        ]
    }
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
    pub tarpit: Option<crate::enforce::tarpit::TarpitMaps>,
    /// (IPv6?, bucket) → how many of its entries are in the overflow hash.
    spilled: std::collections::HashMap<(bool, u32), u32>,
    /// Bans that fit neither their bucket nor the overflow hash: in the trie
    /// only, their regions flagged so that the program looks there.
    trie_only: TrieOnly,
    /// Entries in the overflow hashes, per family (the sum of `spilled`).
    in_over: [usize; 2],
    /// Entries in the bucket tables, per family (IPv4, IPv6).
    in_table: [usize; 2],
    /// `[agent] fast_path_capacity`: beyond it, entries are trie-only.
    capacity: usize,
    /// Entries each overflow hash holds at most (its max_entries).
    over_capacity: usize,
    /// The highest occupancy warning given (0, 80 or 95 % of the overflow
    /// hash), per family, so that each is logged once per crossing.
    warned: [u8; 2],
    dir: Directory,
    /// The ban tries as read at load, and what was written since, until
    /// restore takes them (see `bans_for_restore`).
    at_load: Option<AtLoad>,
    /// A cold start's trie entries being written behind the fast path.
    fill: fill::TrieFill,
}

/// The ban tries as read at load (or as the restore marker vouched for
/// them) and every change written since: what restore compares with the
/// store, without a second read of a million entries.
struct AtLoad {
    read: KernelAtLoad,
    /// `None`: removed since.
    since: std::collections::HashMap<Target, Option<BanClass>>,
}

enum KernelAtLoad {
    Read(Vec<(Target, Option<BanClass>)>),
    /// The stored bans, plus these (see `enforce::KernelBans::AsStored`).
    AsStored(Vec<Target>),
}

/// How full the fast path is, per family (`status --json`, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FastPathFamily {
    /// `[agent] fast_path_capacity`: bans the fast path holds at most.
    #[serde(default)]
    pub capacity: usize,
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
    /// Bans of a large cold start not yet written into the ban trie (its
    /// background fill); the fast path drops them meanwhile.
    #[serde(default)]
    pub trie_pending: usize,
}

/// [`FastPathFamily`] for both families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FastPathStatus {
    pub v4: FastPathFamily,
    pub v6: FastPathFamily,
}
