//! Types shared by the XDP program and the agent: map names, value layouts and
//! counter indices. Both sides must agree on these byte for byte.
#![no_std]

/// Map names, as pinned under the agent's pin directory.
pub const MAP_ALLOW_V4: &str = "allow_v4";
pub const MAP_ALLOW_V6: &str = "allow_v6";
pub const MAP_BANS_V4: &str = "bans_v4";
pub const MAP_BANS_V6: &str = "bans_v6";
pub const MAP_STATS: &str = "stats";

/// Capacity of each ban trie. LPM tries are allocated lazily, so a large
/// capacity costs nothing until entries are inserted.
pub const BANS_MAX_ENTRIES: u32 = 2_000_000;
/// Capacity of each allowlist trie.
pub const ALLOW_MAX_ENTRIES: u32 = 65_536;

/// What the XDP program does with a banned source.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BanClass {
    /// Dropped at XDP.
    Drop = 0,
    /// Passed by XDP so that iptables can steer it to the TARPIT chain.
    Tarpit = 1,
}

impl BanClass {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(BanClass::Drop),
            1 => Some(BanClass::Tarpit),
            _ => None,
        }
    }
}

/// Value stored in `bans_v4` / `bans_v6`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BanValue {
    /// A `BanClass` as u32.
    pub class: u32,
    /// Reserved, keeps the value 8 bytes and leaves room for flags.
    pub flags: u32,
}

/// Value stored in `allow_v4` / `allow_v6` (presence is what matters).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AllowValue {
    pub reserved: u32,
}

/// Indices of the per-CPU `stats` array.
pub mod stats {
    /// Every packet the program saw.
    pub const SEEN: u32 = 0;
    /// Dropped: source in a ban trie with class drop.
    pub const DROPPED: u32 = 1;
    /// Passed: source in an allowlist trie.
    pub const PASSED_ALLOWED: u32 = 2;
    /// Passed: source banned with class tarpit (iptables steers it).
    pub const PASSED_TARPIT: u32 = 3;
    /// Passed: IP packet whose source is in no trie.
    pub const PASSED_CLEAN: u32 = 4;
    /// Passed: not IPv4/IPv6, or truncated headers.
    pub const PASSED_NOT_IP: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "dropped",
        "passed_allowlisted",
        "passed_tarpit",
        "passed_clean",
        "passed_not_ip",
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding holes (two u32 / one u32).
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for super::AllowValue {}
}
