//! The control protocol: one JSON request per line, one JSON reply per line.
//! The types the CLI and the agent exchange, and the parser of a request line.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Requests are bounded: nothing legitimate is near this.
pub const MAX_REQUEST: usize = 64 * 1024;
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {
        jail: Option<String>,
    },
    Banned {
        jail: Option<String>,
    },
    Ban {
        target: String,
        jail: Option<String>,
        bantime: Option<String>,
        class: Option<String>,
        /// Lift the `[agent] min_prefix_v4/v6` rule for this ban (never the
        /// allowlist or this host's addresses).
        #[serde(default)]
        force: bool,
    },
    Unban {
        target: Option<String>,
        jail: Option<String>,
        #[serde(default)]
        all: bool,
        /// With `[fleet]`: lift it on this host only (not fleet-wide).
        #[serde(default)]
        local: bool,
    },
    Stats,
    /// What the geo database says of an address, and which rule covers it.
    Geo {
        address: String,
    },
    /// Re-read the config; a broken one is refused and the old one kept.
    Reload,
    /// Prometheus text exposition.
    Metrics,
    /// Stop the agent and remove everything it put in the kernel.
    Teardown,
}

impl Request {
    /// The request's name, as the event loop's timings label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Status { .. } => "status",
            Request::Banned { .. } => "banned",
            Request::Ban { .. } => "ban",
            Request::Unban { .. } => "unban",
            Request::Stats => "stats",
            Request::Geo { .. } => "geo",
            Request::Reload => "reload",
            Request::Metrics => "metrics",
            Request::Teardown => "teardown",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Reply {
    pub fn ok(data: impl Serialize) -> Reply {
        Reply {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn err(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// A request from the socket, with where to send the answer.
pub struct ControlMessage {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}
/// One request line as bytes: JSON in UTF-8, or an error reply's text.
/// Public for the fuzz target.
#[doc(hidden)]
pub fn parse_request(raw: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        format!(
            "malformed request: not UTF-8 text (invalid byte at offset {}); send one JSON object per line (see `xban --help` for the commands)",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<Request>(text.trim())
        .map_err(|e| format!("malformed request: {e} (see `xban --help` for the commands)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_roundtrip_and_bad_ones_are_named() {
        let r = Request::Ban {
            target: "203.0.113.9".into(),
            jail: Some("sshd".into()),
            bantime: Some("1h".into()),
            class: None,
            force: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let e = serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `explode`"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"cmd":"ban"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `target`"), "{e}");
    }
}
