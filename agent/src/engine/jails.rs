//! The jails: each counts its failures in a window and asks for a ban.
//! Lines reach them through the readers' routes (`routes`).

use std::net::IpAddr;
use std::time::SystemTime;

use anyhow::Result;

use super::Agent;
use crate::jail::Jail;

/// The configured jails, in config order.
#[derive(Default)]
pub struct JailSet {
    pub(super) list: Vec<Jail>,
}

impl JailSet {
    pub(super) fn find(&self, name: &str) -> Option<&Jail> {
        self.list.iter().find(|j| j.name() == name)
    }

    /// The jail called `name`, or an error naming the jails there are.
    pub(super) fn by_name(&self, name: &str) -> Result<&Jail> {
        self.find(name).ok_or_else(|| {
            let names: Vec<&str> = self.list.iter().map(|j| j.name()).collect();
            anyhow::anyhow!("no jail named `{name}` (jails: {})", names.join(", "))
        })
    }

    /// An unbanned host starts counting afresh in every jail.
    pub(super) fn forget(&mut self, addr: &IpAddr) {
        for j in &mut self.list {
            j.window.forget(addr);
        }
    }

    /// Drop failures older than each jail's findtime; log the warnings
    /// gathered since the last time.
    pub(super) fn prune(&mut self, now: SystemTime) {
        for j in &mut self.list {
            j.window.prune(now);
            j.flush_warnings();
        }
    }
}

impl Agent {
    pub fn prune_windows(&mut self, now: SystemTime) {
        self.jails.prune(now);
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.escalator.prune(secs);
    }
}
