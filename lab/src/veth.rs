//! A [`Lab`] is two network namespaces joined by a veth pair: `srv`, where
//! the agent runs and attaches XDP, and `atk`, the attacker (or load
//! generator). Everything it creates has a unique name and is removed on
//! drop (also when a test or a benchmark panics). It never touches the
//! machine's own interfaces and only uses documentation addresses
//! (198.51.100.0/24, 2001:db8::/32).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::Result;

use crate::cmd::{require_root, run};
use crate::netns::{in_ns, mac_of, next_id, NetNsGuard};

pub const SRV_V4: &str = "198.51.100.1";
pub const SRV_V6: &str = "2001:db8:100::1";
/// Attacker addresses, all on the attacker's side of the veth.
pub const ATK_V4: &str = "198.51.100.2";
pub const ATK2_V4: &str = "198.51.100.3";
pub const ATK3_V4: &str = "198.51.100.4";
pub const ATK_V6: &str = "2001:db8:100::2";

/// What differs between the labs of the tests, the benchmarks and the demo:
/// names (so that each can find and reap its own) and addresses.
#[derive(Debug, Clone, Copy)]
pub struct LabSpec<'a> {
    /// Namespaces are `{ns_prefix}{pid}-{n}-srv` and `-atk`.
    pub ns_prefix: &'a str,
    /// Interfaces are `{if_prefix}{pid % 100000}x{n}s` and `a`; IFNAMSIZ
    /// leaves room for three characters here.
    pub if_prefix: &'a str,
    /// IPv4 addresses get /24, IPv6 ones /64 (without DAD).
    pub srv_addrs: &'a [&'a str],
    pub atk_addrs: &'a [&'a str],
}

impl LabSpec<'static> {
    /// The integration tests' lab: three attacker IPv4 addresses.
    pub const TESTS: LabSpec<'static> = LabSpec {
        ns_prefix: "xbt-",
        if_prefix: "xt",
        srv_addrs: &[SRV_V4, SRV_V6],
        atk_addrs: &[ATK_V4, ATK2_V4, ATK3_V4, ATK_V6],
    };

    /// The benchmarks' lab: one address of each family on each side.
    pub const BENCH: LabSpec<'static> = LabSpec {
        ns_prefix: "xbb-",
        if_prefix: "xbb",
        srv_addrs: &[SRV_V4, SRV_V6],
        atk_addrs: &[ATK_V4, ATK_V6],
    };
}

/// Two namespaces and a veth pair.
pub struct Lab {
    pub srv_ns: String,
    pub atk_ns: String,
    /// The server's end of the veth (XDP attaches here).
    pub srv_if: String,
    pub atk_if: String,
    srv_addrs: Vec<String>,
    atk_addrs: Vec<String>,
    /// Dropped last: deleting a namespace deletes its end of the veth, and
    /// the pair with it.
    _namespaces: [NetNsGuard; 2],
}

impl Lab {
    /// The integration tests' lab (root required, checked loudly).
    pub fn new() -> Result<Lab> {
        require_root();
        Lab::with(&LabSpec::TESTS)
    }

    pub fn with(spec: &LabSpec) -> Result<Lab> {
        let (pid, n) = (std::process::id(), next_id());
        let srv_ns = format!("{}{pid}-{n}-srv", spec.ns_prefix);
        let atk_ns = format!("{}{pid}-{n}-atk", spec.ns_prefix);
        // The guards exist before the veth: a half-built lab is removed too.
        let srv = NetNsGuard::new(&srv_ns)?;
        let atk = NetNsGuard::new(&atk_ns)?;
        let short = format!("{}{}x{n}", spec.if_prefix, pid % 100_000);
        let lab = Lab {
            srv_ns,
            atk_ns,
            srv_if: format!("{short}s"),
            atk_if: format!("{short}a"),
            srv_addrs: spec.srv_addrs.iter().map(|a| a.to_string()).collect(),
            atk_addrs: spec.atk_addrs.iter().map(|a| a.to_string()).collect(),
            _namespaces: [srv, atk],
        };
        lab.build_veth()?;
        Ok(lab)
    }

    /// Delete the veth pair and create it again, addresses and all: the
    /// same names, new interface indexes (what XDP links are bound to).
    pub fn recreate_veth(&self) -> Result<()> {
        run("ip", &["-n", &self.srv_ns, "link", "del", &self.srv_if])?;
        self.build_veth()
    }

    fn build_veth(&self) -> Result<()> {
        let (s, a) = (&self.srv_ns, &self.atk_ns);
        run(
            "ip",
            &[
                "link",
                "add",
                &self.srv_if,
                "netns",
                s,
                "type",
                "veth",
                "peer",
                "name",
                &self.atk_if,
                "netns",
                a,
            ],
        )?;
        for (ns, ifname, addrs) in [
            (s, &self.srv_if, &self.srv_addrs),
            (a, &self.atk_if, &self.atk_addrs),
        ] {
            for addr in addrs {
                let v6 = addr.contains(':');
                let cidr = format!("{addr}/{}", if v6 { 64 } else { 24 });
                let mut args = vec!["-n", ns, "addr", "add", &cidr, "dev", ifname];
                if v6 {
                    args.push("nodad");
                }
                run("ip", &args)?;
            }
            run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Run `f` with this thread in the namespace; sockets made there stay
    /// there. Panics when the namespace cannot be entered (a test harness
    /// call; see [`crate::in_ns`] for the fallible one).
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        in_ns(ns, f).expect("namespace thread")
    }

    /// The MAC address of `ifname` in `ns`.
    pub fn mac(ns: &str, ifname: &str) -> Result<[u8; 6]> {
        mac_of(ns, ifname)
    }

    /// Lets the attacker send from `addr` (an extra address on its veth
    /// end) and the server route replies there, so that its packets pass
    /// the server's reverse-path check whatever the sysctls say.
    pub fn add_atk_v4(&self, addr: std::net::Ipv4Addr) -> Result<()> {
        let host = format!("{addr}/32");
        run(
            "ip",
            &[
                "-n",
                &self.atk_ns,
                "addr",
                "add",
                &host,
                "dev",
                &self.atk_if,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "route",
                "replace",
                &host,
                "dev",
                &self.srv_if,
            ],
        )?;
        Ok(())
    }

    /// Does a UDP datagram from `src` reach the server at `dst`? Tries a few
    /// times (the first packet may wait for neighbour discovery).
    pub fn udp_reaches(&self, src: &str, dst: &str) -> bool {
        let (server, client, src_ip) = self.udp_pair(src, dst).expect("udp sockets");
        let to = server.local_addr().unwrap();
        let mut buf = [0u8; 64];
        for attempt in 0..3 {
            let msg = format!("probe-{attempt}");
            client.send_to(msg.as_bytes(), to).unwrap();
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                if from.ip() == src_ip && &buf[..n] == msg.as_bytes() {
                    return true;
                }
            }
        }
        false
    }

    /// Sends `n` UDP datagrams from `src` to the server at `dst`; how many
    /// arrived.
    pub fn udp_burst(&self, src: &str, dst: &str, n: usize) -> Result<usize> {
        let (server, client, src_ip) = self.udp_pair(src, dst)?;
        let to = server.local_addr()?;
        for i in 0..n {
            client.send_to(format!("probe {i}").as_bytes(), to)?;
        }
        let mut buf = [0u8; 64];
        let mut got = 0;
        while let Ok((_, from)) = server.recv_from(&mut buf) {
            if from.ip() == src_ip {
                got += 1;
            }
        }
        Ok(got)
    }

    /// A server socket at `dst` (300 ms read timeout) and a client at `src`.
    fn udp_pair(&self, src: &str, dst: &str) -> Result<(UdpSocket, UdpSocket, IpAddr)> {
        let dst_ip: IpAddr = dst.parse()?;
        let server = in_ns(&self.srv_ns, || UdpSocket::bind(SocketAddr::new(dst_ip, 0)))??;
        server.set_read_timeout(Some(Duration::from_millis(300)))?;
        let src_ip: IpAddr = src.parse()?;
        let client = in_ns(&self.atk_ns, || UdpSocket::bind(SocketAddr::new(src_ip, 0)))??;
        Ok((server, client, src_ip))
    }

    /// A TCP socket in the attacker's namespace, bound to `src`.
    pub fn atk_tcp_socket(&self, src: IpAddr) -> Result<socket2::Socket> {
        let domain = if src.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let sock = in_ns(&self.atk_ns, || -> std::io::Result<socket2::Socket> {
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            Ok(s)
        })??;
        Ok(sock)
    }

    /// A TCP connection attempt from `src` to a fresh listener at `dst`.
    fn tcp_attempt(&self, src: &str, dst: &str) -> (TcpListener, std::io::Result<TcpStream>) {
        let dst_ip: IpAddr = dst.parse().unwrap();
        let listener = Self::in_ns(&self.srv_ns, || {
            TcpListener::bind(SocketAddr::new(dst_ip, 0)).expect("bind server tcp")
        });
        let to = listener.local_addr().unwrap();
        let sock = self
            .atk_tcp_socket(src.parse().unwrap())
            .expect("client tcp socket");
        let result = sock
            .connect_timeout(&to.into(), Duration::from_millis(1500))
            .map(|()| sock.into());
        (listener, result)
    }

    /// Does a TCP connection from `src` to the server at `dst` complete, and
    /// carry data from the right peer?
    pub fn tcp_connects(&self, src: &str, dst: &str) -> bool {
        let (listener, result) = self.tcp_attempt(src, dst);
        let Ok(mut stream) = result else {
            return false;
        };
        let _ = stream.write_all(b"hello");
        let (mut accepted, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        accepted
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        peer.ip() == src.parse::<IpAddr>().unwrap()
            && accepted.read_exact(&mut buf).is_ok()
            && &buf == b"hello"
    }

    /// Connect over TCP from `src` to a listener at `dst`: Ok, or the error
    /// kind (ConnectionRefused for a reset, TimedOut for silence).
    pub fn tcp_connect_result(
        &self,
        src: &str,
        dst: &str,
    ) -> std::result::Result<(), std::io::ErrorKind> {
        self.tcp_attempt(src, dst).1.map(drop).map_err(|e| e.kind())
    }

    /// Run a command in the server's namespace; returns stdout.
    pub fn in_srv(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.srv_ns.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The XDP program attached to the server's interface, if any (`ip link`).
    pub fn xdp_attached(&self) -> bool {
        run(
            "ip",
            &[
                "-n",
                &self.srv_ns,
                "-d",
                "link",
                "show",
                "dev",
                &self.srv_if,
            ],
        )
        .map(|out| out.contains("prog/xdp"))
        .unwrap_or(false)
    }
}
