//! Harness for xban's privileged integration tests: the lab they share with
//! the demo and the benchmarks ([`xban_lab`]), under the names the tests
//! use. A [`Lab`] is two network namespaces joined by a veth pair: `srv`,
//! where the agent runs and attaches XDP, and `atk`, the attacker.

pub use xban_lab::*;
