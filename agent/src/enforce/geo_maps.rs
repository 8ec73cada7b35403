//! The XDP maps behind per-country drop counts: each geo ban prefix with
//! its label (country or AS) in `geo_v4`/`geo_v6`, and per-CPU counters per
//! label in `geo_drops`. Counting only; the bans themselves are ordinary
//! entries of the ban maps.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues};
use xban_common::{GeoValue, GEO_LABELS};

use crate::addr::Target;

pub struct GeoMaps {
    v4: LpmTrie<MapData, [u8; 4], GeoValue>,
    v6: LpmTrie<MapData, [u8; 16], GeoValue>,
    on: Array<MapData, u32>,
    drops: PerCpuArray<MapData, u64>,
    /// What the tries hold now.
    written: HashMap<Target, u32>,
}

fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("open pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
}

impl GeoMaps {
    /// The maps the XDP program pinned at load. Counters start at zero:
    /// labels are numbered afresh by each agent.
    pub fn open(pin_dir: &Path) -> Result<GeoMaps> {
        use xban_common as c;
        let mut m = GeoMaps {
            v4: open(pin_dir, c::MAP_GEO_V4)?.try_into()?,
            v6: open(pin_dir, c::MAP_GEO_V6)?.try_into()?,
            on: open(pin_dir, c::MAP_GEO_ON)?.try_into()?,
            drops: open(pin_dir, c::MAP_GEO_DROPS)?.try_into()?,
            written: HashMap::new(),
        };
        m.reset()?;
        Ok(m)
    }

    fn reset(&mut self) -> Result<()> {
        let stale: Vec<Key<[u8; 4]>> = self.v4.keys().filter_map(|k| k.ok()).collect();
        for k in stale {
            let _ = self.v4.remove(&k);
        }
        let stale: Vec<Key<[u8; 16]>> = self.v6.keys().filter_map(|k| k.ok()).collect();
        for k in stale {
            let _ = self.v6.remove(&k);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for i in 0..GEO_LABELS {
            let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
            self.drops.set(i, zero, 0).context("reset geo_drops")?;
        }
        self.on.set(0, 0, 0).context("write geo_on")?;
        Ok(())
    }

    /// Make the tries hold exactly `entries` (prefix, label).
    pub fn sync(&mut self, entries: &[(Target, u32)]) -> Result<()> {
        let want: HashMap<Target, u32> = entries.iter().copied().collect();
        for (t, label) in &want {
            if self.written.get(t) == Some(label) {
                continue;
            }
            let v = GeoValue { label: *label };
            match (t.v4_octets(), t.v6_octets()) {
                (Some(a), _) => self.v4.insert(&Key::new(u32::from(t.prefix()), a), v, 0),
                (_, Some(a)) => self.v6.insert(&Key::new(u32::from(t.prefix()), a), v, 0),
                _ => continue,
            }
            .with_context(|| format!("write {t} into the geo label map"))?;
        }
        let gone: Vec<Target> = self
            .written
            .keys()
            .filter(|t| !want.contains_key(t))
            .copied()
            .collect();
        for t in gone {
            let _ = match (t.v4_octets(), t.v6_octets()) {
                (Some(a), _) => self.v4.remove(&Key::new(u32::from(t.prefix()), a)),
                (_, Some(a)) => self.v6.remove(&Key::new(u32::from(t.prefix()), a)),
                _ => continue,
            };
        }
        self.on
            .set(0, u32::from(!want.is_empty()), 0)
            .context("write geo_on")?;
        self.written = want;
        Ok(())
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
