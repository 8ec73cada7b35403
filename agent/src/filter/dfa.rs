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

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures, NFA};
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, HalfMatch, Input, MatchError, MatchKind};
use regex_syntax::hir::Hir;

/// The NFA size limit of a default `meta::Regex`, so that a pattern builds
/// here exactly when it did there.
const NFA_SIZE_LIMIT: usize = 10 << 20;
/// A default `meta::Regex`'s lazy-DFA cache.
const CACHE_CAPACITY: usize = 2 << 20;

/// A piece whose NFA has at most this many states (a `meta::Regex`'s own
/// bound) is compiled to a full DFA (anchored searches only), within
/// [`DENSE_SIZE_LIMIT`] bytes: a search of a few bytes then costs a table
/// walk, without the lazy DFA's cache and start-state bookkeeping. Larger
/// pieces stay lazy: determinizing an address pattern in full cost ten
/// times what all its searches on a 200,000-line log saved.
const DENSE_NFA_STATES: usize = 30;
const DENSE_SIZE_LIMIT: usize = 64 << 10;

type CreateCache = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// A forward DFA: a full one for a small anchored piece, else a lazy one
/// with its per-thread caches.
pub(super) struct ForwardDfa(Engine);

enum Engine {
    /// Boxed: a full DFA's header is large beside the lazy one's.
    Dense(Box<dense::DFA<Vec<u32>>>),
    Lazy {
        dfa: Arc<DFA>,
        caches: Pool<Cache, CreateCache>,
    },
}

fn nfa(hirs: &[Hir]) -> Option<NFA> {
    thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .which_captures(WhichCaptures::None)
                .nfa_size_limit(Some(NFA_SIZE_LIMIT)),
        )
        .build_many_from_hir(hirs)
        .ok()
}

impl ForwardDfa {
    /// One regex, searched only anchored ([`ForwardDfa::find`] with
    /// `anchored`: an unanchored search may fail with an error).
    pub(super) fn anchored(hir: &Hir) -> Option<ForwardDfa> {
        let nfa = nfa(std::slice::from_ref(hir))?;
        if nfa.states().len() <= DENSE_NFA_STATES {
            let dense = dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .match_kind(MatchKind::LeftmostFirst)
                        .start_kind(StartKind::Anchored)
                        .unicode_word_boundary(true)
                        .determinize_size_limit(Some(DENSE_SIZE_LIMIT))
                        .dfa_size_limit(Some(DENSE_SIZE_LIMIT)),
                )
                .build_from_nfa(&nfa);
            if let Ok(dfa) = dense {
                return Some(ForwardDfa(Engine::Dense(Box::new(dfa))));
            }
        }
        ForwardDfa::lazy(nfa)
    }

    /// Several regexes; a match names the first one, in order, that matches
    /// at the leftmost position.
    pub(super) fn many(hirs: &[Hir]) -> Option<ForwardDfa> {
        ForwardDfa::lazy(nfa(hirs)?)
    }

    fn lazy(nfa: NFA) -> Option<ForwardDfa> {
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
        ForwardDfa(Engine::Lazy {
            dfa,
            caches: Pool::new(Box::new(move || for_pool.create_cache())),
        })
    }

    /// The leftmost-first match in `text[at..]` (starting at `at` when
    /// `anchored`): its pattern and end.
    #[inline]
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
        match &self.0 {
            Engine::Dense(dfa) => dfa.try_search_fwd(&input),
            Engine::Lazy { dfa, caches } => dfa.try_search_fwd(&mut caches.get(), &input),
        }
    }

    /// Where the match anchored at `at` ends, `None` when there is none or
    /// the DFA gave up.
    #[inline]
    pub(super) fn anchored_end(&self, text: &str, at: usize) -> Option<usize> {
        self.find(text, at, true).ok().flatten().map(|m| m.offset())
    }

    /// Whether a match starts at `at`; `Err` when the DFA gave up.
    #[inline]
    pub(super) fn matches_at(&self, text: &str, at: usize) -> Result<bool, MatchError> {
        Ok(self.find(text, at, true)?.is_some())
    }
}

impl Clone for ForwardDfa {
    fn clone(&self) -> ForwardDfa {
        match &self.0 {
            Engine::Dense(dfa) => ForwardDfa(Engine::Dense(dfa.clone())),
            Engine::Lazy { dfa, .. } => ForwardDfa::with_dfa(Arc::clone(dfa)),
        }
    }
}

impl std::fmt::Debug for ForwardDfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardDfa").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::meta;

    fn parse(p: &str) -> Hir {
        regex_automata::util::syntax::parse(p).unwrap()
    }

    /// The end of `meta::Regex`'s anchored match at `at`, the answer a
    /// piece's DFA must give.
    fn meta_end(p: &str, text: &str, at: usize) -> Option<usize> {
        let re = meta::Regex::new(p).unwrap();
        re.search(&Input::new(text).range(at..).anchored(Anchored::Yes))
            .map(|m| m.end())
    }

    /// Full and lazy DFAs give `meta::Regex`'s leftmost-first ends,
    /// anchored mid-text, where look-behind (`\b`, `^`) sees the byte
    /// before the start.
    #[test]
    fn anchored_ends_are_meta_regexs() {
        let cases: &[(&str, &str, usize)] = &[
            (r" port \d+", "x port 22 ssh2", 1),
            (r" port [0-9]+", "x port 22 ssh2", 1),
            (
                r"(?-u: port [0-9]+)?(?-u: ssh[0-9]*)?$",
                "x port 22 ssh2",
                1,
            ),
            (r"(?: port \d+)?(?: ssh\d*)?$", "x port 22 ssh2", 1),
            (r"(?: port \d+)?(?: ssh\d*)?$", "x port 22 ssh2 y", 1),
            (r"\d+|\d+\.\d+", "a 12.5", 2),
            (r"(?:a|ab)(?:c|bcd)", "abcd", 0),
            (r"\bfoo", "xfoo", 1),
            (r"\bfoo", "x foo", 2),
            (r"^foo", "foo foo", 4),
            (r"^foo", "foo foo", 0),
            (r".*?x", "aaxbx", 0),
            (r"[^:]*:", "ab:cd:", 0),
            (r"", "abc", 1),
        ];
        for &(p, text, at) in cases {
            let want = meta_end(p, text, at);
            let hir = parse(p);
            let piece = ForwardDfa::anchored(&hir).unwrap();
            assert_eq!(
                piece.anchored_end(text, at),
                want,
                "{p:?} on {text:?} at {at}"
            );
            let lazy = ForwardDfa::many(std::slice::from_ref(&hir)).unwrap();
            assert!(matches!(lazy.0, Engine::Lazy { .. }));
            assert_eq!(lazy.anchored_end(text, at), want, "lazy {p:?} on {text:?}");
            assert_eq!(piece.matches_at(text, at).unwrap(), want.is_some());
            // A clone searches alike.
            assert_eq!(piece.clone().anchored_end(text, at), want);
        }
        // Both engines were exercised: a small piece is a full DFA, a
        // large one (Unicode `\w`) stays lazy.
        assert!(matches!(
            ForwardDfa::anchored(&parse(r" port [0-9]+")).unwrap().0,
            Engine::Dense(_)
        ));
        assert!(matches!(
            ForwardDfa::anchored(&parse(r"\w+")).unwrap().0,
            Engine::Lazy { .. }
        ));
    }

    /// Several patterns at once: the match names the first pattern, in
    /// list order, that matches at the leftmost position, and its end.
    #[test]
    fn many_names_the_first_pattern_in_order() {
        let hirs = [parse(r"^a\d+"), parse(r"^a\d"), parse(r"^b")];
        let set = ForwardDfa::many(&hirs).unwrap();
        let m = set.find("a123", 0, false).unwrap().unwrap();
        assert_eq!((m.pattern().as_usize(), m.offset()), (0, 4));
        let m = set.find("b1", 0, false).unwrap().unwrap();
        assert_eq!((m.pattern().as_usize(), m.offset()), (2, 1));
        assert_eq!(set.find("c", 0, false).unwrap(), None);
    }

    /// A Unicode `\b` next to a non-ASCII byte: the DFA cannot tell and
    /// says so with an error (callers then take another path), never with
    /// a wrong answer.
    #[test]
    fn a_unicode_word_boundary_on_non_ascii_is_an_error() {
        let hir = parse(r"(?u:\b)x");
        for dfa in [
            ForwardDfa::anchored(&hir).unwrap(),
            ForwardDfa::many(std::slice::from_ref(&hir)).unwrap(),
        ] {
            assert!(dfa.find("éx", 2, true).is_err());
            assert_eq!(dfa.anchored_end("éx", 2), None);
            assert!(dfa.matches_at("éx", 2).is_err());
            assert_eq!(dfa.anchored_end(" x", 1), Some(2));
        }
    }
}
