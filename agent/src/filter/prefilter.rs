//! Literal prefilter: a line that contains none of the literals some
//! failregex requires cannot match any of them, and finding that out is one
//! Aho-Corasick (usually SIMD "Teddy") scan instead of a regex run.
//!
//! The regex crate prefilters on its own only for literal *prefixes*; our
//! patterns are anchored at `^` and start with an optional syslog header, so
//! the useful literals (`Failed `, ` not allowed because `) sit in the
//! middle. We compute, per pattern, a set of strings of which every match must
//! contain at least one, and keep the most selective set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_syntax::hir::{Class, Hir, HirKind};

/// Upper bound on alternatives kept in one literal set; beyond that the
/// set stops being selective and the automaton grows for nothing.
const MAX_SET: usize = 48;
/// Upper bound on one literal's length while building cross products.
const MAX_LIT: usize = 64;

#[derive(Debug, Clone, Default)]
pub(crate) struct Prefilter {
    ac: Option<AhoCorasick>,
    /// The literals `ac` searches for (empty when it is `None`).
    literals: Vec<Vec<u8>>,
}

impl Prefilter {
    /// Builds a prefilter for a set of expanded patterns. If any pattern
    /// has no required literal, the prefilter lets every line through.
    #[cfg(test)]
    pub(crate) fn new(patterns: &[String]) -> Prefilter {
        let hirs: Option<Vec<Hir>> = patterns
            .iter()
            .map(|p| regex_automata::util::syntax::parse(p).ok())
            .collect();
        match hirs {
            Some(hirs) => Prefilter::from_hirs(&hirs),
            None => Prefilter::default(),
        }
    }

    /// [`Prefilter::new`] from the patterns' parsed forms (the filter
    /// parses each pattern once for all its uses).
    pub(crate) fn from_hirs(patterns: &[Hir]) -> Prefilter {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for p in patterns {
            match analyze(p).best() {
                Some(set) => all.extend(set),
                None => return Prefilter::default(),
            }
        }
        if all.is_empty() {
            return Prefilter::default();
        }
        all.sort();
        all.dedup();
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&all)
            .ok();
        let literals = if ac.is_some() { all } else { Vec::new() };
        Prefilter { ac, literals }
    }

    /// Every line the patterns can match contains one of these; `None`
    /// when any line may match.
    pub(crate) fn literals(&self) -> Option<&[Vec<u8>]> {
        self.ac.as_ref().map(|_| self.literals.as_slice())
    }

    /// `false` means no pattern can match `line`.
    #[inline]
    pub(crate) fn may_match(&self, line: &str) -> bool {
        match &self.ac {
            Some(ac) => ac.is_match(line),
            None => true,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_active(&self) -> bool {
        self.ac.is_some()
    }
}

/// One line in this many is a sample for [`PrefilterGauge`].
const SAMPLE_EVERY: u64 = 64;
/// Samples between two decisions.
const SAMPLES_PER_DECISION: u64 = 64;

/// Whether the literal scan pays, on the lines this filter actually sees,
/// for a filter whose anchored first-match DFA turns lines away by itself
/// (the scan is then only a shortcut, never needed for the answer). A scan
/// whose literals start with common bytes (` `, `:`, `]`) verifies a
/// candidate on nearly every line and costs more than the DFA, which
/// mostly stops within the first words; a rare literal is cheaper than a
/// DFA that must read far. Which one wins depends on the log, so one line
/// in [`SAMPLE_EVERY`] times both: the scan, and when it turned the line
/// away, the DFA's verdict it spared. Every [`SAMPLES_PER_DECISION`]
/// samples the scan is kept or skipped by which cost more (halved sums, so
/// it follows a log that changes). Either way the answer is the same.
#[derive(Debug, Default)]
pub(crate) struct PrefilterGauge {
    lines: AtomicU64,
    skip: AtomicBool,
    samples: AtomicU64,
    /// Time spent in sampled scans, in nanoseconds.
    scan_ns: AtomicU64,
    /// Time the DFA took on the sampled lines the scan turned away.
    spared_ns: AtomicU64,
}

impl Clone for PrefilterGauge {
    /// A copy measures its own lines from the start.
    fn clone(&self) -> PrefilterGauge {
        PrefilterGauge::default()
    }
}

/// What to do with the literal scan on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Screen {
    Scan,
    Skip,
    /// Scan, and time it (and the DFA it spares): [`PrefilterGauge::record`].
    Sample,
}

impl PrefilterGauge {
    /// The next line's treatment. Relaxed atomics: a filter is matched on
    /// one thread at a time, and a stale decision only costs time.
    pub(crate) fn next(&self) -> Screen {
        let n = self.lines.load(Ordering::Relaxed);
        self.lines.store(n.wrapping_add(1), Ordering::Relaxed);
        if n % SAMPLE_EVERY == SAMPLE_EVERY - 1 {
            Screen::Sample
        } else if self.skip.load(Ordering::Relaxed) {
            Screen::Skip
        } else {
            Screen::Scan
        }
    }

    /// A sample: the scan took `scan`; `spared` is the DFA's time on the
    /// same line when the scan turned it away.
    pub(crate) fn record(&self, scan: Duration, spared: Option<Duration>) {
        let add = |a: &AtomicU64, d: Duration| {
            let v = a.load(Ordering::Relaxed);
            a.store(v.saturating_add(d.as_nanos() as u64), Ordering::Relaxed);
        };
        add(&self.scan_ns, scan);
        if let Some(d) = spared {
            add(&self.spared_ns, d);
        }
        let n = self.samples.load(Ordering::Relaxed) + 1;
        self.samples.store(n, Ordering::Relaxed);
        if n.is_multiple_of(SAMPLES_PER_DECISION) {
            let scan = self.scan_ns.load(Ordering::Relaxed);
            let spared = self.spared_ns.load(Ordering::Relaxed);
            self.skip.store(scan > spared, Ordering::Relaxed);
            self.scan_ns.store(scan / 2, Ordering::Relaxed);
            self.spared_ns.store(spared / 2, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(crate) fn skipping(&self) -> bool {
        self.skip.load(Ordering::Relaxed)
    }

    /// Tests: decide now, as if measured.
    #[cfg(test)]
    pub(crate) fn force(&self, skip: bool) {
        self.skip.store(skip, Ordering::Relaxed);
    }
}

/// The literal set for one pattern: every match contains one of them.
#[cfg(test)]
fn required_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_automata::util::syntax::parse(pattern).ok()?;
    analyze(&hir).best()
}

#[derive(Debug, Default)]
struct Info {
    /// The node matches exactly one of these strings.
    exact: Option<Vec<Vec<u8>>>,
    /// Every match of the node contains one of these strings.
    required: Option<Vec<Vec<u8>>>,
}

impl Info {
    fn best(self) -> Option<Vec<Vec<u8>>> {
        pick(self.exact, self.required)
    }
}

/// Selectivity score of a literal set: the shortest member's length,
/// with ties going to the smaller set.
fn score(set: &[Vec<u8>]) -> (usize, std::cmp::Reverse<usize>) {
    let min = set.iter().map(Vec::len).min().unwrap_or(0);
    (min, std::cmp::Reverse(set.len()))
}

fn pick(a: Option<Vec<Vec<u8>>>, b: Option<Vec<Vec<u8>>>) -> Option<Vec<Vec<u8>>> {
    let a = a.filter(|s| score(s).0 > 0);
    let b = b.filter(|s| score(s).0 > 0);
    match (a, b) {
        (Some(a), Some(b)) => Some(if score(&b) > score(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A class of at most four characters (`[Aa]`, `(?i)k` = `[Kk\u{212A}]`)
/// is as good as the literals it contains.
fn small_class(class: &Class) -> Option<Vec<Vec<u8>>> {
    const MAX: u32 = 4;
    match class {
        Class::Unicode(u) => {
            let n: u32 = u
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if n > MAX {
                return None;
            }
            let chars = u.ranges().iter().flat_map(|r| {
                (u32::from(r.start())..=u32::from(r.end())).filter_map(char::from_u32)
            });
            Some(chars.map(|c| c.to_string().into_bytes()).collect())
        }
        Class::Bytes(b) => {
            let n: u32 = b
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if n > MAX {
                return None;
            }
            Some(
                b.ranges()
                    .iter()
                    .flat_map(|r| (r.start()..=r.end()).map(|c| vec![c]))
                    .collect(),
            )
        }
    }
}

fn cross(a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    if a.len() * b.len() > MAX_SET {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            if x.len() + y.len() > MAX_LIT {
                return None;
            }
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    Some(out)
}

fn analyze(hir: &Hir) -> Info {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Info {
            exact: Some(vec![Vec::new()]),
            required: None,
        },
        HirKind::Literal(lit) => Info {
            exact: Some(vec![lit.0.to_vec()]),
            required: None,
        },
        HirKind::Class(c) => Info {
            exact: small_class(c),
            required: None,
        },
        HirKind::Capture(cap) => analyze(&cap.sub),
        HirKind::Repetition(rep) => {
            if rep.min == 0 {
                return Info::default();
            }
            let sub = analyze(&rep.sub);
            if rep.min == 1 && rep.max == Some(1) {
                return sub;
            }
            Info {
                exact: None,
                required: sub.best(),
            }
        }
        HirKind::Concat(children) => {
            // Runs of exact children are multiplied out into longer
            // literals; every finished run and every child's own requirement
            // is a candidate, and the best candidate wins.
            let mut best: Option<Vec<Vec<u8>>> = None;
            let mut run: Option<Vec<Vec<u8>>> = Some(vec![Vec::new()]);
            let mut all_exact = true;
            for child in children {
                let info = analyze(child);
                match info.exact {
                    Some(ex) => {
                        run = match run.take() {
                            Some(r) => match cross(&r, &ex) {
                                Some(c) => Some(c),
                                None => {
                                    // Too big to multiply: close the run.
                                    // The node is then no longer one of a
                                    // known set of strings.
                                    all_exact = false;
                                    best = pick(best, Some(r));
                                    Some(ex)
                                }
                            },
                            None => Some(ex),
                        };
                    }
                    None => {
                        all_exact = false;
                        best = pick(best, run.take());
                        best = pick(best, info.required);
                        run = Some(vec![Vec::new()]);
                    }
                }
            }
            if all_exact {
                return Info {
                    exact: run,
                    required: None,
                };
            }
            Info {
                exact: None,
                required: pick(best, run),
            }
        }
        HirKind::Alternation(children) => {
            let mut exact: Option<Vec<Vec<u8>>> = Some(Vec::new());
            let mut required: Option<Vec<Vec<u8>>> = Some(Vec::new());
            for child in children {
                let info = analyze(child);
                exact = match (exact, &info.exact) {
                    (Some(mut acc), Some(ex)) => {
                        acc.extend(ex.iter().cloned());
                        Some(acc)
                    }
                    _ => None,
                };
                let branch = pick(info.exact, info.required);
                required = match (required, branch) {
                    (Some(mut acc), Some(b)) => {
                        acc.extend(b);
                        Some(acc)
                    }
                    _ => None,
                };
            }
            let exact = exact.filter(|e| e.len() <= MAX_SET);
            let required = required.filter(|r| r.len() <= MAX_SET);
            Info { exact, required }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` lines through the gauge, each sample with these costs.
    fn feed(g: &PrefilterGauge, n: u64, scan_ns: u64, spared_ns: Option<u64>) -> Vec<Screen> {
        (0..n)
            .map(|_| {
                let s = g.next();
                if s == Screen::Sample {
                    g.record(
                        Duration::from_nanos(scan_ns),
                        spared_ns.map(Duration::from_nanos),
                    );
                }
                s
            })
            .collect()
    }

    #[test]
    fn the_gauge_skips_a_scan_that_costs_more_than_it_spares_and_comes_back() {
        let g = PrefilterGauge::default();
        // One line in 64 is a sample; until a decision, every other scans.
        let first = feed(&g, 64 * 63, 500, Some(100));
        assert_eq!(first.iter().filter(|s| **s == Screen::Sample).count(), 63);
        assert!(first.iter().all(|s| *s != Screen::Skip));
        // The 64th sample decides: scans of 500 ns spared DFA runs of 100.
        feed(&g, 64, 500, Some(100));
        assert!(g.skipping());
        let skipped = feed(&g, 64 * 64, 500, None);
        assert!(skipped.iter().all(|s| *s != Screen::Scan));
        assert_eq!(skipped.iter().filter(|s| **s == Screen::Sample).count(), 64);
        // The log changes: cheap scans that spare long DFA runs. The
        // halved sums let it turn back within a few decisions.
        for _ in 0..4 {
            feed(&g, 64 * 64, 50, Some(2_000));
        }
        assert!(!g.skipping());
        assert!(feed(&g, 63, 50, Some(2_000))
            .iter()
            .all(|s| *s == Screen::Scan));
        // A copy measures from the start.
        g.force(true);
        assert!(!g.clone().skipping());
    }

    fn lits(p: &str) -> Option<Vec<String>> {
        required_literals(p).map(|s| {
            s.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        })
    }

    #[test]
    fn picks_longest_required_literal() {
        let l = lits(r"^(?:\S+ )?sshd\[\d+\]: Failed password for \S+ from \S+ port \d+$").unwrap();
        assert_eq!(l, vec!["]: Failed password for ".to_string()]);
    }

    #[test]
    fn alternation_multiplies_out() {
        let mut l = lits(r"^x(?:Failed|Invalid) user \d+").unwrap();
        l.sort();
        assert_eq!(
            l,
            vec!["xFailed user ".to_string(), "xInvalid user ".to_string()]
        );
    }

    #[test]
    fn optional_parts_are_not_required() {
        assert_eq!(lits(r"^(?:abc)?\d+$"), None);
        assert_eq!(lits(r".*"), None);
        assert_eq!(lits(r"(?:abc|\d+)x"), Some(vec!["x".to_string()]));
    }

    #[test]
    fn oversized_products_are_not_exact() {
        // Multiplying the prefix into the long alternative would exceed the
        // length cap; the prefix must still be kept as a requirement and the
        // alternation must not pose as the whole node.
        let p = format!("^x: (?:a|pam failed: (?:{}|b))$", "L".repeat(70));
        let l = lits(&p).unwrap();
        assert!(
            l.iter()
                .all(|s| "x: pam failed: b".contains(s.as_str()) || "x: a".contains(s.as_str())),
            "{l:?}"
        );
        let pf = Prefilter::new(std::slice::from_ref(&p));
        assert!(pf.may_match(&format!("x: pam failed: {}", "L".repeat(70))));
        assert!(pf.may_match("x: pam failed: b"));
        assert!(pf.may_match("x: a"));
    }

    #[test]
    fn case_insensitive_letters_become_variants() {
        let mut set = required_literals(r"(?i)fail \d").unwrap();
        set.sort();
        assert_eq!(set.len(), 16, "{set:?}");
        assert!(
            set.contains(&b"FAIL ".to_vec()) && set.contains(&b"fail ".to_vec()),
            "{set:?}"
        );
        let pf = Prefilter::new(&[r"(?i)failed login \d".to_string()]);
        assert!(pf.may_match("FAILED LOGIN 3"));
        assert!(pf.may_match("Failed Login 3"));
        assert!(!pf.may_match("accepted"));
        // `(?i)k` includes the Kelvin sign; it must stay a match.
        let pf = Prefilter::new(&[r"(?i)kk \d".to_string()]);
        assert!(pf.may_match("\u{212A}k 1"));
        // A sshd-style [Ii] pair keeps both spellings.
        let mut set = required_literals(r"^x [Ii]nvalid user \d").unwrap();
        set.sort();
        assert_eq!(
            set,
            vec![b"x Invalid user ".to_vec(), b"x invalid user ".to_vec()]
        );
    }

    #[test]
    fn prefilter_rejects_lines_without_literals() {
        let pf = Prefilter::new(&[
            r"^Failed password for \S+ from (\S+)$".to_string(),
            r"^Invalid user \S+ from (\S+)$".to_string(),
        ]);
        assert!(pf.is_active());
        assert!(pf.may_match("Invalid user bob from 1.2.3.4"));
        assert!(pf.may_match("Failed password for bob from 1.2.3.4"));
        assert!(!pf.may_match("Accepted publickey for bob from 1.2.3.4"));
        // One pattern without literals disables the prefilter.
        let pf = Prefilter::new(&[r"^Failed (\S+)$".to_string(), r"^(\S+)$".to_string()]);
        assert!(!pf.is_active());
        assert!(pf.may_match("anything"));
    }
}
