//! xban's privileged integration tests: real XDP on veth pairs in network
//! namespaces each test creates. Run as root, serially:
//! `cargo xtask test` (which passes `--test-threads=1`).

mod ban_path;
mod debian_package;
mod deploy;
mod fastpath;
mod faults;
mod fleet;
mod fleet_auth;
mod guards;
mod import;
mod lifecycle;
mod names_geo;
mod operations;
mod persistence;
mod restore;
mod shared_log;
mod steering;
mod systemd_nspawn;
mod tarpit;
mod xdp_parsing;
mod xdp_repair;
mod xdp_tarpit;
