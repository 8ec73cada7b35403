//! A warm start without reading the ban tries back: at a clean stop the
//! agent records a fingerprint of its maps (beside the database, see
//! `store::marker`); at the next load, if the maps still give the same
//! fingerprint, the fast maps are read (cheap: mapped tables and a batched
//! read of the overflow hashes) and the tries are taken to hold what the
//! store held at the stop, which restore then merges as usual.
//!
//! The fingerprint: map ids (a map deleted and created again has another),
//! the tries' and overflow hashes' `memlock` (their entry counts: an entry
//! added or deleted with bpftool shows), checksums of the bucket tables and
//! of the overflow entries, and the fast path's counts. An edit of a ban
//! trie that keeps its entry count (a value changed in place, or one entry
//! deleted and another added) is not seen; the program reads the tries only
//! in fallback regions, and a marker is only written when there are none.

use anyhow::Result;
use aya::maps::IterableMap;

use super::fastpath::EntryExt;
use super::maps::memlock;
use super::{AtLoad, KernelAtLoad, XdpMaps};
use crate::addr::Target;

/// Layout of the fingerprint, bumped when what it holds changes.
const FINGERPRINT_VERSION: u64 = 1;

/// What a clean stop recorded of the maps, handed to the next load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmMaps {
    pub fingerprint: Vec<u64>,
    /// Kernel entries the store does not hold (see `KernelBans::AsStored`).
    pub extra: Vec<Target>,
    /// The program the stop left loaded (see `program::ProgramMark`).
    pub program: Option<super::ProgramMark>,
}

fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

impl XdpMaps {
    /// The maps as they are now, for the restore marker: equal at stop and
    /// at the next load only if nothing wrote the ban maps in between.
    pub(super) fn fingerprint(&self) -> Result<Vec<u64>> {
        // Of complete tries only (their memlock counts their entries); after
        // a fill that stopped short the next start reads them back.
        self.fill.wait();
        anyhow::ensure!(
            !self.fill.stopped_short(),
            "a ban trie's fill stopped short"
        );
        let id = |m: &aya::maps::MapData| -> Result<u64> { Ok(m.info()?.id() as u64) };
        let mut out = vec![
            FINGERPRINT_VERSION,
            id(self.bans_v4.map())?,
            id(self.bans_v6.map())?,
            id(self.over_v4.map())?,
            id(self.over_v6.map())?,
            id(self.tab_v4.mapped().map())?,
            id(self.tab_v6.mapped().map())?,
            memlock(self.bans_v4.map())?,
            memlock(self.bans_v6.map())?,
            memlock(self.over_v4.map())?,
            memlock(self.over_v6.map())?,
            self.tab_v4.mapped().checksum(),
            self.tab_v6.mapped().checksum(),
        ];
        // Order-free: a hash map's batches come in bucket order.
        let mut over = [0u64; 2];
        for (e, v) in self.over_rows()? {
            let key = match e {
                super::fastpath::Entry::V4 { addr, len } => mix(mix(1, addr as u64), len as u64),
                super::fastpath::Entry::V6 { hi, lo, len } => mix(mix(mix(2, hi), lo), len as u64),
            };
            let sum = &mut over[e.v6() as usize];
            *sum = sum.wrapping_add(mix(mix(key, v.class as u64), v.flags as u64));
        }
        out.extend(over);
        out.extend(self.in_table.map(|n| n as u64));
        out.extend(self.in_over.map(|n| n as u64));
        Ok(out)
    }

    /// Targets the fast path holds (the tries hold the same when there
    /// are no trie-only entries).
    pub fn entry_count(&self) -> usize {
        let st = self.fast_path_status();
        [st.v4, st.v6]
            .iter()
            .map(|f| f.table_entries + f.overflow_entries + f.trie_only)
            .sum()
    }

    /// At a clean stop: the fingerprint, when the fast path holds every
    /// ban the agent has (`book_targets`) and none is in a trie only (the
    /// next load rebuilds its counts from the fast maps alone).
    pub fn stop_fingerprint(&self, book_targets: usize) -> Option<Vec<u64>> {
        let st = self.fast_path_status();
        if st.v4.trie_only + st.v6.trie_only > 0 || self.entry_count() != book_targets {
            return None;
        }
        self.fingerprint().ok()
    }

    /// At load, with the marker a clean stop left: `true` when the maps
    /// still match it, the counts rebuilt from the fast maps and restore
    /// told to take the stored bans as the kernel's.
    pub(super) fn sync_warm(&mut self, warm: WarmMaps) -> Result<bool> {
        self.read_fast(false)?;
        if self.fingerprint()? != warm.fingerprint {
            tracing::info!(
                "warm start: the pinned ban maps changed since the last clean stop; reading them back"
            );
            return Ok(false);
        }
        tracing::info!(
            "warm start: the pinned ban maps are as the last clean stop left them; the ban tries are not read back"
        );
        self.at_load = Some(AtLoad {
            read: KernelAtLoad::AsStored(warm.extra),
            since: Default::default(),
        });
        Ok(true)
    }
}
