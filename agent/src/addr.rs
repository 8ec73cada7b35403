//! Ban targets: a host (`/32`, `/128`) or a CIDR prefix, normalised.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

/// An address as the rest of xban sees it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`)
/// is the IPv4 address, so one attacker is one key whatever the log wrote.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A host or a prefix, with host bits cleared (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    addr: IpAddr,
    prefix: u8,
}

impl Target {
    pub fn host(ip: IpAddr) -> Self {
        let ip = canonical_ip(ip);
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Target { addr: ip, prefix }
    }

    pub fn new(ip: IpAddr, prefix: u8) -> Result<Self, AddrError> {
        let (ip, prefix) = match ip {
            // A mapped v4 prefix of /96 or more is a v4 prefix.
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                (canonical_ip(ip), prefix - 96)
            }
            _ => (ip, prefix),
        };
        let net = IpNetwork::new(ip, prefix).map_err(|_| AddrError::Prefix {
            text: format!("{ip}/{prefix}"),
        })?;
        Ok(Target {
            addr: net.network(),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_host(&self) -> bool {
        self.prefix == self.max_prefix()
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    pub fn network(&self) -> IpNetwork {
        match self.addr {
            IpAddr::V4(a) => IpNetwork::V4(Ipv4Network::new(a, self.prefix).expect("valid")),
            IpAddr::V6(a) => IpNetwork::V6(Ipv6Network::new(a, self.prefix).expect("valid")),
        }
    }

    /// Does this prefix cover `ip`?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network().contains(canonical_ip(ip))
    }

    /// Does this prefix cover all of `other`?
    pub fn covers(&self, other: &Target) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && self.contains(other.addr)
    }

    pub fn v4_octets(&self) -> Option<[u8; 4]> {
        match self.addr {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }

    pub fn v6_octets(&self) -> Option<[u8; 16]> {
        match self.addr {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        }
    }

    pub fn from_v4(octets: [u8; 4], prefix: u32) -> Result<Self, AddrError> {
        Target::new(IpAddr::V4(Ipv4Addr::from(octets)), prefix as u8)
    }

    pub fn from_v6(octets: [u8; 16], prefix: u32) -> Result<Self, AddrError> {
        Target::new(IpAddr::V6(Ipv6Addr::from(octets)), prefix as u8)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("`{text}` is not an IP address or CIDR prefix (expected e.g. 203.0.113.7, 2001:db8::1 or 198.51.100.0/24)")]
    Syntax { text: String },
    #[error("`{text}` has a prefix length out of range (at most /32 for IPv4, /128 for IPv6)")]
    Prefix { text: String },
}

impl FromStr for Target {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (ip_text, prefix_text) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let ip = IpAddr::from_str(ip_text).map_err(|_| AddrError::Syntax {
            text: text.to_string(),
        })?;
        match prefix_text {
            None => Ok(Target::host(ip)),
            Some(p) => {
                let prefix: u8 = p.parse().map_err(|_| AddrError::Prefix {
                    text: text.to_string(),
                })?;
                Target::new(ip, prefix).map_err(|_| AddrError::Prefix {
                    text: text.to_string(),
                })
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_prefixes_parse_and_normalise() {
        let t: Target = "203.0.113.7".parse().unwrap();
        assert!(t.is_host());
        assert_eq!(t.to_string(), "203.0.113.7");
        let t: Target = "198.51.100.77/24".parse().unwrap();
        assert_eq!(t.to_string(), "198.51.100.0/24");
        let t: Target = "2001:db8:0:0::1".parse().unwrap();
        assert_eq!(t.to_string(), "2001:db8::1");
        let t: Target = "2001:db8:1:2:3::/64".parse().unwrap();
        assert_eq!(t.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let t: Target = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(t.to_string(), "203.0.113.9");
        assert!(t.is_ipv4());
        let t: Target = "::ffff:198.51.100.0/120".parse().unwrap();
        assert_eq!(t.to_string(), "198.51.100.0/24");
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            "300.1.1.1".parse::<Target>(),
            Err(AddrError::Syntax {
                text: "300.1.1.1".into()
            })
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Target>(),
            Err(AddrError::Prefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Target>(),
            Err(AddrError::Prefix { .. })
        ));
    }

    #[test]
    fn coverage() {
        let net: Target = "198.51.100.0/24".parse().unwrap();
        assert!(net.contains("198.51.100.200".parse().unwrap()));
        assert!(net.contains("::ffff:198.51.100.1".parse().unwrap()));
        assert!(!net.contains("198.51.101.1".parse().unwrap()));
        assert!(net.covers(&"198.51.100.0/25".parse().unwrap()));
        assert!(!net.covers(&"198.51.0.0/16".parse().unwrap()));
        assert!(!net.covers(&"2001:db8::1".parse().unwrap()));
    }
}
