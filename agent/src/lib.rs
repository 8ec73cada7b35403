//! xban: a packet-level banning agent. Log lines flow
//! source → filter → jail → ban book → store → enforcement (XDP maps),
//! driven by one loop in [`agent`] and controlled over a unix socket.

pub mod actions;
pub mod addr;
pub mod agent;
pub mod backlog;
pub mod ban;
pub mod blocklist;
pub mod config;
pub mod conn_limit;
pub mod control;
pub mod daemon;
pub mod directories;
pub mod dns;
pub mod enforce;
pub mod escalation;
pub mod filter;
pub mod fleet;
pub mod geo;
pub mod guard;
pub mod import;
pub mod instance;
pub mod jail;
pub mod metrics;
pub mod preflight;
pub mod ratelimit;
pub mod setup;
pub mod source;
pub mod store;
pub mod units;
pub mod validation;
