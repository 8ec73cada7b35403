//! What goes on the subject: one JSON object per message, versioned.
//!
//! ```json
//! {"v":1,"kind":"ban","id":"a-5f2c…","node":"a","target":"203.0.113.7",
//!  "class":"drop","jail":"sshd","failures":5,"banned_at":1800000000,"expires_at":1800003600}
//! {"v":1,"kind":"unban","id":"b-91d0…","node":"b","target":"203.0.113.7","at":1800000100}
//! ```
//!
//! `id` is also the `Nats-Msg-Id`. Expiry is never a message: every node
//! ends a ban at its absolute `expires_at` (`null`: permanent).

use serde::{Deserialize, Serialize};

use crate::addr::Target;
use crate::ban::{BanClass, UnixSecs};

/// The message format this agent writes and reads.
pub const VERSION: u32 = 1;

/// Larger messages are never ours: counted and dropped unread.
pub const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Body {
    Ban {
        target: Target,
        class: BanClass,
        jail: String,
        failures: u32,
        banned_at: UnixSecs,
        expires_at: Option<UnixSecs>,
    },
    /// An operator's unban: every node lifts its bans of the target that
    /// began at or before `at`.
    Unban { target: Target, at: UnixSecs },
}

/// Unknown fields are refused (by [`Body`], which sees all but these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMessage {
    pub v: u32,
    pub id: String,
    pub node: String,
    #[serde(flatten)]
    pub body: Body,
}

/// Why a message on the subject was dropped unapplied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("oversized message ({0} bytes, at most {MAX_MESSAGE_BYTES})")]
    Oversized(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message version {0}, this agent reads version {VERSION}: upgrade it")]
    Version(u32),
    #[error("message from `{body}` on the subject of node `{subject}`")]
    NodeMismatch { body: String, subject: String },
}

impl FleetMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a FleetMessage always serialises")
    }

    /// A message read from `subject` (`PREFIX.NODE`): the node in the body
    /// must be the one the server let publish there, so a node cannot speak
    /// for another even if it writes another's name.
    pub fn decode(
        subject_prefix: &str,
        subject: &str,
        payload: &[u8],
    ) -> Result<Self, DecodeError> {
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::Oversized(payload.len()));
        }
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let v: Versioned =
            serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if v.v != VERSION {
            return Err(DecodeError::Version(v.v));
        }
        let msg: FleetMessage =
            serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !super::valid_node_name(&msg.node) {
            return Err(DecodeError::Malformed(format!(
                "`{}` is not a node name",
                msg.node
            )));
        }
        if msg.id.is_empty() || msg.id.len() > 128 {
            return Err(DecodeError::Malformed("bad id".into()));
        }
        if let Body::Ban {
            jail,
            banned_at,
            expires_at,
            ..
        } = &msg.body
        {
            if jail.len() > 64 {
                return Err(DecodeError::Malformed("jail name too long".into()));
            }
            if expires_at.is_some_and(|e| e < *banned_at) {
                return Err(DecodeError::Malformed("expires before it begins".into()));
            }
        }
        let from = subject
            .strip_prefix(subject_prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_default();
        if from != msg.node {
            return Err(DecodeError::NodeMismatch {
                body: msg.node,
                subject: from.to_string(),
            });
        }
        Ok(msg)
    }
}

/// A fresh message id: the node and 128 random bits (stable across
/// retries: it is stored with the message in the outbox).
pub fn new_id(node: &str) -> String {
    format!(
        "{node}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban() -> FleetMessage {
        FleetMessage {
            v: VERSION,
            id: new_id("a"),
            node: "a".into(),
            body: Body::Ban {
                target: "203.0.113.7".parse().unwrap(),
                class: BanClass::Drop,
                jail: "sshd".into(),
                failures: 5,
                banned_at: 100,
                expires_at: Some(700),
            },
        }
    }

    #[test]
    fn roundtrip_and_wire_shape() {
        let m = ban();
        let bytes = m.encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["kind"], "ban");
        assert_eq!(v["v"], 1);
        assert_eq!(v["target"], "203.0.113.7");
        assert_eq!(v["expires_at"], 700);
        assert_eq!(
            FleetMessage::decode("xban.bans", "xban.bans.a", &bytes).unwrap(),
            m
        );
        let u = FleetMessage {
            v: VERSION,
            id: "b-1".into(),
            node: "b".into(),
            body: Body::Unban {
                target: "2001:db8::/48".parse().unwrap(),
                at: 5,
            },
        };
        assert_eq!(
            FleetMessage::decode("xban.bans", "xban.bans.b", &u.encode()).unwrap(),
            u
        );
        assert_ne!(new_id("a"), new_id("a"));
    }

    #[test]
    fn hostile_messages_are_named() {
        let p = "xban.bans";
        let e =
            |subject: &str, payload: &[u8]| FleetMessage::decode(p, subject, payload).unwrap_err();
        assert!(matches!(
            e("xban.bans.a", &[b' '; 5000]),
            DecodeError::Oversized(5000)
        ));
        assert!(matches!(
            e("xban.bans.a", b"\xff\xfe"),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(e("xban.bans.a", b"{}"), DecodeError::Malformed(_)));
        assert!(matches!(
            e("xban.bans.a", br#"{"v":2,"kind":"ban"}"#),
            DecodeError::Version(2)
        ));
        let good = ban().encode();
        // Another node's name in the body.
        assert!(matches!(
            e("xban.bans.c", &good),
            DecodeError::NodeMismatch { .. }
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["target"] = "0.0.0.0/33".into();
        assert!(matches!(
            e("xban.bans.a", &serde_json::to_vec(&v).unwrap()),
            DecodeError::Malformed(_)
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["class"] = "nuke".into();
        assert!(matches!(
            e("xban.bans.a", &serde_json::to_vec(&v).unwrap()),
            DecodeError::Malformed(_)
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            e("xban.bans.a", &serde_json::to_vec(&v).unwrap()),
            DecodeError::Malformed(_)
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["expires_at"] = 10.into();
        assert!(matches!(
            e("xban.bans.a", &serde_json::to_vec(&v).unwrap()),
            DecodeError::Malformed(_)
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["node"] = "a.b".into();
        assert!(matches!(
            e("xban.bans.a.b", &serde_json::to_vec(&v).unwrap()),
            DecodeError::Malformed(_)
        ));
    }
}
