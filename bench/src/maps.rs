//! The bench's writer of the agent's ban maps: bans written straight into
//! the maps a pin directory holds, the way the agent's `set_ban` writes
//! them (the control socket is far too slow for a million bans). Bucket and
//! directory words come from xban-common's fast-table codec, which the agent
//! uses too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use xban_common::fastpath::{self, FastKey, NeBytes, Words};
use xban_lab::run_cmd;

use crate::bpf::BpfMap;

/// The ban maps of a pin directory, written the way the agent's `set_ban`
/// writes them: every ban into the `bans_*` trie and, where the fast maps
/// exist (agents since the exact-match table), into `tab_*` (or `over_*`
/// when its bucket is full) with prefix lengths listed in `dir_*`. Older pin
/// directories have the tries only.
pub(crate) struct BanMaps {
    pin_dir: PathBuf,
    bans: [BpfMap; 2],
    fast: Option<FastMaps>,
}

struct FastMaps {
    tab: [BpfMap; 2],
    over: [BpfMap; 2],
    dir: [BpfMap; 2],
}

const V4: usize = 0;
const V6: usize = 1;

impl BanMaps {
    pub(crate) fn open(pin_dir: &Path) -> Result<BanMaps> {
        use xban_common as c;
        let open = |name: &str| BpfMap::open(&pin_dir.join(name));
        let fast = if pin_dir.join(c::MAP_TAB_V4).exists() {
            Some(FastMaps {
                tab: [open(c::MAP_TAB_V4)?, open(c::MAP_TAB_V6)?],
                over: [open(c::MAP_OVER_V4)?, open(c::MAP_OVER_V6)?],
                dir: [open(c::MAP_DIR_V4)?, open(c::MAP_DIR_V6)?],
            })
        } else {
            None
        };
        Ok(BanMaps {
            pin_dir: pin_dir.to_path_buf(),
            bans: [open(c::MAP_BANS_V4)?, open(c::MAP_BANS_V6)?],
            fast,
        })
    }

    pub(crate) fn layout(&self) -> &'static str {
        if self.fast.is_some() {
            "bans_v4/v6 LPM tries (the record, what bpftool shows) + tab_v4/v6 exact-match bucket tables (inlined array lookups) + over_v4/v6 overflow hashes + dir_v4/v6 region directories; the XDP program reads the last three"
        } else {
            "bans_v4/v6 LPM tries only, read by the XDP program"
        }
    }

    pub(crate) fn ban(&self, addr: &[u8], prefix_len: u32, class: u32) -> Result<()> {
        self.ban_labelled(addr, prefix_len, class, 0)
    }

    /// As the agent writes a geo rule's entry: with its country's label.
    pub(crate) fn ban_labelled(
        &self,
        addr: &[u8],
        prefix_len: u32,
        class: u32,
        label: u32,
    ) -> Result<()> {
        let fam = if addr.len() == 4 { V4 } else { V6 };
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&class.to_ne_bytes());
        value[4..].copy_from_slice(&label.to_ne_bytes());
        let mut trie_key = prefix_len.to_ne_bytes().to_vec();
        trie_key.extend_from_slice(addr);
        self.bans[fam]
            .update(&trie_key, &value)
            .with_context(|| format!("write {addr:?}/{prefix_len} into bans"))?;
        let Some(fast) = &self.fast else {
            return Ok(());
        };
        // The bucket, read, changed and written back whole: nothing reads the
        // maps while the bench fills them.
        let v6 = fam == V6;
        let key = if v6 {
            FastKey::v6(addr.try_into().expect("16 bytes"), prefix_len)
        } else {
            FastKey::v4(addr.try_into().expect("4 bytes"), prefix_len)
        };
        let bucket = key.bucket();
        let mut b = vec![0u8; fastpath::bucket_words(v6) * 8];
        fast.tab[fam].lookup(&bucket.to_ne_bytes(), &mut b)?;
        let way = fastpath::find_way(&NeBytes(&b), &key)
            .map(|(i, _)| i)
            .or_else(|| fastpath::free_way(&NeBytes(&b), v6));
        match way {
            Some(i) => {
                let stores = fastpath::put_way(&NeBytes(&b), &key, i, class, label);
                for &(w, v) in stores.as_slice() {
                    fastpath::set_ne_word(&mut b, w, v);
                }
            }
            None => {
                fast.over[fam]
                    .update(&trie_key, &value)
                    .context("write into the overflow hash")?;
                fastpath::set_ne_word(&mut b, fastpath::OVERFLOW_WORD, 1);
            }
        }
        fast.tab[fam].update(&bucket.to_ne_bytes(), &b)?;
        if prefix_len as usize != addr.len() * 8 {
            self.list_length(fam, addr, prefix_len)?;
        }
        Ok(())
    }

    /// Lists a prefix's length in the directory slots of its regions.
    /// Add-only, so the bit is ORed in; the agent keeps counts because it
    /// also removes. The fill never touches the regions of the entries the
    /// agent itself wrote (the probes).
    fn list_length(&self, fam: usize, addr: &[u8], len: u32) -> Result<()> {
        let dirs = &self.fast.as_ref().expect("fast maps").dir;
        let slots: Vec<u32> = if fam == V4 {
            xban_common::dir_slots_v4(addr.try_into().unwrap(), len).collect()
        } else {
            match xban_common::dir_regions_v6(addr.try_into().unwrap(), len) {
                None => (0..xban_common::DIR_SLOTS).collect(),
                Some(r) => r.map(xban_common::dir_slot_v6).collect(),
            }
        };
        let (i, bit) = fastpath::dir_len_bit(len);
        for slot in slots {
            let mut v = vec![0u8; fastpath::dir_words(fam == V6) * 8];
            dirs[fam].lookup(&slot.to_ne_bytes(), &mut v)?;
            let w = NeBytes(&v).word(i) | bit;
            fastpath::set_ne_word(&mut v, i, w);
            dirs[fam].update(&slot.to_ne_bytes(), &v)?;
        }
        Ok(())
    }

    /// Kernel memory of one family's ban maps, as `bpftool map show` reports.
    pub(crate) fn memlock(&self, v4: bool) -> Result<u64> {
        let suffix = if v4 { "v4" } else { "v6" };
        let mut total = 0;
        for name in ["bans", "tab", "over", "dir"] {
            let path = self.pin_dir.join(format!("{name}_{suffix}"));
            if !path.exists() {
                continue;
            }
            let json = run_cmd(
                Command::new("bpftool")
                    .args(["-j", "map", "show", "pinned"])
                    .arg(&path),
            )?;
            let v: serde_json::Value = serde_json::from_str(&json)?;
            total += v["bytes_memlock"].as_u64().unwrap_or(0);
        }
        Ok(total)
    }
}
