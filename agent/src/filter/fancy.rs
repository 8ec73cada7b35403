//! Regexes the `regex` crate cannot run: look-around, back-references,
//! atomic groups, possessive quantifiers and conditionals (fail2ban's
//! filters use a few). Such a regex runs in `fancy-regex`, a backtracker,
//! but only on lines that a `regex`-crate *superset* of it already matched:
//! the superset drops what the regex crate cannot do (a look-around
//! becomes nothing, a back-reference any text, an atomic group a plain
//! one), so every line the regex matches, it matches too, and the set
//! scan, the literal prefilter and the first-match DFA of the filter work
//! on it unchanged. A search that exceeds the backtrack limit counts as no
//! match and is counted ([`super::FilterSet::backtrack_limit_hits`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use regex_automata::util::primitives::NonMaxUsize;

/// Backtracking steps one search may take: ample for log lines (the stock
/// filters' look-arounds need a few hundred), small enough that a hostile
/// line costs about a millisecond.
pub(super) const BACKTRACK_LIMIT: usize = 100_000;

/// One regex that needs the backtracker.
#[derive(Debug, Clone)]
pub(super) struct Fancy {
    regex: fancy_regex::Regex,
    limit_hits: Arc<AtomicU64>,
}

impl Fancy {
    /// Builds `pattern` (tags already expanded) in fancy-regex; `Err` holds
    /// fancy-regex's message.
    pub(super) fn new(pattern: &str, limit_hits: Arc<AtomicU64>) -> Result<Fancy, String> {
        let regex = fancy_regex::RegexBuilder::new(&ascii_boundaries(pattern))
            .backtrack_limit(BACKTRACK_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Fancy { regex, limit_hits })
    }

    /// Index of the group named `name`.
    pub(super) fn group_index(&self, name: &str) -> Option<usize> {
        self.regex.capture_names().position(|n| n == Some(name))
    }

    /// Number of groups, the whole match included.
    pub(super) fn group_count(&self) -> usize {
        self.regex.captures_len()
    }

    /// Searches from `start` (anchors still see the whole text) and puts
    /// the groups' spans in `slots` (2 per group, as far as they reach).
    /// `None`: no match, or the backtrack limit was hit (counted).
    pub(super) fn search_slots(
        &self,
        text: &str,
        start: usize,
        slots: &mut [Option<NonMaxUsize>],
    ) -> Option<()> {
        let caps = match self.regex.captures_from_pos(text, start) {
            Ok(Some(caps)) => caps,
            Ok(None) => return None,
            Err(_) => {
                self.limit_hits.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        for (g, pair) in slots.chunks_exact_mut(2).enumerate() {
            let m = caps.get(g);
            pair[0] = m.and_then(|m| NonMaxUsize::new(m.start()));
            pair[1] = m.and_then(|m| NonMaxUsize::new(m.end()));
        }
        Some(())
    }

    /// Whether the regex matches anywhere in `text` (an ignoreregex).
    pub(super) fn is_match(&self, text: &str) -> bool {
        match self.regex.is_match(text) {
            Ok(m) => m,
            Err(_) => {
                self.limit_hits.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// An ASCII word character, as `(?-u:\w)`.
const WORD: &str = "[0-9A-Za-z_]";

/// The engine writes word boundaries as ASCII ones, `(?-u:\b)` (see
/// `host::asciify`), which fancy-regex cannot parse (it does not switch
/// Unicode mode): spelled out as the look-arounds they are, so the
/// backtracker sees the same boundaries as the `regex`-crate superset.
fn ascii_boundaries(pattern: &str) -> String {
    let b = format!("(?:(?<={WORD})(?!{WORD})|(?<!{WORD})(?={WORD}))");
    let not_b = format!("(?:(?<={WORD})(?={WORD})|(?<!{WORD})(?!{WORD}))");
    pattern
        .replace(r"(?-u:\b)", &b)
        .replace(r"(?-u:\B)", &not_b)
}

/// A `regex`-crate pattern that matches every text `pattern` matches (and
/// maybe more): look-arounds removed, back-references as any text, atomic
/// groups and possessive quantifiers as plain ones, a conditional as an
/// optional group of its branches. Capture groups keep their names.
pub(crate) fn superset(pattern: &str) -> String {
    let c: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    let mut in_class = false;
    // For each open group: whether its `)` closes a conditional and must
    // become `)?`.
    let mut open: Vec<bool> = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if in_class {
            if ch == '\\' && i + 1 < c.len() {
                out.push(ch);
                out.push(c[i + 1]);
                i += 2;
                continue;
            }
            if ch == ']' {
                in_class = false;
            }
            out.push(ch);
            i += 1;
            continue;
        }
        match ch {
            '\\' if i + 1 < c.len() => {
                let n = c[i + 1];
                if n.is_ascii_digit() && n != '0' {
                    // \1 .. \99: a back-reference.
                    let mut j = i + 1;
                    while j < c.len() && c[j].is_ascii_digit() {
                        j += 1;
                    }
                    out.push_str("(?s:.*?)");
                    i = j;
                } else if n == 'k' && c.get(i + 2) == Some(&'<') {
                    let end = find(&c, i + 3, '>').map_or(c.len(), |e| e + 1);
                    out.push_str("(?s:.*?)");
                    i = end;
                } else {
                    out.push(ch);
                    out.push(n);
                    i += 2;
                }
            }
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                // `[]` / `[^]` start with a literal `]`.
                if c.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if c.get(i) == Some(&']') {
                    out.push(']');
                    i += 1;
                }
            }
            '(' if starts(&c, i, "(?=")
                || starts(&c, i, "(?!")
                || starts(&c, i, "(?<=")
                || starts(&c, i, "(?<!") =>
            {
                i = group_end(&c, i);
            }
            '(' if starts(&c, i, "(?P=") => {
                i = find(&c, i, ')').map_or(c.len(), |e| e + 1);
                out.push_str("(?s:.*?)");
            }
            '(' if starts(&c, i, "(?>") => {
                out.push_str("(?:");
                open.push(false);
                i += 3;
            }
            '(' if starts(&c, i, "(?(") => {
                // (?(cond)yes|no): skip the condition, keep the branches.
                let cond_end = find(&c, i + 3, ')').map_or(c.len(), |e| e + 1);
                out.push_str("(?:(?:");
                open.push(true);
                i = cond_end;
            }
            '(' => {
                out.push('(');
                open.push(false);
                i += 1;
            }
            ')' => {
                out.push(')');
                if open.pop() == Some(true) {
                    out.push_str("?)");
                }
                i += 1;
                // A quantifier on the group is copied by the next turn.
            }
            '*' | '+' | '?' | '}' => {
                out.push(ch);
                i = possessive(&c, i + 1);
            }
            _ => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// After a quantifier at `i - 1`: drops a possessive `+`, keeps a lazy
/// `?`. Returns the next index.
fn possessive(c: &[char], i: usize) -> usize {
    let quant = i
        .checked_sub(1)
        .is_some_and(|p| matches!(c[p], '*' | '+' | '?' | '}'));
    if quant && c.get(i) == Some(&'+') {
        return i + 1;
    }
    i
}

fn starts(c: &[char], i: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, x)| c.get(i + k) == Some(&x))
}

fn find(c: &[char], from: usize, x: char) -> Option<usize> {
    (from..c.len()).find(|&k| c[k] == x)
}

/// The index after the `)` closing the group that opens at `i`.
fn group_end(c: &[char], i: usize) -> usize {
    let mut depth = 0usize;
    let mut k = i;
    let mut in_class = false;
    while k < c.len() {
        match c[k] {
            '\\' => k += 1,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
        k += 1;
    }
    c.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fancy(p: &str) -> fancy_regex::Regex {
        fancy_regex::Regex::new(p).unwrap()
    }

    /// A look-around next to a word boundary (fail2ban's apache-auth): the
    /// backtracker takes the engine's ASCII `\b`, with the same answers as
    /// the `regex` crate's on ASCII and non-ASCII neighbours.
    #[test]
    fn ascii_word_boundaries_reach_the_backtracker_unchanged_in_meaning() {
        let hits = Arc::new(AtomicU64::new(0));
        for (p, texts) in [
            (
                r"(?-u:\b)x(?-u:\b)",
                ["x", "a x", "ax", "x_", "éxé", "éx1", "x-"],
            ),
            (
                r"(?-u:\B)x(?-u:\B)",
                ["x", "axa", "ax", "_x_", "éxé", "1x1", "-x-"],
            ),
        ] {
            let plain = regex::Regex::new(p).unwrap();
            let f = Fancy::new(&format!("(?=.){p}"), hits.clone()).unwrap();
            for t in texts {
                assert_eq!(
                    f.regex.is_match(t).unwrap(),
                    plain.is_match(t),
                    "{p} on {t:?}"
                );
            }
        }
        let set = crate::filter::FilterSet::from_def(
            &crate::filter::FilterDef {
                failregex: vec![
                    r"^user (?!`)<F-USER>(?:\S*|.*?)</F-USER> (?:authentication failure|not found)\b from <HOST>$".into(),
                ],
                ..Default::default()
            },
            None,
        )
        .expect("a look-ahead beside a word boundary compiles");
        let now = std::time::SystemTime::now();
        let hit = set.match_line("user bob not found from 198.51.100.7", now);
        assert!(
            matches!(&hit, crate::filter::LineMatch::Failure(f) if f.user.as_deref() == Some("bob")),
            "{hit:?}"
        );
        let quoted = set.match_line("user `bob` not found from 198.51.100.7", now);
        assert!(
            matches!(quoted, crate::filter::LineMatch::NoMatch { .. }),
            "{quoted:?}"
        );
    }

    #[test]
    fn the_superset_drops_only_what_the_regex_crate_lacks() {
        for (p, want) in [
            (r"^a(?=b)b$", r"^ab$"),
            (r"^a(?!x(y))\w+$", r"^a\w+$"),
            (r"(?<=x)y(?<!z)", r"y"),
            (r"^(\w+) \1$", r"^(\w+) (?s:.*?)$"),
            (r"^(?P<u>\w+) (?P=u)$", r"^(?P<u>\w+) (?s:.*?)$"),
            (r"^(?>a+)b", r"^(?:a+)b"),
            (r"^a++b*+c?+d{2}+", r"^a+b*c?d{2}"),
            (r"^(a)?(?(1)b|c)$", r"^(a)?(?:(?:b|c)?)$"),
            (r"[(?=]x\(?=", r"[(?=]x\(?="),
            (r"^a+?b", r"^a+?b"),
        ] {
            assert_eq!(superset(p), want, "{p}");
            regex::Regex::new(&superset(p)).unwrap();
        }
    }

    #[test]
    fn every_match_of_the_regex_is_a_match_of_its_superset() {
        let patterns = [
            r"^user (?!root)(\w+) from (\S+)$",
            r"^(\w+) said (?P<w>\w+) and \1$",
            r"^(?:(?<=^)x|y)(?>z+)z?$",
            r"^(a)?(?(1)b|c)d$",
        ];
        let texts = [
            "user bob from 1.2.3.4",
            "user root from 1.2.3.4",
            "al said hi and al",
            "al said hi and bo",
            "xzz",
            "yz",
            "abd",
            "cd",
            "bd",
        ];
        for p in patterns {
            let f = fancy(p);
            let s = regex::Regex::new(&superset(p)).unwrap();
            for t in texts {
                if f.is_match(t).unwrap() {
                    assert!(s.is_match(t), "{p} matches {t:?} but its superset does not");
                }
            }
        }
    }

    #[test]
    fn a_search_over_the_backtrack_limit_is_no_match_and_counted() {
        let hits = Arc::new(AtomicU64::new(0));
        let f = Fancy::new(r"^(a|aa)+(?=b)c", hits.clone()).unwrap();
        let text = "a".repeat(64);
        let mut slots = [None; 2];
        assert!(f.search_slots(&text, 0, &mut slots).is_none());
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        assert!(!f.is_match(&text));
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    fn set(fail: &[&str], ignore: &[&str]) -> crate::filter::FilterSet {
        let f: Vec<String> = fail.iter().map(|s| s.to_string()).collect();
        let i: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        crate::filter::FilterSet::compile(&f, &i, None).unwrap()
    }

    fn host(fs: &crate::filter::FilterSet, line: &str) -> Option<String> {
        match fs.match_line(line, crate::filter::tests::now()) {
            crate::filter::LineMatch::Failure(f) => Some(f.host.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_filter_runs_look_around_and_back_references_in_the_backtracker() {
        let fs = set(
            &[
                r"^login (?!ok)\w+ from <HOST>$",
                r"^user (?P<u>\w+) then (?P=u) from <HOST>$",
                r"^plain from <HOST>$",
            ],
            &[r"from (?=198\.51\.100\.9$)"],
        );
        assert_eq!(
            host(&fs, "login failed from 203.0.113.1"),
            Some("203.0.113.1".into())
        );
        // The superset matches this line; the regex itself does not.
        assert_eq!(host(&fs, "login ok from 203.0.113.1"), None);
        assert_eq!(
            host(&fs, "user al then al from 203.0.113.2"),
            Some("203.0.113.2".into())
        );
        assert_eq!(host(&fs, "user al then bo from 203.0.113.2"), None);
        assert_eq!(
            host(&fs, "plain from 203.0.113.3"),
            Some("203.0.113.3".into())
        );
        // The look-ahead ignoreregex drops only its address.
        assert_eq!(host(&fs, "login failed from 198.51.100.9"), None);
        assert_eq!(
            host(&fs, "login failed from 198.51.100.99"),
            Some("198.51.100.99".into())
        );
        // A decoy that is no address: the search goes on to the real one.
        let fs = set(&[r"^(?!x)(?:\S+ )*from <HOST>"], &[]);
        assert_eq!(
            host(&fs, "a from 999.1.1.1 b from 203.0.113.4"),
            Some("203.0.113.4".into())
        );
        assert_eq!(fs.backtrack_limit_hits(), 0);
    }

    #[test]
    fn a_hostile_line_costs_the_limit_and_is_counted_not_banned() {
        // Its superset matches the line; the look-behind then fails after
        // every one of the exponentially many ways to split the a's.
        let fs = set(
            &[
                r"^(?:(?!b)a|(?!b)aa)+(?<!a) from <HOST>$",
                r"^a+ from <HOST>$",
            ],
            &[],
        );
        let hostile = format!("{} from 203.0.113.5", "a".repeat(64));
        // The next failregex still gets its turn.
        assert_eq!(host(&fs, &hostile), Some("203.0.113.5".into()));
        assert!(fs.backtrack_limit_hits() >= 1);
        let fs = set(&[r"^(?:(?!b)a|(?!b)aa)+(?<!a) from <HOST>$"], &[]);
        assert_eq!(host(&fs, &hostile), None);
        assert!(fs.backtrack_limit_hits() >= 1);
    }
}
