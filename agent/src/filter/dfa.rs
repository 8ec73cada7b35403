//! A forward-only lazy DFA: where a leftmost-first match ends, and which
//! pattern it is, without the reverse automaton or the engine choice of a
//! full `meta::Regex`.
//!
//! The matcher asks only "where does the match end" of these regexes: the
//! failregexes all together (their matches start at the text start), and
//! the pieces of a split plan (anchored where the walk stands). A
//! `meta::Regex` answers that too, but builds a reverse NFA for the start
//! it is never asked for, and pays an engine dispatch on every search of a
//! piece a few bytes long.
//!
//! Search errors are answered as `Err`: the lazy DFA gives up when its cache
//! thrashes (the limits a `meta::Regex` uses) and quits on a non-ASCII byte
//! next to a Unicode `\b`. Every caller then takes a path that does not
//! need this DFA (the general path, or the backtracker), so an error costs
//! speed, never a different answer.

use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, HalfMatch, Input, MatchError, MatchKind};
use regex_syntax::hir::Hir;

/// The NFA size limit of a default `meta::Regex`, so that a pattern builds
/// here exactly when it did there.
const NFA_SIZE_LIMIT: usize = 10 << 20;
/// A default `meta::Regex`'s lazy-DFA cache.
const CACHE_CAPACITY: usize = 2 << 20;

type CreateCache = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// A forward lazy DFA with its per-thread caches.
pub(super) struct ForwardDfa {
    dfa: Arc<DFA>,
    caches: Pool<Cache, CreateCache>,
}

impl ForwardDfa {
    /// One regex.
    pub(super) fn new(hir: &Hir) -> Option<ForwardDfa> {
        ForwardDfa::many(std::slice::from_ref(hir))
    }

    /// Several regexes; a match names the first one, in order, that matches
    /// at the leftmost position.
    pub(super) fn many(hirs: &[Hir]) -> Option<ForwardDfa> {
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(NFA_SIZE_LIMIT)),
            )
            .build_many_from_hir(hirs)
            .ok()?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .unicode_word_boundary(true)
                    .cache_capacity(CACHE_CAPACITY)
                    .skip_cache_capacity_check(false)
                    .minimum_cache_clear_count(Some(3))
                    .minimum_bytes_per_state(Some(10)),
            )
            .build_from_nfa(nfa)
            .ok()?;
        Some(ForwardDfa::with_dfa(Arc::new(dfa)))
    }

    fn with_dfa(dfa: Arc<DFA>) -> ForwardDfa {
        let for_pool = Arc::clone(&dfa);
        ForwardDfa {
            dfa,
            caches: Pool::new(Box::new(move || for_pool.create_cache())),
        }
    }

    /// The leftmost-first match in `text[at..]` (starting at `at` when
    /// `anchored`): its pattern and end.
    pub(super) fn find(
        &self,
        text: &str,
        at: usize,
        anchored: bool,
    ) -> Result<Option<HalfMatch>, MatchError> {
        let input = Input::new(text).range(at..).anchored(if anchored {
            Anchored::Yes
        } else {
            Anchored::No
        });
        let mut cache = self.caches.get();
        self.dfa.try_search_fwd(&mut cache, &input)
    }

    /// Where the match anchored at `at` ends, `None` when there is none or
    /// the DFA gave up.
    pub(super) fn anchored_end(&self, text: &str, at: usize) -> Option<usize> {
        self.find(text, at, true).ok().flatten().map(|m| m.offset())
    }

    /// Whether a match starts at `at`; `Err` when the DFA gave up.
    pub(super) fn matches_at(&self, text: &str, at: usize) -> Result<bool, MatchError> {
        Ok(self.find(text, at, true)?.is_some())
    }
}

impl Clone for ForwardDfa {
    fn clone(&self) -> ForwardDfa {
        ForwardDfa::with_dfa(Arc::clone(&self.dfa))
    }
}

impl std::fmt::Debug for ForwardDfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardDfa").finish_non_exhaustive()
    }
}
