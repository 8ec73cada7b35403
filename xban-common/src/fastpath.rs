//! The fast tables' codec: how an entry is keyed and hashed to a `tab_*`
//! bucket, where each way and the overflow flag sit among a bucket's u64
//! words, how a way is read, found, written and cleared, and how a `dir_*`
//! slot's words are laid out. Pure functions over words (`[u64]`, a byte
//! buffer through [`NeBytes`], or any [`Words`]), so that the agent (which
//! writes through a shared mapping) and the benchmark (which writes whole
//! buckets through `bpf(2)`) compute exactly what the XDP program reads
//! through [`TabBucketV4`], [`TabBucketV6`], [`DirV4`] and [`DirV6`]; the
//! word offsets are checked against those structs at compile time.

use core::mem::{offset_of, size_of};

use crate::{
    tab_bucket_v4, tab_bucket_v6, tab_key_v4, tab_match_v4, tab_meta_free_v6, tab_meta_match_v6,
    tab_meta_v6_labelled, tab_meta_version_v6, tab_way_v4_labelled, DirV4, DirV6, TabBucketV4,
    TabBucketV6, TabWayV6, TAB_V4_WAYS, TAB_V6_WAYS,
};

/// Bans per family the fast path holds by default (`[agent]
/// fast_path_capacity`): about what the bucket table and an overflow hash of
/// [`crate::OVER_MAX_ENTRIES`] hold for random IPv6 hosts.
pub const DEFAULT_CAPACITY: u32 = 1_200_000;
/// The least and the most `fast_path_capacity` may be (the most: what each
/// ban trie holds, [`crate::BANS_MAX_ENTRIES`]).
pub const MIN_CAPACITY: u32 = 1_000;
pub const MAX_CAPACITY: u32 = crate::BANS_MAX_ENTRIES;

/// Entries of each overflow hash for a fast-path capacity: the default
/// size, plus one per ban of capacity beyond the default (the bucket table
/// is fixed, so every extra ban may need an overflow entry). The hash is
/// allocated as it fills; its bucket array (16 bytes per entry of this
/// size) is not.
pub const fn over_max_entries(capacity: u32) -> u32 {
    crate::OVER_MAX_ENTRIES + capacity.saturating_sub(DEFAULT_CAPACITY)
}

/// u64 words in a `tab_v4` bucket.
pub const V4_BUCKET_WORDS: usize = size_of::<TabBucketV4>() / 8;
/// u64 words in a `tab_v6` bucket.
pub const V6_BUCKET_WORDS: usize = size_of::<TabBucketV6>() / 8;
/// The bucket's `overflow` word (non-zero: look in `over_*` too).
pub const OVERFLOW_WORD: usize = 0;
/// u64 words in a `dir_v4` slot (`nets`, `allow`).
pub const DIR_V4_WORDS: usize = size_of::<DirV4>() / 8;
/// u64 words in a `dir_v6` slot (`nets[0]`, `nets[1]`, `allow`).
pub const DIR_V6_WORDS: usize = size_of::<DirV6>() / 8;

// The word offsets below are the structs' field offsets, as the program
// reads them.
const _: () = {
    assert!(offset_of!(TabBucketV4, overflow) == OVERFLOW_WORD * 8);
    assert!(offset_of!(TabBucketV4, ways) == 8);
    assert!(offset_of!(TabBucketV6, overflow) == OVERFLOW_WORD * 8);
    assert!(offset_of!(TabBucketV6, ways) == 8);
    assert!(size_of::<TabWayV6>() == 24);
    assert!(offset_of!(TabWayV6, hi) == 0);
    assert!(offset_of!(TabWayV6, lo) == 8);
    assert!(offset_of!(TabWayV6, meta) == 16);
    assert!(offset_of!(DirV4, nets) == 0 && offset_of!(DirV4, allow) == 8);
    assert!(offset_of!(DirV6, nets) == 0 && offset_of!(DirV6, allow) == 16);
};

/// A ban as the fast tables key it: the address bytes (masked to `len`) as
/// native-endian words, as the program loads them from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FastKey {
    V4 { addr: u32, len: u32 },
    V6 { hi: u64, lo: u64, len: u32 },
}

impl FastKey {
    /// An IPv4 entry: address bytes (masked to `len`) and prefix length.
    pub fn v4(octets: [u8; 4], len: u32) -> FastKey {
        FastKey::V4 {
            addr: u32::from_ne_bytes(octets),
            len,
        }
    }

    /// An IPv6 entry: address bytes (masked to `len`) and prefix length.
    pub fn v6(octets: [u8; 16], len: u32) -> FastKey {
        let (hi, lo) = octets.split_at(8);
        FastKey::V6 {
            hi: u64::from_ne_bytes(hi.try_into().expect("8 bytes")),
            lo: u64::from_ne_bytes(lo.try_into().expect("8 bytes")),
            len,
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, FastKey::V6 { .. })
    }

    pub fn prefix_len(&self) -> u32 {
        match *self {
            FastKey::V4 { len, .. } | FastKey::V6 { len, .. } => len,
        }
    }

    /// A single address (/32, /128), which the program always probes.
    pub fn is_host(&self) -> bool {
        matches!(
            *self,
            FastKey::V4 { len: 32, .. } | FastKey::V6 { len: 128, .. }
        )
    }

    /// The `tab_*` bucket the entry belongs in.
    pub fn bucket(&self) -> u32 {
        match *self {
            FastKey::V4 { addr, len } => tab_bucket_v4(addr, len),
            FastKey::V6 { hi, lo, len } => tab_bucket_v6(hi, lo, len),
        }
    }

    /// The address bytes of an IPv4 key.
    pub fn v4_octets(&self) -> Option<[u8; 4]> {
        match *self {
            FastKey::V4 { addr, .. } => Some(addr.to_ne_bytes()),
            FastKey::V6 { .. } => None,
        }
    }

    /// The address bytes of an IPv6 key.
    pub fn v6_octets(&self) -> Option<[u8; 16]> {
        match *self {
            FastKey::V6 { hi, lo, .. } => {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&hi.to_ne_bytes());
                a[8..].copy_from_slice(&lo.to_ne_bytes());
                Some(a)
            }
            FastKey::V4 { .. } => None,
        }
    }
}

/// Words of one bucket or slot, by index from its start.
pub trait Words {
    fn word(&self, i: usize) -> u64;
}

impl Words for [u64] {
    fn word(&self, i: usize) -> u64 {
        self[i]
    }
}

impl<const N: usize> Words for [u64; N] {
    fn word(&self, i: usize) -> u64 {
        self[i]
    }
}

/// A byte buffer (a map value as `bpf(2)` reads it) as native-endian words.
#[derive(Clone, Copy, Debug)]
pub struct NeBytes<'a>(pub &'a [u8]);

impl Words for NeBytes<'_> {
    fn word(&self, i: usize) -> u64 {
        let b: [u8; 8] = self.0[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        u64::from_ne_bytes(b)
    }
}

/// Store word `i` of a byte buffer (native-endian).
pub fn set_ne_word(bytes: &mut [u8], i: usize, w: u64) {
    bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
}

/// Words in a bucket of the family.
pub const fn bucket_words(v6: bool) -> usize {
    if v6 {
        V6_BUCKET_WORDS
    } else {
        V4_BUCKET_WORDS
    }
}

/// Ways in a bucket of the family.
pub const fn ways(v6: bool) -> usize {
    if v6 {
        TAB_V6_WAYS
    } else {
        TAB_V4_WAYS
    }
}

/// Index, from the bucket's start, of way `i`'s first word (IPv6: `hi`,
/// then `lo`, then `meta`).
pub const fn way_word(v6: bool, i: usize) -> usize {
    if v6 {
        1 + 3 * i
    } else {
        1 + i
    }
}

/// Index of the word that says whether way `i` is taken (IPv4: the way
/// itself; IPv6: `meta`), the one written last.
pub const fn state_word(v6: bool, i: usize) -> usize {
    if v6 {
        way_word(true, i) + 2
    } else {
        way_word(false, i)
    }
}

/// Is way `i` free?
pub fn way_is_free<W: Words + ?Sized>(b: &W, v6: bool, i: usize) -> bool {
    let state = b.word(state_word(v6, i));
    if v6 {
        tab_meta_free_v6(state)
    } else {
        state >> 40 == 0
    }
}

/// The class in way `i` if it holds `key`.
pub fn read_way<W: Words + ?Sized>(b: &W, key: &FastKey, i: usize) -> Option<u32> {
    match *key {
        FastKey::V4 { addr, len } => {
            tab_match_v4(b.word(way_word(false, i)), tab_key_v4(addr, len))
        }
        FastKey::V6 { hi, lo, len } => {
            let w = way_word(true, i);
            let meta = b.word(w + 2);
            let same = b.word(w) == hi && b.word(w + 1) == lo;
            tab_meta_match_v6(meta, len).filter(|_| same)
        }
    }
}

/// The way holding `key`, and its class.
pub fn find_way<W: Words + ?Sized>(b: &W, key: &FastKey) -> Option<(usize, u32)> {
    (0..ways(key.is_v6())).find_map(|i| read_way(b, key, i).map(|c| (i, c)))
}

/// The first free way.
pub fn free_way<W: Words + ?Sized>(b: &W, v6: bool) -> Option<usize> {
    (0..ways(v6)).find(|&i| way_is_free(b, v6, i))
}

/// The entry in way `i` and its class, if the way is taken.
pub fn way_entry<W: Words + ?Sized>(b: &W, v6: bool, i: usize) -> Option<(FastKey, u32)> {
    let w = way_word(v6, i);
    if v6 {
        let meta = b.word(w + 2);
        if tab_meta_free_v6(meta) {
            return None;
        }
        let len = ((meta >> 8) & 0xff) as u32;
        let class = tab_meta_match_v6(meta, len)?;
        let (hi, lo) = (b.word(w), b.word(w + 1));
        Some((FastKey::V6 { hi, lo, len }, class))
    } else {
        let way = b.word(w);
        let (addr, len) = (way as u32, ((way >> 32) & 0xff) as u32);
        tab_match_v4(way, tab_key_v4(addr, len)).map(|c| (FastKey::V4 { addr, len }, c))
    }
}

/// Word stores, in the order they must be made (for a reader that runs
/// concurrently, the state word is always last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stores {
    words: [(usize, u64); 3],
    n: usize,
}

impl Stores {
    fn one(i: usize, w: u64) -> Stores {
        Stores {
            words: [(i, w), (0, 0), (0, 0)],
            n: 1,
        }
    }

    /// (index from the bucket's or slot's start, word), in store order.
    pub fn as_slice(&self) -> &[(usize, u64)] {
        &self.words[..self.n]
    }
}

/// The stores that put `key` with `class` and geo `label` into way `i`
/// (free, or already holding `key`). IPv6: a new key writes the address
/// first (the way still reads as free), then `meta` with a new version;
/// the same key only `meta`.
pub fn put_way<W: Words + ?Sized>(
    b: &W,
    key: &FastKey,
    i: usize,
    class: u32,
    label: u32,
) -> Stores {
    let w = way_word(key.is_v6(), i);
    match *key {
        FastKey::V4 { addr, len } => Stores::one(w, tab_way_v4_labelled(addr, len, class, label)),
        FastKey::V6 { hi, lo, len } => {
            let meta = b.word(w + 2);
            let version = tab_meta_version_v6(meta);
            if tab_meta_free_v6(meta) {
                let meta = tab_meta_v6_labelled(len, class, version.wrapping_add(1), label);
                Stores {
                    words: [(w, hi), (w + 1, lo), (w + 2, meta)],
                    n: 3,
                }
            } else {
                Stores::one(w + 2, tab_meta_v6_labelled(len, class, version, label))
            }
        }
    }
}

/// The store that frees way `i`. IPv6: with a new version, so a reader
/// halfway through sees it changed.
pub fn clear_way<W: Words + ?Sized>(b: &W, v6: bool, i: usize) -> (usize, u64) {
    let w = state_word(v6, i);
    if v6 {
        let version = tab_meta_version_v6(b.word(w));
        (w, (version.wrapping_add(1) as u64) << 32)
    } else {
        (w, 0)
    }
}

/// Words in a directory slot of the family.
pub const fn dir_words(v6: bool) -> usize {
    if v6 {
        DIR_V6_WORDS
    } else {
        DIR_V4_WORDS
    }
}

/// A directory slot's words from its length bits (`nets`, lengths 0..=127,
/// bit L of word L / 64) and its `allow` flags, in slot order.
pub fn dir_slot(v6: bool, nets: [u64; 2], allow: u64) -> ([u64; 3], usize) {
    if v6 {
        ([nets[0], nets[1], allow], DIR_V6_WORDS)
    } else {
        ([nets[0], allow, 0], DIR_V4_WORDS)
    }
}

/// The `nets` word and bit that list prefix length `len`.
pub const fn dir_len_bit(len: u32) -> (usize, u64) {
    ((len / 64) as usize, 1 << (len % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{tab_label_v4, tab_label_v6, TAB_BUCKETS};

    fn v4(a: [u8; 4], len: u32) -> FastKey {
        FastKey::v4(a, len)
    }

    #[test]
    fn keys_round_trip_and_hash_into_the_table() {
        let k = v4([198, 51, 100, 0], 24);
        assert_eq!(k.v4_octets(), Some([198, 51, 100, 0]));
        assert!(!k.is_v6() && !k.is_host() && k.prefix_len() == 24);
        assert!(k.bucket() < TAB_BUCKETS);
        assert_eq!(
            k.bucket(),
            tab_bucket_v4(u32::from_ne_bytes([198, 51, 100, 0]), 24)
        );
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = 7;
        let k6 = FastKey::v6(a, 128);
        assert_eq!(k6.v6_octets(), Some(a));
        assert_eq!(k6.v4_octets(), None);
        assert!(k6.is_v6() && k6.is_host());
        assert!(k6.bucket() < TAB_BUCKETS);
        // The length is part of the key: same address, other bucket key.
        assert_ne!(v4([198, 51, 100, 0], 24), v4([198, 51, 100, 0], 25));
    }

    /// Apply stores to a bucket held as words.
    fn apply(b: &mut [u64], s: Stores) {
        for &(i, w) in s.as_slice() {
            b[i] = w;
        }
    }

    #[test]
    fn v4_ways_fill_find_and_clear() {
        let mut b = [0u64; V4_BUCKET_WORDS];
        let keys: [FastKey; TAB_V4_WAYS] = core::array::from_fn(|i| v4([203, 0, 113, i as u8], 32));
        for (n, k) in keys.iter().enumerate() {
            let i = free_way(&b, false).expect("room");
            assert_eq!(i, n);
            let s = put_way(&b, k, i, 1, 40 + n as u32);
            apply(&mut b, s);
        }
        assert_eq!(free_way(&b, false), None, "the bucket is full");
        assert_eq!(b[OVERFLOW_WORD], 0);
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(find_way(&b, k), Some((n, 1)));
            assert_eq!(way_entry(&b, false, n), Some((*k, 1)));
            assert_eq!(tab_label_v4(b[way_word(false, n)]), 40 + n as u32);
        }
        assert_eq!(find_way(&b, &v4([203, 0, 113, 0], 31)), None);
        let (i, w) = clear_way(&b, false, 3);
        b[i] = w;
        assert!(way_is_free(&b, false, 3));
        assert_eq!(find_way(&b, &keys[3]), None);
        assert_eq!(way_entry(&b, false, 3), None);
        assert_eq!(free_way(&b, false), Some(3));
        // Rewriting a key in its way changes its class in place.
        let s = put_way(&b, &keys[0], 0, 0, 0);
        apply(&mut b, s);
        assert_eq!(find_way(&b, &keys[0]), Some((0, 0)));
    }

    #[test]
    fn v6_ways_write_the_address_first_and_bump_the_version() {
        let mut b = [0u64; V6_BUCKET_WORDS];
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let k = FastKey::v6(a, 48);
        let s = put_way(&b, &k, 0, 1, 9);
        let idx: [usize; 3] = core::array::from_fn(|n| s.as_slice()[n].0);
        assert_eq!(idx, [1, 2, 3], "hi, lo, then meta");
        apply(&mut b, s);
        assert_eq!(tab_meta_version_v6(b[3]), 1);
        assert_eq!(tab_label_v6(b[3]), 9);
        assert_eq!(find_way(&b, &k), Some((0, 1)));
        assert_eq!(way_entry(&b, true, 0), Some((k, 1)));
        // Same key: meta only, same version.
        let s = put_way(&b, &k, 0, 0, 9);
        assert_eq!(s.as_slice().len(), 1);
        apply(&mut b, s);
        assert_eq!(
            (find_way(&b, &k), tab_meta_version_v6(b[3])),
            (Some((0, 0)), 1)
        );
        // Cleared: free, with a new version.
        let (i, w) = clear_way(&b, true, 0);
        assert_eq!(i, 3);
        b[i] = w;
        assert!(way_is_free(&b, true, 0));
        assert_eq!(tab_meta_version_v6(b[3]), 2);
        assert_eq!(find_way(&b, &k), None);
        // Another address with the same length is not a match.
        let mut other = a;
        other[5] = 1;
        let s = put_way(&b, &k, 0, 1, 0);
        apply(&mut b, s);
        assert_eq!(find_way(&b, &FastKey::v6(other, 48)), None);
        assert_eq!(free_way(&b, true), Some(1));
    }

    #[test]
    fn byte_buffers_read_as_the_words_they_hold() {
        let mut bytes = [0u8; V4_BUCKET_WORDS * 8];
        let k = v4([198, 51, 100, 9], 32);
        let words = [0u64; V4_BUCKET_WORDS];
        for &(i, w) in put_way(&words, &k, 0, 1, 0).as_slice() {
            set_ne_word(&mut bytes, i, w);
        }
        assert_eq!(find_way(&NeBytes(&bytes), &k), Some((0, 1)));
        set_ne_word(&mut bytes, OVERFLOW_WORD, 1);
        assert_eq!(NeBytes(&bytes).word(OVERFLOW_WORD), 1);
    }

    #[test]
    fn the_overflow_hash_grows_with_the_capacity_beyond_the_default() {
        use crate::OVER_MAX_ENTRIES;
        assert_eq!(over_max_entries(MIN_CAPACITY), OVER_MAX_ENTRIES);
        assert_eq!(over_max_entries(DEFAULT_CAPACITY), OVER_MAX_ENTRIES);
        assert_eq!(
            over_max_entries(MAX_CAPACITY),
            OVER_MAX_ENTRIES + MAX_CAPACITY - DEFAULT_CAPACITY
        );
    }

    #[test]
    fn directory_slots_and_length_bits() {
        assert_eq!((dir_words(false), dir_words(true)), (2, 3));
        assert_eq!(dir_slot(false, [5, 0], 1), ([5, 1, 0], 2));
        assert_eq!(dir_slot(true, [5, 6], 3), ([5, 6, 3], 3));
        assert_eq!(dir_len_bit(24), (0, 1 << 24));
        assert_eq!(dir_len_bit(64), (1, 1));
        assert_eq!(dir_len_bit(127), (1, 1 << 63));
    }
}
