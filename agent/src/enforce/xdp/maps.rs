//! The ban and allow tries (the record), the counters, and the reads of
//! them: batched where the kernel can, one by one where it cannot.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, Map, MapData, MapError, PerCpuArray};
use aya::sys::SyscallError;
use aya::Ebpf;
use xban_common::{stats, AllowValue, BanValue};

use super::fastpath::{dir_slots, Directory, Entry, EntryExt, Touch};
use super::mapped::{Dir, Table};
use super::{AtLoad, KernelAtLoad, XdpMaps, XdpStats};
use crate::addr::Target;
use crate::ban::BanClass;
use crate::enforce::KernelBans;

/// A ban trie's entry: prefix length, address, value.
pub(super) type TrieRow<const N: usize> = (u32, [u8; N], BanValue);

pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own "operation not supported" (not in libc), what bpf(2)
/// answers for a batch command the map type lacks.
pub(super) const ENOTSUPP: i32 = 524;
/// Entries per batch call.
pub(super) const BATCH: usize = 8192;

/// Every entry of a ban trie with `N`-byte addresses (prefix length,
/// address, value), by BPF_MAP_LOOKUP_BATCH; also of an overflow hash,
/// whose keys have the same layout. `None` when the kernel has no batch
/// lookup for the map (then the caller iterates).
pub(super) fn dump_trie<const N: usize>(map: &MapData) -> Result<Option<Vec<TrieRow<N>>>> {
    let key_size = 4 + N;
    let value_size = std::mem::size_of::<BanValue>();
    let mut keys = vec![0u8; BATCH * key_size];
    let mut values = vec![0u8; BATCH * value_size];
    let mut in_batch = vec![0u8; key_size];
    let mut out_batch = vec![0u8; key_size];
    let fd = map.fd().as_fd().as_raw_fd() as u32 as u64;
    let mut out = Vec::new();
    let mut first = true;
    loop {
        // struct { in_batch, out_batch, keys, values; u32 count, map_fd;
        // u64 elem_flags, flags } of union bpf_attr.
        let mut attr = [
            if first { 0 } else { in_batch.as_ptr() as u64 },
            out_batch.as_mut_ptr() as u64,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            BATCH as u64 | (fd << 32),
            0,
            0,
        ];
        let r = crate::enforce::xdp::links::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = ((attr[4] & 0xffff_ffff) as usize).min(BATCH);
        for i in 0..n {
            let k = &keys[i * key_size..(i + 1) * key_size];
            let len = u32::from_ne_bytes(k[..4].try_into().expect("4 bytes"));
            let data: [u8; N] = k[4..].try_into().expect("N bytes");
            let v = &values[i * value_size..(i + 1) * value_size];
            // SAFETY: `v` holds `size_of::<BanValue>()` bytes the kernel
            // wrote; BanValue is plain old data, read without alignment.
            let value = unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<BanValue>()) };
            out.push((len, data, value));
        }
        match r {
            Ok(_) => {
                in_batch.copy_from_slice(&out_batch);
                first = false;
            }
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Some(out)),
            Err(e)
                if first
                    && out.is_empty()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOTTY | ENOTSUPP)
                    ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `rows` into the ban trie `fd` (`N`-byte addresses): by
/// BPF_MAP_UPDATE_BATCH, 8,192 entries per call, or one by one where the
/// kernel has no batch update for the map. A million single updates are a
/// million system calls at start.
pub(super) fn update_trie<const N: usize>(fd: RawFd, rows: &[TrieRow<N>]) -> std::io::Result<()> {
    let key_size = 4 + N;
    let value_size = std::mem::size_of::<BanValue>();
    let fd = fd as u32 as u64;
    let mut keys = Vec::with_capacity(BATCH.min(rows.len()) * key_size);
    let mut values = Vec::with_capacity(BATCH.min(rows.len()) * value_size);
    let mut batched = true;
    for chunk in rows.chunks(BATCH) {
        keys.clear();
        values.clear();
        for (len, data, v) in chunk {
            keys.extend_from_slice(&len.to_ne_bytes());
            keys.extend_from_slice(data);
            values.extend_from_slice(&v.class.to_ne_bytes());
            values.extend_from_slice(&v.flags.to_ne_bytes());
        }
        if batched {
            // struct { in_batch, out_batch, keys, values; u32 count, map_fd;
            // u64 elem_flags, flags } of union bpf_attr.
            let mut attr = [
                0,
                0,
                keys.as_ptr() as u64,
                values.as_ptr() as u64,
                chunk.len() as u64 | (fd << 32),
                0,
                0,
            ];
            match crate::enforce::xdp::links::bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
                Ok(_) => continue,
                // No batch update for this map: this chunk and the rest one
                // by one (writing an entry again is harmless).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOTTY | ENOTSUPP)
                    ) =>
                {
                    batched = false;
                }
                Err(e) => return Err(e),
            }
        }
        for i in 0..chunk.len() {
            // struct { u32 map_fd; u64 key, value, flags } of union bpf_attr.
            let mut attr = [
                fd,
                keys[i * key_size..].as_ptr() as u64,
                values[i * value_size..].as_ptr() as u64,
                0,
            ];
            crate::enforce::xdp::links::bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
        }
    }
    Ok(())
}

/// Every entry of one ban trie: in batches, or one by one where the
/// kernel has no batch lookup for it.
pub(super) fn trie_rows<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], BanValue>,
    name: &str,
) -> Result<Vec<TrieRow<N>>> {
    if let Some(all) = dump_trie::<N>(aya::maps::IterableMap::map(trie))
        .with_context(|| format!("read {name} in batches"))?
    {
        return Ok(all);
    }
    let mut out = Vec::new();
    for item in trie.iter() {
        let (k, v) = item.with_context(|| format!("read {name}"))?;
        out.push((k.prefix_len(), k.data(), v));
    }
    Ok(out)
}

/// The class a ban value holds (`None`: a value no xban writes).
pub(super) fn class_of(v: &BanValue) -> Option<BanClass> {
    match xban_common::BanClass::from_u32(v.class) {
        Some(xban_common::BanClass::Drop) => Some(BanClass::Drop),
        Some(xban_common::BanClass::Tarpit) => Some(BanClass::Tarpit),
        None => None,
    }
}

pub(super) fn key4(t: &Target) -> Key<[u8; 4]> {
    Key::new(t.prefix() as u32, t.v4_octets().expect("v4 target"))
}

pub(super) fn key6(t: &Target) -> Key<[u8; 16]> {
    Key::new(t.prefix() as u32, t.v6_octets().expect("v6 target"))
}

pub(super) fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(SyscallError { io_error, .. }) if io_error.raw_os_error() == Some(errno))
}

/// Removing what is not there is the state we want.
pub(super) fn gone_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        r => r,
    }
}

pub(super) fn ban_value(class: BanClass) -> BanValue {
    BanValue {
        class: class.to_kernel() as u32,
        flags: 0,
    }
}

/// A ban's value whose drops count for geo label `label`.
fn labelled_value(class: BanClass, label: u32) -> BanValue {
    BanValue {
        flags: label & 0xffff,
        ..ban_value(class)
    }
}

/// Ban-trie rows of `entries`, by family, for [`update_trie`].
pub(super) fn rows_by_family(
    entries: impl IntoIterator<Item = (Target, BanValue)>,
) -> (Vec<TrieRow<4>>, Vec<TrieRow<16>>) {
    let (mut rows4, mut rows6) = (Vec::new(), Vec::new());
    for (t, value) in entries {
        let len = t.prefix() as u32;
        match (t.v4_octets(), t.v6_octets()) {
            (Some(a), _) => rows4.push((len, a, value)),
            (_, Some(a)) => rows6.push((len, a, value)),
            _ => unreachable!("a target is IPv4 or IPv6"),
        }
    }
    (rows4, rows6)
}

impl XdpMaps {
    /// Open the pinned maps of a pin directory (for commands run while the
    /// agent is stopped, and for tests). The counts behind the directory and
    /// the overflow flags are read back from the maps; nothing is written.
    pub fn from_pins(pin_dir: &Path) -> Result<XdpMaps> {
        let mut maps = XdpMaps::assemble(|name: &str| open_pinned(pin_dir, name))?;
        maps.read_state()?;
        Ok(maps)
    }

    /// The maps of a freshly loaded object (pinned ones reused), with the
    /// fast maps brought in line with the ban tries: after an upgrade from
    /// an agent without them they start empty, and the program must not
    /// be swapped in before they hold every ban.
    pub(super) fn from_ebpf(
        ebpf: &mut Ebpf,
        warm: Option<super::WarmMaps>,
        capacity: usize,
    ) -> Result<XdpMaps> {
        let mut maps = XdpMaps::assemble(|name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the XDP object has no map `{name}`"))
        })?;
        maps.capacity = capacity;
        let Some(tarpit) = maps.tarpit.as_mut() else {
            bail!("the XDP object lacks the tarpit maps");
        };
        tarpit.ensure_key()?;
        maps.sync(warm)?;
        Ok(maps)
    }

    fn assemble(mut get: impl FnMut(&str) -> Result<Map>) -> Result<XdpMaps> {
        use xban_common as c;
        let tab_v4 = Table::new(get(c::MAP_TAB_V4)?, false, c::MAP_TAB_V4)?;
        let tab_v6 = Table::new(get(c::MAP_TAB_V6)?, true, c::MAP_TAB_V6)?;
        let dir_v4 = Dir::new(get(c::MAP_DIR_V4)?, false, c::MAP_DIR_V4)?;
        let dir_v6 = Dir::new(get(c::MAP_DIR_V6)?, true, c::MAP_DIR_V6)?;
        let over_v4: aya::maps::HashMap<MapData, xban_common::NetKey4, BanValue> =
            get(c::MAP_OVER_V4)?.try_into()?;
        let over_capacity = aya::maps::IterableMap::map(&over_v4)
            .info()
            .map_or(c::OVER_MAX_ENTRIES, |i| i.max_entries()) as usize;
        Ok(XdpMaps {
            allow_v4: get(c::MAP_ALLOW_V4)?.try_into()?,
            allow_v6: get(c::MAP_ALLOW_V6)?.try_into()?,
            bans_v4: get(c::MAP_BANS_V4)?.try_into()?,
            bans_v6: get(c::MAP_BANS_V6)?.try_into()?,
            tab_v4,
            tab_v6,
            over_v4,
            over_capacity,
            // Maps opened from pins (commands run while the agent is
            // stopped): as full as the maps allow.
            capacity: usize::MAX,
            over_v6: get(c::MAP_OVER_V6)?.try_into()?,
            dir_v4,
            dir_v6,
            stats: get(c::MAP_STATS)?.try_into()?,
            tarpit: crate::enforce::tarpit::TarpitMaps::assemble(&mut get).ok(),
            spilled: Default::default(),
            trie_only: Default::default(),
            in_over: [0; 2],
            in_table: [0; 2],
            warned: [0; 2],
            dir: Directory::default(),
            at_load: None,
            fill: Default::default(),
        })
    }
}

impl XdpMaps {
    pub fn set_ban(&mut self, target: &Target, class: BanClass) -> Result<()> {
        self.set_ban_labelled(target, class, 0)
    }

    /// A ban whose drops count for a geo label ([`xban_common::GEO_LABELS`]).
    pub fn set_ban_labelled(&mut self, target: &Target, class: BanClass, label: u32) -> Result<()> {
        let value = labelled_value(class, label);
        // The trie first: it is the record a restarted agent rebuilds from.
        self.trie_insert(target, value)?;
        if let Some(a) = self.at_load.as_mut() {
            a.since.insert(*target, Some(class));
        }
        self.fast_set(target, value)
    }

    /// `target` into its ban trie, as the agent's own write: held across
    /// the write, a background fill leaves the target be.
    fn trie_insert(&mut self, target: &Target, value: BanValue) -> Result<()> {
        let _held = self.fill.family(!target.is_ipv4()).touch(target);
        if target.is_ipv4() {
            self.bans_v4.insert(&key4(target), value, 0)
        } else {
            self.bans_v6.insert(&key6(target), value, 0)
        }
        .with_context(|| format!("write ban of {target} into the XDP map (is it full?)"))
    }

    /// Many bans at once (a cold start writes a million): the tries in
    /// batches, IPv4 and IPv6 on threads of their own, while this thread
    /// fills the fast maps. Each `(target, class, geo label)`. From
    /// [`fill::BACKGROUND_MIN`](super::fill) bans on, the threads go on
    /// after the return: the fast path then holds every ban, and the tries
    /// every entry the program looks up there (prefixes, and what the fast
    /// path has no room for); the tries' host entries follow (see `fill`).
    pub fn set_bans(&mut self, bans: &[(Target, BanClass, u32)]) -> Result<()> {
        // One fill at a time: a second one starts from complete tries.
        self.fill.wait();
        let (rows4, rows6) = rows_by_family(
            bans.iter()
                .map(|(t, class, label)| (*t, labelled_value(*class, *label))),
        );
        if bans.len() >= super::fill::BACKGROUND_MIN {
            return self.set_bans_filling(bans, rows4, rows6);
        }
        // Plain descriptors: the writers borrow nothing of `self`, which
        // this thread changes meanwhile. Both maps outlive the scope.
        let fd4 = aya::maps::IterableMap::map(&self.bans_v4)
            .fd()
            .as_fd()
            .as_raw_fd();
        let fd6 = aya::maps::IterableMap::map(&self.bans_v6)
            .fd()
            .as_fd()
            .as_raw_fd();
        std::thread::scope(|s| -> Result<()> {
            let v4 = s.spawn(move || update_trie::<4>(fd4, &rows4));
            let v6 = s.spawn(move || update_trie::<16>(fd6, &rows6));
            // The program finds each entry in the fast maps or, where
            // they are full, in the tries: both are complete on return.
            let fast = self.fast_set_all(bans);
            for (name, h) in [("bans_v4", v4), ("bans_v6", v6)] {
                h.join()
                    .map_err(|_| anyhow::anyhow!("the {name} writer panicked"))?
                    .with_context(|| format!("write bans into the XDP map {name} (is it full?)"))?;
            }
            fast
        })
    }

    /// The fast-map half of `set_bans`.
    fn fast_set_all(&mut self, bans: &[(Target, BanClass, u32)]) -> Result<()> {
        for (t, class, label) in bans {
            if let Some(a) = self.at_load.as_mut() {
                a.since.insert(*t, Some(*class));
            }
            self.fast_set(t, labelled_value(*class, *label))?;
        }
        Ok(())
    }

    /// `set_bans` of many: the tries' fill goes on behind the return.
    fn set_bans_filling(
        &mut self,
        bans: &[(Target, BanClass, u32)],
        rows4: Vec<TrieRow<4>>,
        rows6: Vec<TrieRow<16>>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        tracing::info!(
            entries = rows4.len() + rows6.len(),
            "ban tries: written behind the fast path (the agent is ready before they are complete)"
        );
        let dup = |trie: &MapData, name: &str| {
            trie.fd()
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("a descriptor of {name} for its fill"))
        };
        // Owned descriptors: the maps stay open for the fill whatever
        // happens to this XdpMaps meanwhile.
        let fd4 = dup(aya::maps::IterableMap::map(&self.bans_v4), "bans_v4")?;
        let fd6 = dup(aya::maps::IterableMap::map(&self.bans_v6), "bans_v6")?;
        self.spawn_fill::<4>(false, fd4, rows4, started, |len, a| {
            Target::from_v4(*a, *len).ok()
        })?;
        self.spawn_fill::<16>(true, fd6, rows6, started, |len, a| {
            Target::from_v6(*a, *len).ok()
        })?;
        self.fast_set_all(bans)?;
        // What the program looks up in the tries, there before ready: the
        // prefixes, and the bans the fast path has no room for. Written as
        // the agent's own (the fill skips them).
        for (t, class, label) in bans {
            if t.is_host() && !self.trie_only.contains_key(&Entry::of(t)) {
                continue;
            }
            self.trie_insert(t, labelled_value(*class, *label))?;
        }
        Ok(())
    }

    fn spawn_fill<const N: usize>(
        &self,
        v6: bool,
        fd: std::os::fd::OwnedFd,
        rows: Vec<TrieRow<N>>,
        started: std::time::Instant,
        target_of: fn(&u32, &[u8; N]) -> Option<Target>,
    ) -> Result<()> {
        let name = if v6 { "bans_v6" } else { "bans_v4" };
        let families = std::sync::Arc::clone(&self.fill.families);
        families[v6 as usize].begin(rows.len());
        let spawned = std::thread::Builder::new()
            .name(format!("xban-fill-{name}"))
            .spawn(move || {
                // At the agent's own priority: a chunk is written under the
                // lock the event loop's trie writes take, and a niced
                // thread preempted inside it would stall the loop for a
                // long time on a busy machine (priority inversion).
                let fam = &families[v6 as usize];
                let r = fam.fill(
                    &rows,
                    |(len, a, _)| target_of(len, a),
                    |chunk| update_trie::<N>(fd.as_raw_fd(), chunk),
                );
                fam.report(name, started, r);
                // Start-up trimmed the allocator before these rows were
                // freed: a million of them go back to the system too.
                drop(rows);
                #[cfg(target_env = "gnu")]
                // SAFETY: malloc_trim only returns free memory of glibc's arenas.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        match spawned {
            Ok(h) => {
                self.fill.adopt(h);
                Ok(())
            }
            Err(e) => {
                self.fill.family(v6).end();
                Err(e).with_context(|| format!("start the fill of {name}"))
            }
        }
    }

    pub fn remove_ban(&mut self, target: &Target) -> Result<()> {
        if let Some(a) = self.at_load.as_mut() {
            a.since.insert(*target, None);
        }
        self.fast_remove(target)?;
        // Held across the removal: a background fill never adds it back.
        let _held = self.fill.family(!target.is_ipv4()).touch(target);
        gone_ok(if target.is_ipv4() {
            self.bans_v4.remove(&key4(target))
        } else {
            self.bans_v6.remove(&key6(target))
        })
        .with_context(|| format!("remove {target} from the XDP map"))
    }

    /// Every entry of the ban tries, as the load read them (or as the
    /// restore marker vouched for them) plus what was written since; read
    /// from the kernel when that is not known (maps opened from pins, or
    /// asked a second time).
    pub fn bans_for_restore(&mut self) -> Result<KernelBans> {
        let Some(AtLoad { read, mut since }) = self.at_load.take() else {
            return Ok(KernelBans::Read(self.bans()?));
        };
        let mut read = match read {
            KernelAtLoad::Read(read) => read,
            KernelAtLoad::AsStored(extra) => return Ok(KernelBans::AsStored { extra, since }),
        };
        read.retain_mut(|(t, c)| match since.remove(t) {
            Some(Some(now)) => {
                *c = Some(now);
                true
            }
            Some(None) => false,
            None => true,
        });
        read.extend(
            since
                .into_iter()
                .filter_map(|(t, c)| c.map(|c| (t, Some(c)))),
        );
        Ok(KernelBans::Read(read))
    }

    /// Every entry of the ban tries.
    pub fn bans(&self) -> Result<Vec<(Target, Option<BanClass>)>> {
        self.fill.wait();
        Ok(self
            .trie_entries()?
            .into_iter()
            .map(|(t, v)| (t, class_of(&v)))
            .collect())
    }

    pub(super) fn allow_entries(&self) -> Result<Vec<Target>> {
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
        let have: HashSet<Target> = self.allow_entries()?.into_iter().collect();
        let want: HashSet<Target> = list.iter().copied().collect();
        for t in list {
            if t.is_ipv4() {
                self.allow_v4.insert(&key4(t), value, 0)
            } else {
                self.allow_v6.insert(&key6(t), value, 0)
            }
            .with_context(|| format!("write {t} into the XDP allowlist"))?;
        }
        // The program looks at the allowlist only where a slot says so.
        for t in want.difference(&have) {
            let slots = dir_slots(t);
            self.dir.count(!t.is_ipv4(), &slots, &Touch::Allow, true);
            self.write_slots(t, &slots);
        }
        for t in have.difference(&want) {
            let r = if t.is_ipv4() {
                self.allow_v4.remove(&key4(t))
            } else {
                self.allow_v6.remove(&key6(t))
            };
            r.with_context(|| format!("remove {t} from the XDP allowlist"))?;
            let slots = dir_slots(t);
            self.dir.count(!t.is_ipv4(), &slots, &Touch::Allow, false);
            self.write_slots(t, &slots);
        }
        Ok(())
    }

    pub fn allowlist(&self) -> Result<Vec<Target>> {
        self.allow_entries()
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats> {
        let mut s = stats_of(&self.stats)?;
        if let Some(t) = &self.tarpit {
            s.tarpit = t.stats()?;
        }
        Ok(s)
    }

    /// Does the XDP program see `ip` as banned (longest-prefix match)?
    pub fn lookup(&self, ip: IpAddr) -> Option<BanClass> {
        self.fill.wait();
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

/// A map's `memlock` as the kernel reports it in the fd's fdinfo: for the
/// ban tries and the overflow hashes, their entry count times the size of
/// one, so any entry added or removed changes it.
pub(super) fn memlock(map: &MapData) -> Result<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock in {path}"))
}

pub(super) fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "open pinned map {} (is the agent set up? run `xban run` once)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
}

pub(super) fn stats_of(map: &PerCpuArray<MapData, u64>) -> Result<XdpStats> {
    let mut c = [0u64; stats::COUNT as usize];
    for (i, slot) in c.iter_mut().enumerate() {
        let per_cpu = map.get(&(i as u32), 0).context("read XDP stats")?;
        *slot = per_cpu.iter().sum();
    }
    Ok(XdpStats::from_counters(&c))
}

/// The XDP counters of a pin directory, needing only the `stats` map (so
/// that it also reads a pin directory an older agent left).
pub fn stats_from_pins(pin_dir: &Path) -> Result<XdpStats> {
    let map: PerCpuArray<MapData, u64> =
        open_pinned(pin_dir, xban_common::MAP_STATS)?.try_into()?;
    let mut s = stats_of(&map)?;
    if let Ok(m) = open_pinned(pin_dir, xban_common::tarpit::MAP_STATS) {
        let m: PerCpuArray<MapData, u64> = m.try_into()?;
        s.tarpit = crate::enforce::tarpit::stats_of(&m)?;
    }
    Ok(s)
}
