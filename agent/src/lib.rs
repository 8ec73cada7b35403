//! xban: a packet-level banning agent. Log lines flow
//! source → filter → jail → ban book → store → enforcement (XDP maps),
//! composed by the [`engine`], driven by one loop in the [`daemon`], and
//! controlled through the [`api`] (unix socket, metrics); [`sys`] is the
//! operating system as the agent sees it.

mod actions;
pub mod addr;
pub mod api;
pub mod ban;
pub mod blocklist;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod enforce;
pub mod engine;
mod escalation;
pub mod filter;
pub mod fleet;
pub mod geo;
mod guard;
pub mod import;
mod jail;
pub mod preflight;
mod ratelimit;
mod source;
mod store;
pub mod sys;
pub mod units;
mod validation;
