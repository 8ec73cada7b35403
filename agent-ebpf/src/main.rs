//! xban's XDP program: drop packets whose source address is banned.
//!
//! Per packet: parse Ethernet (up to two VLAN tags), IPv4 or IPv6, then:
//! - the directory slot of the source's region (an array read) says whether
//!   allowlist entries and which prefix lengths have entries there;
//! - the allowlist trie, only where the slot says so (hit: pass);
//! - the exact-match table for the source as a host, then for each prefix
//!   length the slot lists, longest first: the first hit is the
//!   longest-prefix match, and its class decides.
//!
//! A banned source is dropped; a tarpit-class one is answered by the XDP
//! tarpit (`tarpit.rs`), passed for iptables to steer, or dropped, as the
//! agent configured the engine. Everything else passes. See `xban_common`
//! for the map layout; the ban tries are the agent's record, read here only
//! for regions the directory sends there (too many prefix lengths, or a fast
//! path that could not hold every entry of the region).
#![no_std]
#![no_main]
// Word loads from the packet are one BPF instruction in `asm!` (see
// `load_word`): sound at any alignment, where a Rust read would be split
// into byte loads.
#![feature(asm_experimental_arch)]

mod tarpit;

use core::arch::asm;
use core::mem;
use core::ptr::{read_unaligned, read_volatile};

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use xban_common::{
    dir_slot_v4, dir_slot_v6, stats, tab_bucket_v4, tab_bucket_v6, tab_key_v4, tab_label_v4,
    tab_label_v6, tab_match_v4, tab_meta_match_v6, AllowValue, BanClass, BanValue, DirV4, DirV6,
    NetKey4, NetKey6, TabBucketV4, TabBucketV6, ALLOW_MAX_ENTRIES, BANS_MAX_ENTRIES,
    BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, DIR_ALLOW, DIR_FALLBACK, DIR_SLOTS, GEO_LABELS,
    OVER_MAX_ENTRIES, PROBE_LENGTHS, TAB_BUCKETS,
};

// Pinned by name: a restarted agent (and bpftool) finds the same maps under the pin dir.
#[map(name = "allow_v4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
#[map(name = "allow_v6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
// The record of every ban, kept by the agent; read here only for regions
// that list more prefix lengths than the program probes.
#[map(name = "bans_v4")]
static BANS_V4: LpmTrie<[u8; 4], BanValue> = LpmTrie::pinned(BANS_MAX_ENTRIES, 0);
#[map(name = "bans_v6")]
static BANS_V6: LpmTrie<[u8; 16], BanValue> = LpmTrie::pinned(BANS_MAX_ENTRIES, 0);
// `LpmTrie::get` hands out a reference to the value, which the kernel
// stores right after the key's address bytes: 4 bytes off an 8-byte
// boundary in the IPv4 tries. Sound only while the values need no more.
const _: () = assert!(mem::align_of::<BanValue>() <= 4 && mem::align_of::<AllowValue>() <= 4);
#[map(name = "tab_v4")]
static TAB_V4: Array<TabBucketV4> = Array::pinned(TAB_BUCKETS, BPF_F_MMAPABLE);
#[map(name = "tab_v6")]
static TAB_V6: Array<TabBucketV6> = Array::pinned(TAB_BUCKETS, BPF_F_MMAPABLE);
#[map(name = "over_v4")]
static OVER_V4: HashMap<NetKey4, BanValue> = HashMap::pinned(OVER_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "over_v6")]
static OVER_V6: HashMap<NetKey6, BanValue> = HashMap::pinned(OVER_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "dir_v4")]
static DIR_V4: Array<DirV4> = Array::pinned(DIR_SLOTS, BPF_F_MMAPABLE);
#[map(name = "dir_v6")]
static DIR_V6: Array<DirV6> = Array::pinned(DIR_SLOTS, BPF_F_MMAPABLE);
#[map(name = "stats")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);
// Per-country drop counts (see `count_geo_drop`).
#[map(name = "geo_drops")]
static GEO_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(GEO_LABELS, 0);

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Offset of the source address inside the IPv4 / IPv6 header.
const IPV4_SRC_OFF: usize = 12;
const IPV6_SRC_OFF: usize = 8;

#[xdp]
pub(crate) fn xban_xdp(ctx: XdpContext) -> u32 {
    count(stats::SEEN);
    match try_xban_xdp(&ctx) {
        Ok(verdict) => verdict,
        // Truncated headers: not ours to judge, let the stack deal with it.
        Err(()) => {
            count(stats::PASSED_NOT_IP);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn try_xban_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let mut off = ETH_HDR_LEN - 2;
    let mut proto = u16::from_be(load_u16(ctx, off)?);
    off += 2;
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = u16::from_be(load_u16(ctx, off + 2)?);
            off += VLAN_HDR_LEN;
        }
    }
    match proto {
        ETH_P_IP => {
            let [ver_ihl] = load::<1>(ctx, off)?;
            if ver_ihl >> 4 != 4 {
                return Err(());
            }
            // The address bytes as one native-endian word, as the table keys
            // them.
            let src = load_u32(ctx, off + IPV4_SRC_OFF)?;
            let bytes = src.to_ne_bytes();
            let slot = dir_v4(dir_slot_v4(bytes));
            if slot.allow & DIR_ALLOW != 0 && ALLOW_V4.get(Key::new(32, bytes)).is_some() {
                return Ok(allowed());
            }
            Ok(ban_verdict(
                ctx,
                off,
                false,
                ban_v4(src, slot.nets, slot.allow),
            ))
        }
        ETH_P_IPV6 => {
            // The address as two native-endian words, as the table keys it.
            let hi = load_u64(ctx, off + IPV6_SRC_OFF)?;
            let lo = load_u64(ctx, off + IPV6_SRC_OFF + 8)?;
            // The first 48 bits, in address order.
            let top48 = u64::from_be(hi) >> 16;
            let slot = dir_v6(dir_slot_v6(top48));
            if slot.allow & DIR_ALLOW != 0
                && ALLOW_V6.get(Key::new(128, v6_bytes(hi, lo))).is_some()
            {
                return Ok(allowed());
            }
            Ok(ban_verdict(
                ctx,
                off,
                true,
                ban_v6(hi, lo, slot.nets, slot.allow),
            ))
        }
        _ => {
            count(stats::PASSED_NOT_IP);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// The class of the most specific ban covering `src`: the host entry, else
/// each prefix length in `lens` (bit L: length L), longest first. Where the
/// slot's `flags` say the fast maps are incomplete (or too many lengths are
/// listed), the trie answers: it holds every ban.
#[inline(always)]
fn ban_v4(src: u32, mut lens: u64, flags: u64) -> Option<(u32, u32)> {
    if let Some(c) = find_v4(src, 32) {
        return Some(c);
    }
    if flags & DIR_FALLBACK != 0 || lens.count_ones() > PROBE_LENGTHS {
        return BANS_V4
            .get(Key::new(32, src.to_ne_bytes()))
            .map(|v| (v.class, v.flags));
    }
    // Bounded for the verifier, which walks every iteration.
    for _ in 0..PROBE_LENGTHS {
        if lens == 0 {
            break;
        }
        let len = top_bit(lens);
        lens &= !(1u64 << len);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if let Some(c) = find_v4(src & mask.to_be(), len) {
            return Some(c);
        }
    }
    None
}

/// As [`ban_v4`], lengths 64..=127 in `lens[1]`, 0..=63 in `lens[0]`.
#[inline(always)]
fn ban_v6(hi: u64, lo: u64, lens: [u64; 2], flags: u64) -> Option<(u32, u32)> {
    if let Some(c) = find_v6(hi, lo, 128) {
        return Some(c);
    }
    let (mut upper, mut lower) = (lens[1], lens[0]);
    if flags & DIR_FALLBACK != 0 || upper.count_ones() + lower.count_ones() > PROBE_LENGTHS {
        return BANS_V6
            .get(Key::new(128, v6_bytes(hi, lo)))
            .map(|v| (v.class, v.flags));
    }
    for _ in 0..PROBE_LENGTHS {
        let (h, l, len) = if upper != 0 {
            let bit = top_bit(upper);
            upper &= !(1u64 << bit);
            (hi, lo & high_bits(bit).to_be(), 64 + bit)
        } else if lower != 0 {
            let bit = top_bit(lower);
            lower &= !(1u64 << bit);
            (hi & high_bits(bit).to_be(), 0, bit)
        } else {
            break;
        };
        if let Some(c) = find_v6(h, l, len) {
            return Some(c);
        }
    }
    None
}

/// The class of entry (`addr`, `len`): its bucket's ways, then the overflow
/// hash if the bucket has spilled.
#[inline(always)]
fn find_v4(addr: u32, len: u32) -> Option<(u32, u32)> {
    let bucket = TAB_V4.get_ptr(tab_bucket_v4(addr, len))?;
    let key = tab_key_v4(addr, len);
    // Volatile: the agent writes these words while we read them; each way
    // is read exactly once. Raw places, no references: a `&u64` would
    // promise that the word does not change.
    for i in 0..xban_common::TAB_V4_WAYS {
        // SAFETY: `bucket` is the kernel's pointer to an element of `tab_v4`,
        // non-null, valid for the program's run and 8-aligned (array
        // elements are); `i` is within `ways`.
        let way = unsafe { read_volatile(&raw const (*bucket).ways[i]) };
        if let Some(c) = tab_match_v4(way, key) {
            return Some((c, tab_label_v4(way)));
        }
    }
    // SAFETY: `bucket` as in the loop.
    if unsafe { read_volatile(&raw const (*bucket).overflow) } != 0 {
        let key = NetKey4 {
            prefix_len: len,
            addr: addr.to_ne_bytes(),
        };
        return OVER_V4.get_ptr(key).map(|v| {
            // SAFETY: a found `over_v4` value: non-null, 8-aligned (hash map
            // values start 8-aligned) and, under RCU, valid for the run.
            unsafe { ((*v).class, (*v).flags) }
        });
    }
    None
}

#[inline(always)]
fn find_v6(hi: u64, lo: u64, len: u32) -> Option<(u32, u32)> {
    let bucket = TAB_V6.get_ptr(tab_bucket_v6(hi, lo, len))?;
    // Volatile and through raw places, as in `find_v4`.
    for i in 0..xban_common::TAB_V6_WAYS {
        // SAFETY: `bucket` is the kernel's pointer to an element of
        // `tab_v6`, non-null, valid for the program's run and 8-aligned;
        // `i` is within `ways`. Only the address is taken.
        let way = unsafe { &raw const (*bucket).ways[i] };
        // SAFETY: `way` points into that element.
        let meta = unsafe { read_volatile(&raw const (*way).meta) };
        if tab_meta_match_v6(meta, len).is_none() {
            continue;
        }
        // SAFETY: as for `meta`.
        let (h, l) = unsafe {
            (
                read_volatile(&raw const (*way).hi),
                read_volatile(&raw const (*way).lo),
            )
        };
        // Unchanged meta: the address read belongs to that entry.
        // SAFETY: as for `meta`.
        let again = unsafe { read_volatile(&raw const (*way).meta) };
        if h == hi && l == lo && again >> 32 == meta >> 32 {
            if let Some(c) = tab_meta_match_v6(again, len) {
                return Some((c, tab_label_v6(again)));
            }
        }
    }
    // SAFETY: `bucket` as in the loop.
    if unsafe { read_volatile(&raw const (*bucket).overflow) } != 0 {
        let key = NetKey6 {
            prefix_len: len,
            addr: v6_bytes(hi, lo),
        };
        return OVER_V6.get_ptr(key).map(|v| {
            // SAFETY: as for `over_v4` in `find_v4`.
            unsafe { ((*v).class, (*v).flags) }
        });
    }
    None
}

#[inline(always)]
fn v6_bytes(hi: u64, lo: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&hi.to_ne_bytes());
    a[8..].copy_from_slice(&lo.to_ne_bytes());
    a
}

/// A u64 with its `n` (0..=64) most significant bits set.
#[inline(always)]
fn high_bits(n: u32) -> u64 {
    if n == 0 {
        0
    } else {
        u64::MAX << (64 - n)
    }
}

/// Index of the highest set bit of a non-zero `x`. Branch-free (smear the
/// bits down, count them): BPF has no clz, and branches here would multiply
/// the paths the verifier walks.
#[inline(always)]
fn top_bit(mut x: u64) -> u32 {
    x |= x >> 1;
    x |= x >> 2;
    x |= x >> 4;
    x |= x >> 8;
    x |= x >> 16;
    x |= x >> 32;
    x.count_ones() - 1
}

#[inline(always)]
fn allowed() -> u32 {
    count(stats::PASSED_ALLOWED);
    xdp_action::XDP_PASS
}

/// The decision for a source that is not allowlisted (`l3`: offset of the
/// IP header, `v6`: its family).
#[inline(always)]
fn ban_verdict(ctx: &XdpContext, l3: usize, v6: bool, ban: Option<(u32, u32)>) -> u32 {
    match ban {
        Some((c, _)) if c == BanClass::Tarpit as u32 => match tarpit::engine() {
            xban_common::tarpit::engine::XDP => tarpit::tarpit(ctx, l3, v6),
            xban_common::tarpit::engine::PASS => {
                count(stats::PASSED_TARPIT);
                xdp_action::XDP_PASS
            }
            // No tarpit works: fail closed.
            _ => {
                count(stats::DROPPED);
                xdp_action::XDP_DROP
            }
        },
        Some((_, label)) => {
            count(stats::DROPPED);
            count_geo_drop(label);
            xdp_action::XDP_DROP
        }
        None => {
            count(stats::PASSED_CLEAN);
            xdp_action::XDP_PASS
        }
    }
}

/// A packet dropped by a geo rule's entry counts for its country (or AS):
/// the label came with the entry, so this is one per-CPU array slot, and
/// nothing at all for other bans.
#[inline(always)]
fn count_geo_drop(label: u32) {
    if label == 0 {
        return;
    }
    if let Some(c) = GEO_DROPS.get_ptr_mut(label & 0xffff) {
        // SAFETY: as in `count`.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: the kernel's pointer to this CPU's slot (non-null,
        // 8-aligned); no other CPU writes it and XDP runs to completion
        // without preemption, so a plain add is enough.
        unsafe { *c += 1 };
    }
}

/// The `dir_v4` slot at `index` (a zero slot if out of range). Read word by
/// word, volatile and through raw places: the agent rewrites slots in the
/// mmapped array while programs read them.
#[inline(always)]
fn dir_v4(index: u32) -> DirV4 {
    match DIR_V4.get_ptr(index) {
        // SAFETY: the kernel's pointer to an element of `dir_v4`: non-null,
        // 8-aligned, valid for the program's run.
        Some(p) => unsafe {
            DirV4 {
                nets: read_volatile(&raw const (*p).nets),
                allow: read_volatile(&raw const (*p).allow),
            }
        },
        None => DirV4::default(),
    }
}

/// As [`dir_v4`], for `dir_v6`.
#[inline(always)]
fn dir_v6(index: u32) -> DirV6 {
    match DIR_V6.get_ptr(index) {
        // SAFETY: as in `dir_v4`.
        Some(p) => unsafe {
            DirV6 {
                nets: [
                    read_volatile(&raw const (*p).nets[0]),
                    read_volatile(&raw const (*p).nets[1]),
                ],
                allow: read_volatile(&raw const (*p).allow),
            }
        },
        None => DirV6::default(),
    }
}

/// Bounds-checked pointer into the packet: the verifier requires the check.
/// The pointer has no alignment beyond 1 (frames start anywhere, and the
/// headers follow at any offset): read through it with [`load`] or
/// `read_unaligned`, never with `*`.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// The `N` packet bytes at `offset`, bounds-checked. Callers turn them into
/// numbers with `from_be_bytes` / `from_ne_bytes`. For a word on the hot
/// path use [`load_u16`], [`load_u32`] or [`load_u64`]: LLVM's BPF backend
/// turns an unaligned read into byte loads and shifts (an IPv6 address is 16
/// loads instead of 2, +25 % CPU per dropped IPv6 packet in a flood).
#[inline(always)]
pub(crate) fn load<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ()> {
    let p = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the `N` bytes lie inside the packet,
    // which stays in place while the program runs; a byte array has
    // alignment 1 and every value, so any address and contents will do
    // (`read_unaligned` says so explicitly).
    Ok(unsafe { read_unaligned(p) })
}

/// One BPF load instruction of `$width` bytes (`$bits` bits) from `p`, zero-extended.
///
/// A misaligned `*p` would be undefined behaviour in Rust, and
/// `read_unaligned` becomes byte loads. In `asm!` the load is the machine's:
/// the BPF instruction set defines loads at any address, and the kernel's
/// verifier accepts misaligned packet loads wherever the CPU handles them
/// (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`: x86, arm64, ppc64, s390). On
/// other CPUs it checks them against the 2-byte `NET_IP_ALIGN` layout, which
/// the offsets read here (Ethernet type, IPv4 and IPv6 source) keep.
macro_rules! load_word {
    ($name:ident, $ty:ty, $width:literal, $bits:literal) => {
        #[doc = concat!("The `", stringify!($ty), "` at packet `offset`, bounds-checked, in the packet's byte order as `from_ne_bytes` of them would give.")]
        #[inline(always)]
        pub(crate) fn $name(ctx: &XdpContext, offset: usize) -> Result<$ty, ()> {
            let p = ptr_at::<[u8; $width]>(ctx, offset)?;
            let v: u64;
            // SAFETY: `ptr_at` checked that the bytes lie inside the packet,
            // which stays in place while the program runs; the asm only
            // reads them (see the macro's comment for alignment).
            unsafe {
                asm!(
                    concat!("{v} = *(u", $bits, " *)({p} + 0)"),
                    v = out(reg) v,
                    p = in(reg) p,
                    options(pure, readonly, nostack, preserves_flags),
                )
            };
            // The load zero-extends: the cast keeps exactly the bytes read.
            Ok(v as $ty)
        }
    };
}
load_word!(load_u16, u16, 2, 16);
load_word!(load_u32, u32, 4, 32);
load_word!(load_u64, u64, 8, 64);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
