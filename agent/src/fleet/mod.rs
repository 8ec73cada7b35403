//! Bans shared across a fleet through NATS JetStream (`[fleet]`).
//!
//! Every ban this host decides, and every operator unban, goes into an
//! outbox in SQLite ([`state`]) in the main loop, then to the stream by the
//! client task ([`client`]), which retries until the server acknowledges it
//! (`Nats-Msg-Id` deduplicates retries). The same task reads the stream
//! through one durable consumer per node and hands messages to the main
//! loop, where the engine ([`crate::engine::fleet_sync`]) checks them against the local allowlist, ignoreself
//! and `min_prefix_*`, and applies them idempotently with their absolute
//! expiry under the jail `fleet`. Remote bans are never published again.

pub mod client;
pub mod message;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{BanTime, DurationSetting};
use crate::validation::ValidationError;

/// The jail remote bans are kept under (`fleet`), per origin node.
pub const FLEET_JAIL: &str = "fleet";

/// The jail key of `node`'s bans in the ban book: `fleet@NODE`, so each
/// origin keeps its own record of a target.
pub fn origin_jail(node: &str) -> String {
    format!("{FLEET_JAIL}@{node}")
}

/// `fleet@NODE` → `Some(NODE)`.
pub fn origin_of(jail: &str) -> Option<&str> {
    jail.strip_prefix(FLEET_JAIL)?.strip_prefix('@')
}

/// A jail whose bans came from the fleet (never published again).
pub fn is_fleet_jail(jail: &str) -> bool {
    origin_of(jail).is_some()
}

/// `[fleet]`: off unless `servers` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `false` turns sharing off while keeping the section.
    pub enabled: bool,
    /// NATS URLs, e.g. `["nats://10.0.0.5:4222", "tls://nats2:4222"]`.
    /// Empty (the default): no fleet.
    pub servers: Vec<String>,
    /// The JetStream stream; created if missing.
    pub stream: String,
    /// Subject prefix: this node publishes on `SUBJECT.NODE`.
    pub subject: String,
    /// This node's name in the fleet. Default: the hostname's first label.
    pub node: Option<String>,
    /// Authentication: at most one of these.
    pub token: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    /// TLS: a CA to trust, and a client certificate with its key.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Publish this host's bans and operator unbans.
    pub publish: bool,
    /// Apply the other nodes' bans and unbans.
    pub apply: bool,
    /// Remote prefixes wider than these are refused.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// Remote bans count towards the local escalation ladder.
    pub count_remote: bool,
    /// Stream replicas when the stream is created (a clustered server: 3).
    pub replicas: usize,
    /// The stream's duplicate window: a retry within it is dropped by the
    /// server (later ones by the receivers, which remember applied ids).
    pub duplicate_window: DurationSetting,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            enabled: true,
            servers: Vec::new(),
            stream: "XBAN".into(),
            subject: "xban.bans".into(),
            node: None,
            token: None,
            nkey_seed_file: None,
            credentials_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            publish: true,
            apply: true,
            min_prefix_v4: 16,
            min_prefix_v6: 48,
            count_remote: false,
            replicas: 1,
            duplicate_window: DurationSetting(Duration::from_secs(120)),
        }
    }
}

/// How the client authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetAuth {
    None,
    Token(String),
    NkeySeedFile(PathBuf),
    CredentialsFile(PathBuf),
}

/// `[fleet]` checked, with what the rest of the config decides.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub servers: Vec<String>,
    pub stream: String,
    pub subject: String,
    pub node: String,
    pub auth: FleetAuth,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub publish: bool,
    pub apply: bool,
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    pub count_remote: bool,
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// The stream's `max_age`: the longest configured bantime
    /// (`None`: some ban is permanent, so messages are kept for ever).
    pub max_age: Option<Duration>,
    /// `[defaults] ignoreself`: remote bans covering this host are refused.
    pub ignoreself: bool,
}

impl FleetSettings {
    /// The subject this node publishes on.
    pub fn own_subject(&self) -> String {
        format!("{}.{}", self.subject, self.node)
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> String {
        format!("xban-{}", self.node)
    }
}

/// A node name: one subject token, short, plain characters.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_subject_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|tok| {
            !tok.is_empty()
                && tok
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The hostname's first label, made into a node name.
pub fn default_node_name() -> String {
    // The UTS namespace's name, as `hostname` prints it.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let first = host.split('.').next().unwrap_or_default();
    let name: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "xban".into()
    } else {
        name
    }
}

/// `xban fleet-key FILE`: a new node key. The seed goes into `path`
/// (created, mode 0600, never overwritten); the public key, which the
/// server's config names, is returned.
pub fn new_node_key(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().context("nkey seed")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "create {} (an existing key is never overwritten: remove it first)",
                path.display()
            )
        })?;
    writeln!(f, "{seed}").with_context(|| format!("write {}", path.display()))?;
    Ok(kp.public_key())
}

impl FleetConfig {
    /// `None` when the fleet is off. `bantimes` are every bantime the config
    /// can hand out (jails, defaults, escalation), for the stream's max_age.
    pub fn resolve(
        &self,
        bantimes: &[BanTime],
        ignoreself: bool,
    ) -> Result<Option<FleetSettings>, ValidationError> {
        let err = |key: &str, m: String| Err(ValidationError::new(format!("fleet.{key}"), m));
        if !self.enabled || self.servers.is_empty() {
            return Ok(None);
        }
        for (i, s) in self.servers.iter().enumerate() {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| s.starts_with(p) && s.len() > p.len())
                || (!s.contains("://") && !s.is_empty() && !s.contains(char::is_whitespace));
            if !ok {
                return err(
                    &format!("servers[{i}]"),
                    format!("`{s}` is not a NATS URL (write e.g. \"nats://10.0.0.5:4222\" or \"tls://nats1:4222\")"),
                );
            }
        }
        if self.stream.is_empty()
            || self
                .stream
                .contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        {
            return err(
                "stream",
                format!(
                    "`{}` is not a stream name (no dots, spaces, * or >)",
                    self.stream
                ),
            );
        }
        if !valid_subject_prefix(&self.subject) {
            return err(
                "subject",
                format!("`{}` is not a subject prefix (dot-separated tokens of letters, digits, - and _; no wildcards)", self.subject),
            );
        }
        let node = match &self.node {
            Some(n) if !valid_node_name(n) => {
                return err(
                    "node",
                    format!("`{n}` is not a node name (1-64 letters, digits, - or _)"),
                )
            }
            Some(n) => n.clone(),
            None => default_node_name(),
        };
        let auth = match (&self.token, &self.nkey_seed_file, &self.credentials_file) {
            (None, None, None) => FleetAuth::None,
            (Some(t), None, None) => FleetAuth::Token(t.clone()),
            (None, Some(f), None) => FleetAuth::NkeySeedFile(f.clone()),
            (None, None, Some(f)) => FleetAuth::CredentialsFile(f.clone()),
            _ => {
                return err(
                    "token",
                    "set only one of token, nkey_seed_file and credentials_file".into(),
                )
            }
        };
        for (key, p) in [
            ("nkey_seed_file", &self.nkey_seed_file),
            ("credentials_file", &self.credentials_file),
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return err(key, format!("`{}` is not an absolute path", p.display()));
                }
            }
        }
        let client_cert = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return err(
                    "cert_file",
                    "a client certificate needs both cert_file and key_file".into(),
                )
            }
        };
        if self.min_prefix_v4 > 32 {
            return err(
                "min_prefix_v4",
                format!("{} is more than 32", self.min_prefix_v4),
            );
        }
        if self.min_prefix_v6 > 128 {
            return err(
                "min_prefix_v6",
                format!("{} is more than 128", self.min_prefix_v6),
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return err(
                "replicas",
                format!("{} replicas: JetStream allows 1 to 5", self.replicas),
            );
        }
        if self.duplicate_window.0 < Duration::from_secs(1) {
            return err("duplicate_window", "must be at least 1s".into());
        }
        let max_age = if bantimes.contains(&BanTime::Permanent) {
            None
        } else {
            Some(
                bantimes
                    .iter()
                    .filter_map(|b| match b {
                        BanTime::Finite(d) => Some(*d),
                        BanTime::Permanent => None,
                    })
                    .max()
                    .unwrap_or(Duration::from_secs(600))
                    .max(Duration::from_secs(60)),
            )
        };
        Ok(Some(FleetSettings {
            servers: self.servers.clone(),
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            node,
            auth,
            ca_file: self.ca_file.clone(),
            client_cert,
            publish: self.publish,
            apply: self.apply,
            min_prefix_v4: self.min_prefix_v4,
            min_prefix_v6: self.min_prefix_v6,
            count_remote: self.count_remote,
            replicas: self.replicas,
            duplicate_window: self.duplicate_window.0,
            max_age,
            ignoreself,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn resolve(text: &str) -> Result<Option<FleetSettings>, String> {
        let dir = tempfile::tempdir().unwrap();
        let full = format!(
            "[agent]\nfilters_dir = \"{}\"\n{text}",
            dir.path().join("none").display()
        );
        match Config::parse(&full) {
            Err(e) => Err(e.to_string()),
            Ok(c) => c.validate().map(|r| r.fleet).map_err(|e| e.to_string()),
        }
    }

    #[test]
    fn off_by_default_and_defaults_documented() {
        assert_eq!(resolve("").unwrap(), None);
        assert_eq!(
            resolve("[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nenabled = false\n").unwrap(),
            None
        );
        let s = resolve("[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.stream, "XBAN");
        assert_eq!(s.own_subject(), "xban.bans.a");
        assert_eq!((s.min_prefix_v4, s.min_prefix_v6), (16, 48));
        assert!(s.publish && s.apply && !s.count_remote && s.ignoreself);
        assert_eq!(s.auth, FleetAuth::None);
        // Default bantime 10m, default escalation ladder up to 30d.
        assert_eq!(s.max_age, Some(Duration::from_secs(30 * 86_400)));
        let s = resolve(
            "[escalation]\nenabled = false\n[defaults]\nbantime = \"2h\"\n[fleet]\nservers = [\"nats://h:1\"]\nnode = \"a\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.max_age, Some(Duration::from_secs(7200)));
        let s = resolve(
            "[defaults]\nbantime = \"permanent\"\n[fleet]\nservers = [\"nats://h:1\"]\nnode = \"a\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.max_age, None);
        assert!(valid_node_name(&default_node_name()));
    }

    #[test]
    fn node_keys_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.nk");
        let public = new_node_key(&p).unwrap();
        assert!(public.starts_with('U'), "{public}");
        let seed = std::fs::read_to_string(&p).unwrap();
        assert!(seed.starts_with("SU"));
        let kp = nkeys::KeyPair::from_seed(seed.trim()).unwrap();
        assert_eq!(kp.public_key(), public);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = new_node_key(&p).unwrap_err();
        assert!(format!("{e:#}").contains("never overwritten"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), seed);
    }

    #[test]
    fn bad_fleet_keys_are_named() {
        let cases = [
            ("servers = [\"http://x\"]", "fleet.servers[0]"),
            ("servers = [\"nats://x:1\"]\nnode = \"a.b\"", "fleet.node"),
            (
                "servers = [\"nats://x:1\"]\nsubject = \"xban.>\"",
                "fleet.subject",
            ),
            (
                "servers = [\"nats://x:1\"]\nstream = \"a.b\"",
                "fleet.stream",
            ),
            (
                "servers = [\"nats://x:1\"]\ntoken = \"t\"\ncredentials_file = \"/c\"",
                "fleet.token",
            ),
            (
                "servers = [\"nats://x:1\"]\ncert_file = \"/c\"",
                "fleet.cert_file",
            ),
            (
                "servers = [\"nats://x:1\"]\nca_file = \"ca.pem\"",
                "fleet.ca_file",
            ),
            (
                "servers = [\"nats://x:1\"]\nmin_prefix_v4 = 33",
                "fleet.min_prefix_v4",
            ),
            ("servers = [\"nats://x:1\"]\nreplicas = 7", "fleet.replicas"),
        ];
        for (body, place) in cases {
            let e = resolve(&format!("[fleet]\n{body}\n")).unwrap_err();
            assert!(e.starts_with(place), "{body}: {e}");
        }
        let e = resolve("[fleet]\nserver = [\"nats://x:1\"]\n").unwrap_err();
        assert!(e.contains("unknown field `server`"), "{e}");
    }
}
