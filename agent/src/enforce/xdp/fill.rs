//! A cold start's ban tries written behind the fast path. The kernel's
//! LPM-trie inserts are most of a cold start (a million take seconds of
//! system time), while the program drops every banned host from the fast
//! path alone. So once the fast path holds every ban, and the tries hold
//! every entry the program looks up there (prefixes, and bans the fast path
//! has no room for), the agent is ready, and threads of their own (one per
//! family) write the tries' host entries meanwhile.
//!
//! Exactness: the agent's own trie writes go through [`Family::touch`],
//! which marks the target and holds the family's lock during the write;
//! the fill writes a chunk under the same lock and skips every marked
//! target. So the fill never re-adds an entry the agent removed meanwhile,
//! never overwrites one it wrote, and never drops one (it only adds).
//! Everything that reads the tries back waits for the fill first
//! ([`TrieFill::wait`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::addr::Target;

/// Entries per locked write: the agent's own trie write waits for at most
/// one chunk (a few milliseconds of kernel inserts).
pub(super) const CHUNK: usize = 1024;

/// Below this many entries the tries are written before ready, as before
/// (a background fill is worth its threads only for a large restore).
pub(super) const BACKGROUND_MIN: usize = 50_000;

/// One family's fill: what the agent touched meanwhile, and how far it got.
#[derive(Default)]
pub(super) struct Family {
    state: Mutex<FillState>,
    done: Condvar,
    /// Entries still to write while the fill runs (0 otherwise), read
    /// without the lock: `status` never waits behind a chunk for it.
    left: AtomicUsize,
}

#[derive(Default)]
pub(super) struct FillState {
    running: bool,
    /// Targets the agent wrote or removed in this family's trie since the
    /// fill began: the fill leaves them as the agent left them.
    touched: HashSet<Target>,
    /// Entries the fill has still to write (or skip).
    pending: usize,
    total: usize,
    error: Option<String>,
}

fn lock(m: &Mutex<FillState>) -> MutexGuard<'_, FillState> {
    // A panicking filler leaves the state as valid as it was.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Family {
    /// Before the agent writes or removes `t` in this family's trie: while a
    /// fill runs, `t` is marked as the agent's, and the returned guard (to
    /// be held across the write) keeps the fill from writing meanwhile.
    pub(super) fn touch(&self, t: &Target) -> Option<MutexGuard<'_, FillState>> {
        let mut st = lock(&self.state);
        if !st.running {
            return None;
        }
        st.touched.insert(*t);
        Some(st)
    }

    /// Writes `rows` through `write`, `CHUNK` at a time, each chunk under the
    /// lock and without the targets the agent touched (`target_of` names a
    /// row's target; `None`: not one the agent can touch), then ends the
    /// fill. Returns the first error; the rest is left unwritten.
    pub(super) fn fill<R: Copy>(
        &self,
        rows: &[R],
        target_of: impl Fn(&R) -> Option<Target>,
        mut write: impl FnMut(&[R]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(CHUNK.min(rows.len()));
        let mut result = Ok(());
        for chunk in rows.chunks(CHUNK) {
            result = self.write_chunk(chunk, &mut buf, &target_of, &mut write);
            if result.is_err() {
                break;
            }
        }
        self.end();
        result
    }

    /// One chunk of [`fill`](Self::fill), under the lock.
    pub(super) fn write_chunk<R: Copy>(
        &self,
        chunk: &[R],
        buf: &mut Vec<R>,
        target_of: impl Fn(&R) -> Option<Target>,
        mut write: impl FnMut(&[R]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        buf.clear();
        if st.touched.is_empty() {
            buf.extend_from_slice(chunk);
        } else {
            buf.extend(
                chunk
                    .iter()
                    .filter(|r| target_of(r).is_none_or(|t| !st.touched.contains(&t))),
            );
        }
        if let Err(e) = write(buf) {
            st.error = Some(e.to_string());
            return Err(e);
        }
        st.pending -= chunk.len();
        self.left.store(st.pending, Ordering::Relaxed);
        Ok(())
    }

    /// The fill is over: the agent's writes are its own again.
    pub(super) fn end(&self) {
        let mut st = lock(&self.state);
        st.running = false;
        st.touched = HashSet::new();
        self.left.store(0, Ordering::Relaxed);
        self.done.notify_all();
    }

    /// Starts a fill of `total` entries (before its thread runs).
    pub(super) fn begin(&self, total: usize) {
        let mut st = lock(&self.state);
        *st = FillState {
            running: true,
            pending: total,
            total,
            ..FillState::default()
        };
        self.left.store(total, Ordering::Relaxed);
    }

    /// Blocks until no fill runs.
    fn wait(&self) {
        let mut st = lock(&self.state);
        while st.running {
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Entries still to be written into the trie (0: complete, or failed).
    pub(super) fn pending(&self) -> usize {
        self.left.load(Ordering::Relaxed)
    }

    /// The closing log line of a fill (`map`: the trie's name).
    pub(super) fn report(
        &self,
        map: &str,
        started: std::time::Instant,
        result: std::io::Result<()>,
    ) {
        let (written, total, _) = self.progress();
        let secs = format!("{:.2}", started.elapsed().as_secs_f64());
        match result {
            Ok(()) => tracing::info!(map, secs, "ban tries: {written} of {total} written"),
            Err(e) => tracing::error!(
                map,
                secs,
                "ban tries: {written} of {total} written, then: {e}; the fast path drops the rest, a restart writes them"
            ),
        }
    }

    /// (entries written, entries of the fill, why it stopped short).
    fn progress(&self) -> (usize, usize, Option<String>) {
        let st = lock(&self.state);
        (st.total - st.pending, st.total, st.error.clone())
    }
}

/// The fills of both families (IPv4, IPv6) and their threads.
#[derive(Default)]
pub(super) struct TrieFill {
    pub(super) families: Arc<[Family; 2]>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl TrieFill {
    pub(super) fn family(&self, v6: bool) -> &Family {
        &self.families[v6 as usize]
    }

    /// Keeps a fill thread, joined by [`wait`](Self::wait).
    pub(super) fn adopt(&self, thread: JoinHandle<()>) {
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
    }

    /// Did a fill stop short (its error logged)? The tries then lack
    /// entries the fast path holds, until a start reads them back.
    pub(super) fn stopped_short(&self) -> bool {
        self.families.iter().any(|f| lock(&f.state).error.is_some())
    }

    /// Blocks until both fills are done: before the tries are read back,
    /// fingerprinted, or filled again.
    pub(super) fn wait(&self) {
        for f in self.families.iter() {
            f.wait();
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for h in threads {
            let _ = h.join();
        }
    }
}

impl Drop for TrieFill {
    /// The tries are complete whenever the agent ends, whatever way.
    fn drop(&mut self) {
        self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn t(i: u32) -> Target {
        Target::from_v4(i.to_be_bytes(), 32).unwrap()
    }

    fn rows() -> Vec<(u32, u8)> {
        (0..5 * CHUNK as u32).map(|i| (i, 1)).collect()
    }

    #[test]
    fn a_fill_writes_every_row_in_chunks() {
        let rows = rows();
        let fam = Family::default();
        fam.begin(rows.len());
        assert_eq!(fam.pending(), rows.len());
        let mut trie = BTreeMap::new();
        let mut chunks = 0;
        fam.fill(
            &rows,
            |(i, _)| Some(t(*i)),
            |chunk| {
                trie.extend(chunk.iter().copied());
                chunks += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(chunks, 5);
        assert_eq!(trie, rows.iter().copied().collect());
        assert_eq!(fam.pending(), 0);
        assert_eq!(fam.progress(), (rows.len(), rows.len(), None));
        assert!(fam.touch(&t(1)).is_none(), "no fill runs any more");
    }

    /// The agent's own trie writes between two chunks: an unban of an entry
    /// not written yet, a ban with another value, an unban of an entry
    /// written already, a new ban. The fake trie ends as the agent left it.
    #[test]
    fn an_entry_the_agent_touched_during_the_fill_is_never_written_by_it() {
        let rows = rows();
        let fam = Family::default();
        fam.begin(rows.len());
        let mut trie = BTreeMap::<u32, u8>::new();
        let mut buf = Vec::new();
        let target_of = |r: &(u32, u8)| Some(t(r.0));
        let mut chunks = rows.chunks(CHUNK);
        for chunk in chunks.by_ref().take(2) {
            fam.write_chunk(chunk, &mut buf, target_of, |c| {
                trie.extend(c.iter().copied());
                Ok(())
            })
            .unwrap();
        }
        let (late, changed, early, new) = (4 * CHUNK as u32 + 7, 3 * CHUNK as u32 + 1, 3, 99_999);
        for (i, v) in [
            (late, None),
            (changed, Some(2)),
            (early, None),
            (new, Some(1)),
        ] {
            let _held = fam.touch(&t(i)).expect("a fill runs");
            match v {
                Some(v) => trie.insert(i, v),
                None => trie.remove(&i),
            };
        }
        for chunk in chunks {
            fam.write_chunk(chunk, &mut buf, target_of, |c| {
                trie.extend(c.iter().copied());
                Ok(())
            })
            .unwrap();
        }
        fam.end();
        assert!(
            !trie.contains_key(&late),
            "an unban during the fill never comes back"
        );
        assert!(!trie.contains_key(&early));
        let want: BTreeMap<u32, u8> = rows
            .iter()
            .filter(|(i, _)| *i != late && *i != early)
            .map(|(i, v)| (*i, if *i == changed { 2 } else { *v }))
            .chain([(new, 1)])
            .collect();
        assert_eq!(trie, want);
        assert_eq!(fam.pending(), 0);
    }

    /// A failed write stops the fill, says why, and leaves no fill running
    /// (the agent's writes go straight to the trie again).
    #[test]
    fn a_failed_write_ends_the_fill_with_its_error() {
        let rows = rows();
        let fill = TrieFill::default();
        let fam = fill.family(true);
        fam.begin(rows.len());
        let mut n = 0;
        let r = fam.fill(
            &rows,
            |(i, _)| Some(t(*i)),
            |_| {
                n += 1;
                if n == 3 {
                    Err(std::io::Error::from_raw_os_error(libc::E2BIG))
                } else {
                    Ok(())
                }
            },
        );
        assert!(r.is_err());
        let (written, total, error) = fam.progress();
        assert_eq!((written, total), (2 * CHUNK, rows.len()));
        assert!(error.is_some());
        assert!(fam.touch(&t(1)).is_none());
        assert!(fill.stopped_short(), "no restore marker vouches for it");
    }
}
