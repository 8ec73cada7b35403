//! This host's network interfaces: their addresses (getifaddrs) and the
//! interface of the default route.

use std::net::IpAddr;

use anyhow::{bail, Result};

use crate::addr::Target;

/// Loopback, which every host has (never banned, never a ban's target).
pub fn loopback() -> Vec<Target> {
    vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1".parse().expect("literal"),
    ]
}

/// Every address of every interface in this network namespace, and loopback.
pub fn read_host_addresses() -> Vec<Target> {
    let mut out = loopback();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            };
            if let Some(ip) = ip {
                let t = Target::host(ip);
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// The interface of the IPv4 default route (from /proc/net/route), else IPv6's.
pub fn default_route_interface() -> Result<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Destination 0.0.0.0 with mask 0.0.0.0 is the default route.
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                return Ok(f[0].to_string());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 10
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && f[9] != "lo"
            {
                return Ok(f[9].to_string());
            }
        }
    }
    bail!("no default route: list the interfaces to protect in [agent] interfaces = [\"eth0\"]")
}
