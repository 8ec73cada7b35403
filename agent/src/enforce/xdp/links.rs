//! Keeping XDP attached while the agent runs.
//!
//! The program can be lost without the agent doing anything: the pin
//! directory removed (`rm -rf`), the link detached (`bpftool link detach`),
//! the interface deleted and created again. The agent holds its own handle
//! on each link (so a removed pin does not detach it), and checks on every
//! rtnetlink link event and every 500 ms that each link is still attached,
//! to the interface's current index, running this agent's program, and that
//! every pin (maps, program, links) is in place. What is lost is repaired at
//! once: a new attach for a detached or severed link, the pins re-created
//! from the objects the agent holds. Each repair is logged, counted and
//! shown in `status` and the metrics.
//!
//! An interface that does not exist (yet) is reported and attached when it
//! appears; the agent never fails for it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::MapData;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::Xdp;

use super::{link_dir, xdp_mode, XdpEnforcer, PROGRAM_NAME};
use crate::sys::paths::pins;

/// `status`'s `links`: each configured interface's XDP link, and the pin
/// repairs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LinksStatus {
    pub interfaces: Vec<LinkStatus>,
    /// Times lost pins under the pin directory were re-created.
    pub pin_repairs: u64,
}

/// One interface's link in [`LinksStatus`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    pub interface: String,
    /// `unknown`, `attached`, `waiting-for-interface` or `failed`.
    pub state: String,
    pub ifindex: u32,
    /// Why the state is `failed` (`null` otherwise).
    pub error: Option<String>,
    pub repairs: u64,
    pub last_repair: Option<String>,
}

impl LinkStatus {
    /// `attached` (the metrics' `xban_xdp_attached`).
    pub fn is_attached(&self) -> bool {
        self.state == LinkState::Attached.name()
    }
}

/// What the agent knows of one configured interface.
#[derive(Debug, Default)]
pub struct LinkWatch {
    pub interface: String,
    pub state: LinkState,
    /// The kernel's index of the interface the link is attached to.
    pub ifindex: u32,
    /// Our own reference to the link: it stays attached while we hold it,
    /// even if its pin is removed.
    held: Option<OwnedFd>,
    /// Repairs of this interface's attachment or link pin.
    pub repairs: u64,
    pub last_repair: Option<String>,
}

impl LinkWatch {
    pub(super) fn new(interface: &str) -> LinkWatch {
        LinkWatch {
            interface: interface.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum LinkState {
    #[default]
    Unknown,
    Attached,
    /// The interface does not exist: attached when it appears.
    NoInterface,
    /// Attaching failed (retried on every check).
    Failed(String),
}

impl LinkState {
    fn name(&self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Attached => "attached",
            LinkState::NoInterface => "waiting-for-interface",
            LinkState::Failed(_) => "failed",
        }
    }
}

/// The index of `ifname`, if it exists (in the agent's network namespace).
fn ifindex(ifname: &str) -> Option<u32> {
    let c = CString::new(ifname).ok()?;
    // SAFETY: a valid NUL-terminated string; no other precondition.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

// ---- bpf(2) for what aya does not expose: a link's fd and its ifindex,
// and batch lookups (xdp.rs) ----

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed bpf_attr prefix of the size passed, laid
    // out for `cmd` by the callers; the kernel reads (and for info, writes
    // through the pointer in) it only during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("pin path {} has a NUL byte", path.display()))
}

/// BPF_OBJ_GET: a new fd on the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut attr = [p.as_ptr() as u64, 0, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: pin the object behind `fd` at `path`.
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let p = c_path(path)?;
    let mut attr = [p.as_ptr() as u64, fd.as_raw_fd() as u32 as u64, 0, 0];
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pin {}", path.display()))?;
    Ok(())
}

/// A link's program id and the ifindex it is attached to (0: detached,
/// or its interface is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct XdpLinkInfo {
    id: u32,
    prog_id: u32,
    ifindex: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD on a link: bpf_link_info is `type`, `id`,
/// `prog_id` (u32 each), then a union aligned to 8 whose XDP member starts
/// with `ifindex`.
fn link_info(fd: BorrowedFd<'_>) -> std::io::Result<XdpLinkInfo> {
    let mut info = [0u64; 8];
    let mut attr = [
        fd.as_raw_fd() as u32 as u64 | (std::mem::size_of_val(&info) as u64) << 32,
        info.as_mut_ptr() as u64,
        0,
        0,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(XdpLinkInfo {
        id: (info[0] >> 32) as u32,
        prog_id: info[1] as u32,
        ifindex: info[2] as u32,
    })
}

impl XdpEnforcer {
    pub(super) fn prog(&mut self) -> Result<&mut Xdp> {
        if let Some(p) = self.adopted.as_mut() {
            return Ok(p);
        }
        Ok(self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .context("program xban_xdp")?
            .try_into()?)
    }

    fn prog_id(&mut self) -> Result<u32> {
        Ok(self.prog()?.info()?.id())
    }

    /// Make sure `ifname` has a working link. At start (`starting`) an
    /// interface that cannot be attached is an error; later it is a state,
    /// retried on the next check. Returns whether anything was repaired.
    pub(super) fn ensure_link(&mut self, idx: usize, starting: bool) -> Result<bool> {
        let ifname = self.links[idx].interface.clone();
        let pin = link_dir(&self.pin_dir).join(&ifname);
        let Some(want_ifindex) = ifindex(&ifname) else {
            if self.links[idx].state != LinkState::NoInterface {
                tracing::warn!(interface = %ifname, "interface {ifname} does not exist: XDP is attached as soon as it appears");
            }
            let w = &mut self.links[idx];
            w.state = LinkState::NoInterface;
            w.held = None;
            w.ifindex = 0;
            return Ok(false);
        };
        let prog_id = self.prog_id()?;
        let healthy = |i: &XdpLinkInfo| i.ifindex == want_ifindex && i.prog_id == prog_id;

        // Our own handle first: a removed pin leaves the link attached.
        if let Some(fd) = &self.links[idx].held {
            match link_info(fd.as_fd()) {
                Ok(i) if healthy(&i) => {
                    if pin.exists() {
                        self.links[idx].state = LinkState::Attached;
                        return Ok(false);
                    }
                    crate::sys::setup::private_dir(&link_dir(&self.pin_dir))?;
                    obj_pin(fd.as_fd(), &pin)?;
                    self.repaired(idx, format!("link pin {} re-created", pin.display()));
                    return Ok(true);
                }
                Ok(i) => {
                    let why = if i.ifindex == 0 {
                        "detached (bpftool link detach, or its interface was deleted)".to_string()
                    } else {
                        format!(
                            "attached to ifindex {} instead of {want_ifindex}",
                            i.ifindex
                        )
                    };
                    tracing::warn!(interface = %ifname, link = i.id, "XDP link {why}: attaching again");
                }
                Err(e) => {
                    tracing::warn!(interface = %ifname, "XDP link unreadable ({e}): attaching again")
                }
            }
            self.links[idx].held = None;
            // The pin, if it names that dead link, goes too.
            let _ = std::fs::remove_file(&pin);
            return self.attach_new(idx, &pin, want_ifindex, starting, true);
        }

        // No handle (start, or after a failure): adopt the pinned link if it
        // is alive on this interface, replace it if it is stale.
        let mut stale = false;
        if pin.exists() {
            match obj_get(&pin).map(|fd| (link_info(fd.as_fd()), fd)) {
                Ok((Ok(i), fd)) if i.ifindex == want_ifindex => {
                    if i.prog_id != prog_id {
                        self.swap_into(&pin, &ifname)?;
                    } else {
                        tracing::info!(interface = %ifname, "adopted pinned XDP link, already running this program");
                    }
                    let w = &mut self.links[idx];
                    w.held = Some(fd);
                    w.ifindex = want_ifindex;
                    w.state = LinkState::Attached;
                    return Ok(false);
                }
                Ok((Ok(i), _)) => {
                    tracing::warn!(interface = %ifname, link = i.id, ifindex = i.ifindex,
                        "pinned XDP link {} is severed (its interface was deleted or it was detached): replacing it with a new attach", pin.display());
                    stale = true;
                }
                Ok((Err(e), _)) | Err(e) => {
                    tracing::warn!(interface = %ifname, "pinned XDP link {} unusable ({e}): replacing it with a new attach", pin.display());
                    stale = true;
                }
            }
            std::fs::remove_file(&pin)
                .with_context(|| format!("remove the stale link pin {}", pin.display()))?;
        }
        let lost = !starting || stale;
        self.attach_new(idx, &pin, want_ifindex, starting, lost)
    }

    /// bpf_link_update: this agent's program into a live pinned link,
    /// atomically (no moment without a program).
    fn swap_into(&mut self, pin: &Path, ifname: &str) -> Result<()> {
        let pinned = PinnedLink::from_pin(pin)
            .with_context(|| format!("open pinned link {}", pin.display()))?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = fd_link.try_into().with_context(|| {
            format!(
                "{} is not an XDP link: remove it or run `xban teardown`",
                pin.display()
            )
        })?;
        let prog = self.prog()?;
        let id = prog
            .attach_to_link(xdp_link)
            .with_context(|| format!("swap the new XDP program into the link on {ifname}"))?;
        // The pin (and our handle) keep the link alive; aya's can go.
        drop(prog.take_link(id)?);
        tracing::info!(interface = %ifname, "adopted pinned XDP link, program replaced atomically");
        Ok(())
    }

    fn attach_new(
        &mut self,
        idx: usize,
        pin: &Path,
        want_ifindex: u32,
        starting: bool,
        repair: bool,
    ) -> Result<bool> {
        let ifname = self.links[idx].interface.clone();
        let mode = self.mode;
        let attached = (|| -> Result<OwnedFd> {
            let prog = self.prog()?;
            let id = prog.attach(&ifname, xdp_mode(mode)).with_context(|| {
                format!(
                    "attach XDP to {ifname} in {mode} mode (another XDP program attached? try xdp_mode = \"generic\")"
                )
            })?;
            let link = prog.take_link(id)?;
            let fd_link: FdLink = link.try_into().with_context(|| {
                format!("the kernel attached XDP to {ifname} without a bpf_link, which cannot be pinned: xban needs Linux 5.9 or later")
            })?;
            crate::sys::setup::private_dir(&link_dir(&self.pin_dir))?;
            let pinned = fd_link
                .pin(pin)
                .with_context(|| format!("pin XDP link at {}", pin.display()))?;
            let fd = obj_get(pin).with_context(|| format!("open {}", pin.display()))?;
            drop(pinned);
            Ok(fd)
        })();
        match attached {
            Ok(fd) => {
                let w = &mut self.links[idx];
                w.held = Some(fd);
                w.ifindex = want_ifindex;
                if repair {
                    self.repaired(idx, format!("XDP attached again to {ifname}"));
                } else {
                    self.links[idx].state = LinkState::Attached;
                    tracing::info!(interface = %ifname, mode = %mode, "attached XDP");
                }
                Ok(repair)
            }
            Err(e) if starting => Err(e),
            Err(e) => {
                let msg = format!("{e:#}");
                if self.links[idx].state != LinkState::Failed(msg.clone()) {
                    tracing::error!(interface = %ifname, "XDP not attached, retrying: {msg}");
                }
                self.links[idx].state = LinkState::Failed(msg);
                Ok(false)
            }
        }
    }

    fn repaired(&mut self, idx: usize, what: String) {
        let w = &mut self.links[idx];
        w.state = LinkState::Attached;
        w.repairs += 1;
        tracing::warn!(interface = %w.interface, repairs = w.repairs, "XDP repaired: {what}");
        w.last_repair = Some(format!(
            "{} {what}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }

    /// Re-create the pins of the program and its maps if they are gone
    /// (e.g. the pin directory was removed): the objects live on in this
    /// process, so nothing is lost but their names.
    fn ensure_pins(&mut self) -> Result<usize> {
        // The common case costs a few stat(2)s, no bpf(2).
        let prog_pin = self.pin_dir.join(pins::PROGRAM);
        if prog_pin.exists()
            && link_dir(&self.pin_dir).is_dir()
            && MAP_NAMES.iter().all(|n| self.pin_dir.join(n).exists())
        {
            return Ok(0);
        }
        let mut made = 0;
        let had_dir = self.pin_dir.is_dir();
        crate::sys::setup::private_dir(&self.pin_dir)?;
        crate::sys::setup::private_dir(&link_dir(&self.pin_dir))?;
        if !prog_pin.exists() {
            self.prog()?
                .pin(&prog_pin)
                .with_context(|| format!("pin program at {}", prog_pin.display()))?;
            made += 1;
        }
        let map_ids = self.prog()?.info()?.map_ids()?.unwrap_or_default();
        for id in map_ids {
            let map = MapData::from_id(id).context("open an XDP map by id")?;
            let info = map.info().context("XDP map info")?;
            let Some(name) = info.name_as_str().filter(|n| MAP_NAMES.contains(n)) else {
                continue;
            };
            let path = self.pin_dir.join(name);
            if !path.exists() {
                map.pin(&path)
                    .with_context(|| format!("pin map at {}", path.display()))?;
                made += 1;
            }
        }
        if made > 0 {
            self.pin_repairs += 1;
            tracing::warn!(
                pins = made,
                pin_dir = %self.pin_dir.display(),
                "XDP repaired: {made} pins re-created{}",
                if had_dir { "" } else { " (the pin directory had been removed)" }
            );
        }
        Ok(made)
    }

    /// One check of everything (every 500 ms and on link events). Errors
    /// are logged; the next check tries again.
    pub fn check(&mut self) -> usize {
        let mut repairs = 0;
        match self.ensure_pins() {
            Ok(n) => repairs += n,
            Err(e) => tracing::error!("re-creating XDP pins: {e:#}"),
        }
        for idx in 0..self.links.len() {
            match self.ensure_link(idx, false) {
                Ok(true) => repairs += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(interface = %self.links[idx].interface, "checking the XDP link: {e:#}")
                }
            }
        }
        repairs
    }

    /// Links for `status --json` and the metrics.
    pub fn link_status(&self) -> LinksStatus {
        LinksStatus {
            interfaces: self
                .links
                .iter()
                .map(|w| LinkStatus {
                    interface: w.interface.clone(),
                    state: w.state.name().to_string(),
                    ifindex: w.ifindex,
                    error: match &w.state {
                        LinkState::Failed(m) => Some(m.clone()),
                        _ => None,
                    },
                    repairs: w.repairs,
                    last_repair: w.last_repair.clone(),
                })
                .collect(),
            pin_repairs: self.pin_repairs,
        }
    }

    /// Interfaces attached now.
    pub fn attached_now(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|w| w.state == LinkState::Attached)
            .map(|w| w.interface.clone())
            .collect()
    }
}

const MAP_NAMES: [&str; 11] = {
    use xban_common as c;
    [
        c::MAP_ALLOW_V4,
        c::MAP_ALLOW_V6,
        c::MAP_BANS_V4,
        c::MAP_BANS_V6,
        c::MAP_TAB_V4,
        c::MAP_TAB_V6,
        c::MAP_OVER_V4,
        c::MAP_OVER_V6,
        c::MAP_DIR_V4,
        c::MAP_DIR_V6,
        c::MAP_STATS,
    ]
};

/// Link events (RTM_NEWLINK/DELLINK) from rtnetlink, as wake-ups: a thread
/// reads the socket and nudges `tx`; the check itself reads the state.
pub fn watch_link_events(tx: tokio::sync::mpsc::Sender<()>) -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open an rtnetlink socket");
    }
    // SAFETY: a fresh fd from socket(2), owned from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("subscribe to rtnetlink link events");
    }
    std::thread::Builder::new()
        .name("xban-netlink".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: reads into our buffer of the length given.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOBUFS) {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    tracing::warn!(
                        "rtnetlink: {}; relying on the periodic check",
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                // Full channel: a check is already due.
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        })
        .context("start the rtnetlink thread")?;
    Ok(())
}

/// The pin of `ifname`'s link.
pub fn link_pin(pin_dir: &Path, ifname: &str) -> PathBuf {
    link_dir(pin_dir).join(ifname)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format of `status`'s `links`, as the JSON object the daemon
    /// built before it was typed.
    #[test]
    fn links_status_json_is_pinned() {
        let st = LinksStatus {
            interfaces: vec![
                LinkStatus {
                    interface: "eth9".into(),
                    state: "attached".into(),
                    ifindex: 7,
                    error: None,
                    repairs: 2,
                    last_repair: Some("re-attached after detach".into()),
                },
                LinkStatus {
                    interface: "bad0".into(),
                    state: "failed".into(),
                    ifindex: 0,
                    error: Some("attach: EBUSY".into()),
                    repairs: 0,
                    last_repair: None,
                },
            ],
            pin_repairs: 1,
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "interfaces": [
                    {
                        "interface": "eth9",
                        "state": "attached",
                        "ifindex": 7,
                        "error": null,
                        "repairs": 2,
                        "last_repair": "re-attached after detach",
                    },
                    {
                        "interface": "bad0",
                        "state": "failed",
                        "ifindex": 0,
                        "error": "attach: EBUSY",
                        "repairs": 0,
                        "last_repair": null,
                    },
                ],
                "pin_repairs": 1,
            })
        );
        assert_eq!(serde_json::from_value::<LinksStatus>(v).unwrap(), st);
        assert!(st.interfaces[0].is_attached());
        assert!(!st.interfaces[1].is_attached());
    }

    #[test]
    fn link_state_names_are_the_status_strings() {
        for (state, name) in [
            (LinkState::Unknown, "unknown"),
            (LinkState::Attached, "attached"),
            (LinkState::NoInterface, "waiting-for-interface"),
            (LinkState::Failed("x".into()), "failed"),
        ] {
            assert_eq!(state.name(), name);
        }
    }
}
