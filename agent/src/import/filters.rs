//! A fail2ban filter variant (its expanded failregex, ignoreregex,
//! datepattern, prefregex, maxlines) as an xban filter, translated whole,
//! or refused naming the feature xban's engine lacks.
//!
//! The regexes are Python `re` syntax with fail2ban's tags. Rewrites are
//! made only where both mean exactly the same (`\Z` is `\z`, a `{` that is
//! no quantifier is a literal, `[` inside a class is a literal, `\<` is
//! `<`, `{,n}` is `{0,n}`, `(?#...)` is nothing). Look-around,
//! back-references, conditionals and atomic groups pass as written: the
//! engine runs those regexes in its backtracker. Everything else the engine
//! cannot do refuses the variant.

use std::fmt;

use super::reader::ExpandedJail;
use crate::filter::time::DateCut;
use crate::filter::{FilterDef, FilterError, FilterSet};

/// Features of fail2ban filters that xban's engine does not have. The
/// variant of a filter using one is refused, never imported in part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Missing {
    /// `maxlines` above 1 with a prefregex, or above the engine's bound.
    MultiLine,
    /// `<DNS>`, `<CIDR>`, `<SUBNET>`, `<F-ID>` and other
    /// field tags xban's engine does not know.
    Tag,
    /// A datepattern xban's reading of fail2ban's syntax refuses
    /// (back-references or look-around in it, an unknown directive).
    DatePattern,
    /// Anything else the `regex` crate or the engine refuses.
    Syntax,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Missing::MultiLine => "maxlines > 1 with a prefregex, or above 1000",
            Missing::Tag => "a tag xban's engine does not have",
            Missing::DatePattern => "datepattern form",
            Missing::Syntax => "regex syntax the regex crate cannot compile",
        })
    }
}

/// Why a variant was refused: the feature and where it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub missing: Missing,
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.missing, self.detail)
    }
}

fn refuse(missing: Missing, detail: impl Into<String>) -> Refusal {
    Refusal {
        missing,
        detail: detail.into(),
    }
}

/// A translated variant and what differs in how it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub def: FilterDef,
    /// Behaviour that is close but not the same (reported as approximated).
    pub notes: Vec<String>,
}

/// Translates the filter part of an expanded jail.
pub fn translate(jail: &ExpandedJail) -> Result<Translated, Refusal> {
    let prefregex = jail
        .prefregex
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| translate_checked("prefregex", p))
        .transpose()?;
    let mut maxlines = None;
    if let Some(m) = &jail.maxlines {
        let n: i64 = m.trim().parse().unwrap_or(i64::MAX);
        if n > 1 {
            // The engine buffers up to MAX_LINES lines, and runs a
            // prefregex on single lines only.
            if n > crate::filter::lines::MAX_LINES as i64 || prefregex.is_some() {
                return Err(refuse(Missing::MultiLine, format!("maxlines = {m}")));
            }
            maxlines = Some(n as usize);
        }
    }
    let failregex = jail
        .failregex
        .iter()
        .enumerate()
        .map(|(i, r)| translate_checked(&format!("failregex[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let ignoreregex = jail
        .ignoreregex
        .iter()
        .enumerate()
        .map(|(i, r)| translate_checked(&format!("ignoreregex[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let notes = Vec::new();
    // fail2ban's line model: the datepattern as fail2ban reads it (its
    // default forms without one), the date cut wherever it stands.
    let datepattern = jail
        .datepattern
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(str::to_string);
    if let Some(d) = &datepattern {
        if let Err(e) = crate::filter::time::Templates::parse(d) {
            return Err(refuse(Missing::DatePattern, format!("{d}: {e}")));
        }
    }
    let def = FilterDef {
        prefregex,
        failregex,
        ignoreregex,
        datepattern,
        date_cut: DateCut::Anywhere,
        maxlines,
        description: Some(format!(
            "imported from fail2ban filter {}{}",
            jail.filter_spec,
            if jail.logtype == "journal" {
                " (logtype journal)"
            } else {
                ""
            }
        )),
        ..FilterDef::default()
    };
    match FilterSet::from_def(&def, None) {
        Ok(_) => Ok(Translated { def, notes }),
        Err(FilterError::NoHostTag { place }) => Err(refuse(
            Missing::Tag,
            format!("{place} has no <HOST>/<ADDR>/<IP4>/<IP6>"),
        )),
        Err(FilterError::NoFailregex) => {
            Err(refuse(Missing::Syntax, "the filter has no failregex"))
        }
        Err(e) => Err(refuse(Missing::Syntax, e.to_string())),
    }
}

/// Translates regex `r`, named `place` in a refusal.
fn translate_checked(place: &str, r: &str) -> Result<String, Refusal> {
    translate_regex(r).map_err(|e| Refusal {
        missing: e.missing,
        detail: format!("{place} {}: {r}", e.detail),
    })
}

/// Python `re` + fail2ban tags → the xban engine's syntax.
pub fn translate_regex(src: &str) -> Result<String, Refusal> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len() + 8);
    let mut i = 0;
    // Whether the previous token can take a quantifier (for bare `{`).
    let mut quantifiable = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err(refuse(Missing::Syntax, "ends with a lone backslash"));
                };
                i += 2;
                quantifiable = true;
                match n {
                    // A back-reference: the engine's backtracker runs it.
                    '1'..='9' => {
                        out.push('\\');
                        out.push(n);
                    }
                    'Z' => out.push_str("\\z"),
                    '<' => out.push_str("\\x3C"),
                    '>' => out.push_str("\\x3E"),
                    'b' | 'B' | 'A' => {
                        out.push('\\');
                        out.push(n);
                        quantifiable = false;
                    }
                    c if c.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if is_rust_meta(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            '(' => {
                let rest: String = chars[i..chars.len().min(i + 4)].iter().collect();
                // Look-around, conditionals, named back-references and
                // atomic groups: the engine's backtracker runs them as
                // written (the `(?P<`/`(?<` group-name rule below must not
                // take a look-behind for a name).
                if let Some(p) = ["(?<=", "(?<!", "(?=", "(?!", "(?(", "(?P=", "(?>"]
                    .iter()
                    .find(|p| rest.starts_with(*p))
                {
                    out.push_str(p);
                    i += p.chars().count();
                    quantifiable = false;
                    if *p == "(?(" || *p == "(?P=" {
                        // The condition / name up to its `)`.
                        let Some(q) = chars[i..].iter().position(|&c| c == ')') else {
                            return Err(refuse(Missing::Syntax, format!("unterminated {p}")));
                        };
                        let name: String = chars[i..i + q].iter().collect();
                        // Python's condition is a group number or name;
                        // the backtracker reads a bare name as a pattern
                        // to look for, so a name goes in angle brackets.
                        if *p == "(?(" && !name.chars().all(|c| c.is_ascii_digit()) {
                            out.push_str(&format!("<{name}>)"));
                        } else {
                            out.extend(&chars[i..=i + q]);
                        }
                        i += q + 1;
                        quantifiable = *p == "(?P=";
                    }
                    continue;
                }
                if rest.starts_with("(?#") {
                    // A comment: Python skips to the next `)`.
                    match chars[i..].iter().position(|&c| c == ')') {
                        Some(p) => i += p + 1,
                        None => return Err(refuse(Missing::Syntax, "unterminated (?#")),
                    }
                    continue;
                }
                // A named group's `<name>` is syntax, not a tag.
                if rest.starts_with("(?P<") || rest.starts_with("(?<") {
                    let Some(p) = chars[i..].iter().position(|&c| c == '>') else {
                        return Err(refuse(Missing::Syntax, "unterminated group name"));
                    };
                    out.extend(&chars[i..i + p + 1]);
                    i += p + 1;
                    quantifiable = false;
                    continue;
                }
                out.push('(');
                i += 1;
                quantifiable = false;
            }
            '[' => {
                i = translate_class(&chars, i, &mut out)?;
                quantifiable = true;
            }
            '{' => match quantifier_at(&chars, i) {
                Some((end, text)) if quantifiable => {
                    out.push_str(&text);
                    i = end;
                    // Possessive: the engine's backtracker runs it.
                    if chars.get(i) == Some(&'+') {
                        out.push('+');
                        i += 1;
                    }
                    quantifiable = false;
                }
                _ => {
                    out.push_str("\\{");
                    i += 1;
                    quantifiable = true;
                }
            },
            '}' => {
                out.push_str("\\}");
                i += 1;
                quantifiable = true;
            }
            '*' | '+' | '?' => {
                out.push(c);
                i += 1;
                // Possessive: the engine's backtracker runs it.
                if quantifiable && chars.get(i) == Some(&'+') {
                    out.push('+');
                    i += 1;
                    quantifiable = false;
                    continue;
                }
                // A lazy `?` after a quantifier belongs to it.
                if chars.get(i) == Some(&'?') && quantifiable {
                    out.push('?');
                    i += 1;
                }
                quantifiable = false;
            }
            '<' => {
                let (len, text) = translate_tag(&chars[i..])?;
                out.push_str(&text);
                i += len;
                quantifiable = true;
            }
            ')' => {
                out.push(')');
                i += 1;
                quantifiable = true;
            }
            '|' | '^' | '$' => {
                out.push(c);
                i += 1;
                quantifiable = false;
            }
            c => {
                out.push(c);
                i += 1;
                quantifiable = true;
            }
        }
    }
    Ok(out)
}

fn is_rust_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.'
            | '+'
            | '*'
            | '?'
            | '('
            | ')'
            | '|'
            | '['
            | ']'
            | '{'
            | '}'
            | '^'
            | '$'
            | '#'
            | '&'
            | '-'
            | '~'
    )
}

/// `{n}`, `{n,}`, `{n,m}`, `{,m}` at `i`: (end, Rust text).
fn quantifier_at(chars: &[char], i: usize) -> Option<(usize, String)> {
    let close = chars[i..].iter().position(|&c| c == '}')? + i;
    let body: String = chars[i + 1..close].iter().collect();
    let (lo, hi) = match body.split_once(',') {
        Some((lo, hi)) => (lo, Some(hi)),
        None => (body.as_str(), None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(lo) || !hi.is_none_or(digits) {
        return None;
    }
    match hi {
        None if lo.is_empty() => None,
        None => Some((close + 1, format!("{{{lo}}}"))),
        Some(hi) if lo.is_empty() && hi.is_empty() => None,
        Some(hi) => Some((
            close + 1,
            format!("{{{},{hi}}}", if lo.is_empty() { "0" } else { lo }),
        )),
    }
}

/// A character class from `[` at `start`; returns the index after `]`.
fn translate_class(chars: &[char], start: usize, out: &mut String) -> Result<usize, Refusal> {
    let mut i = start + 1;
    out.push('[');
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` first is a literal in Python.
    if chars.get(i) == Some(&']') {
        out.push_str("\\]");
        i += 1;
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            ']' => {
                out.push(']');
                return Ok(i + 1);
            }
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    break;
                };
                match n {
                    '0'..='9' => {
                        return Err(refuse(Missing::Syntax, format!("octal \\{n} in a class")))
                    }
                    c if c.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(c);
                    }
                    '[' | ']' | '\\' | '^' | '-' | '&' | '~' => {
                        out.push('\\');
                        out.push(n);
                    }
                    c => out.push(c),
                }
                i += 2;
            }
            '[' | '&' | '~' => {
                out.push('\\');
                out.push(c);
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err(refuse(Missing::Syntax, "unterminated character class"))
}

/// A `<...>` at the start of `chars`: fail2ban's tag, or a literal `<`.
fn translate_tag(chars: &[char]) -> Result<(usize, String), Refusal> {
    let close = chars
        .iter()
        .skip(1)
        .position(|&c| c == '>' || c == '<' || c.is_whitespace())
        .map(|p| p + 1);
    let name: Option<String> = close
        .filter(|&p| chars[p] == '>' && p > 1)
        .map(|p| chars[1..p].iter().collect());
    let Some(name) = name else {
        return Ok((1, "<".into()));
    };
    let len = name.chars().count() + 2;
    let (closing, bare) = match name.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, name.as_str()),
    };
    let tag = format!("<{name}>");
    // Self-closing field tags (`<F-IP4/>`) stand for a plain tag.
    if let Some(selfclosed) = bare.strip_suffix('/').filter(|_| !closing) {
        return match selfclosed {
            "F-IP4" => Ok((len, "<IP4>".into())),
            "F-IP6" => Ok((len, "<IP6>".into())),
            "F-ADDR" => Ok((len, "<ADDR>".into())),
            "F-PORT" => Ok((len, "(?:\\w+)".into())),
            _ => Err(refuse(Missing::Tag, tag)),
        };
    }
    match bare {
        "HOST" | "ADDR" | "IP4" | "IP6" if !closing => Ok((len, tag)),
        // The engine's own field tags: users and connection state.
        "F-USER" | "F-ALT_USER" | "F-NOFAIL" | "F-MLFID" | "F-MLFFORGET" | "F-MLFGAINED" => {
            Ok((len, tag))
        }
        // A prefregex's content; the engine refuses it anywhere else.
        "F-CONTENT" => Ok((len, tag)),
        // Captures fail2ban takes the failure's identity from.
        "F-ID" | "F-IP4" | "F-IP6" | "F-ADDR" | "F-DNS" | "F-HOST" | "F-CIDR" | "F-SUBNET" => {
            Err(refuse(Missing::Tag, tag))
        }
        // Any other field (F-ERROR, F-PORT ...) only stores
        // the text it matched for actions: a group that captures nothing
        // matches the same.
        b if b.starts_with("F-")
            && b.len() > 2
            && b[2..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-') =>
        {
            Ok((len, if closing { ")" } else { "(?:" }.into()))
        }
        "SKIPLINES" if !closing => Ok((len, tag)),
        "DNS" | "CIDR" | "SUBNET" | "SKIPLINES" => Err(refuse(Missing::Tag, tag)),
        b if b
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            // Literal text to fail2ban; written so xban's macros
            // (`<PREFIX>`, ...) cannot take it for one of theirs.
            Ok((len, format!("\\x3C{}\\x3E", escape_literal(&name))))
        }
        _ => Ok((1, "<".into())),
    }
}

fn escape_literal(s: &str) -> String {
    s.chars()
        .map(|c| {
            if is_rust_meta(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
