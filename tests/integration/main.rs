//! xban's privileged integration tests: real XDP on veth pairs in network
//! namespaces each test creates. Run as root, serially:
//! `cargo xtask test` (which passes `--test-threads=1`).

mod ban_path;
mod deploy;
mod fleet;
mod lifecycle;
mod operations;
mod persistence;
mod tarpit;
mod xdp_parsing;
