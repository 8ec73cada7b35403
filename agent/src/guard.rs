//! What a ban may cover. Every ban (manual, jail, blocklist, escalation and
//! subnet widening) passes [`BanGuard::check`] before it is stored: it must
//! not be wider than `[agent] min_prefix_v4`/`min_prefix_v6`, must not
//! overlap an allowlist entry, and must not cover one of this host's own
//! addresses as they are *now* ([`HostAddrs`] follows address changes).

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::addr::Target;

/// Jail names the agent uses for bans of its own (or that other parts of
/// xban reserve): a configured jail may not take them, or its bans and
/// theirs would be one and the same in `banned`, `unban --jail` and history.
pub(crate) const RESERVED_JAIL_NAMES: &[&str] = &[
    crate::ban::MANUAL_JAIL,
    crate::blocklist::BLOCKLIST_JAIL,
    crate::escalation::SUBNET_JAIL,
    "fleet",
    "geo",
    "allowlist",
    "xban",
];

/// Where a ban comes from, for refusal counters and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum BanOrigin {
    Manual,
    Jail,
    Blocklist,
    Subnet,
    /// A ban from another node of the fleet.
    Fleet,
}

impl BanOrigin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BanOrigin::Manual => "manual",
            BanOrigin::Jail => "jail",
            BanOrigin::Blocklist => "blocklist",
            BanOrigin::Subnet => "subnet",
            BanOrigin::Fleet => "fleet",
        }
    }
}

/// Why a ban was refused. The message names the rule and the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter prefix than `[agent] min_prefix_v4`/`min_prefix_v6`.
    TooWide { target: Target, min: u8 },
    /// Overlaps an allowlist entry (`ignoreip`).
    Allowlisted { target: Target, entry: Target },
    /// Covers one of this host's own addresses (or loopback).
    HostAddress { target: Target, addr: IpAddr },
}

impl Refusal {
    /// The rule's name, as the metric label says it.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::TooWide { .. } => "min_prefix",
            Refusal::Allowlisted { .. } => "allowlist",
            Refusal::HostAddress { .. } => "host_address",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooWide { target, min } => {
                let key = if target.is_ipv4() {
                    "min_prefix_v4"
                } else {
                    "min_prefix_v6"
                };
                write!(
                    f,
                    "ban refused: {target} is wider than /{min} ([agent] {key} = {min}): ban a narrower prefix, pass --force to `xban ban` to override this rule once, or lower {key}"
                )
            }
            Refusal::Allowlisted { target, entry } => write!(
                f,
                "ban refused: {target} overlaps the allowlist entry {entry} (ignoreip): ban a prefix that leaves it out, or remove it from ignoreip first"
            ),
            Refusal::HostAddress { target, addr } => write!(
                f,
                "ban refused: {target} covers this host's own address {addr}: banning it would cut the machine off; ban a narrower prefix that leaves it out"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The rules every ban is checked against.
#[derive(Clone)]
pub(crate) struct BanGuard {
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// `[defaults] ignoreip`: never banned by anyone.
    pub allowlist: Vec<Target>,
    pub host: HostAddrs,
}

impl BanGuard {
    /// May `target` be banned? `extra_allow` adds entries of the caller's
    /// own (a jail's ignoreip); `force` lifts the min-prefix rule only.
    pub(crate) fn check(
        &self,
        target: &Target,
        extra_allow: &[Target],
        force: bool,
    ) -> Result<(), Refusal> {
        let min = if target.is_ipv4() {
            self.min_prefix_v4
        } else {
            self.min_prefix_v6
        };
        if target.prefix() < min && !force {
            return Err(Refusal::TooWide {
                target: *target,
                min,
            });
        }
        if let Some(entry) = self
            .allowlist
            .iter()
            .chain(extra_allow)
            .find(|a| a.covers(target) || target.covers(a))
        {
            return Err(Refusal::Allowlisted {
                target: *target,
                entry: *entry,
            });
        }
        let host = self.host.current();
        if let Some(own) = host.iter().find(|h| target.covers(h) || h.covers(target)) {
            return Err(Refusal::HostAddress {
                target: *target,
                addr: own.addr(),
            });
        }
        Ok(())
    }
}

/// This host's addresses (every interface of the agent's network namespace,
/// plus loopback), kept current: a netlink socket subscribed to address
/// events marks the view stale the moment an address comes or goes, and the
/// next look re-reads the interfaces. Without netlink it re-reads at most
/// once a second.
#[derive(Clone)]
pub struct HostAddrs(Arc<HostInner>);

struct HostInner {
    /// `None`: a fixed list (tests, `xban check`).
    events: Option<Arc<Watch>>,
    cache: Mutex<Cached>,
}

struct Watch {
    generation: AtomicU64,
    alive: AtomicBool,
}

struct Cached {
    generation: u64,
    read_at: Instant,
    addrs: Arc<Vec<Target>>,
}

/// Re-read this often even when netlink says nothing changed (a lost
/// event costs at most this much staleness).
const SAFETY_REFRESH: Duration = Duration::from_secs(10);
/// Without a netlink watch: re-read at most this often.
const POLL_REFRESH: Duration = Duration::from_secs(1);

impl HostAddrs {
    /// The live view (one per process: one watcher thread).
    pub fn live() -> HostAddrs {
        static LIVE: OnceLock<HostAddrs> = OnceLock::new();
        LIVE.get_or_init(|| {
            let watch = Arc::new(Watch {
                generation: AtomicU64::new(0),
                alive: AtomicBool::new(false),
            });
            if let Err(e) = start_watch(watch.clone()) {
                tracing::warn!("no netlink address events ({e}); this host's addresses are re-read every second instead");
            }
            HostAddrs(Arc::new(HostInner {
                events: Some(watch),
                cache: Mutex::new(Cached {
                    generation: 0,
                    read_at: Instant::now(),
                    addrs: Arc::new(crate::sys::interfaces::read_host_addresses()),
                }),
            }))
        })
        .clone()
    }

    /// A fixed list (plus loopback), for tests and tools.
    pub fn fixed(addrs: Vec<Target>) -> HostAddrs {
        let mut all = crate::sys::interfaces::loopback();
        all.extend(addrs);
        HostAddrs(Arc::new(HostInner {
            events: None,
            cache: Mutex::new(Cached {
                generation: 0,
                read_at: Instant::now(),
                addrs: Arc::new(all),
            }),
        }))
    }

    /// Replace a fixed list (tests: an address appears).
    pub fn set_fixed(&self, addrs: Vec<Target>) {
        let mut all = crate::sys::interfaces::loopback();
        all.extend(addrs);
        self.0.cache.lock().expect("host addresses lock").addrs = Arc::new(all);
    }

    /// The addresses now.
    pub fn current(&self) -> Arc<Vec<Target>> {
        let mut c = self.0.cache.lock().expect("host addresses lock");
        if let Some(w) = &self.0.events {
            let generation = w.generation.load(Ordering::Acquire);
            let age = c.read_at.elapsed();
            let stale = generation != c.generation
                || age >= SAFETY_REFRESH
                || (!w.alive.load(Ordering::Relaxed) && age >= POLL_REFRESH);
            if stale {
                c.addrs = Arc::new(crate::sys::interfaces::read_host_addresses());
                c.generation = generation;
                c.read_at = Instant::now();
            }
        }
        c.addrs.clone()
    }

    /// Re-read now (before a manual ban: cheap, and never a second stale).
    pub fn refresh(&self) {
        if self.0.events.is_some() {
            let mut c = self.0.cache.lock().expect("host addresses lock");
            c.addrs = Arc::new(crate::sys::interfaces::read_host_addresses());
            c.read_at = Instant::now();
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.current().iter().any(|t| t.contains(ip))
    }

    /// [`contains`](Self::contains), reading the addresses at most once
    /// per `seen`: the jails that count one line ask for the same view,
    /// and each read takes a lock and a clock.
    pub fn contains_seen(&self, ip: IpAddr, seen: &HostSeen) -> bool {
        seen.0
            .get_or_init(|| self.current())
            .iter()
            .any(|t| t.contains(ip))
    }
}

/// The host's addresses as read once for one log line (see
/// [`HostAddrs::contains_seen`]); every jail of an agent follows the same
/// [`HostAddrs`].
#[derive(Default)]
pub struct HostSeen(std::cell::OnceCell<Arc<Vec<Target>>>);

/// A thread blocked on a netlink socket subscribed to IPv4 and IPv6 address
/// events; each message (or an overflow) bumps the generation.
fn start_watch(watch: Arc<Watch>) -> std::io::Result<()> {
    use nix::sys::socket::{
        bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    watch.alive.store(true, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("xban-hostaddrs".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    // ENOBUFS: events were lost; re-reading covers them.
                    Ok(_) | Err(nix::errno::Errno::ENOBUFS) => {
                        watch.generation.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::warn!("netlink address events stopped ({e}); re-reading this host's addresses every second instead");
                        watch.alive.store(false, Ordering::Relaxed);
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn guard() -> BanGuard {
        BanGuard {
            min_prefix_v4: 8,
            min_prefix_v6: 32,
            allowlist: vec![t("198.51.100.0/24"), t("2001:db8:aa::1")],
            host: HostAddrs::fixed(vec![t("203.0.113.1"), t("2001:db8:1::1")]),
        }
    }

    #[test]
    fn too_wide_prefixes_are_refused_unless_forced() {
        let g = guard();
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2000::/3", "8000::/1"] {
            let e = g.check(&t(wide), &[], false).unwrap_err();
            assert_eq!(e.rule(), "min_prefix", "{wide}");
            let text = e.to_string();
            assert!(
                text.contains("min_prefix_v") && text.contains("--force"),
                "{text}"
            );
        }
        g.check(&t("10.0.0.0/8"), &[], false).unwrap();
        g.check(&t("2001:db9::/32"), &[], false).unwrap();
        // --force lifts the width rule, and only it.
        g.check(&t("10.0.0.0/7"), &[], true).unwrap();
        assert_eq!(
            g.check(&t("0.0.0.0/0"), &[], true).unwrap_err().rule(),
            "allowlist"
        );
    }

    #[test]
    fn allowlist_overlap_either_way_is_refused() {
        let g = guard();
        // Contains an allowlisted address / prefix.
        for t_ in [
            "198.51.0.0/16",
            "198.51.100.0/25",
            "198.51.100.7",
            "2001:db8:aa::/48",
        ] {
            let e = g.check(&t(t_), &[], false).unwrap_err();
            assert_eq!(e.rule(), "allowlist", "{t_}");
            assert!(e.to_string().contains("ignoreip"), "{e}");
        }
        // A caller's own list (a jail's ignoreip) counts too.
        assert_eq!(
            g.check(&t("203.0.113.77"), &[t("203.0.113.64/26")], false)
                .unwrap_err()
                .rule(),
            "allowlist"
        );
        g.check(&t("198.51.101.0/24"), &[], false).unwrap();
    }

    #[test]
    fn host_addresses_are_protected_and_followed() {
        let g = guard();
        for own in [
            "203.0.113.1",
            "203.0.113.0/24",
            "127.0.0.1",
            "::1",
            "2001:db8:1::/48",
        ] {
            let e = g.check(&t(own), &[], false).unwrap_err();
            assert_eq!(e.rule(), "host_address", "{own}");
            assert!(e.to_string().contains("own address"), "{e}");
        }
        g.check(&t("203.0.113.2"), &[], false).unwrap();
        // The host gains an address: it is protected from then on.
        g.host.set_fixed(vec![t("203.0.113.2")]);
        assert_eq!(
            g.check(&t("203.0.113.2"), &[], true).unwrap_err().rule(),
            "host_address"
        );
        g.check(&t("203.0.113.1"), &[], false).unwrap();
    }

    #[test]
    fn live_view_has_loopback_and_this_hosts_interfaces() {
        let live = HostAddrs::live();
        let now = live.current();
        assert!(now.contains(&t("127.0.0.0/8")) && now.contains(&t("::1")));
        // Whatever getifaddrs lists is in the view.
        for a in crate::sys::interfaces::read_host_addresses() {
            assert!(now.contains(&a), "{a}");
        }
    }

    #[test]
    fn a_line_reads_the_host_addresses_once_and_keeps_that_view() {
        let host = HostAddrs::fixed(vec![t("203.0.113.1")]);
        let seen = HostSeen::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(host.contains_seen(ip("203.0.113.1"), &seen));
        assert!(!host.contains_seen(ip("203.0.113.2"), &seen));
        assert!(host.contains_seen(ip("127.0.0.1"), &seen), "loopback");
        // The host's addresses change: the line's view stays, the next
        // line's view follows.
        host.set_fixed(vec![t("203.0.113.2")]);
        assert!(host.contains_seen(ip("203.0.113.1"), &seen));
        assert!(!host.contains_seen(ip("203.0.113.2"), &seen));
        let next = HostSeen::default();
        assert!(host.contains_seen(ip("203.0.113.2"), &next));
        assert!(!host.contains_seen(ip("203.0.113.1"), &next));
        assert_eq!(
            host.contains(ip("203.0.113.2")),
            host.contains_seen(ip("203.0.113.2"), &next)
        );
    }
}
