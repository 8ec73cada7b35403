//! The typed views replies carry (`status`, `banned`, `ban`, `unban`).
//!
//! They are built by the engine from its counts ([`crate::engine::status`]),
//! so they are defined there: the engine never depends on the api, the api
//! (and the CLI reading replies) on the engine.

pub use crate::engine::status::{
    BanView, JailCountersView, JailStatus, LoopTurns, RefusalCount, StatusView, WorkTurns,
};
