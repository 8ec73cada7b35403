//! xban's XDP program: drop packets whose source address is banned.
//!
//! Per packet: parse Ethernet (up to two VLAN tags), IPv4 or IPv6, then look the
//! source up in the allowlist trie (hit: pass) and in the ban trie (hit: drop, or
//! pass for the tarpit class, which iptables steers). Everything else passes.
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{lpm_trie::Key, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use xban_common::{stats, AllowValue, BanClass, BanValue, ALLOW_MAX_ENTRIES, BANS_MAX_ENTRIES};

// Pinned by name: a restarted agent (and bpftool) finds the same maps under the pin dir.
#[map(name = "allow_v4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
#[map(name = "allow_v6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
#[map(name = "bans_v4")]
static BANS_V4: LpmTrie<[u8; 4], BanValue> = LpmTrie::pinned(BANS_MAX_ENTRIES, 0);
#[map(name = "bans_v6")]
static BANS_V6: LpmTrie<[u8; 16], BanValue> = LpmTrie::pinned(BANS_MAX_ENTRIES, 0);
#[map(name = "stats")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

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
pub fn xban_xdp(ctx: XdpContext) -> u32 {
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
    let mut proto = u16::from_be(unsafe { *ptr_at::<u16>(ctx, off)? });
    off += 2;
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = u16::from_be(unsafe { *ptr_at::<u16>(ctx, off + 2)? });
            off += VLAN_HDR_LEN;
        }
    }
    match proto {
        ETH_P_IP => {
            let ver_ihl = unsafe { *ptr_at::<u8>(ctx, off)? };
            if ver_ihl >> 4 != 4 {
                return Err(());
            }
            let src = unsafe { *ptr_at::<[u8; 4]>(ctx, off + IPV4_SRC_OFF)? };
            let key = Key::new(32, src);
            if ALLOW_V4.get(&key).is_some() {
                return Ok(allowed());
            }
            Ok(ban_verdict(BANS_V4.get(&key).map(|v| v.class)))
        }
        ETH_P_IPV6 => {
            let src = unsafe { *ptr_at::<[u8; 16]>(ctx, off + IPV6_SRC_OFF)? };
            let key = Key::new(128, src);
            if ALLOW_V6.get(&key).is_some() {
                return Ok(allowed());
            }
            Ok(ban_verdict(BANS_V6.get(&key).map(|v| v.class)))
        }
        _ => {
            count(stats::PASSED_NOT_IP);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

#[inline(always)]
fn allowed() -> u32 {
    count(stats::PASSED_ALLOWED);
    xdp_action::XDP_PASS
}

/// The decision for a source that is not allowlisted.
#[inline(always)]
fn ban_verdict(ban_class: Option<u32>) -> u32 {
    match ban_class {
        Some(c) if c == BanClass::Tarpit as u32 => {
            count(stats::PASSED_TARPIT);
            xdp_action::XDP_PASS
        }
        Some(_) => {
            count(stats::DROPPED);
            xdp_action::XDP_DROP
        }
        None => {
            count(stats::PASSED_CLEAN);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *c += 1 };
    }
}

/// Bounds-checked pointer into the packet: the verifier requires the check.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
