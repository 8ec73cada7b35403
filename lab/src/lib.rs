//! The one lab for xban's privileged integration tests, the demo and the
//! benchmarks.
//!
//! - [`netns`]: [`NetNsGuard`] (a namespace deleted on drop), [`in_ns`].
//! - [`veth`]: [`Lab`], two namespaces joined by a veth pair, with
//!   reachability probes; [`LabSpec`] names and addresses it per user.
//! - [`rig`]: [`AgentDir`] (config, log, state, socket, pins),
//!   [`AgentProcess`] (`xban run` in the server namespace), [`Control`] (its
//!   socket), and [`Rig`], the three together.
//! - [`lines`]: log lines timestamped now; [`cmd`]: running commands.
//! - [`packet`]: raw frames; [`fleet`]: the NATS hub for fleet runs.
//! - [`container`]: a booted Debian container (systemd-nspawn) for the
//!   tests that need a real systemd.
//!
//! Everything it creates has a unique name and is removed on drop (also on
//! panic); it never touches the machine's own interfaces and only uses
//! documentation addresses (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).

pub mod cmd;
pub mod container;
pub mod fleet;
pub mod lines;
pub mod netns;
pub mod packet;
pub mod rig;
pub mod veth;

pub use cmd::{is_root, require_root, require_tool, run, run_cmd};
pub use container::{debian_tree, Container};
pub use lines::{sshd_failed_password, sshd_failure, syslog_now};
pub use netns::{in_ns, mac_of, next_id, reap_leftovers, spawn_in_ns, NetNsGuard};
pub use rig::{
    agent_section, append_lines, path_exists, pin_prefix, tail, wait_for, xban_bin, AgentDir,
    AgentProcess, Control, RawReply, Rig, Start, STATUS_REQUEST,
};
pub use veth::{Lab, LabSpec, ATK2_V4, ATK3_V4, ATK_V4, ATK_V6, SRV_V4, SRV_V6};
