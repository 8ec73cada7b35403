//! The XDP program: load it (adopting pinned maps), pin it, attach it to
//! interfaces through pinned links (swapped atomically, see `links`), and
//! tear everything down. A warm start adopts the pinned program instead of
//! loading it again, when the last clean stop's mark says it is this
//! binary's object on these maps: the kernel's verifier pass is most of a
//! warm start's CPU.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use aya_obj::programs::XdpAttachType;

use super::{XdpMaps, XdpModeSetting};
use crate::sys::paths::pins;

/// The XDP object, embedded at build time (see build.rs).
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xban-xdp.o"));
pub(in crate::enforce) const PROGRAM_NAME: &str = "xban_xdp";

/// The loaded program. Dropping it leaves pinned things in place.
pub struct XdpEnforcer {
    pub(in crate::enforce) ebpf: Ebpf,
    /// The pinned program, when a warm start adopted it (the object's own
    /// copy in `ebpf` is then never loaded).
    pub(in crate::enforce) adopted: Option<Xdp>,
    pub(in crate::enforce) pin_dir: PathBuf,
    /// Interfaces configured.
    pub attached: Vec<String>,
    /// Each configured interface's link, as last checked (see `links`).
    pub(in crate::enforce) links: Vec<crate::enforce::xdp::links::LinkWatch>,
    pub(in crate::enforce) mode: XdpModeSetting,
    /// Times lost pins (maps, program) were re-created.
    pub(in crate::enforce) pin_repairs: u64,
}

pub(in crate::enforce) fn link_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(pins::LINKS)
}

/// What a clean stop records of the loaded program, for the next start to
/// adopt it: its kernel id (ids are not reused within a boot, and the
/// marker holds only for the boot that wrote it) and a digest of the XDP
/// object it was loaded from (another xban binary loads its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramMark {
    pub id: u32,
    pub object: u64,
}

impl ProgramMark {
    /// As the restore marker stores it (opaque words, like the maps').
    pub fn to_words(self) -> Vec<u64> {
        vec![self.id as u64, self.object]
    }

    pub fn from_words(w: &[u64]) -> Option<ProgramMark> {
        match *w {
            [id, object] => Some(ProgramMark {
                id: u32::try_from(id).ok()?,
                object,
            }),
            _ => None,
        }
    }
}

/// A digest of the embedded object (build.rs): any rebuild that changes
/// the program changes it.
const XDP_OBJECT_DIGEST: u64 = match u64::from_str_radix(env!("XBAN_XDP_OBJECT_DIGEST"), 10) {
    Ok(d) => d,
    Err(_) => panic!("build.rs writes the XDP object's digest in decimal"),
};

/// The pinned program, if `mark` names it, this binary built it, and every
/// map it uses is still the one pinned under its name (so it and the
/// agent's map handles see the same maps; a map made again, as after a
/// `fast_path_capacity` change, has another id). Otherwise `None`, with
/// the reason logged, and the program is loaded as on a cold start.
fn adopt_pinned(pin_dir: &Path, mark: ProgramMark) -> Option<Xdp> {
    let why = (|| -> std::result::Result<Xdp, String> {
        if mark.object != XDP_OBJECT_DIGEST {
            return Err("this xban binary carries another XDP object".into());
        }
        let prog = Xdp::from_pin(pin_dir.join(pins::PROGRAM), XdpAttachType::Interface)
            .map_err(|e| format!("no pinned program ({e})"))?;
        let info = prog.info().map_err(|e| format!("program info: {e}"))?;
        if info.id() != mark.id {
            return Err(format!(
                "the pinned program is {}, not the {} the last stop left",
                info.id(),
                mark.id
            ));
        }
        let ids = info
            .map_ids()
            .map_err(|e| format!("program map ids: {e}"))?
            .unwrap_or_default();
        for id in ids {
            let map = aya::maps::MapData::from_id(id).map_err(|e| format!("map {id}: {e}"))?;
            let name = map
                .info()
                .ok()
                .and_then(|i| i.name_as_str().map(str::to_owned))
                .unwrap_or_default();
            let pinned = aya::maps::MapData::from_pin(pin_dir.join(&name))
                .ok()
                .and_then(|m| m.info().ok())
                .map(|i| i.id());
            if pinned != Some(id) {
                return Err(format!("its map {name} is no longer the pinned one"));
            }
        }
        Ok(prog)
    })();
    match why {
        Ok(prog) => Some(prog),
        Err(why) => {
            tracing::info!("pinned XDP program not adopted: {why}; loading it again");
            None
        }
    }
}

impl XdpEnforcer {
    /// Load the program, reusing maps already pinned in `pin_dir` (so bans
    /// written by a previous agent stay), or creating and pinning them.
    /// `warm`: what a clean stop recorded of the maps (see `warm`) and of
    /// the program (adopted instead of verified again when it still holds).
    /// `capacity`: `[agent] fast_path_capacity`, which sizes the overflow
    /// hashes (pinned ones of another size are made again, and filled from
    /// the tries before the program is swapped in).
    pub fn load(
        pin_dir: &Path,
        warm: Option<super::WarmMaps>,
        capacity: u32,
    ) -> Result<(XdpEnforcer, XdpMaps)> {
        if XDP_OBJECT.is_empty() {
            bail!("this xban binary was built without its XDP program: build it with `cargo xtask build` (it runs build-ebpf first)");
        }
        crate::sys::setup::private_dir(pin_dir)?;
        crate::sys::setup::private_dir(&link_dir(pin_dir))?;
        let over = xban_common::fastpath::over_max_entries(capacity);
        for name in [xban_common::MAP_OVER_V4, xban_common::MAP_OVER_V6] {
            let path = pin_dir.join(name);
            let pinned = aya::maps::MapData::from_pin(&path)
                .ok()
                .and_then(|m| m.info().ok())
                .map(|i| i.max_entries());
            if pinned.is_some_and(|n| n != over) {
                // The running program keeps its own until the link swap.
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {} to resize it", path.display()))?;
                tracing::info!(
                    map = name,
                    entries = over,
                    "fast_path_capacity changed: the overflow hash is made again at its new size"
                );
            }
        }
        let started = std::time::Instant::now();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(xban_common::MAP_OVER_V4, over)
            .map_max_entries(xban_common::MAP_OVER_V6, over)
            .load(XDP_OBJECT)
            .with_context(|| {
                format!(
                    "load the XDP program with maps pinned in {} (if an older xban left incompatible maps there, run `xban teardown`)",
                    pin_dir.display()
                )
            })?;
        let object = started.elapsed();
        // After the loader: it has opened (or made) every pinned map.
        let adopted = warm
            .as_ref()
            .and_then(|w| w.program)
            .and_then(|mark| adopt_pinned(pin_dir, mark));
        if adopted.is_some() {
            tracing::info!("warm start: adopted the pinned XDP program (not verified again)");
        } else {
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
        }
        let program = started.elapsed();
        let was_adopted = adopted.is_some();
        let maps = XdpMaps::from_ebpf(&mut ebpf, warm, capacity as usize)?;
        let secs = |d: std::time::Duration| d.as_secs_f64();
        tracing::info!(
            phases = format!(
                "object and maps {:.2} s, program {:.2} s ({}), fast path {:.2} s",
                secs(object),
                secs(program - object),
                if was_adopted { "adopted" } else { "verified" },
                secs(started.elapsed() - program)
            ),
            "XDP program loaded"
        );
        let enforcer = XdpEnforcer {
            ebpf,
            adopted,
            pin_dir: pin_dir.to_path_buf(),
            attached: Vec::new(),
            links: Vec::new(),
            mode: XdpModeSetting::Auto,
            pin_repairs: 0,
        };
        Ok((enforcer, maps))
    }

    /// For the restore marker at a clean stop: the program now loaded.
    pub fn mark(&mut self) -> Option<ProgramMark> {
        let id = self.prog().ok()?.info().ok()?.id();
        Some(ProgramMark {
            id,
            object: XDP_OBJECT_DIGEST,
        })
    }

    /// Attach to each interface, adopting links a previous agent pinned
    /// (atomic program swap), replacing severed ones, and detaching from
    /// interfaces no longer listed. An interface that does not exist is
    /// reported and attached when it appears (see `links`); any other
    /// failure to attach is an error.
    pub fn attach(&mut self, interfaces: &[String], mode: XdpModeSetting) -> Result<()> {
        let links = link_dir(&self.pin_dir);
        self.mode = mode;
        self.links = interfaces
            .iter()
            .map(|i| crate::enforce::xdp::links::LinkWatch::new(i))
            .collect();
        for idx in 0..self.links.len() {
            self.ensure_link(idx, true)?;
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

pub(in crate::enforce) fn xdp_mode(m: XdpModeSetting) -> XdpMode {
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
