//! Capture spans from DFA passes instead of the backtracker.
//!
//! On a log under attack most lines are failures, and running the bounded
//! backtracker over each matched line was most of the matching work. When
//! every host and user group of a failregex is a direct part of its
//! top-level concatenation (`^<SSHD>Failed ... for <F-USER>.*?</F-USER>
//! from <HOST>(?: port \d+)?$`), the regex is cut at those groups into
//! pieces, and the spans are found by walking the pieces with anchored
//! forward DFA searches ([`dfa`](super::dfa): a full DFA for a small piece,
//! else a lazy one):
//!
//! * a piece (or a group's body) ends where its own leftmost-first match
//!   ends, i.e. at the end of its first path in backtracking order;
//! * a lazy `(?P<g>.*?)` group ends where the rest of the regex first
//!   matches (its paths, in backtracking order, are by increasing length);
//! * a `<HOST>` group is followed by hand ([`host`]), not by its DFA;
//! * the line's head, before the first group, is not searched when the
//!   text that ends it (` for ` in sshd's) occurs once in the match: every
//!   matching path crosses it there.
//!
//! Why this is the backtracker's answer: the backtracker takes, piece by
//! piece, the first path whose continuation can still complete a match. If
//! the walk of first paths completes a match, every first path had a
//! completing continuation, so the walk *is* the backtracker's path. If it
//! does not (a first path was not the one that completes, or the walk ends
//! elsewhere than the match the set found), the caller runs the backtracker.
//! Searches run over the whole line, so look-around at piece edges sees the
//! same bytes as in the whole regex.

use memchr::memchr;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::{meta, Input};
use regex_syntax::hir::{Dot, Hir, HirKind};

use super::dfa::ForwardDfa;

#[path = "split_host.rs"]
mod host;

/// The pieces of one failregex, in order.
#[derive(Debug, Clone)]
pub(super) struct SplitPlan {
    steps: Vec<Step>,
    /// The last text before the first wanted group, when there is one.
    anchor: Option<Anchor>,
}

/// Text of the regex before its first wanted group. When it occurs once
/// in the match, every matching path, the backtracker's too, crosses it
/// there, so the walk starts right after it (at step `resume`) instead of
/// searching the line's head, which holds no wanted group.
#[derive(Debug, Clone)]
struct Anchor {
    lead: Box<memchr::memmem::Finder<'static>>,
    resume: usize,
}

impl Anchor {
    /// Where the text ends, if it occurs exactly once in `hay` (the match);
    /// occurrences that overlap count.
    fn only_end(&self, hay: &[u8]) -> Option<usize> {
        let o = self.lead.find(hay)?;
        if self.lead.find(&hay[o + 1..]).is_some() {
            return None;
        }
        Some(o + self.lead.needle().len())
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Plain text: one path, no search needed.
    Literal(Box<[u8]>),
    /// Text between groups: advance to the end of its first path.
    Piece(ForwardDfa),
    /// A wanted group: its span is its body's first path.
    Group { group: usize, body: ForwardDfa },
    /// A wanted `<HOST>` group, followed by hand ([`host`]).
    Host { group: usize },
    /// A wanted `<SSHD_PID>` connection group, followed by hand ([`host`]).
    SshdPid { group: usize },
    /// A wanted lazy `.*?` group: it ends where `rest` (everything after it)
    /// first matches.
    LazyAny {
        group: usize,
        rest: Rest,
        /// `.` rather than `(?s:.)`: the span may not hold a `\n`.
        except_lf: bool,
    },
}

/// How a lazy group finds where the rest of the regex first matches.
#[derive(Debug, Clone)]
enum Rest {
    /// The rest starts with this text: the places it occurs are the
    /// candidates, in order.
    Lead {
        lead: Box<memchr::memmem::Finder<'static>>,
        /// The whole rest, to tell a place where it does not match from
        /// one where only a path other than the walk's matches.
        rest: ForwardDfa,
    },
    /// A search for the whole rest: its leftmost start (which a forward
    /// DFA does not give, hence a whole regex).
    Search(meta::Regex),
}

fn build(hir: &Hir) -> Option<ForwardDfa> {
    ForwardDfa::anchored(hir)
}

/// `Some(except_lf)` when `hir` is a lazy `.*?` (or `(?s:.*?)`).
fn lazy_any(hir: &Hir) -> Option<bool> {
    let HirKind::Repetition(rep) = hir.kind() else {
        return None;
    };
    if rep.greedy || rep.min != 0 || rep.max.is_some() {
        return None;
    }
    if *rep.sub == Hir::dot(Dot::AnyCharExceptLF) {
        Some(true)
    } else if *rep.sub == Hir::dot(Dot::AnyChar) {
        Some(false)
    } else {
        None
    }
}

impl SplitPlan {
    /// Plans `pattern` for the capture groups `groups` (indices). `None`
    /// when a wanted group is not a direct item of the top-level
    /// concatenation (inside an alternation or a repetition), or when a
    /// piece does not compile on its own.
    pub(super) fn new(hir: &Hir, groups: &[usize]) -> Option<SplitPlan> {
        let items: Vec<Hir> = match hir.kind() {
            HirKind::Concat(items) => items.clone(),
            _ => vec![hir.clone()],
        };
        let wanted = |h: &Hir| match h.kind() {
            HirKind::Capture(c) if groups.contains(&(c.index as usize)) => Some(c.clone()),
            _ => None,
        };
        if items.iter().filter(|h| wanted(h).is_some()).count() != groups.len() {
            return None;
        }
        let mut steps = Vec::new();
        let mut piece: Vec<Hir> = Vec::new();
        let mut anchor = None;
        for (i, item) in items.iter().enumerate() {
            let Some(cap) = wanted(item) else {
                piece.push(item.clone());
                continue;
            };
            if anchor.is_none() && steps.is_empty() {
                // The last text before the first group ends its own piece,
                // so that a walk can resume right after it.
                if let Some(j) = piece
                    .iter()
                    .rposition(|h| matches!(h.kind(), HirKind::Literal(_)))
                {
                    let HirKind::Literal(lit) = piece[j].kind() else {
                        unreachable!()
                    };
                    let lead = Box::new(memchr::memmem::Finder::new(&lit.0).into_owned());
                    let mut after = piece.split_off(j + 1);
                    flush(&mut piece, &mut steps)?;
                    anchor = Some(Anchor {
                        lead,
                        resume: steps.len(),
                    });
                    piece.append(&mut after);
                }
            }
            flush(&mut piece, &mut steps)?;
            let group = cap.index as usize;
            let rest = &items[i + 1..];
            match lazy_any(&cap.sub) {
                Some(except_lf) if !rest.is_empty() => {
                    let whole = Hir::concat(rest.to_vec());
                    let rest = match rest.first().map(Hir::kind) {
                        Some(HirKind::Literal(lit)) => Rest::Lead {
                            lead: Box::new(memchr::memmem::Finder::new(&lit.0).into_owned()),
                            rest: build(&whole)?,
                        },
                        _ => Rest::Search(meta::Regex::builder().build_from_hir(&whole).ok()?),
                    };
                    steps.push(Step::LazyAny {
                        group,
                        rest,
                        except_lf,
                    })
                }
                _ if host::is_host_body(&cap.sub) => steps.push(Step::Host { group }),
                _ if host::is_sshd_pid_body(&cap.sub) => steps.push(Step::SshdPid { group }),
                _ => steps.push(Step::Group {
                    group,
                    body: build(&cap.sub)?,
                }),
            }
        }
        flush(&mut piece, &mut steps)?;
        Some(SplitPlan { steps, anchor })
    }

    /// Walks the pieces over `text`, for the match that starts at 0 and
    /// ends at `end`, and writes the wanted groups' spans and the whole
    /// match into `slots` (two per group, as `search_slots` does; groups
    /// beyond `slots` are not written). `false` when the walk does not
    /// complete that match: the caller must then use the backtracker.
    pub(super) fn spans(&self, text: &str, end: usize, slots: &mut [Option<NonMaxUsize>]) -> bool {
        let (i, at) = self
            .anchor
            .as_ref()
            .and_then(|a| Some((a.resume, a.only_end(&text.as_bytes()[..end])?)))
            .unwrap_or((0, 0));
        if self.walk(i, at, text, slots) != Some(end) {
            return false;
        }
        set(slots, 0, 0, end);
        true
    }

    /// Walks steps `i..` from `at`; the end reached, or `None` (decline).
    fn walk(
        &self,
        i: usize,
        mut at: usize,
        text: &str,
        slots: &mut [Option<NonMaxUsize>],
    ) -> Option<usize> {
        let first_end = |re: &ForwardDfa, at: usize| re.anchored_end(text, at);
        for (k, step) in self.steps.iter().enumerate().skip(i) {
            match step {
                Step::Literal(lit) => {
                    if !text.as_bytes()[at..].starts_with(lit) {
                        return None;
                    }
                    at += lit.len();
                }
                Step::Piece(re) => at = first_end(re, at)?,
                Step::Group { group, body } => {
                    let e = first_end(body, at)?;
                    set(slots, *group, at, e);
                    at = e;
                }
                Step::Host { group } => {
                    let e = host::host_end(text.as_bytes(), at)?;
                    set(slots, *group, at, e);
                    at = e;
                }
                Step::SshdPid { group } => {
                    let e = host::sshd_pid_end(text.as_bytes(), at)?;
                    set(slots, *group, at, e);
                    at = e;
                }
                Step::LazyAny {
                    group,
                    rest: Rest::Search(rest),
                    except_lf,
                } => {
                    let q = rest.search(&Input::new(text).range(at..))?.start();
                    if !lazy_span_ok(text, at, q, *except_lf) {
                        return None;
                    }
                    set(slots, *group, at, q);
                    at = q;
                }
                Step::LazyAny {
                    group,
                    rest: Rest::Lead { lead, rest },
                    except_lf,
                } => {
                    // Candidates in order: the first where the rest matches
                    // is the group's end. A walk that completes proves the
                    // rest matches there; one that does not, at a place
                    // where the rest does match, needs the backtracker.
                    let mut from = at;
                    for _ in 0..MAX_CANDIDATES {
                        let q = from + lead.find(&text.as_bytes()[from..])?;
                        if !lazy_span_ok(text, at, q, *except_lf) {
                            return None;
                        }
                        set(slots, *group, at, q);
                        if let Some(e) = self.walk(k + 1, q, text, slots) {
                            return Some(e);
                        }
                        // A DFA that gave up cannot tell: decline.
                        if rest.matches_at(text, q).unwrap_or(true) {
                            return None;
                        }
                        from = q + 1;
                    }
                    return None;
                }
            }
        }
        Some(at)
    }
}

/// Candidate ends tried for one lazy group before the backtracker decides,
/// so that a line full of decoys costs a bounded number of searches.
const MAX_CANDIDATES: usize = 8;

fn set(slots: &mut [Option<NonMaxUsize>], g: usize, s: usize, e: usize) {
    if 2 * g + 1 < slots.len() {
        slots[2 * g] = NonMaxUsize::new(s);
        slots[2 * g + 1] = NonMaxUsize::new(e);
    }
}

/// Whether a lazy `.*?` can span `at..q`: whole characters, and no `\n`
/// unless it is `(?s:.*?)`.
fn lazy_span_ok(text: &str, at: usize, q: usize, except_lf: bool) -> bool {
    text.is_char_boundary(q) && !(except_lf && memchr(b'\n', &text.as_bytes()[at..q]).is_some())
}

/// Turns the items gathered since the last group into a step.
fn flush(piece: &mut Vec<Hir>, steps: &mut Vec<Step>) -> Option<()> {
    if piece.is_empty() {
        return Some(());
    }
    let hir = Hir::concat(std::mem::take(piece));
    let step = match hir.kind() {
        HirKind::Literal(lit) => Step::Literal(lit.0.clone()),
        HirKind::Empty => return Some(()),
        _ => Step::Piece(build(&hir)?),
    };
    steps.push(step);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sshd's failregexes, as the built-in filter writes them, follow their
    /// `<HOST>` group by hand.
    #[test]
    fn a_host_group_is_followed_by_hand() {
        let e = super::super::host::expand(
            r"^<SSHD>Failed password for (?:invalid user )?<F-USER>.*?</F-USER> from <HOST>(?: port \d+)?(?: ssh\d*)?$",
            "failregex[0]",
        )
        .unwrap();
        let hir = regex_automata::util::syntax::parse(&e.pattern).unwrap();
        let plan = SplitPlan::new(&hir, &[1, 2]).unwrap();
        assert!(
            plan.steps.iter().any(|s| matches!(s, Step::Host { .. })),
            "{plan:?}"
        );
        let text = "h sshd[1]: Failed password for root from 2001:db8::1 port 22 ssh2";
        let mut slots = vec![None; 6];
        assert!(plan.spans(text, text.len(), &mut slots));
        let span = |g: usize| {
            let (s, e) = (slots[2 * g].unwrap().get(), slots[2 * g + 1].unwrap().get());
            &text[s..e]
        };
        assert_eq!((span(1), span(2)), ("root", "2001:db8::1"));
    }

    #[test]
    fn an_anchor_counts_overlapping_occurrences() {
        let anchor = Anchor {
            lead: Box::new(memchr::memmem::Finder::new("aa").into_owned()),
            resume: 0,
        };
        assert_eq!(anchor.only_end(b"xaay"), Some(3));
        assert_eq!(anchor.only_end(b"xaaa"), None);
        assert_eq!(anchor.only_end(b"aaxaa"), None);
        assert_eq!(anchor.only_end(b"xa"), None);
    }
}
