//! How the agent is driven from outside: the control protocol, the socket
//! serving it, and the Prometheus metrics.

pub mod conn_limit;
pub mod handler;
pub mod metrics;
pub mod protocol;
pub mod socket;
pub mod views;
