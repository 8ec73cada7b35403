//! One literal search for several filters: the jails that follow one file
//! look at each line together, and most lines (a log under attack is mostly
//! lines of other services, or of other kinds) contain none of the literals
//! any of their filters requires. One scan over the union of those literals
//! drops such a line once, instead of once per filter; a line that has some
//! of them goes on only to the filters that require one of those.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use super::FilterSet;

/// Which of a list of filters may match a line.
#[derive(Debug, Clone)]
pub struct SharedPrefilter {
    /// Every literal of every filter, every occurrence (overlapping): one
    /// pass says which filters a line admits. (A first leftmost pass to
    /// drop lines with none cost as much as this one: with the ~100
    /// literals of 20 filters it is no SIMD scan but an automaton walk.)
    which: Option<AhoCorasick>,
    /// Per literal (pattern id of both automata): the filters requiring it.
    owners: Vec<Vec<usize>>,
    /// Filters with no literal set: any line may match them.
    open: Vec<usize>,
    filters: usize,
}

impl SharedPrefilter {
    /// The prefilter over `filters`, in that order (indices below refer to
    /// it).
    pub fn new(filters: &[&FilterSet]) -> SharedPrefilter {
        let mut literals: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut open = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            match f.required_literals() {
                Some(lits) => literals.extend(minimal(lits).into_iter().map(|l| (l, i))),
                None => open.push(i),
            }
        }
        literals.sort();
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Vec<usize>> = Vec::new();
        for (lit, i) in literals {
            if patterns.last() != Some(&lit) {
                patterns.push(lit);
                owners.push(Vec::new());
            }
            let o = owners.last_mut().expect("pushed above");
            if o.last() != Some(&i) {
                o.push(i);
            }
        }
        let build = |patterns: &[Vec<u8>], dfa: bool| {
            if patterns.is_empty() {
                return None;
            }
            let mut b = AhoCorasickBuilder::new();
            b.match_kind(MatchKind::Standard);
            if dfa {
                b.kind(Some(AhoCorasickKind::DFA));
            }
            b.build(patterns).ok()
        };
        let which = build(&patterns, true).or_else(|| build(&patterns, false));
        if which.is_none() {
            // An automaton that cannot be built (too large): every filter
            // sees every line, as without this prefilter.
            owners.clear();
            open = (0..filters.len()).collect();
        }
        SharedPrefilter {
            which,
            owners,
            open,
            filters: filters.len(),
        }
    }

    /// Number of filters it was built over.
    pub fn len(&self) -> usize {
        self.filters
    }

    pub fn is_empty(&self) -> bool {
        self.filters == 0
    }

    /// Sets `admitted[i]` for each filter `i` that may match `line` (and
    /// clears the others). `false` in `admitted[i]` means filter `i` cannot
    /// match: its own prefilter would reject the line. Returns whether any
    /// filter is admitted.
    pub fn admit(&self, line: &str, admitted: &mut Vec<bool>) -> bool {
        admitted.clear();
        admitted.resize(self.filters, false);
        for &i in &self.open {
            admitted[i] = true;
        }
        let mut any = !self.open.is_empty();
        let Some(which) = &self.which else {
            return any;
        };
        for m in which.find_overlapping_iter(line) {
            for &i in &self.owners[m.pattern().as_usize()] {
                admitted[i] = true;
                any = true;
            }
        }
        any
    }
}

/// `literals` without those that contain another one: a line that has
/// the longer one has the shorter one too.
fn minimal(literals: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut by_len: Vec<&Vec<u8>> = literals.iter().collect();
    by_len.sort_by_key(|l| (l.len(), l.as_slice()));
    by_len.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for l in by_len {
        if !kept.iter().any(|k| contains(l, k)) {
            kept.push(l.clone());
        }
    }
    kept
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::filter::LineMatch;

    fn filter(failregex: &[&str]) -> FilterSet {
        let fail: Vec<String> = failregex.iter().map(|s| s.to_string()).collect();
        FilterSet::compile(&fail, &[], None).unwrap()
    }

    fn admitted(p: &SharedPrefilter, line: &str) -> Vec<bool> {
        let mut a = Vec::new();
        p.admit(line, &mut a);
        a
    }

    #[test]
    fn a_line_goes_to_the_filters_whose_literals_it_has() {
        let ssh = filter(&[r"^Failed password for \S+ from <HOST>"]);
        let ftp = filter(&[r"^ftp login refused from <HOST>"]);
        // Overlapping literals: "password" lies inside "Failed password".
        let pw = filter(&[
            r"^bad password from <HOST>",
            r"^password for \S+ from <HOST>",
        ]);
        let p = SharedPrefilter::new(&[&ssh, &ftp, &pw]);
        assert_eq!(p.len(), 3);
        assert_eq!(
            admitted(&p, "cron[1]: session opened"),
            [false, false, false]
        );
        assert_eq!(
            admitted(&p, "Failed password for root from 198.51.100.7"),
            [true, false, true]
        );
        assert_eq!(
            admitted(&p, "ftp login refused from 198.51.100.7"),
            [false, true, false]
        );
    }

    #[test]
    fn literals_containing_another_are_left_out() {
        let lits: Vec<Vec<u8>> = [
            "Failed password",
            "Failed ",
            "Invalid user",
            "user",
            "Failed ",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let mut m = minimal(&lits);
        m.sort();
        assert_eq!(m, [b"Failed ".to_vec(), b"user".to_vec()]);
    }

    #[test]
    fn a_filter_without_literals_sees_every_line() {
        let ssh = filter(&[r"^Failed password for \S+ from <HOST>"]);
        let any = filter(&[r"^<HOST>"]);
        assert!(any.required_literals().is_none());
        let p = SharedPrefilter::new(&[&ssh, &any]);
        assert_eq!(admitted(&p, "198.51.100.7 GET /"), [false, true]);
        let only = SharedPrefilter::new(&[&any]);
        assert_eq!(admitted(&only, "anything"), [true]);
    }

    /// The shared prefilter never turns away a line a filter matches, and
    /// a filter it admits matches as it does alone: every built-in filter
    /// in every mode, over every line of every built-in sample log.
    #[test]
    fn a_line_not_admitted_never_matches() {
        use crate::filter::builtin::{builtin, builtin_names};
        let mut filters = Vec::new();
        for name in builtin_names() {
            let def = builtin(name).unwrap();
            filters.push((name.to_string(), FilterSet::from_def(&def, None).unwrap()));
            for mode in def.modes.keys() {
                let f = FilterSet::from_def(&def, Some(mode)).unwrap();
                filters.push((format!("{name}/{mode}"), f));
            }
        }
        let refs: Vec<&FilterSet> = filters.iter().map(|(_, f)| f).collect();
        let p = SharedPrefilter::new(&refs);
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/samples");
        let now = SystemTime::now();
        let (mut lines, mut matches, mut dropped) = (0, 0, 0);
        for entry in std::fs::read_dir(&samples).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                lines += 1;
                let a = admitted(&p, line);
                dropped += usize::from(!a.contains(&true));
                for (i, (name, f)) in filters.iter().enumerate() {
                    let found = f.match_line(line, now);
                    if !matches!(found, LineMatch::NoMatch { .. }) {
                        matches += 1;
                        assert!(a[i], "{name} matches {line:?} but was not admitted");
                    }
                    // Admitted, the filter skips its own literal scan: the
                    // same result.
                    if a[i] {
                        assert_eq!(f.match_screened(line, now, true), found, "{name} {line:?}");
                    }
                }
            }
        }
        assert!(
            lines > 100 && matches > 100,
            "{lines} lines, {matches} matches"
        );
        assert!(dropped > 0, "some sample lines have no filter's literal");
    }
}
