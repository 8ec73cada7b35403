//! Prefix arithmetic: networks merged into the fewest covering prefixes,
//! and a prefix with a hole cut out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::addr::Target;

/// `outer` minus `hole` (which it covers), as prefixes.
pub fn split_around(outer: &Target, hole: &Target) -> Vec<Target> {
    let mut out = Vec::new();
    let mut cur = *outer;
    while cur.prefix() < hole.prefix() {
        let len = cur.prefix() + 1;
        let low = Target::new(cur.addr(), len).expect("longer prefix of a valid one");
        let high = Target::new(flip_bit(cur.addr(), cur.prefix()), len).expect("valid");
        if low.covers(hole) {
            out.push(high);
            cur = low;
        } else {
            out.push(low);
            cur = high;
        }
    }
    out
}

pub(super) fn flip_bit(ip: IpAddr, index: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ (1 << (31 - index)))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ (1 << (127 - index)))),
    }
}

/// An address range of one family, inclusive, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Span {
    pub(super) v6: bool,
    pub(super) start: u128,
    pub(super) end: u128,
}

pub(super) fn span_of(net: IpNetwork) -> Option<Span> {
    // IPv4 networks of an IPv6 database are IPv4.
    let t = Target::new(net.network(), net.prefix()).ok()?;
    let (v6, bits, start) = match t.addr() {
        IpAddr::V4(a) => (false, 32u32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, 128u32, u128::from(a)),
    };
    let host_bits = bits - u32::from(t.prefix());
    let size_minus_one = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Some(Span {
        v6,
        start,
        end: start + size_minus_one,
    })
}

/// Sorted, overlapping or adjacent spans joined.
pub(super) fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if let Some(last) = out.last_mut() {
            if last.v6 == s.v6 && (s.start <= last.end || s.start == last.end.wrapping_add(1)) {
                last.end = last.end.max(s.end);
                continue;
            }
        }
        out.push(s);
    }
    out
}

/// The fewest prefixes covering exactly the span.
pub(super) fn prefixes_of(span: Span) -> Vec<Target> {
    let bits: u32 = if span.v6 { 128 } else { 32 };
    let max = if span.v6 {
        u128::MAX
    } else {
        u128::from(u32::MAX)
    };
    let mut out = Vec::new();
    let mut start = span.start;
    loop {
        let mut size_log = if start == 0 {
            bits
        } else {
            start.trailing_zeros().min(bits)
        };
        let last = |log: u32| {
            if log >= 128 {
                u128::MAX
            } else {
                start + ((1u128 << log) - 1)
            }
        };
        while size_log > 0 && last(size_log) > span.end {
            size_log -= 1;
        }
        let ip = if span.v6 {
            IpAddr::V6(Ipv6Addr::from(start))
        } else {
            IpAddr::V4(Ipv4Addr::from(start as u32))
        };
        out.push(Target::new(ip, (bits - size_log) as u8).expect("aligned"));
        let end = last(size_log);
        if end >= span.end || end == max {
            break;
        }
        start = end + 1;
    }
    out
}
