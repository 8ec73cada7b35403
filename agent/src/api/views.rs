//! The typed views replies carry (`status`, `banned`, `ban`, `unban`).
//!
//! They are built by the engine from its counts ([`crate::engine::status`]),
//! so they are defined there: the engine never depends on the api, the api
//! (and the CLI reading replies) on the engine.

pub use crate::engine::status::{
    BanView, FleetConsumerStatus, FleetStatus, FleetStreamStatus, GeoStatus, JailCountersView,
    JailStatus, LoopTurns, RefusalCount, StatusView, WorkTurns,
};
// The parts of `status` the enforcer builds.
pub use crate::enforce::xdp::links::{LinkStatus, LinksStatus};
pub use crate::enforce::xdp::{FastPathFamily, FastPathStatus, XdpStats};
pub use crate::enforce::TarpitStatus;
