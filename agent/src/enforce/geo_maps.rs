//! Per-country drop counts: a geo rule's ban entries carry a label (the
//! index of their country or AS) in the ban maps, and the XDP program counts
//! each packet such an entry drops in the per-CPU `geo_drops` array.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use xban_common::GEO_LABELS;

use crate::addr::Target;

pub struct GeoMaps {
    drops: PerCpuArray<MapData, u64>,
    /// The label of each geo ban entry, written with the entry.
    pub labels: HashMap<Target, u32>,
}

impl GeoMaps {
    /// The counters the XDP program pinned at load, zeroed: labels are
    /// numbered afresh by each agent (and its entries rewritten at start).
    pub fn open(pin_dir: &Path) -> Result<GeoMaps> {
        let path = pin_dir.join(xban_common::MAP_GEO_DROPS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("open pinned map {}", path.display()))?;
        let map =
            Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))?;
        let mut drops: PerCpuArray<MapData, u64> = map.try_into()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for i in 0..GEO_LABELS {
            let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
            drops.set(i, zero, 0).context("reset geo_drops")?;
        }
        Ok(GeoMaps {
            drops,
            labels: HashMap::new(),
        })
    }

    /// Dropped packets of labels `0..labels`, summed over CPUs.
    pub fn drops(&self, labels: u32) -> Result<Vec<u64>> {
        (0..labels.min(GEO_LABELS))
            .map(|i| {
                self.drops
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .context("read geo_drops")
            })
            .collect()
    }
}
