//! The fast maps as this process sees them: array maps created with
//! BPF_F_MMAPABLE, mapped here and written with single atomic word stores
//! while the program reads them. What the words mean is
//! `xban_common::fastpath`'s.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};
use xban_common::BanValue;

use super::fastpath::Entry;

/// An array map (created with BPF_F_MMAPABLE) mapped into this process,
/// as u64 words. The program reads it concurrently, so every word is
/// written with one atomic store.
pub(super) struct Mapped {
    /// Keeps the map (and the mapping's backing) alive.
    _map: MapData,
    base: *mut u64,
    bytes: usize,
}

// SAFETY: the mapping is owned by the Mapped and only touched through
// atomics; moving it to another thread is fine.
unsafe impl Send for Mapped {}

impl Mapped {
    pub(super) fn new(map: Map, name: &str, bytes: usize) -> Result<Mapped> {
        let Map::Array(data) = map else {
            bail!(
                "map {name} is not an array: run `xban teardown` to clear maps an older xban left"
            );
        };
        // SAFETY: a fresh shared mapping of the map's values (the kernel checks
        // the size against the map); unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("map the XDP map {name} into memory (created without BPF_F_MMAPABLE by another xban? run `xban teardown`)")
            });
        }
        Ok(Mapped {
            _map: data,
            base: base.cast(),
            bytes,
        })
    }

    pub(super) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.bytes / 8);
        // SAFETY: in bounds (checked), 8-aligned (page-aligned base), and
        // valid while self lives.
        unsafe { AtomicU64::from_ptr(self.base.add(i)) }
    }

    /// Stores `v` unless the word already holds it.
    pub(super) fn set(&self, i: usize, v: u64) {
        let w = self.word(i);
        if w.load(Ordering::Acquire) != v {
            w.store(v, Ordering::Release);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Mapped::new, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// A bucket table (`tab_v4` / `tab_v6`), laid out as `xban_common` says.
pub(super) struct Table {
    mem: Mapped,
    v6: bool,
}

pub(super) const V4_BUCKET_WORDS: usize = std::mem::size_of::<xban_common::TabBucketV4>() / 8;
pub(super) const V6_BUCKET_WORDS: usize = std::mem::size_of::<xban_common::TabBucketV6>() / 8;

impl Table {
    pub(super) fn new(map: Map, v6: bool, name: &str) -> Result<Table> {
        let words = if v6 { V6_BUCKET_WORDS } else { V4_BUCKET_WORDS };
        let bytes = xban_common::TAB_BUCKETS as usize * words * 8;
        Ok(Table {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    pub(super) fn word(&self, i: usize) -> &AtomicU64 {
        self.mem.word(i)
    }

    pub(super) fn bucket_words(&self) -> usize {
        if self.v6 {
            V6_BUCKET_WORDS
        } else {
            V4_BUCKET_WORDS
        }
    }

    pub(super) fn ways(&self) -> usize {
        if self.v6 {
            xban_common::TAB_V6_WAYS
        } else {
            xban_common::TAB_V4_WAYS
        }
    }

    /// Word index of way `i` of `bucket` (for IPv6, of its `hi` word).
    pub(super) fn way(&self, bucket: u32, i: usize) -> usize {
        let base = bucket as usize * self.bucket_words() + 1;
        if self.v6 {
            base + 3 * i
        } else {
            base + i
        }
    }

    pub(super) fn overflow(&self, bucket: u32) -> &AtomicU64 {
        self.word(bucket as usize * self.bucket_words())
    }

    /// The way holding `e`, and its class.
    pub(super) fn find(&self, e: &Entry) -> Option<(usize, u32)> {
        let b = e.bucket();
        (0..self.ways()).find_map(|i| self.read(b, i, e).map(|c| (i, c)))
    }

    /// The class in way `i` of bucket `b` if it holds `e`.
    pub(super) fn read(&self, b: u32, i: usize, e: &Entry) -> Option<u32> {
        let w = self.way(b, i);
        match *e {
            Entry::V4 { addr, len } => xban_common::tab_match_v4(
                self.word(w).load(Ordering::Acquire),
                xban_common::tab_key_v4(addr, len),
            ),
            Entry::V6 { hi, lo, len } => {
                let meta = self.word(w + 2).load(Ordering::Acquire);
                let same = self.word(w).load(Ordering::Relaxed) == hi
                    && self.word(w + 1).load(Ordering::Relaxed) == lo;
                xban_common::tab_meta_match_v6(meta, len).filter(|_| same)
            }
        }
    }

    pub(super) fn free_way(&self, e: &Entry) -> Option<usize> {
        let b = e.bucket();
        (0..self.ways()).find(|&i| {
            let w = self.way(b, i);
            if self.v6 {
                xban_common::tab_meta_free_v6(self.word(w + 2).load(Ordering::Acquire))
            } else {
                self.word(w).load(Ordering::Acquire) >> 40 == 0
            }
        })
    }

    /// Writes `e` with its value (class, geo label) into way `i` (free, or
    /// already holding `e`).
    pub(super) fn put(&self, e: &Entry, i: usize, value: BanValue) {
        let (class, label) = (value.class, value.flags & 0xffff);
        let w = self.way(e.bucket(), i);
        match *e {
            Entry::V4 { addr, len } => self.word(w).store(
                xban_common::tab_way_v4_labelled(addr, len, class, label),
                Ordering::Release,
            ),
            Entry::V6 { hi, lo, len } => {
                let meta = self.word(w + 2).load(Ordering::Acquire);
                let version = xban_common::tab_meta_version_v6(meta);
                // A new key: address first (the way still reads as free),
                // then meta with a new version. The same key: meta only.
                let version = if xban_common::tab_meta_free_v6(meta) {
                    self.word(w).store(hi, Ordering::Relaxed);
                    self.word(w + 1).store(lo, Ordering::Relaxed);
                    version.wrapping_add(1)
                } else {
                    version
                };
                self.word(w + 2).store(
                    xban_common::tab_meta_v6_labelled(len, class, version, label),
                    Ordering::Release,
                );
            }
        }
    }

    pub(super) fn clear(&self, e: &Entry, i: usize) {
        let w = self.way(e.bucket(), i);
        if self.v6 {
            let version =
                xban_common::tab_meta_version_v6(self.word(w + 2).load(Ordering::Acquire));
            // Free, with a new version: a reader halfway through sees it changed.
            self.word(w + 2)
                .store((version.wrapping_add(1) as u64) << 32, Ordering::Release);
        } else {
            self.word(w).store(0, Ordering::Release);
        }
    }

    /// Every entry in the table, with its class.
    pub(super) fn entries(&self) -> Vec<(Entry, u32)> {
        let mut out = Vec::new();
        for b in 0..xban_common::TAB_BUCKETS {
            for i in 0..self.ways() {
                let w = self.way(b, i);
                if self.v6 {
                    let meta = self.word(w + 2).load(Ordering::Acquire);
                    if xban_common::tab_meta_free_v6(meta) {
                        continue;
                    }
                    let len = ((meta >> 8) & 0xff) as u32;
                    if let Some(c) = xban_common::tab_meta_match_v6(meta, len) {
                        let hi = self.word(w).load(Ordering::Relaxed);
                        let lo = self.word(w + 1).load(Ordering::Relaxed);
                        out.push((Entry::V6 { hi, lo, len }, c));
                    }
                } else {
                    let way = self.word(w).load(Ordering::Acquire);
                    let (addr, len) = (way as u32, ((way >> 32) & 0xff) as u32);
                    if let Some(c) =
                        xban_common::tab_match_v4(way, xban_common::tab_key_v4(addr, len))
                    {
                        out.push((Entry::V4 { addr, len }, c));
                    }
                }
            }
        }
        out
    }
}

/// A directory (`dir_v4`: nets, allow; `dir_v6`: nets[0], nets[1], allow).
pub(super) struct Dir {
    mem: Mapped,
    v6: bool,
}

impl Dir {
    pub(super) fn new(map: Map, v6: bool, name: &str) -> Result<Dir> {
        let words = if v6 { 3 } else { 2 };
        let bytes = xban_common::DIR_SLOTS as usize * words * 8;
        Ok(Dir {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    /// Writes slot `slot` (words that change only).
    pub(super) fn set(&self, slot: u32, nets: [u64; 2], allow: u64) {
        let s = slot as usize;
        if self.v6 {
            self.mem.set(3 * s, nets[0]);
            self.mem.set(3 * s + 1, nets[1]);
            self.mem.set(3 * s + 2, allow);
        } else {
            self.mem.set(2 * s, nets[0]);
            self.mem.set(2 * s + 1, allow);
        }
    }
}
