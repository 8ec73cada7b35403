//! The XDP side of enforcement: load (or adopt) the program and its pinned
//! maps, attach it through pinned bpf_links, and keep the tries in step with
//! the agent's bans.
//!
//! Everything is pinned under the pin directory so that bans keep dropping
//! while the agent is stopped: maps by name, the program as `prog_xdp`, one
//! link per interface under `links/`. A new agent reuses the maps and swaps
//! its program into the existing links atomically (bpf_link_update), so there
//! is no moment without a program attached.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use xban_common::{stats, AllowValue, BanValue};

use crate::addr::Target;
use crate::ban::BanClass;
use crate::config::XdpModeSetting;
use crate::directories::pins;

/// The XDP object, embedded at build time (see build.rs).
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xban-xdp.o"));
const PROGRAM_NAME: &str = "xban_xdp";

/// Per-CPU counters summed, by `xban_common::stats` index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpStats {
    pub seen: u64,
    pub dropped: u64,
    pub passed_allowlisted: u64,
    pub passed_tarpit: u64,
    pub passed_clean: u64,
    pub passed_not_ip: u64,
}

impl XdpStats {
    fn from_counters(c: &[u64; stats::COUNT as usize]) -> Self {
        XdpStats {
            seen: c[stats::SEEN as usize],
            dropped: c[stats::DROPPED as usize],
            passed_allowlisted: c[stats::PASSED_ALLOWED as usize],
            passed_tarpit: c[stats::PASSED_TARPIT as usize],
            passed_clean: c[stats::PASSED_CLEAN as usize],
            passed_not_ip: c[stats::PASSED_NOT_IP as usize],
        }
    }
}

type Trie4<V> = LpmTrie<MapData, [u8; 4], V>;
type Trie6<V> = LpmTrie<MapData, [u8; 16], V>;

/// The ban and allow tries, owned by the running agent.
pub struct XdpMaps {
    allow_v4: Trie4<AllowValue>,
    allow_v6: Trie6<AllowValue>,
    bans_v4: Trie4<BanValue>,
    bans_v6: Trie6<BanValue>,
    stats: PerCpuArray<MapData, u64>,
}

/// The loaded program. Dropping it leaves pinned things in place.
pub struct XdpEnforcer {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Interfaces the program is attached to.
    pub attached: Vec<String>,
}

fn key4(t: &Target) -> Key<[u8; 4]> {
    Key::new(t.prefix() as u32, t.v4_octets().expect("v4 target"))
}

fn key6(t: &Target) -> Key<[u8; 16]> {
    Key::new(t.prefix() as u32, t.v6_octets().expect("v6 target"))
}

impl XdpMaps {
    /// Open the pinned maps of a pin directory (for commands run while the
    /// agent is stopped, and for tests).
    pub fn from_pins(pin_dir: &Path) -> Result<XdpMaps> {
        let open = |name: &str| -> Result<Map> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "open pinned map {} (is the agent set up? run `xban run` once)",
                    path.display()
                )
            })?;
            Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
        };
        Ok(XdpMaps {
            allow_v4: open(xban_common::MAP_ALLOW_V4)?.try_into()?,
            allow_v6: open(xban_common::MAP_ALLOW_V6)?.try_into()?,
            bans_v4: open(xban_common::MAP_BANS_V4)?.try_into()?,
            bans_v6: open(xban_common::MAP_BANS_V6)?.try_into()?,
            stats: open(xban_common::MAP_STATS)?.try_into()?,
        })
    }

    fn from_ebpf(ebpf: &mut Ebpf) -> Result<XdpMaps> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the XDP object has no map `{name}`"))
        };
        Ok(XdpMaps {
            allow_v4: take(xban_common::MAP_ALLOW_V4)?.try_into()?,
            allow_v6: take(xban_common::MAP_ALLOW_V6)?.try_into()?,
            bans_v4: take(xban_common::MAP_BANS_V4)?.try_into()?,
            bans_v6: take(xban_common::MAP_BANS_V6)?.try_into()?,
            stats: take(xban_common::MAP_STATS)?.try_into()?,
        })
    }

    pub fn set_ban(&mut self, target: &Target, class: BanClass) -> Result<()> {
        let value = BanValue {
            class: class.to_kernel() as u32,
            flags: 0,
        };
        if target.is_ipv4() {
            self.bans_v4.insert(&key4(target), value, 0)
        } else {
            self.bans_v6.insert(&key6(target), value, 0)
        }
        .with_context(|| format!("write ban of {target} into the XDP map (is it full?)"))
    }

    pub fn remove_ban(&mut self, target: &Target) -> Result<()> {
        let r = if target.is_ipv4() {
            self.bans_v4.remove(&key4(target))
        } else {
            self.bans_v6.remove(&key6(target))
        };
        match r {
            Ok(()) => Ok(()),
            // Already gone is the state we want.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {target} from the XDP map")),
        }
    }

    /// Every entry of the ban tries.
    pub fn bans(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        let class = |v: &BanValue| match xban_common::BanClass::from_u32(v.class) {
            Some(xban_common::BanClass::Drop) => Some(BanClass::Drop),
            Some(xban_common::BanClass::Tarpit) => Some(BanClass::Tarpit),
            None => None,
        };
        let mut out = Vec::new();
        for item in self.bans_v4.iter() {
            let (k, v) = item.context("read bans_v4")?;
            out.push((Target::from_v4(k.data(), k.prefix_len())?, class(&v)));
        }
        for item in self.bans_v6.iter() {
            let (k, v) = item.context("read bans_v6")?;
            out.push((Target::from_v6(k.data(), k.prefix_len())?, class(&v)));
        }
        Ok(out)
    }

    fn allow_entries(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for k in self.allow_v4.keys() {
            let k = k.context("read allow_v4")?;
            out.push(Target::from_v4(k.data(), k.prefix_len())?);
        }
        for k in self.allow_v6.keys() {
            let k = k.context("read allow_v6")?;
            out.push(Target::from_v6(k.data(), k.prefix_len())?);
        }
        Ok(out)
    }

    /// Make the allow tries hold exactly `list`: add first, then remove the
    /// stale ones, so an address on both the old and new list never drops.
    pub fn set_allowlist(&mut self, list: &[Target]) -> Result<()> {
        let value = AllowValue { reserved: 0 };
        for t in list {
            if t.is_ipv4() {
                self.allow_v4.insert(&key4(t), value, 0)
            } else {
                self.allow_v6.insert(&key6(t), value, 0)
            }
            .with_context(|| format!("write {t} into the XDP allowlist"))?;
        }
        let want: HashSet<&Target> = list.iter().collect();
        for t in self.allow_entries()? {
            if !want.contains(&t) {
                let r = if t.is_ipv4() {
                    self.allow_v4.remove(&key4(&t))
                } else {
                    self.allow_v6.remove(&key6(&t))
                };
                r.with_context(|| format!("remove {t} from the XDP allowlist"))?;
            }
        }
        Ok(())
    }

    pub fn allowlist(&self) -> Result<Vec<Target>> {
        self.allow_entries()
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats> {
        let mut c = [0u64; stats::COUNT as usize];
        for (i, slot) in c.iter_mut().enumerate() {
            let per_cpu = self.stats.get(&(i as u32), 0).context("read XDP stats")?;
            *slot = per_cpu.iter().sum();
        }
        Ok(XdpStats::from_counters(&c))
    }

    /// Does the XDP program see `ip` as banned (longest-prefix match)?
    pub fn lookup(&self, ip: IpAddr) -> Option<BanClass> {
        let t = Target::host(ip);
        let v = if t.is_ipv4() {
            self.bans_v4.get(&key4(&t), 0).ok()
        } else {
            self.bans_v6.get(&key6(&t), 0).ok()
        }?;
        match xban_common::BanClass::from_u32(v.class)? {
            xban_common::BanClass::Drop => Some(BanClass::Drop),
            xban_common::BanClass::Tarpit => Some(BanClass::Tarpit),
        }
    }
}

fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(pins::LINKS)
}

impl XdpEnforcer {
    /// Load the program, reusing maps already pinned in `pin_dir` (so bans
    /// written by a previous agent stay), or creating and pinning them.
    pub fn load(pin_dir: &Path) -> Result<(XdpEnforcer, XdpMaps)> {
        if XDP_OBJECT.is_empty() {
            bail!("this xban binary was built without its XDP program: build it with `cargo xtask build` (it runs build-ebpf first)");
        }
        crate::setup::private_dir(pin_dir)?;
        crate::setup::private_dir(&link_dir(pin_dir))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(XDP_OBJECT)
            .with_context(|| {
                format!(
                    "load the XDP program with maps pinned in {} (if an older xban left incompatible maps there, run `xban teardown`)",
                    pin_dir.display()
                )
            })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .context("the XDP object has no program xban_xdp")?
            .try_into()?;
        prog.load()
            .context("the kernel's verifier refused the XDP program")?;
        // Re-pin the program for bpftool (`bpftool prog run pinned ...`).
        let prog_pin = pin_dir.join(pins::PROGRAM);
        let _ = std::fs::remove_file(&prog_pin);
        prog.pin(&prog_pin)
            .with_context(|| format!("pin program at {}", prog_pin.display()))?;
        let maps = XdpMaps::from_ebpf(&mut ebpf)?;
        let enforcer = XdpEnforcer {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attached: Vec::new(),
        };
        Ok((enforcer, maps))
    }

    /// Attach to each interface, adopting links a previous agent pinned
    /// (atomic program swap) and detaching from interfaces no longer listed.
    pub fn attach(&mut self, interfaces: &[String], mode: XdpModeSetting) -> Result<()> {
        let links = link_dir(&self.pin_dir);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .context("program xban_xdp")?
            .try_into()?;
        for ifname in interfaces {
            let pin = links.join(ifname);
            if pin.exists() {
                let pinned = PinnedLink::from_pin(&pin)
                    .with_context(|| format!("open pinned link {}", pin.display()))?;
                let fd_link: FdLink = pinned.into();
                let xdp_link = fd_link.try_into().with_context(|| {
                    format!(
                        "{} is not an XDP link: remove it or run `xban teardown`",
                        pin.display()
                    )
                })?;
                let id = prog.attach_to_link(xdp_link).with_context(|| {
                    format!("swap the new XDP program into the link on {ifname}")
                })?;
                // The pin keeps the link alive; our handle can go.
                let link = prog.take_link(id)?;
                drop(link);
                tracing::info!(interface = %ifname, "adopted pinned XDP link, program replaced atomically");
            } else {
                let id = prog.attach(ifname, xdp_mode(mode)).with_context(|| {
                    format!(
                        "attach XDP to {ifname} in {mode} mode (does the interface exist? another XDP program attached? try xdp_mode = \"generic\")"
                    )
                })?;
                let link = prog.take_link(id)?;
                let fd_link: FdLink = link.try_into().with_context(|| {
                    format!("the kernel attached XDP to {ifname} without a bpf_link, which cannot be pinned: xban needs Linux 5.9 or later")
                })?;
                fd_link
                    .pin(&pin)
                    .with_context(|| format!("pin XDP link at {}", pin.display()))?;
                tracing::info!(interface = %ifname, mode = %mode, "attached XDP");
            }
        }
        // Interfaces dropped from the config: unpinning the link detaches it.
        for entry in
            std::fs::read_dir(&links).with_context(|| format!("read {}", links.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !interfaces.contains(&name) {
                std::fs::remove_file(entry.path())?;
                tracing::info!(interface = %name, "detached XDP from an interface no longer configured");
            }
        }
        self.attached = interfaces.to_vec();
        Ok(())
    }
}

fn xdp_mode(m: XdpModeSetting) -> XdpMode {
    match m {
        XdpModeSetting::Auto => XdpMode::Default,
        XdpModeSetting::Native => XdpMode::Driver,
        XdpModeSetting::Generic => XdpMode::Skb,
    }
}

/// Remove everything pinned under `pin_dir`: links first (which detaches the
/// program from every interface), then the program and the maps. Returns what
/// was removed.
pub fn teardown(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let links = link_dir(pin_dir);
    if links.exists() {
        for entry in std::fs::read_dir(&links)? {
            let path = entry?.path();
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            removed.push(path);
        }
        std::fs::remove_dir(&links).with_context(|| format!("remove {}", links.display()))?;
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            bail!(
                "unexpected directory {} in the pin directory: remove it by hand",
                path.display()
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        removed.push(path);
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("remove {}", pin_dir.display()))?;
    Ok(removed)
}

/// Interfaces with a pinned xban link (attached even while no agent runs).
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(link_dir(pin_dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
