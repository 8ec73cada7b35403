//! Tarpit steering: the iptables/ipset plumbing behind the `tarpit` ban class.
//!
//! XDP passes tarpit-class packets; this module makes iptables hold their TCP
//! connections with the TARPIT target (xtables-addons). Per family it keeps:
//!
//! ```text
//! ipset   xban-tarpit-v4       hash:net family inet maxelem 1048576 (no timeout)
//! filter  -N XBAN-TARPIT
//!         -A XBAN-TARPIT -p tcp -m limit --limit 10/sec --limit-burst 20 -j TARPIT
//!         -A XBAN-TARPIT -p tcp -j DROP
//!         -I INPUT 1 -p tcp -m set --match-set xban-tarpit-v4 src -j XBAN-TARPIT
//! raw     -I PREROUTING 1 -p tcp -m set --match-set xban-tarpit-v4 src -j CT --notrack   (notrack = true)
//! ```
//!
//! and the same with ip6tables and `xban-tarpit-v6` (family inet6). Membership
//! is set operations only; there are never per-address rules. The set is
//! matched in the hook, so other TCP costs one set lookup and the hook's
//! counter is the number of steered packets.
//!
//! Everything is adopted by the next run (an adopted set is never flushed),
//! so a tarpit-class address stays steered while the agent restarts. A chain
//! that differs from the config (other limit or target) is rewritten in place
//! without a gap: the new rules are appended behind the old ones, which are
//! then deleted, so every steered packet meets a verdict throughout. Duplicate
//! hooks or notrack rules are pruned by rule number, never by spec (see
//! `Plumbing::prune`). [`TarpitSteering::teardown`] removes it all.
//!
//! ## Detecting TARPIT
//!
//! Availability is tested by doing what setup would do: in the filter table a
//! scratch chain `XBAN-PROBE-<pid>` is created, `-p tcp -j TARPIT` is appended
//! to it, and the chain is removed again. That one step exercises everything
//! the real rule needs: the iptables extension `libxt_TARPIT.so`, the kernel
//! module `xt_TARPIT` (including the kernel's module autoloading) and the
//! chosen backend (nf_tables through nft_compat, or legacy). `modprobe -n` and
//! `/proc/net/ip_tables_targets` alone cannot answer it: modules may be
//! built in or autoloaded on first use, and neither says whether iptables has
//! the userspace extension. The error text then tells which part is missing:
//!
//! * extension missing: nf_tables says `Chain 'TARPIT' does not exist` (it
//!   takes an unknown target for a chain), legacy `Couldn't load target`;
//! * kernel module missing: nf_tables says `RULE_APPEND failed (No such file
//!   or directory)`, legacy `No chain/target/match by that name`, both after
//!   `Extension TARPIT revision 0 not supported, missing kernel module?`.
//!
//! Both cases are reported as "the TARPIT target is not available (kernel
//! module xt_TARPIT missing: install xtables-addons-dkms)" (the dkms package
//! depends on xtables-addons-common, which has the extension), and `fallback`
//! decides what happens: `"drop"` creates nothing (the caller bans tarpit-class
//! addresses as drop in XDP), anything else is an iptables target spec used in
//! TARPIT's place, after the same probe has shown that it works. Whether the
//! configured spec is rendered correctly is also left to iptables: the wanted
//! chain is written into the scratch chain and read back, and compared with
//! the live chain in iptables' own normalised form (`3/minute` reads `3/min`).
//!
//! ## Modules
//!
//! [`config`] is the `[tarpit]` section, [`rules`] the state machine
//! ([`TarpitSteering`]), `plumbing` the iptables/ipset commands it issues,
//! `parse` reads their output, [`diagnostics`] turns failures into reasons
//! and fixes, and [`runner`] is the one place a command runs (tests swap in
//! a recording fake).

pub mod config;
pub mod diagnostics;
mod parse;
mod plumbing;
pub mod rules;
pub mod runner;

pub use config::{limit_rate, TarpitConfig, TarpitEngine, SET_MAXELEM};
pub use diagnostics::SteeringError;
pub use rules::{
    CounterReading, FamilyCounters, SteeringCounters, SteeringMode, TarpitSteering,
    COUNTER_PROBE_EVERY,
};
pub use runner::{CommandRunner, Ran, Runner};

#[cfg(test)]
mod tests;
