//! The fast maps as this process sees them: array maps created with
//! BPF_F_MMAPABLE, mapped here and written with single atomic word stores
//! while the program reads them. What the words mean is
//! `xban_common::fastpath`'s.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};
use xban_common::fastpath::{self, Words};
use xban_common::BanValue;

use super::fastpath::Entry;

/// An array map (created with BPF_F_MMAPABLE) mapped into this process,
/// as u64 words. The program reads it concurrently, so every word is
/// written with one atomic store.
pub(super) struct Mapped {
    /// Keeps the map (and the mapping's backing) alive.
    map: MapData,
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
            map: data,
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

    /// A checksum of every word (the restore marker's).
    pub(super) fn checksum(&self) -> u64 {
        (0..self.bytes / 8).fold(0u64, |h, i| {
            (h ^ self.word(i).load(Ordering::Relaxed))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29)
        })
    }

    pub(super) fn map(&self) -> &MapData {
        &self.map
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

/// A bucket table (`tab_v4` / `tab_v6`), laid out as
/// `xban_common::fastpath` says.
pub(super) struct Table {
    mem: Mapped,
    v6: bool,
}

/// One bucket of a [`Table`], read word by word (each an acquire load) by
/// the codec.
pub(super) struct Bucket<'a> {
    table: &'a Table,
    /// Index of the bucket's first word in the table.
    base: usize,
}

impl Words for Bucket<'_> {
    fn word(&self, i: usize) -> u64 {
        self.table.word(self.base + i).load(Ordering::Acquire)
    }
}

impl Bucket<'_> {
    /// Make the codec's stores, in its order, each a release store.
    fn store(&self, stores: &[(usize, u64)]) {
        for &(i, w) in stores {
            self.table.word(self.base + i).store(w, Ordering::Release);
        }
    }
}

impl Table {
    pub(super) fn new(map: Map, v6: bool, name: &str) -> Result<Table> {
        let bytes = xban_common::TAB_BUCKETS as usize * fastpath::bucket_words(v6) * 8;
        Ok(Table {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.mem.word(i)
    }

    pub(super) fn mapped(&self) -> &Mapped {
        &self.mem
    }

    fn bucket(&self, bucket: u32) -> Bucket<'_> {
        Bucket {
            table: self,
            base: bucket as usize * fastpath::bucket_words(self.v6),
        }
    }

    pub(super) fn overflow(&self, bucket: u32) -> &AtomicU64 {
        self.word(self.bucket(bucket).base + fastpath::OVERFLOW_WORD)
    }

    /// The way holding `e`, and its class.
    pub(super) fn find(&self, e: &Entry) -> Option<(usize, u32)> {
        fastpath::find_way(&self.bucket(e.bucket()), e)
    }

    pub(super) fn free_way(&self, e: &Entry) -> Option<usize> {
        fastpath::free_way(&self.bucket(e.bucket()), self.v6)
    }

    /// Writes `e` with its value (class, geo label) into way `i` (free, or
    /// already holding `e`).
    pub(super) fn put(&self, e: &Entry, i: usize, value: BanValue) {
        let (class, label) = (value.class, value.flags & 0xffff);
        let b = self.bucket(e.bucket());
        b.store(fastpath::put_way(&b, e, i, class, label).as_slice());
    }

    pub(super) fn clear(&self, e: &Entry, i: usize) {
        let b = self.bucket(e.bucket());
        b.store(&[fastpath::clear_way(&b, self.v6, i)]);
    }

    /// Every entry in the table, with its class.
    pub(super) fn entries(&self) -> Vec<(Entry, u32)> {
        let mut out = Vec::new();
        self.for_each(|e, class| out.push((e, class)));
        out
    }

    /// Each entry in the table with its class, in table order.
    pub(super) fn for_each(&self, mut f: impl FnMut(Entry, u32)) {
        for b in 0..xban_common::TAB_BUCKETS {
            let bucket = self.bucket(b);
            for i in 0..fastpath::ways(self.v6) {
                if let Some((e, class)) = fastpath::way_entry(&bucket, self.v6, i) {
                    f(e, class);
                }
            }
        }
    }
}

/// A directory (`dir_v4`: nets, allow; `dir_v6`: nets[0], nets[1], allow).
pub(super) struct Dir {
    mem: Mapped,
    v6: bool,
}

impl Dir {
    pub(super) fn new(map: Map, v6: bool, name: &str) -> Result<Dir> {
        let bytes = xban_common::DIR_SLOTS as usize * fastpath::dir_words(v6) * 8;
        Ok(Dir {
            mem: Mapped::new(map, name, bytes)?,
            v6,
        })
    }

    /// Writes slot `slot` (words that change only).
    pub(super) fn set(&self, slot: u32, nets: [u64; 2], allow: u64) {
        let (words, n) = fastpath::dir_slot(self.v6, nets, allow);
        let base = slot as usize * n;
        for (i, &w) in words[..n].iter().enumerate() {
            self.mem.set(base + i, w);
        }
    }
}
