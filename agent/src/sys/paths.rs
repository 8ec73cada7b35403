//! Every default path the agent uses, in one place.

/// Where the agent pins its maps, program and links (on bpffs).
pub const BPF_PIN_DIR: &str = "/sys/fs/bpf/xban";
/// Where bpffs is mounted when the system has not mounted it.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Persistent state: the ban database.
pub const STATE_DIR: &str = "/var/lib/xban";
/// The control socket.
pub const SOCKET: &str = "/run/xban/xban.sock";
/// The config file read when `-c` is not given.
pub const CONFIG: &str = "/etc/xban/xban.toml";
/// Operators' filter files, adding to or overriding the built-in ones.
pub const FILTERS_DIR: &str = "/etc/xban/filters";

/// Name of the ban database inside the state directory.
pub const STATE_DB: &str = "xban.sqlite3";

/// Sub-paths of the pin directory.
pub mod pins {
    /// The loaded XDP program.
    pub const PROGRAM: &str = "prog_xdp";
    /// One pinned bpf_link per interface: `links/<ifname>`.
    pub const LINKS: &str = "links";
}
