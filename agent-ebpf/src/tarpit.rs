//! The stateless TCP tarpit: tarpit-class sources are answered here, with
//! `XDP_TX`, the way xt_TARPIT answers them, and nothing is remembered.
//!
//! - SYN → SYN-ACK, window 5, ack = seq + 1, ISN a keyed hash of the 4-tuple
//!   (so a retransmitted SYN gets the same answer);
//! - ACK, data, probes → ACK with window 0 that acknowledges nothing new
//!   (seq = their ack, ack = their seq);
//! - SYN-ACK → RST (seq = their ack);
//! - FIN, RST, or neither SYN nor ACK → nothing (close attempts are ignored).
//!
//! The frame is reused: MACs, addresses and ports swapped, VLAN tags kept,
//! the rest rewritten (IPv4: IHL 5, ID 0, DF, TTL 64; IPv6: hop limit 64),
//! TCP header only (20 bytes, no options), checksums computed in full, and
//! the tail trimmed. Replies are bounded by a per-CPU token bucket. Only
//! unicast TCP is answered: IPv4 without options, IPv6 with TCP as the first
//! next header, no fragments, a valid TCP checksum; everything else from the
//! source is dropped, and counted.

use crate::{load, ptr_at};
use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail},
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use xban_common::tarpit::{
    csum_fold, isn_v4, isn_v6, stats, take_token, TarpitCfg, TarpitKey, TokenBucket, MAX_SEGMENT,
    REPLY_TTL, SYNACK_WINDOW,
};

#[map(name = "tarpit_cfg")]
static TARPIT_CFG: Array<TarpitCfg> = Array::pinned(1, 0);
#[map(name = "tarpit_key")]
static TARPIT_KEY: Array<TarpitKey> = Array::pinned(1, 0);
#[map(name = "tarpit_bucket")]
static TARPIT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::pinned(1, 0);
#[map(name = "tarpit_stats")]
static TARPIT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_HDR_LEN: usize = 20;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What the program does with tarpit-class packets, as the agent set it.
#[inline(always)]
pub(crate) fn engine() -> u32 {
    TARPIT_CFG
        .get(0)
        .map(|c| c.engine)
        .unwrap_or(xban_common::tarpit::engine::DROP)
}

/// Answer (or drop) a packet from a tarpit-class source; `l3` is the offset
/// of its IP header, `v6` its family.
#[inline(always)]
pub(crate) fn tarpit(ctx: &XdpContext, l3: usize, v6: bool) -> u32 {
    if v6 {
        tarpit_v6(XdpContext::new(ctx.ctx), l3)
    } else {
        tarpit_v4(XdpContext::new(ctx.ctx), l3)
    }
}

/// Count the outcome; the XDP action for it.
#[inline(always)]
fn finish(outcome: Result<Reply, ()>) -> u32 {
    match outcome {
        Ok(Reply::Sent(kind)) => {
            count(kind);
            xdp_action::XDP_TX
        }
        Ok(Reply::Dropped(why)) => {
            count(why);
            xdp_action::XDP_DROP
        }
        Ok(Reply::Pass) => {
            count(stats::PASSED_ND);
            xdp_action::XDP_PASS
        }
        Err(()) => {
            count(stats::UNANSWERABLE);
            xdp_action::XDP_DROP
        }
    }
}

// Not inlined: each family's path gets its own stack frame (BPF allows 512
// bytes per frame), and the verifier walks the two separately.
#[inline(never)]
fn tarpit_v4(ctx: XdpContext, l3: usize) -> u32 {
    finish(reply_v4(&ctx, l3))
}

#[inline(never)]
fn tarpit_v6(ctx: XdpContext, l3: usize) -> u32 {
    finish(reply_v6(&ctx, l3))
}

enum Reply {
    /// Rewritten into a reply (the `stats` index of its kind).
    Sent(u32),
    /// Dropped, and why.
    Dropped(u32),
    /// Neighbour discovery: to the stack.
    Pass,
}

/// The TCP fields a reply is made from.
struct Segment {
    sport: [u8; 2],
    dport: [u8; 2],
    seq: u32,
    ack: u32,
    flags: u8,
}

/// The reply's TCP fields, or why there is none.
struct Answer {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    kind: u32,
}

#[inline(always)]
fn reply_v4(ctx: &XdpContext, l3: usize) -> Result<Reply, ()> {
    if !unicast_mac(ctx)? {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let h = load::<IPV4_HDR_LEN>(ctx, l3)?;
    if h[9] != IPPROTO_TCP {
        return Ok(Reply::Dropped(stats::NOT_TCP));
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    // IHL 5 only (xt_TARPIT answers no options); no fragment of any kind.
    if h[0] != 0x45 || frag & 0x3fff != 0 {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    if dst[0] >= 224 || dst[0] == 0 || dst[0] == 127 {
        // Multicast, class E and limited broadcast, "this network", loopback.
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if total < IPV4_HDR_LEN + TCP_HDR_LEN || total - IPV4_HDR_LEN > MAX_SEGMENT {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let seg_len = total - IPV4_HDR_LEN;
    let tcp = l3 + IPV4_HDR_LEN;
    // Pseudo-header: addresses, protocol, TCP length.
    let pseudo = sum_words(&src) + sum_words(&dst) + IPPROTO_TCP as u64 + seg_len as u64;
    let Some(seg) = read_segment(ctx, tcp, seg_len, pseudo)? else {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    };
    let answer = match answer(&seg, |key| {
        isn_v4(
            key,
            u32::from_be_bytes(dst),
            u32::from_be_bytes(src),
            u16::from_be_bytes(seg.dport),
            u16::from_be_bytes(seg.sport),
        )
    }) {
        Ok(a) => a,
        Err(why) => return Ok(Reply::Dropped(why)),
    };
    if !take() {
        return Ok(Reply::Dropped(stats::OVER_LIMIT));
    }

    swap_macs(ctx)?;
    // The reply's IPv4 header: IHL 5, TOS 0, ID 0, DF, TTL 64, swapped
    // addresses, checksum over the 20 bytes.
    let mut out = [0u8; IPV4_HDR_LEN];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&((IPV4_HDR_LEN + TCP_HDR_LEN) as u16).to_be_bytes());
    out[6] = 0x40;
    out[8] = REPLY_TTL;
    out[9] = IPPROTO_TCP;
    out[12..16].copy_from_slice(&dst);
    out[16..20].copy_from_slice(&src);
    let csum = !csum_fold(sum_words(&out));
    out[10..12].copy_from_slice(&csum.to_be_bytes());
    let ip_out = ptr_at::<[u8; IPV4_HDR_LEN]>(ctx, l3)? as *mut [u8; IPV4_HDR_LEN];
    // SAFETY: the same 20 checked bytes as above, written unaligned.
    unsafe { write_unaligned(ip_out, out) };

    let pseudo = sum_words(&dst) + sum_words(&src) + IPPROTO_TCP as u64 + TCP_HDR_LEN as u64;
    write_tcp(ctx, tcp, &seg, &answer, pseudo)?;
    trim(ctx, tcp + TCP_HDR_LEN)?;
    Ok(Reply::Sent(answer.kind))
}

#[inline(always)]
fn reply_v6(ctx: &XdpContext, l3: usize) -> Result<Reply, ()> {
    let ip = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, l3)? as *const u8;
    // SAFETY: `ptr_at` checked the 40 bytes; unaligned reads copy parts
    // out (addresses as big-endian halves: no 16-byte arrays on the stack).
    let (h, src, dst) = unsafe {
        (
            read_unaligned(ip as *const [u8; 8]),
            [be64(ip.add(8)), be64(ip.add(16))],
            [be64(ip.add(24)), be64(ip.add(32))],
        )
    };
    match h[6] {
        IPPROTO_TCP => {}
        // Extension headers (hop-by-hop, routing, fragment, destination
        // options, AH, ESP, mobility, HIP, shim6): TCP may follow, but the
        // tarpit does not walk them.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
            return Ok(Reply::Dropped(stats::UNANSWERABLE))
        }
        IPPROTO_ICMPV6 => {
            let [icmp_type] = load::<1>(ctx, l3 + IPV6_HDR_LEN)?;
            if icmp_type == ND_SOLICIT || icmp_type == ND_ADVERT {
                return Ok(Reply::Pass);
            }
            return Ok(Reply::Dropped(stats::NOT_TCP));
        }
        _ => return Ok(Reply::Dropped(stats::NOT_TCP)),
    }
    // After the ND check: a neighbour solicitation goes to a multicast MAC.
    if !unicast_mac(ctx)? {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    // Multicast, unspecified, loopback.
    if dst[0] >> 56 == 0xff || (dst[0] == 0 && dst[1] <= 1) {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let seg_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    if !(TCP_HDR_LEN..=MAX_SEGMENT).contains(&seg_len) {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    }
    let tcp = l3 + IPV6_HDR_LEN;
    let addrs = sum64(src[0]) + sum64(src[1]) + sum64(dst[0]) + sum64(dst[1]);
    let pseudo = addrs + IPPROTO_TCP as u64 + seg_len as u64;
    let Some(seg) = read_segment(ctx, tcp, seg_len, pseudo)? else {
        return Ok(Reply::Dropped(stats::UNANSWERABLE));
    };
    let answer = match answer(&seg, |key| {
        isn_v6(
            key,
            dst,
            src,
            u16::from_be_bytes(seg.dport),
            u16::from_be_bytes(seg.sport),
        )
    }) {
        Ok(a) => a,
        Err(why) => return Ok(Reply::Dropped(why)),
    };
    if !take() {
        return Ok(Reply::Dropped(stats::OVER_LIMIT));
    }

    swap_macs(ctx)?;
    // Version 6, traffic class and flow label 0, payload 20 bytes, TCP, hop
    // limit 64, swapped addresses.
    let ip_out = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, l3)? as *mut u8;
    let len = (TCP_HDR_LEN as u16).to_be_bytes();
    let first = [0x60, 0, 0, 0, len[0], len[1], IPPROTO_TCP, REPLY_TTL];
    // SAFETY: the same 40 checked bytes as above, written unaligned.
    unsafe {
        write_unaligned(ip_out as *mut [u8; 8], first);
        write_unaligned(ip_out.add(8) as *mut [u8; 8], dst[0].to_be_bytes());
        write_unaligned(ip_out.add(16) as *mut [u8; 8], dst[1].to_be_bytes());
        write_unaligned(ip_out.add(24) as *mut [u8; 8], src[0].to_be_bytes());
        write_unaligned(ip_out.add(32) as *mut [u8; 8], src[1].to_be_bytes());
    }

    // The same addresses, swapped: the same sum.
    let pseudo = addrs + IPPROTO_TCP as u64 + TCP_HDR_LEN as u64;
    write_tcp(ctx, tcp, &seg, &answer, pseudo)?;
    trim(ctx, tcp + TCP_HDR_LEN)?;
    Ok(Reply::Sent(answer.kind))
}

/// 8 packet bytes as a big-endian u64.
///
/// # Safety
/// `p` must point at 8 readable (bounds-checked) packet bytes.
#[inline(always)]
unsafe fn be64(p: *const u8) -> u64 {
    // SAFETY: the caller's bounds check covers the 8 bytes.
    u64::from_be_bytes(unsafe { read_unaligned(p as *const [u8; 8]) })
}

/// Sum of a u64's four 16-bit words.
#[inline(always)]
fn sum64(w: u64) -> u64 {
    (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff)
}

/// xt_TARPIT's rules: what to answer to `seg`, or why not (a `stats` index).
#[inline(always)]
fn answer(seg: &Segment, isn: impl FnOnce(&TarpitKey) -> u32) -> Result<Answer, u32> {
    let f = seg.flags;
    if f & (RST | FIN) != 0 {
        return Err(stats::IGNORED);
    }
    match (f & SYN != 0, f & ACK != 0) {
        (true, false) => Ok(Answer {
            // A missing key map cannot happen once loaded; zero is harmless.
            seq: match TARPIT_KEY.get(0) {
                Some(key) => isn(key),
                None => 0,
            },
            ack: seg.seq.wrapping_add(1),
            flags: SYN | ACK,
            window: SYNACK_WINDOW,
            kind: stats::SYNACK,
        }),
        (true, true) => Ok(Answer {
            seq: seg.ack,
            ack: 0,
            flags: RST,
            window: 0,
            kind: stats::RST,
        }),
        (false, true) => Ok(Answer {
            seq: seg.ack,
            ack: seg.seq,
            flags: ACK,
            window: 0,
            kind: stats::ACK,
        }),
        (false, false) => Err(stats::IGNORED),
    }
}

/// Read the TCP header at `tcp` and verify the checksum of the `seg_len`
/// bytes of segment (`pseudo`: the pseudo-header's sum). `None`: the
/// segment is malformed (short, bad data offset, bad checksum).
#[inline(always)]
fn read_segment(
    ctx: &XdpContext,
    tcp: usize,
    seg_len: usize,
    pseudo: u64,
) -> Result<Option<Segment>, ()> {
    let t = load::<TCP_HDR_LEN>(ctx, tcp)?;
    let doff = (t[12] >> 4) as usize * 4;
    if doff < TCP_HDR_LEN || doff > seg_len {
        return Ok(None);
    }
    if tcp + seg_len > ctx.data_end() - ctx.data() {
        // The IP length claims more than the frame holds.
        return Ok(None);
    }
    if csum_fold(pseudo + sum_packet(ctx, tcp, seg_len)?) != 0xffff {
        return Ok(None);
    }
    Ok(Some(Segment {
        sport: [t[0], t[1]],
        dport: [t[2], t[3]],
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
    }))
}

/// The ones' complement sum (unfolded) of `len` packet bytes from `off`, as
/// big-endian 16-bit words, an odd last byte padded with zero.
#[inline(always)]
fn sum_packet(ctx: &XdpContext, off: usize, len: usize) -> Result<u64, ()> {
    let mut sum: u64 = 0;
    let mut i: usize = 0;
    // Four bytes a step (32-bit big-endian words fold to the same sum);
    // bounded for the verifier.
    for _ in 0..MAX_SEGMENT / 4 {
        if i + 4 > len {
            break;
        }
        sum += u32::from_be_bytes(load(ctx, off + i)?) as u64;
        i += 4;
    }
    // The 0..3 bytes left.
    for _ in 0..3 {
        if i >= len {
            break;
        }
        let [b] = load::<1>(ctx, off + i)?;
        let b = b as u64;
        sum += if i & 1 == 0 { b << 8 } else { b };
        i += 1;
    }
    Ok(sum)
}

/// Write the reply's TCP header over the segment's: ports swapped, no
/// options, urgent 0, checksum with `pseudo` (the reply's pseudo-header).
#[inline(always)]
fn write_tcp(
    ctx: &XdpContext,
    tcp: usize,
    seg: &Segment,
    a: &Answer,
    pseudo: u64,
) -> Result<(), ()> {
    let mut out = [0u8; TCP_HDR_LEN];
    out[0..2].copy_from_slice(&seg.dport);
    out[2..4].copy_from_slice(&seg.sport);
    out[4..8].copy_from_slice(&a.seq.to_be_bytes());
    out[8..12].copy_from_slice(&a.ack.to_be_bytes());
    out[12] = ((TCP_HDR_LEN / 4) as u8) << 4;
    out[13] = a.flags;
    out[14..16].copy_from_slice(&a.window.to_be_bytes());
    let csum = !csum_fold(pseudo + sum_words(&out));
    out[16..18].copy_from_slice(&csum.to_be_bytes());
    let p = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, tcp)? as *mut [u8; TCP_HDR_LEN];
    // SAFETY: `ptr_at` checked the 20 bytes; written unaligned.
    unsafe { write_unaligned(p, out) };
    Ok(())
}

/// Sum of a byte array as big-endian 16-bit words (even length).
#[inline(always)]
fn sum_words<const N: usize>(b: &[u8; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    sum
}

/// The destination MAC is unicast (group bit clear).
#[inline(always)]
fn unicast_mac(ctx: &XdpContext) -> Result<bool, ()> {
    // The whole Ethernet header: a one-byte check at offset 0 compiles to
    // `data >= data_end`, from which the verifier learns no range.
    let eth = load::<14>(ctx, 0)?;
    Ok(eth[0] & 1 == 0)
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), ()> {
    let p = ptr_at::<[u8; 12]>(ctx, 0)? as *mut [u8; 12];
    // SAFETY: `ptr_at` checked the 12 bytes; unaligned copy out and back.
    let m = unsafe { read_unaligned(p) };
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&m[6..]);
    out[6..].copy_from_slice(&m[..6]);
    // SAFETY: as above.
    unsafe { write_unaligned(p, out) };
    Ok(())
}

/// Cut the frame to `len` bytes (the reply's headers).
#[inline(always)]
fn trim(ctx: &XdpContext, len: usize) -> Result<(), ()> {
    let have = ctx.data_end() - ctx.data();
    if have > len {
        let delta = len as i32 - have as i32;
        // SAFETY: a helper call on our own context; a negative delta that
        // keeps the headers (`len` bytes) is what it accepts.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    Ok(())
}

/// One reply's worth from this CPU's bucket.
#[inline(always)]
fn take() -> bool {
    let Some(cfg) = TARPIT_CFG.get(0) else {
        return false;
    };
    let Some(b) = TARPIT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the kernel's ktime helper, no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the kernel's pointer to this CPU's slot of a per-CPU array
    // (non-null, 8-aligned as `TokenBucket` needs): nothing else writes it
    // while this program runs here (XDP runs with preemption off).
    take_token(unsafe { &mut *b }, now, cfg.cost_ns, cfg.cap_ns)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = TARPIT_STATS.get_ptr_mut(index) {
        // SAFETY: the kernel's pointer to this CPU's slot (non-null,
        // 8-aligned); no other CPU writes it.
        unsafe { *c += 1 };
    }
}
