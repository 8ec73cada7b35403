//! Types shared by the XDP program and the agent: map names, value layouts and
//! counter indices. Both sides must agree on these byte for byte.
//!
//! # How bans are laid out for the XDP program
//!
//! `bans_v4`/`bans_v6` (LPM tries) hold every ban: they are the record the
//! agent reads back after a restart, and what bpftool shows. The program does
//! not walk them: a trie walk costs a few ns per level, hundreds of ns over a
//! million entries. It reads copies of the same entries instead:
//!
//! - `tab_v4`/`tab_v6`: an exact-match table of (prefix length, masked
//!   address) → class, as buckets in an array map. Array lookups are inlined
//!   by the verifier, so a probe is a hash computation and one cache line, no
//!   helper call (a kernel hash map lookup is a call, ~30 ns with the
//!   retpoline/return-thunk mitigations of a typical VM). The agent writes the
//!   buckets through a shared mapping with single 8-byte stores.
//! - `over_v4`/`over_v6`: a kernel hash holding the entries that did not fit
//!   their bucket; a bucket's `overflow` word says when to look there.
//! - `dir_v4`/`dir_v6`: per region of the address space (IPv4 /16, IPv6 /48
//!   hashed), the prefix lengths that have bans there and whether allowlist
//!   entries do. Hosts are always probed; a prefix length only where the
//!   directory lists it, longest first, so the first hit is the
//!   longest-prefix match. A region listing more than [`PROBE_LENGTHS`]
//!   lengths is looked up in the ban trie instead (rare, and it keeps the
//!   program's loops short for the verifier). A region whose slot has the
//!   [`DIR_FALLBACK`] bit is looked up in the ban trie too: the agent sets
//!   it when an entry of the region fits neither its bucket nor the
//!   overflow hash, so that every ban in the trie is enforced whatever the
//!   fast maps hold. The agent writes the directory through a shared
//!   mapping too.
#![no_std]

/// Map names, as pinned under the agent's pin directory.
pub const MAP_ALLOW_V4: &str = "allow_v4";
pub const MAP_ALLOW_V6: &str = "allow_v6";
pub const MAP_BANS_V4: &str = "bans_v4";
pub const MAP_BANS_V6: &str = "bans_v6";
pub const MAP_TAB_V4: &str = "tab_v4";
pub const MAP_TAB_V6: &str = "tab_v6";
pub const MAP_OVER_V4: &str = "over_v4";
pub const MAP_OVER_V6: &str = "over_v6";
pub const MAP_DIR_V4: &str = "dir_v4";
pub const MAP_DIR_V6: &str = "dir_v6";
pub const MAP_STATS: &str = "stats";
pub const MAP_GEO_DROPS: &str = "geo_drops";

/// Per-country drop counts: a geo rule's ban entry carries a label (an
/// index the agent gives each country or AS; 0: none) in its way's spare
/// bits (`tab_v4`: bits 48..64, `tab_v6` meta: bits 16..32) and in
/// `BanValue::flags`; a dropped packet whose entry has a label counts in
/// `geo_drops[label]`. Labels at most (beyond: not counted).
pub const GEO_LABELS: u32 = 1024;

/// Capacity of each ban trie. LPM tries are allocated lazily, so a large
/// capacity costs nothing until entries are inserted.
pub const BANS_MAX_ENTRIES: u32 = 2_000_000;
/// Capacity of each allowlist trie.
pub const ALLOW_MAX_ENTRIES: u32 = 65_536;

/// Buckets of `tab_v4` (2^18, 64 bytes each: 16 MiB) and `tab_v6` (2^18,
/// 128 bytes each: 32 MiB). Allocated when the maps are created; sized so
/// that at a million entries a few percent of them overflow.
pub const TAB_BITS: u32 = 18;
pub const TAB_BUCKETS: u32 = 1 << TAB_BITS;
pub const TAB_V4_WAYS: usize = 7;
pub const TAB_V6_WAYS: usize = 5;
/// Capacity of each overflow hash.
pub const OVER_MAX_ENTRIES: u32 = 1 << 17;
/// Slots of each directory.
pub const DIR_SLOTS: u32 = 1 << 16;
/// Prefix lengths probed per packet at most; beyond, one trie lookup.
pub const PROBE_LENGTHS: u32 = 8;
/// Region a directory slot describes: IPv4 /16 (one slot each, exact),
/// IPv6 /48 (hashed onto the slots; a collision only costs extra probes).
pub const DIR_V4_PREFIX: u32 = 16;
pub const DIR_V6_PREFIX: u32 = 48;
/// `BPF_F_NO_PREALLOC`: hash elements are allocated as inserted, and a
/// lookup never reads an element being recycled for another key.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE`: the agent maps the array and writes it with plain
/// (atomic, 8-byte) stores.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A `tab_v4` bucket: one cache line.
///
/// A way is `addr | len << 32 | state << 40`, `addr` being the four address
/// bytes (masked to `len`) read as a native-endian u32, exactly as the
/// program loads them from the packet; `state` 0 is a free way, else the
/// class + 1. One word per way, so a reader never sees half an entry.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TabBucketV4 {
    /// Non-zero: some entries of this bucket are in `over_v4`.
    pub overflow: u64,
    pub ways: [u64; TAB_V4_WAYS],
}

/// A `tab_v6` way: the address (masked to its length) as two native-endian
/// words, and `meta` = `state | len << 8 | version << 32`. The agent writes
/// `hi`/`lo` while the way is free (state 0) and `meta` last; a new key in
/// a way bumps `version`, so a reader that sees the same `meta` before and
/// after reading the address read one entry, not two.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TabWayV6 {
    pub hi: u64,
    pub lo: u64,
    pub meta: u64,
}

/// A `tab_v6` bucket: two cache lines.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TabBucketV6 {
    /// Non-zero: some entries of this bucket are in `over_v6`.
    pub overflow: u64,
    pub ways: [TabWayV6; TAB_V6_WAYS],
}

const STATE_MASK: u64 = 0xff;

/// The `tab_v4` way of an entry (`class` as in [`BanClass`]).
#[inline(always)]
pub fn tab_way_v4(addr: u32, len: u32, class: u32) -> u64 {
    tab_key_v4(addr, len) | ((class as u64 + 1) & STATE_MASK) << 40
}

/// As [`tab_way_v4`], with a geo label.
#[inline(always)]
pub fn tab_way_v4_labelled(addr: u32, len: u32, class: u32, label: u32) -> u64 {
    tab_way_v4(addr, len, class) | (label as u64 & 0xffff) << 48
}

/// The geo label of a `tab_v4` way.
#[inline(always)]
pub fn tab_label_v4(way: u64) -> u32 {
    (way >> 48) as u32
}

/// The part of a `tab_v4` way that identifies the entry.
#[inline(always)]
pub fn tab_key_v4(addr: u32, len: u32) -> u64 {
    addr as u64 | (len as u64) << 32
}

/// The class in a way, if it holds `key`.
#[inline(always)]
pub fn tab_match_v4(way: u64, key: u64) -> Option<u32> {
    let state = (way >> 40) & STATE_MASK;
    if way & 0xff_ffff_ffff == key && state != 0 {
        Some(state as u32 - 1)
    } else {
        None
    }
}

/// The `meta` word of a `tab_v6` way.
#[inline(always)]
pub fn tab_meta_v6(len: u32, class: u32, version: u32) -> u64 {
    ((class as u64 + 1) & STATE_MASK) | (len as u64 & 0xff) << 8 | (version as u64) << 32
}

/// As [`tab_meta_v6`], with a geo label.
#[inline(always)]
pub fn tab_meta_v6_labelled(len: u32, class: u32, version: u32, label: u32) -> u64 {
    tab_meta_v6(len, class, version) | (label as u64 & 0xffff) << 16
}

/// The geo label of a `meta` word.
#[inline(always)]
pub fn tab_label_v6(meta: u64) -> u32 {
    ((meta >> 16) & 0xffff) as u32
}

/// The class in a `meta` word, if its way is taken and holds length `len`.
#[inline(always)]
pub fn tab_meta_match_v6(meta: u64, len: u32) -> Option<u32> {
    let state = meta & STATE_MASK;
    if (meta >> 8) & 0xff == len as u64 && state != 0 {
        Some(state as u32 - 1)
    } else {
        None
    }
}

/// Is this way free?
#[inline(always)]
pub fn tab_meta_free_v6(meta: u64) -> bool {
    meta & STATE_MASK == 0
}

/// The version of a `meta` word.
#[inline(always)]
pub fn tab_meta_version_v6(meta: u64) -> u32 {
    (meta >> 32) as u32
}

/// The `tab_v4` bucket of an entry: a multiplicative hash.
#[inline(always)]
pub fn tab_bucket_v4(addr: u32, len: u32) -> u32 {
    (tab_key_v4(addr, len).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TAB_BITS)) as u32
}

/// The `tab_v6` bucket of an entry.
#[inline(always)]
pub fn tab_bucket_v6(hi: u64, lo: u64, len: u32) -> u32 {
    let k = hi.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (lo ^ len as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    ((k ^ (k >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TAB_BITS)) as u32
}

/// Key of `over_v4`: the same bytes as an LPM trie key.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetKey4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of `over_v6`, as [`NetKey4`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetKey6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// Bit of a directory slot's `allow` word: an allowlist entry may cover
/// addresses of the region.
pub const DIR_ALLOW: u64 = 1;
/// Bit of a directory slot's `allow` word: some ban touching the region is
/// in the ban trie only (its bucket and the overflow hash were full), so the
/// program looks sources of this region up in the trie, which holds every
/// ban. Kept in the `allow` word so that the slot layout, and with it the
/// pinned maps of an older agent, stay as they were.
pub const DIR_FALLBACK: u64 = 2;

/// A `dir_v4` slot: what may match addresses of one /16.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DirV4 {
    /// Bit L set: a prefix ban of length L (0..=31) may cover addresses of
    /// this region.
    pub nets: u64,
    /// [`DIR_ALLOW`] and [`DIR_FALLBACK`] bits.
    pub allow: u64,
}

/// A `dir_v6` slot, as [`DirV4`] with lengths 0..=127 (bit L of word L / 64).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DirV6 {
    pub nets: [u64; 2],
    pub allow: u64,
}

/// The `dir_v4` slot of an address: its /16.
#[inline(always)]
pub fn dir_slot_v4(addr: [u8; 4]) -> u32 {
    ((addr[0] as u32) << 8) | addr[1] as u32
}

/// The `dir_v6` slot of an address, from its first 48 bits (as the low 48
/// bits of `top48`): a multiplicative hash, so that the /48s of one /32
/// spread over the slots.
#[inline(always)]
pub fn dir_slot_v6(top48: u64) -> u32 {
    (top48.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32
}

/// The first 48 bits of an IPv6 address, as the low bits of a u64.
#[inline(always)]
pub fn top48(addr: &[u8; 16]) -> u64 {
    u64::from_be_bytes([0, 0, addr[0], addr[1], addr[2], addr[3], addr[4], addr[5]])
}

/// The `dir_v4` slots of the /16s that a prefix (address already masked)
/// covers or lies in.
pub fn dir_slots_v4(addr: [u8; 4], prefix_len: u32) -> core::ops::Range<u32> {
    let first = dir_slot_v4(addr);
    first..first + (1 << DIR_V4_PREFIX.saturating_sub(prefix_len))
}

/// The /48 regions (as [`top48`] values) that a prefix (address already
/// masked) covers or lies in, each to be hashed with [`dir_slot_v6`]; `None`
/// when there are so many that every slot is touched anyway.
pub fn dir_regions_v6(addr: &[u8; 16], prefix_len: u32) -> Option<core::ops::Range<u64>> {
    if prefix_len + 16 <= DIR_V6_PREFIX {
        return None;
    }
    let first = top48(addr);
    Some(first..first + (1 << DIR_V6_PREFIX.saturating_sub(prefix_len)))
}

/// What the XDP program does with a banned source.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BanClass {
    /// Dropped at XDP.
    Drop = 0,
    /// Passed by XDP so that iptables can steer it to the TARPIT chain.
    Tarpit = 1,
}

impl BanClass {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(BanClass::Drop),
            1 => Some(BanClass::Tarpit),
            _ => None,
        }
    }
}

/// Value stored in `bans_v4` / `bans_v6` and `over_v4` / `over_v6`.
///
/// Keep its alignment at 4 (u32 fields only): an LPM trie stores the value
/// right after the key's address bytes, so in `bans_v4` it sits 4 bytes off
/// an 8-byte boundary, and the XDP program takes a reference to it.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BanValue {
    /// A `BanClass` as u32.
    pub class: u32,
    /// Low 16 bits: the geo label (see [`GEO_LABELS`]); the rest reserved.
    pub flags: u32,
}

/// Value stored in `allow_v4` / `allow_v6` (presence is what matters).
/// Alignment 4 at most, as for [`BanValue`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AllowValue {
    pub reserved: u32,
}

/// Indices of the per-CPU `stats` array.
pub mod fastpath;

pub mod stats {
    /// Every packet the program saw.
    pub const SEEN: u32 = 0;
    /// Dropped: source banned with class drop.
    pub const DROPPED: u32 = 1;
    /// Passed: source in an allowlist trie.
    pub const PASSED_ALLOWED: u32 = 2;
    /// Passed: source banned with class tarpit (iptables steers it).
    pub const PASSED_TARPIT: u32 = 3;
    /// Passed: IP packet whose source is neither allowlisted nor banned.
    pub const PASSED_CLEAN: u32 = 4;
    /// Passed: not IPv4/IPv6, or truncated headers.
    pub const PASSED_NOT_IP: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "dropped",
        "passed_allowlisted",
        "passed_tarpit",
        "passed_clean",
        "passed_not_ip",
    ];
}

/// The XDP tarpit (`[tarpit] engine = "xdp"`): the program answers
/// tarpit-class TCP itself with `XDP_TX`, keeping no per-connection state.
pub mod tarpit {
    /// Map names, pinned beside the others.
    pub const MAP_CFG: &str = "tarpit_cfg";
    pub const MAP_KEY: &str = "tarpit_key";
    pub const MAP_BUCKET: &str = "tarpit_bucket";
    pub const MAP_STATS: &str = "tarpit_stats";

    /// What the program does with tarpit-class packets (`TarpitCfg::engine`).
    pub mod engine {
        /// Drop at XDP: no tarpit works (or a fresh map the agent has not
        /// configured yet: fail closed).
        pub const DROP: u32 = 0;
        /// Pass: iptables steers them to its TARPIT chain.
        pub const PASS: u32 = 1;
        /// Answer them here (XDP_TX).
        pub const XDP: u32 = 2;
    }

    /// The window of our SYN-ACKs. Non-zero, so that peers complete the
    /// handshake and send (xt_TARPIT uses the same value).
    pub const SYNACK_WINDOW: u16 = 5;
    /// TTL / hop limit of replies.
    pub const REPLY_TTL: u8 = 64;
    /// Longest TCP segment (header and payload) whose checksum the program
    /// verifies; longer ones are dropped unanswered.
    pub const MAX_SEGMENT: usize = 1500;

    /// The `tarpit_cfg` map's only value, written by the agent.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct TarpitCfg {
        /// One of [`engine`].
        pub engine: u32,
        pub reserved: u32,
        /// Token bucket, per CPU, in nanoseconds of credit: a reply costs
        /// `cost_ns`, credit accrues one per nanosecond up to `cap_ns`.
        pub cost_ns: u64,
        pub cap_ns: u64,
    }

    /// The `tarpit_key` map's only value: the key of the ISN hash,
    /// generated once by the agent and kept across restarts.
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct TarpitKey {
        pub k0: u64,
        pub k1: u64,
    }

    /// One CPU's token bucket (`tarpit_bucket`, per-CPU array of one).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct TokenBucket {
        pub credit_ns: u64,
        /// `bpf_ktime_get_ns` of the last take; 0: never (starts full).
        pub last_ns: u64,
    }

    /// Take one reply's worth of credit at time `now`: refill by the time
    /// elapsed (up to `cap`), then spend `cost` if there is that much.
    #[inline(always)]
    pub fn take_token(b: &mut TokenBucket, now: u64, cost: u64, cap: u64) -> bool {
        let credit = if b.last_ns == 0 {
            cap
        } else {
            b.credit_ns.saturating_add(now.saturating_sub(b.last_ns))
        };
        let credit = if credit > cap { cap } else { credit };
        b.last_ns = now;
        if credit >= cost {
            b.credit_ns = credit - cost;
            true
        } else {
            b.credit_ns = credit;
            false
        }
    }

    /// The bucket parameters for `count` replies per `period_ns` with
    /// `burst` at once, split over `cpus` per-CPU buckets so that all CPUs
    /// together never exceed `count` per period plus `burst` (each CPU
    /// refills at 1/`cpus` of the rate and holds `burst`/`cpus`, at least one
    /// reply's worth).
    pub fn bucket_params(count: u64, period_ns: u64, burst: u64, cpus: u64) -> (u64, u64) {
        let count = if count == 0 { 1 } else { count };
        let cpus = if cpus == 0 { 1 } else { cpus };
        let global_cost = period_ns / count;
        let cost = global_cost.saturating_mul(cpus);
        let cap = global_cost.saturating_mul(burst);
        (cost, if cap < cost { cost } else { cap })
    }

    /// Indices of the per-CPU `tarpit_stats` array.
    pub mod stats {
        /// SYN answered with a SYN-ACK.
        pub const SYNACK: u32 = 0;
        /// ACK, data or probe answered with a zero-window ACK.
        pub const ACK: u32 = 1;
        /// SYN-ACK answered with a reset.
        pub const RST: u32 = 2;
        /// FIN, RST or neither SYN nor ACK: dropped, no reply.
        pub const IGNORED: u32 = 3;
        /// A reply was due but the token bucket was empty: dropped.
        pub const OVER_LIMIT: u32 = 4;
        /// Not TCP: dropped.
        pub const NOT_TCP: u32 = 5;
        /// TCP the tarpit does not answer: IPv4 options, IPv6 extension
        /// headers, fragments, non-unicast, truncated, bad checksum,
        /// segments over `MAX_SEGMENT`. Dropped.
        pub const UNANSWERABLE: u32 = 6;
        /// IPv6 neighbour solicitations/advertisements: passed (as ARP is),
        /// so that an on-link client can find the host at all.
        pub const PASSED_ND: u32 = 7;
        pub const COUNT: u32 = 8;
        /// Names for display, by index (prefixed `tarpit_` in `xban stats`).
        pub const NAMES: [&str; COUNT as usize] = [
            "synack",
            "ack",
            "rst",
            "ignored",
            "over_limit",
            "not_tcp",
            "unanswerable",
            "passed_nd",
        ];
    }

    /// One SipRound, on four scalars (arrays cost BPF stack).
    macro_rules! sipround {
        ($v0:ident, $v1:ident, $v2:ident, $v3:ident) => {
            $v0 = $v0.wrapping_add($v1);
            $v1 = $v1.rotate_left(13);
            $v1 ^= $v0;
            $v0 = $v0.rotate_left(32);
            $v2 = $v2.wrapping_add($v3);
            $v3 = $v3.rotate_left(16);
            $v3 ^= $v2;
            $v0 = $v0.wrapping_add($v3);
            $v3 = $v3.rotate_left(21);
            $v3 ^= $v0;
            $v2 = $v2.wrapping_add($v1);
            $v1 = $v1.rotate_left(17);
            $v1 ^= $v2;
            $v2 = $v2.rotate_left(32);
        };
    }

    /// SipHash-2-4 of `N` words, i.e. of their little-endian bytes (a keyed
    /// PRF: without the key, the ISN of one tuple says nothing about
    /// another's).
    #[inline(always)]
    pub fn siphash24<const N: usize>(key: &TarpitKey, words: &[u64; N]) -> u64 {
        let mut v0 = key.k0 ^ 0x736f_6d65_7073_6575;
        let mut v1 = key.k1 ^ 0x646f_7261_6e64_6f6d;
        let mut v2 = key.k0 ^ 0x6c79_6765_6e65_7261;
        let mut v3 = key.k1 ^ 0x7465_6462_7974_6573;
        let mut i = 0;
        while i < N {
            let w = words[i];
            v3 ^= w;
            sipround!(v0, v1, v2, v3);
            sipround!(v0, v1, v2, v3);
            v0 ^= w;
            i += 1;
        }
        let last = ((N as u64 * 8) & 0xff) << 56;
        v3 ^= last;
        sipround!(v0, v1, v2, v3);
        sipround!(v0, v1, v2, v3);
        v0 ^= last;
        v2 ^= 0xff;
        sipround!(v0, v1, v2, v3);
        sipround!(v0, v1, v2, v3);
        sipround!(v0, v1, v2, v3);
        sipround!(v0, v1, v2, v3);
        v0 ^ v1 ^ v2 ^ v3
    }

    /// Our ISN for a connection: local address and port first, each address
    /// as a big-endian u32 (as on the wire).
    #[inline(always)]
    pub fn isn_v4(key: &TarpitKey, local: u32, remote: u32, lport: u16, rport: u16) -> u32 {
        let w0 = (local as u64) << 32 | remote as u64;
        let w1 = (lport as u64) << 16 | rport as u64;
        siphash24(key, &[w0, w1]) as u32
    }

    /// As [`isn_v4`], addresses as two big-endian u64 halves each.
    #[inline(always)]
    pub fn isn_v6(
        key: &TarpitKey,
        local: [u64; 2],
        remote: [u64; 2],
        lport: u16,
        rport: u16,
    ) -> u32 {
        let ports = (lport as u64) << 16 | rport as u64 | 1 << 63;
        siphash24(key, &[local[0], local[1], remote[0], remote[1], ports]) as u32
    }

    /// Fold a ones' complement sum of big-endian 16-bit words (accumulated
    /// in a u64) to 16 bits.
    #[inline(always)]
    pub fn csum_fold(mut sum: u64) -> u16 {
        // Bounded: four folds bring any u64 down to 16 bits.
        sum = (sum & 0xffff_ffff) + (sum >> 32);
        sum = (sum & 0xffff_ffff) + (sum >> 32);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }
}

#[cfg(feature = "user")]
mod user {

    // SAFETY: plain-old-data, repr(C), no padding holes (two u32 / one u32).
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for super::AllowValue {}
    // SAFETY: repr(C), no padding: a u32 then bytes (8 and 20 bytes, align
    // 4), or u64 words only.
    unsafe impl aya::Pod for super::NetKey4 {}
    unsafe impl aya::Pod for super::NetKey6 {}
    unsafe impl aya::Pod for super::DirV4 {}
    unsafe impl aya::Pod for super::DirV6 {}
    // SAFETY: repr(C), u32/u64 fields in an order without padding.
    unsafe impl aya::Pod for super::tarpit::TarpitCfg {}
    unsafe impl aya::Pod for super::tarpit::TarpitKey {}
    unsafe impl aya::Pod for super::tarpit::TokenBucket {}
}
