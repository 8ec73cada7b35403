//! Raw frames: an AF_PACKET socket in a namespace that sends hand-made
//! frames and captures what comes back (VLAN tags restored from the
//! kernel's auxdata), builders/parsers for Ethernet, 802.1Q, IPv4, IPv6 and
//! TCP with checksums checked independently of xban's code (the tarpit
//! tests), and the UDP frames the benchmarks feed the XDP program.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::Lab;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub use crate::netns::mac_of;

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct RawSock {
    fd: OwnedFd,
    ifindex: i32,
}

const ETH_P_ALL: u16 = 0x0003;
const TP_STATUS_VLAN_VALID: u32 = 0x10;
const PACKET_OUTGOING: u8 = 4;

impl RawSock {
    pub fn open(ns: &str, ifname: &str) -> Result<RawSock> {
        let ifname = ifname.to_string();
        Lab::in_ns(ns, move || -> Result<RawSock> {
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname.clone())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            // SAFETY: sockaddr_ll is plain data; zeroed is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex;
            // SAFETY: a valid sockaddr_ll of the right size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r != 0 {
                bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
            }
            let one: i32 = 1;
            // PACKET_AUXDATA: the VLAN tag the kernel took off; 23,
            // PACKET_IGNORE_OUTGOING: not our own sends (floods would fill
            // the receive buffer).
            for opt in [libc::PACKET_AUXDATA, 23] {
                // SAFETY: an int option.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        opt,
                        &one as *const _ as *const libc::c_void,
                        4,
                    )
                };
            }
            let big: i32 = 8 << 20;
            // SAFETY: an int option.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &big as *const _ as *const libc::c_void,
                    4,
                )
            };
            Ok(RawSock { fd, ifindex })
        })
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n != frame.len() as isize {
            bail!("send raw frame: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Incoming frames for `wait`, VLAN tags put back inline.
    pub fn recv_for(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return frames;
            }
            if let Some(f) = self.recv_one(left).filter(|f| !f.is_empty()) {
                frames.push(f);
            }
        }
    }

    /// Drop what is queued.
    pub fn drain(&self) {
        while self.recv_one(Duration::from_millis(1)).is_some() {}
    }

    fn recv_one(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
        if r <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        let mut cmsg = [0u64; 16];
        // SAFETY: plain data; zeroed is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data; zeroed is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        if from.sll_pkttype == PACKET_OUTGOING {
            // Our own sends: an empty frame, skipped by the callers.
            return Some(Vec::new());
        }
        // SAFETY: walking the control messages the kernel wrote into msg.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = std::ptr::read_unaligned(
                        libc::CMSG_DATA(c) as *const libc::tpacket_auxdata
                    );
                    if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if aux.tp_vlan_tpid == 0 {
                            0x8100
                        } else {
                            aux.tp_vlan_tpid
                        };
                        let mut tag = Vec::with_capacity(4);
                        tag.extend_from_slice(&tpid.to_be_bytes());
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        buf.splice(12..12, tag);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some(buf)
    }
}

/// What a test frame carries.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Ones' complement sum of big-endian 16-bit words (odd byte padded).
pub fn csum_sum(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(src: &IpAddr, dst: &IpAddr, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    csum_sum(&p) + 6 + len as u32
}

impl Tcp {
    /// The TCP segment with its checksum.
    pub fn segment(&self) -> Vec<u8> {
        let doff = 20 + self.options.len();
        assert!(doff.is_multiple_of(4) && doff <= 60);
        let mut t = Vec::new();
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(((doff / 4) as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&self.options);
        t.extend_from_slice(&self.payload);
        let c = !fold(pseudo(&self.src, &self.dst, t.len()) + csum_sum(&t));
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }

    /// The whole frame (IPv4: IHL 5, DF, TTL 64; IPv6: hop limit 64).
    pub fn frame(&self) -> Vec<u8> {
        let seg = self.segment();
        let mut ip = Vec::new();
        let ethertype: u16 = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip.extend_from_slice(&[0x45, 0]);
                ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = !fold(csum_sum(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                0x0800
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip.extend_from_slice(&[0x60, 0, 0, 0]);
                ip.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[6, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                0x86dd
            }
            _ => panic!("mixed families"),
        };
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(id) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&seg);
        f
    }
}

/// A captured TCP frame taken apart, with its checksums verified here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4: (IHL, total length, ID, flags+fragment, TTL, checksum valid).
    pub v4: Option<(u8, u16, u16, u16, u8, bool)>,
    /// IPv6: (payload length, next header, hop limit, traffic class+flow).
    pub v6: Option<(u16, u8, u8, u32)>,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: usize,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub tcp_csum_ok: bool,
    /// Bytes after the TCP header within the IP length.
    pub payload_len: usize,
    /// Bytes of the frame beyond the IP packet.
    pub trailing: usize,
}

/// Parse a frame; `None` unless it is TCP over IPv4/IPv6 (one tag at most).
pub fn parse(f: &[u8]) -> Option<Parsed> {
    let dst_mac: [u8; 6] = f.get(0..6)?.try_into().ok()?;
    let src_mac: [u8; 6] = f.get(6..12)?.try_into().ok()?;
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    let mut vlan = None;
    if et == 0x8100 || et == 0x88a8 {
        vlan = Some(u16::from_be_bytes([f[off + 2], f[off + 3]]) & 0x0fff);
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    off += 2;
    let ip = f.get(off..)?;
    let (src, dst, v4, v6, seg, trailing) = match et {
        0x0800 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            if ip[9] != 6 {
                return None;
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let ok = fold(csum_sum(ip.get(..ihl)?)) == 0xffff;
            let v4 = (
                ip[0] & 0x0f,
                total as u16,
                u16::from_be_bytes([ip[4], ip[5]]),
                u16::from_be_bytes([ip[6], ip[7]]),
                ip[8],
                ok,
            );
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                Some(v4),
                None,
                ip.get(ihl..total)?,
                ip.len() - total,
            )
        }
        0x86dd => {
            if ip[6] != 6 {
                return None;
            }
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            let v6 = (
                plen as u16,
                ip[6],
                ip[7],
                u32::from_be_bytes([ip[0] & 0x0f, ip[1], ip[2], ip[3]]),
            );
            (
                IpAddr::from(s),
                IpAddr::from(d),
                None,
                Some(v6),
                ip.get(40..40 + plen)?,
                ip.len() - 40 - plen,
            )
        }
        _ => return None,
    };
    let doff = (seg.get(12)? >> 4) as usize * 4;
    Some(Parsed {
        dst_mac,
        src_mac,
        vlan,
        src,
        dst,
        v4,
        v6,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        seq: u32::from_be_bytes(seg[4..8].try_into().ok()?),
        ack: u32::from_be_bytes(seg[8..12].try_into().ok()?),
        doff,
        flags: seg[13],
        window: u16::from_be_bytes([seg[14], seg[15]]),
        urgent: u16::from_be_bytes([seg[18], seg[19]]),
        tcp_csum_ok: fold(pseudo(&src, &dst, seg.len()) + csum_sum(seg)) == 0xffff,
        payload_len: seg.len().saturating_sub(doff),
        trailing,
    })
}

/// Make the attacker's veth end send like a NIC: checksums in full (veth
/// offloads them by default, so frames reach the server's XDP with only the
/// pseudo-header summed, which the tarpit rejects as a bad checksum; XDP
/// fed by a NIC never sees that). GRO on as well, which is harmless.
pub fn veth_like_nic(ns: &str, ifname: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const ETHTOOL_SGRO: u32 = 0x2c;
    let ifname = ifname.to_string();
    Lab::in_ns(ns, move || -> Result<()> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
        for (cmd, data) in [(ETHTOOL_STXCSUM, 0u32), (ETHTOOL_SGRO, 1)] {
            let mut value = [cmd, data];
            let mut ifr = [0u8; 40];
            ifr[..ifname.len()].copy_from_slice(ifname.as_bytes());
            ifr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
            // SAFETY: SIOCETHTOOL with an ifreq whose data points at a
            // live ethtool_value.
            let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, ifr.as_mut_ptr()) };
            if r != 0 {
                bail!(
                    "ethtool {cmd:#x} on {ifname}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// UDP frames for the benchmarks

/// The source MAC of the benchmarks' frames.
pub const BENCH_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// A made-up unicast destination MAC.
pub const BENCH_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Ethernet + IPv4 + UDP (port 40000 to 9), 8 bytes of payload, checksums
/// filled in.
pub fn ipv4_udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = BENCH_DST_MAC.to_vec();
    f.extend_from_slice(&BENCH_SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + 8 + 8u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = !fold(csum_sum(&ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend(ip);
    // UDP checksum 0: optional over IPv4.
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x09, 0x00, 0x10, 0x00, 0x00]);
    f.extend_from_slice(b"xbanbnch");
    f
}

/// Ethernet + IPv6 + UDP with 18 bytes of payload and a valid checksum
/// (mandatory over IPv6), between the made-up MACs.
pub fn ipv6_udp_frame(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    ipv6_udp_frame_to(BENCH_DST_MAC, BENCH_SRC_MAC, src, dst, sport, dport)
}

/// As [`ipv6_udp_frame`], between the given MACs.
pub fn ipv6_udp_frame_to(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let payload = b"xban-bench-flood!!";
    let udp_len = (8 + payload.len()) as u16;
    let mut f = Vec::with_capacity(14 + 40 + udp_len as usize);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // Pseudo-header: addresses, length, next header.
    let pseudo = csum_sum(&src) + csum_sum(&dst) + u32::from(udp_len) + 17;
    let mut sum = !fold(pseudo + csum_sum(&udp));
    if sum == 0 {
        sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    f.extend(udp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_frames_parse_with_valid_checksums() {
        let f = ipv4_udp_frame([203, 0, 113, 7], [198, 51, 100, 1]);
        assert_eq!(f.len(), 14 + 20 + 8 + 8);
        assert_eq!(fold(csum_sum(&f[14..34])), 0xffff, "IPv4 header checksum");
        let src: [u8; 16] = "2001:db8:bad::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let dst: [u8; 16] = "2001:db8:100::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let f = ipv6_udp_frame(src, dst, 40000, 9);
        let udp = &f[54..];
        let pseudo = csum_sum(&src) + csum_sum(&dst) + udp.len() as u32 + 17;
        assert_eq!(fold(pseudo + csum_sum(udp)), 0xffff, "UDP checksum");
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40000);
    }
}
