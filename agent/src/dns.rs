//! DNS names in `ignoreip`: an administrator's dynamic-DNS name stays
//! allowlisted while its address changes.
//!
//! Each name is resolved (A and AAAA) at start and again when its records'
//! TTL runs out, clamped to `[agent] dns_refresh_min`/`dns_refresh_max`. A
//! failed or empty lookup keeps the last known addresses (a DNS outage must
//! not lock the administrator out) and is retried after `dns_refresh_min`.
//! Lookups run in their own task; the main loop only applies the results
//! ([`NameTable::apply`]), so a slow resolver never delays a ban.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::addr::{canonical_ip, Target};

/// Is `text` a DNS host name (not an address)? Letters, digits and hyphens
/// in labels of 1..=63 characters, 253 at most in all, an optional final dot;
/// the last label is not all digits (that would be a mistyped address).
pub fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok && labels
        .last()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// `[agent] resolvers` entry: `ADDR` or `ADDR:PORT` (`[v6]:PORT`).
pub fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    t.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not a resolver address (write e.g. \"198.51.100.53\", \"198.51.100.53:5353\" or \"[2001:db8::53]:53\")")
    })
}

/// How names are resolved and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty: the system's resolvers (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    pub refresh_min: Duration,
    pub refresh_max: Duration,
}

/// When to look a name up again after an answer with this TTL.
pub fn refresh_after(ttl: Option<Duration>, s: &DnsSettings) -> Duration {
    match ttl {
        Some(t) => t.clamp(s.refresh_min, s.refresh_max),
        // Failed or empty: retry soon, but not in a loop.
        None => s.refresh_min,
    }
}

/// One lookup's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The addresses and the smallest TTL among their records.
    Found(BTreeSet<IpAddr>, Duration),
    /// Nothing (NXDOMAIN, no records, timeout, unreachable): why.
    Failed(String),
}

/// A name's state, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStatus {
    pub name: String,
    /// The last known addresses (kept through failures).
    pub addresses: Vec<String>,
    /// False until a lookup first returned addresses.
    pub resolved: bool,
    /// The last lookup's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix time of the last successful lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
}

/// What changed for a name when a lookup result was applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NameChange {
    pub added: Vec<Target>,
    pub removed: Vec<Target>,
}

impl NameChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Every configured name and its last known addresses.
#[derive(Debug, Default)]
pub struct NameTable {
    names: BTreeMap<String, NameStatus>,
}

impl NameTable {
    /// Keep exactly `names`, with what is already known of them.
    pub fn set_names<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        let wanted: BTreeSet<String> = names.into_iter().map(|n| normalise(n)).collect();
        self.names.retain(|n, _| wanted.contains(n));
        for n in wanted {
            self.names.entry(n.clone()).or_insert_with(|| NameStatus {
                name: n,
                ..Default::default()
            });
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// The name's current addresses, as host targets.
    pub fn targets(&self, name: &str) -> Vec<Target> {
        self.names
            .get(&normalise(name))
            .map(|s| {
                s.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Target>().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Apply a lookup. A failure keeps the last addresses.
    pub fn apply(&mut self, name: &str, lookup: &Lookup, now: i64) -> NameChange {
        let Some(st) = self.names.get_mut(&normalise(name)) else {
            return NameChange::default();
        };
        match lookup {
            Lookup::Failed(why) => {
                if st.resolved {
                    tracing::warn!(
                        "dns: {name}: {why}; keeping its last addresses {}",
                        st.addresses.join(", ")
                    );
                } else {
                    tracing::warn!(
                        "dns: {name}: {why}; not resolved yet, nothing allowlisted for it"
                    );
                }
                st.last_error = Some(why.clone());
                NameChange::default()
            }
            Lookup::Found(addrs, _) => {
                let old: BTreeSet<Target> =
                    st.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                let new: BTreeSet<Target> = addrs.iter().map(|a| Target::host(*a)).collect();
                st.addresses = new.iter().map(|t| t.to_string()).collect();
                st.resolved = true;
                st.last_error = None;
                st.resolved_at = Some(now);
                let change = NameChange {
                    added: new.difference(&old).copied().collect(),
                    removed: old.difference(&new).copied().collect(),
                };
                if !change.is_empty() {
                    tracing::info!(
                        "dns: {name} now {} (was {})",
                        join(&new),
                        if old.is_empty() {
                            "unresolved".to_string()
                        } else {
                            join(&old)
                        }
                    );
                }
                change
            }
        }
    }

    pub fn status(&self) -> Vec<NameStatus> {
        self.names.values().cloned().collect()
    }

    /// Names that never resolved.
    pub fn unresolved(&self) -> Vec<String> {
        self.names
            .values()
            .filter(|s| !s.resolved)
            .map(|s| s.name.clone())
            .collect()
    }
}

fn join(set: &BTreeSet<Target>) -> String {
    set.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names compare without case and without the final dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

type TokioResolver = hickory_resolver::TokioResolver;

/// A resolver honouring `[agent] resolvers`, or `/etc/resolv.conf`.
pub fn build_resolver(s: &DnsSettings) -> Result<TokioResolver> {
    use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut builder = if s.resolvers.is_empty() {
        hickory_resolver::Resolver::builder(TokioRuntimeProvider::default())
            .context("read the system's resolvers (/etc/resolv.conf); or set [agent] resolvers")?
    } else {
        let servers = s
            .resolvers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect::<Vec<_>>();
        hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    // Every refresh asks the server: the TTL schedule is ours.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    // /etc/hosts does not change with the record; a pinned name there would
    // never follow its DNS record.
    opts.use_hosts_file = ResolveHosts::Never;
    builder.build().context("build the DNS resolver")
}

/// A and AAAA of one name. Either family may be absent; both absent is a
/// failure.
pub async fn lookup(resolver: &TokioResolver, name: &str) -> Lookup {
    use hickory_resolver::proto::rr::{RData, RecordType};
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let (a, aaaa) = tokio::join!(
        resolver.lookup(fqdn.as_str(), RecordType::A),
        resolver.lookup(fqdn.as_str(), RecordType::AAAA)
    );
    let mut addrs = BTreeSet::new();
    let mut ttl: Option<u32> = None;
    let mut errors = Vec::new();
    for (kind, r) in [("A", a), ("AAAA", aaaa)] {
        match r {
            Ok(l) => {
                for rec in l.answers() {
                    let ip = match &rec.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => continue,
                    };
                    addrs.insert(canonical_ip(ip));
                    ttl = Some(ttl.map_or(rec.ttl, |t| t.min(rec.ttl)));
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => errors.push(format!("{kind}: {e}")),
        }
    }
    match ttl {
        Some(t) if !addrs.is_empty() => Lookup::Found(addrs, Duration::from_secs(u64::from(t))),
        _ if errors.is_empty() => Lookup::Failed("no A or AAAA records".into()),
        _ => Lookup::Failed(format!("lookup failed ({})", errors.join("; "))),
    }
}

/// Resolve every name once, concurrently, each bounded by the resolver's
/// timeout: the start-up lookups.
pub async fn lookup_all(resolver: &TokioResolver, names: &[String]) -> Vec<(String, Lookup)> {
    let futs = names.iter().map(|n| async move {
        let r = tokio::time::timeout(Duration::from_secs(5), lookup(resolver, n))
            .await
            .unwrap_or_else(|_| Lookup::Failed("timed out".into()));
        (n.clone(), r)
    });
    futures_util::future::join_all(futs).await
}

/// What the refresher sends the main loop.
pub type LookupResult = (String, Lookup);

/// The background refresher: looks each name up when its TTL runs out and
/// sends the result. Replace its names (reload) by dropping it and spawning
/// another; `first` is when each name is due first.
pub struct Refresher {
    task: tokio::task::JoinHandle<()>,
}

impl Refresher {
    pub fn spawn(
        settings: DnsSettings,
        first: Vec<(String, Duration)>,
        tx: mpsc::Sender<LookupResult>,
    ) -> Result<Refresher> {
        let resolver = build_resolver(&settings)?;
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut due: BTreeMap<String, tokio::time::Instant> =
                first.into_iter().map(|(n, d)| (n, start + d)).collect();
            loop {
                let Some((name, at)) = due
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(n, t)| (n.clone(), *t))
                else {
                    return;
                };
                tokio::time::sleep_until(at).await;
                let result = lookup(&resolver, &name).await;
                let ttl = match &result {
                    Lookup::Found(_, ttl) => Some(*ttl),
                    Lookup::Failed(_) => None,
                };
                due.insert(
                    name.clone(),
                    tokio::time::Instant::now() + refresh_after(ttl, &settings),
                );
                if tx.send((name, result)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Refresher { task })
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_told_from_addresses() {
        for ok in [
            "home.example.org",
            "a-b.dyn.example.",
            "x",
            "h_1.example.net",
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "10.0.0.300",
            "1.2.3",
            "",
            "-a.example",
            "a..b",
            "a b.example",
            "203.0.113.0/24",
            "2001:db8::1",
            &"x".repeat(64),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn resolvers_parse_with_and_without_port() {
        assert_eq!(
            parse_resolver("198.51.100.53").unwrap(),
            "198.51.100.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("[2001:db8::53]:5353").unwrap(),
            "[2001:db8::53]:5353".parse().unwrap()
        );
        assert!(parse_resolver("ns1.example")
            .unwrap_err()
            .contains("ns1.example"));
    }

    #[test]
    fn resolver_and_refresh_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let err = |agent: &str| {
            let text = format!(
                "[agent]\nfilters_dir = \"{}\"\n{agent}",
                dir.path().join("none").display()
            );
            crate::config::Config::parse(&text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = err("resolvers = [\"198.51.100.53\", \"ns.example\"]\n");
        assert!(e.starts_with("agent.resolvers[1]:"), "{e}");
        let e = err("dns_refresh_min = \"10m\"\ndns_refresh_max = \"1m\"\n");
        assert!(e.starts_with("agent.dns_refresh_max:"), "{e}");
        let e = err("dns_refresh_min = 0\n");
        assert!(e.starts_with("agent.dns_refresh_min:"), "{e}");
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let s = DnsSettings {
            resolvers: vec![],
            refresh_min: Duration::from_secs(30),
            refresh_max: Duration::from_secs(300),
        };
        assert_eq!(
            refresh_after(Some(Duration::from_secs(5)), &s).as_secs(),
            30
        );
        assert_eq!(
            refresh_after(Some(Duration::from_secs(120)), &s).as_secs(),
            120
        );
        assert_eq!(
            refresh_after(Some(Duration::from_secs(86_400)), &s).as_secs(),
            300
        );
        assert_eq!(refresh_after(None, &s).as_secs(), 30);
    }

    #[test]
    fn failures_keep_the_last_addresses_and_changes_are_reported() {
        let mut t = NameTable::default();
        let names = vec!["Home.Example.org.".to_string()];
        t.set_names(&names);
        assert_eq!(t.unresolved(), ["home.example.org"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let found =
            |a: &[&str]| Lookup::Found(a.iter().map(|s| ip(s)).collect(), Duration::from_secs(60));
        // A failure before any answer: nothing known, still unresolved.
        let c = t.apply("home.example.org", &Lookup::Failed("timed out".into()), 1);
        assert!(c.is_empty());
        assert_eq!(t.unresolved().len(), 1);

        let c = t.apply(
            "home.example.org",
            &found(&["203.0.113.5", "2001:db8::5"]),
            2,
        );
        assert_eq!(c.added.len(), 2);
        assert!(c.removed.is_empty());
        assert!(t.unresolved().is_empty());

        // The record moves: the old address leaves, the new one enters.
        let c = t.apply(
            "HOME.example.org",
            &found(&["203.0.113.6", "2001:db8::5"]),
            3,
        );
        assert_eq!(c.added, vec!["203.0.113.6".parse::<Target>().unwrap()]);
        assert_eq!(c.removed, vec!["203.0.113.5".parse::<Target>().unwrap()]);

        // An outage keeps what was known.
        let c = t.apply("home.example.org", &Lookup::Failed("SERVFAIL".into()), 4);
        assert!(c.is_empty());
        let mut now: Vec<String> = t
            .targets("home.example.org")
            .iter()
            .map(|t| t.to_string())
            .collect();
        now.sort();
        assert_eq!(now, ["2001:db8::5", "203.0.113.6"]);
        let st = &t.status()[0];
        assert_eq!(st.last_error.as_deref(), Some("SERVFAIL"));
        assert_eq!(st.resolved_at, Some(3));

        // Mapped IPv4 answers are IPv4.
        let c = t.apply("home.example.org", &found(&["::ffff:203.0.113.7"]), 5);
        assert_eq!(c.added, vec!["203.0.113.7".parse::<Target>().unwrap()]);

        // A name dropped from the config is forgotten.
        t.set_names(&Vec::new());
        assert!(t.names().is_empty());
    }
}
