//! Enforcement: turning the agent's ban decisions into kernel state.

pub mod xdp;

use anyhow::Result;

use crate::addr::Target;
use crate::ban::MapChange;

/// Where ban decisions are written. The XDP maps in production; tests of the
/// agent's logic use a recorder.
pub trait Enforcer: Send {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()>;
    fn set_allowlist(&mut self, list: &[Target]) -> Result<()>;
    /// Every target the kernel currently holds, with its class when readable.
    fn entries(&self) -> Result<Vec<(Target, Option<crate::ban::BanClass>)>>;
    /// The XDP counters, where there are any.
    fn xdp_stats(&self) -> Result<Option<xdp::XdpStats>> {
        Ok(None)
    }
}

impl Enforcer for xdp::XdpMaps {
    fn apply(&mut self, target: &Target, change: MapChange) -> Result<()> {
        match change {
            MapChange::Set(class) => self.set_ban(target, class),
            MapChange::Remove => self.remove_ban(target),
            MapChange::Unchanged => Ok(()),
        }
    }

    fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        xdp::XdpMaps::set_allowlist(self, list)
    }

    fn entries(&self) -> Result<Vec<(Target, Option<crate::ban::BanClass>)>> {
        self.bans()
    }

    fn xdp_stats(&self) -> Result<Option<xdp::XdpStats>> {
        self.stats().map(Some)
    }
}
