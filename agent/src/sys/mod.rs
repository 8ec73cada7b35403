//! The operating system as the agent sees it: well-known paths, privileged
//! set-up (capabilities, bpffs, private directories), the one-agent lock,
//! and this host's interfaces and addresses.

pub mod instance;
pub mod interfaces;
pub mod paths;
pub mod setup;
