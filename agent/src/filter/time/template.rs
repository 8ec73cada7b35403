//! fail2ban's datepattern syntax, and its way of finding a date anywhere in
//! a line (`date_cut = "anywhere"`).
//!
//! A datepattern is one or more lines, each a template tried in turn:
//!
//! * a regex with `%` directives (`%Y`, `%m`, `%d`, `%H`, `%M`, `%S`, `%b`,
//!   `%f`, `%z`, ... and the strict `%Ex..` forms), which matches a date
//!   only at word boundaries (`**` at either end lifts that side's check,
//!   `{UNB}` both);
//! * `{^LN-BEG}` before a template: at the line's start, after at most two
//!   non-word characters; `{^LN-BEG}` alone: every default form so;
//! * `{DATE}` inside a template: each default form in its place;
//! * `EPOCH`, `LEPOCH` (milli/microseconds too), `TAI64N`, alone or after
//!   `^`/`{^LN-BEG}`; `{EPOCH}`/`{LEPOCH}` inside a template;
//! * `{DEFAULT}`: the default forms anywhere; `{NONE}`: no date.
//!
//! What is cut out of the line is the template's first group, or its whole
//! match (without a leading `^`) when it has none. Of several templates,
//! one anchored at the line start, or matching within its first two bytes,
//! wins at once; otherwise the one whose date starts leftmost (the first
//! of equals). That is fail2ban's choice on a line it sees first; it later
//! prefers the template that matched before, which only matters for lines
//! that two forms read differently.

use std::ops::Range;
use std::time::SystemTime;

use chrono::{Datelike, Local};
use regex::{Captures, Regex, RegexSet};

use super::scan::{month_name, scan_tai64n};
use super::Fields;

/// The compiled templates of one datepattern.
#[derive(Debug, Clone)]
pub struct Templates {
    source: String,
    list: Vec<Template>,
    /// All templates' regexes: one pass says which can match at all.
    set: Option<RegexSet>,
}

impl PartialEq for Templates {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Templates {}

#[derive(Debug, Clone)]
struct Template {
    regex: Regex,
    /// Anchored at the line start: a match wins at once.
    at_start: bool,
    /// The group index of each of [`FIELDS`] (looked up once, not per line).
    groups: [Option<usize>; FIELDS.len()],
}

/// The named groups a time is read from.
const FIELDS: [&str; 17] = [
    "E", "L", "T", "Y", "y", "m", "b", "B", "d", "H", "I", "p", "M", "S", "f", "z", "Z",
];

/// The default forms, in the order fail2ban tries them. Each is written in
/// the datepattern syntax this module reads; separators that must repeat
/// (`2024-01-31`, never `2024-01/31`) are one template per separator.
const DEFAULT_FORMS: &[&str] = &[
    r"%ExY-%m-%d(?:T| {1,2})%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"%ExY/%m/%d(?:T| {1,2})%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"%ExY\.%m\.%d(?:T| {1,2})%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    r"%d-%m-(?:%ExY|%Exy) %k:%M:%S",
    r"%d/%m/(?:%ExY|%Exy) %k:%M:%S",
    r"%d-%b-%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%d/%b/%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    "EPOCH",
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"%Exy%Exm%Exd {1,2}%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"^%b-%d-%Exy %k:%M:%S",
    r"%ExY%Exm%Exd(?:T| {1,2})%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    "TAI64N",
];

const LN_BEG: &str = "{^LN-BEG}";

/// Word boundaries and non-word characters are ASCII's (as `\b` and `\W`
/// on ASCII text): Unicode ones would keep the regex crate off its DFAs.
const WORD_EDGE: &str = r"(?-u:\b)";
/// The start of a template: the line's, a word's, or after a non-word byte.
const BEGIN: &str = r"(?:^|(?-u:\b)|[^0-9A-Za-z_])";
/// The end of a template: a word's end, a non-word byte, or the line's end.
const END: &str = r"(?:(?-u:\b)|[^0-9A-Za-z_]|$)";
/// `{^LN-BEG}`: the line start, then at most two non-word characters.
const LINE_BEGIN: &str = "^[^0-9A-Za-z_]{0,2}";

/// Epoch seconds (10–11 digits, optionally a 3–6 digit fraction).
const EPOCH_RE: &str = r"(?P<E>[0-9]{10,11}(?-u:\b)(?:\.[0-9]{3,6})?)";
/// Epoch seconds, milliseconds or microseconds.
const LEPOCH_RE: &str = r"(?P<L>[0-9]{10,11}(?:[0-9]{3}(?:\.[0-9]{1,6}|[0-9]{3})?)?)";
const TAI64N_RE: &str = r"(?P<T>@[0-9a-f]{24})";

impl Templates {
    /// Parses a datepattern (one template per line).
    pub fn parse(src: &str) -> Result<Templates, String> {
        let mut list = Vec::new();
        let lines: Vec<&str> = src
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            return Err("it is empty; write {^LN-BEG}, {DATE}, EPOCH or a %-pattern".into());
        }
        for line in lines {
            add_line(line, &mut list)?;
        }
        Ok(Templates::from_list(src, list))
    }

    /// fail2ban's default: every default form, first at the line start,
    /// then anywhere.
    pub fn defaults() -> Templates {
        // Compiled once: the regexes inside are shared by every clone.
        static DEFAULTS: std::sync::OnceLock<Templates> = std::sync::OnceLock::new();
        DEFAULTS
            .get_or_init(|| Templates::parse("{DEFAULT}").expect("the default forms compile"))
            .clone()
    }

    fn from_list(src: &str, list: Vec<Template>) -> Templates {
        let set = (list.len() > 1)
            .then(|| RegexSet::new(list.iter().map(|t| t.regex.as_str())).ok())
            .flatten();
        Templates {
            source: src.to_string(),
            list,
            set,
        }
    }

    /// The date in `line`: its time (`None` when the text is no valid
    /// date, e.g. Feb 30) and the byte range to cut out.
    pub fn find(&self, line: &str, now: SystemTime) -> Option<(Option<SystemTime>, Range<usize>)> {
        let matched = self.set.as_ref().map(|s| s.matches(line));
        // (template, its match)
        let mut best: Option<(usize, Captures)> = None;
        for (i, t) in self.list.iter().enumerate() {
            if matched.as_ref().is_some_and(|m| !m.matched(i)) {
                continue;
            }
            let Some(c) = t.regex.captures(line) else {
                continue;
            };
            let Some(g) = c.get(1) else { continue };
            if t.at_start || g.start() <= 1 {
                best = Some((i, c));
                break;
            }
            let start = |c: &Captures| c.get(1).map_or(usize::MAX, |g| g.start());
            if best.as_ref().is_none_or(|(_, b)| g.start() < start(b)) {
                best = Some((i, c));
            }
        }
        let (i, c) = best?;
        let g = c.get(1)?;
        Some((resolve(&self.list[i], &c, now), g.range()))
    }
}

/// Adds the templates of one datepattern line.
fn add_line(line: &str, list: &mut Vec<Template>) -> Result<(), String> {
    let upper = line.to_ascii_uppercase();
    let key = if line.contains('%') {
        line
    } else {
        upper.as_str()
    };
    match key {
        "{DEFAULT}" => {
            for form in DEFAULT_FORMS.iter().filter(|f| !is_start_form(f)) {
                list.push(compile(&format!("{LN_BEG}{form}"))?);
            }
            for form in DEFAULT_FORMS {
                list.push(compile(form)?);
            }
        }
        "{^LN-BEG}" => {
            for form in DEFAULT_FORMS {
                let anchored = if is_start_form(form) {
                    form.to_string()
                } else {
                    format!("{LN_BEG}{form}")
                };
                list.push(compile(&anchored)?);
            }
        }
        "{NONE}" => {}
        _ if key.contains("{DATE}") => {
            for form in DEFAULT_FORMS {
                match *form {
                    // The named forms stand in `{DATE}` only alone or
                    // after a line-start anchor (fail2ban reads them by
                    // name there; elsewhere as their literal name, which
                    // no log line has).
                    "EPOCH" | "TAI64N" => {
                        if matches!(key, "{DATE}" | "^{DATE}" | "{^LN-BEG}{DATE}") {
                            list.push(compile(&line.replace("{DATE}", form))?);
                        }
                    }
                    _ => list.push(compile(&line.replace("{DATE}", unbound(form)))?),
                }
            }
        }
        _ => {
            for variant in spell_out_backrefs(line) {
                list.push(compile(&variant)?);
            }
        }
    }
    Ok(())
}

/// A template whose separator must repeat (`(?P<sep>[-/.])%m(?P=sep)`)
/// as one template per separator: the regex crate has no back-references.
/// Only a group of a few plain characters is spelled out; any other
/// back-reference is left for the compiler to refuse.
fn spell_out_backrefs(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find("(?P<") else {
        return vec![pattern.to_string()];
    };
    let name_end = match pattern[open + 4..].find('>') {
        Some(e) => open + 4 + e,
        None => return vec![pattern.to_string()],
    };
    let name = &pattern[open + 4..name_end];
    let backref = format!("(?P={name})");
    let class_end = pattern[name_end + 1..]
        .find("])")
        .map(|e| name_end + 1 + e + 2);
    let chars = class_end.and_then(|end| class_chars(&pattern[name_end + 1..end - 1]));
    match (chars, class_end) {
        (Some(chars), Some(end)) if pattern.contains(&backref) => chars
            .iter()
            .flat_map(|c| {
                let lit = regex::escape(&c.to_string());
                let one =
                    format!("{}{lit}{}", &pattern[..open], &pattern[end..]).replace(&backref, &lit);
                spell_out_backrefs(&one)
            })
            .collect(),
        _ => {
            // Not one to spell out: go on after it.
            let (head, tail) = pattern.split_at(name_end);
            spell_out_backrefs(tail)
                .into_iter()
                .map(|t| format!("{head}{t}"))
                .collect()
        }
    }
}

/// The characters of a class like `[-/.]` (escapes allowed, no ranges).
fn class_chars(class: &str) -> Option<Vec<char>> {
    let inner = class.strip_prefix('[')?;
    if inner.starts_with('^') {
        return None;
    }
    let mut out = Vec::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        let c = if c == '\\' { it.next()? } else { c };
        if c == '-' && !out.is_empty() && it.peek().is_some() {
            return None; // a range
        }
        if c.is_alphanumeric() {
            return None;
        }
        out.push(c);
    }
    (!out.is_empty() && out.len() <= 8).then_some(out)
}

/// A default form that is anchored at the line start by itself.
fn is_start_form(form: &str) -> bool {
    form.starts_with('^') || form.starts_with(LN_BEG)
}

/// A default form as it stands inside a `{DATE}` template: without its
/// own `{^LN-BEG}`.
fn unbound(form: &str) -> &str {
    form.strip_prefix(LN_BEG).unwrap_or(form)
}

/// Compiles one template.
fn compile(pattern: &str) -> Result<Template, String> {
    let mut p = pattern.trim();
    let mut word_begin = true;
    let mut word_end = true;
    let mut at_start = false;
    if let Some(rest) = p.strip_prefix("{UNB}") {
        p = rest;
        word_begin = false;
        word_end = false;
    }
    if word_begin {
        if let Some(rest) = p.strip_prefix(LN_BEG) {
            p = rest;
            at_start = true;
        }
    }
    let upper = p.to_ascii_uppercase();
    let body = match upper.as_str() {
        "EPOCH" | "^EPOCH" => {
            at_start |= upper.starts_with('^');
            if at_start {
                format!("{LINE_BEGIN}({EPOCH_RE}){END}")
            } else {
                // At the line start, in a leading `[...]`, or in an audit
                // record's `audit(EPOCH:serial)`.
                format!(r"(?:^|^\[|{WORD_EDGE}audit\()({EPOCH_RE})(?:\]|:[0-9]+\)|{END})")
            }
        }
        "LEPOCH" | "^LEPOCH" => {
            at_start |= upper.starts_with('^');
            format!("{LINE_BEGIN}({LEPOCH_RE}){END}")
        }
        "TAI64N" | "^TAI64N" => {
            at_start |= upper.starts_with('^');
            let lead = if at_start { LINE_BEGIN } else { "" };
            format!("{lead}({TAI64N_RE}){END}")
        }
        _ => expand(p, word_begin, word_end, at_start)?,
    };
    let at_start = at_start || body.starts_with('^') || body.starts_with("(?i)^");
    let regex = Regex::new(&body).map_err(|e| {
        let why = e.to_string();
        let hint = if body.contains("(?P=") || body.contains("(?=") || body.contains("(?!") || body.contains("(?<") {
            "; back-references and look-around are not supported in a datepattern: write the alternatives out"
        } else {
            ""
        };
        format!("template {pattern:?} is not a valid regex ({}){hint}", why.lines().last().unwrap_or(&why).trim())
    })?;
    if regex.captures_len() < 2 {
        return Err(format!("template {pattern:?} cuts nothing out"));
    }
    let mut groups = [None; FIELDS.len()];
    for (slot, name) in groups.iter_mut().zip(FIELDS) {
        *slot = regex.capture_names().position(|n| n == Some(name));
    }
    Ok(Template {
        regex,
        at_start,
        groups,
    })
}

/// A `%`-template as a regex: directives expanded, the date in group 1,
/// word boundaries (or the line start) around it.
fn expand(p: &str, word_begin: bool, word_end: bool, at_start: bool) -> Result<String, String> {
    let (p, no_begin) = match p.strip_prefix("**") {
        Some(rest) => (rest, true),
        None => (p, false),
    };
    let (p, no_end) = match p.strip_suffix("**") {
        Some(rest) if !rest.ends_with('\\') => (rest, true),
        _ => (p, false),
    };
    let mut out = String::new();
    let mut names = false;
    let mut rest = p;
    while let Some(pos) = rest.find(['%', '{']) {
        // An escaped `%` or `{` is literal.
        let escaped = rest[..pos].chars().rev().take_while(|&c| c == '\\').count() % 2 == 1;
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if escaped {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        }
        if let Some(t) = tail.strip_prefix("{EPOCH}") {
            out.push_str(EPOCH_RE);
            rest = t;
            continue;
        }
        if let Some(t) = tail.strip_prefix("{LEPOCH}") {
            out.push_str(LEPOCH_RE);
            rest = t;
            continue;
        }
        if let Some(t) = tail.strip_prefix('{') {
            out.push('{');
            rest = t;
            continue;
        }
        let (re, used, alpha) = directive(&tail[1..])?;
        names |= alpha;
        out.push_str(&re);
        rest = &tail[1 + used..];
    }
    out.push_str(rest);
    let anchored_itself = out.starts_with('^') || out.starts_with("(^") || out.starts_with("(?:^");
    let ends_itself = (out.ends_with('$') && !out.ends_with("\\$"))
        || out.ends_with("\\b")
        || out.ends_with("\\s");
    // The date is group 1: the pattern's own first plain group, or all of it.
    let mut body = if has_plain_group(&out) {
        out
    } else {
        let (head, mid) = match out.strip_prefix('^') {
            Some(m) => ("^", m),
            None => ("", out.as_str()),
        };
        let (mid, tail) = match mid.strip_suffix('$') {
            Some(m) if !m.ends_with('\\') => (m, "$"),
            _ => (mid, ""),
        };
        format!("{head}({mid}){tail}")
    };
    if at_start {
        body = format!("{LINE_BEGIN}{body}");
    } else if word_begin && !no_begin && !anchored_itself {
        body = format!("{BEGIN}{body}");
    }
    if word_end && !no_end && !ends_itself {
        body.push_str(END);
    }
    if names {
        body = format!("(?i){body}");
    }
    Ok(body)
}

/// Whether `re` has a capturing group that is not named (`(?P<..>`).
fn has_plain_group(re: &str) -> bool {
    let b = re.as_bytes();
    let mut in_class = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class && b.get(i + 1) != Some(&b'?') => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

const MONTHS: &str =
    "january|february|march|april|may|june|july|august|september|october|november|december";
const MON: &str = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec";

/// The regex of the directive at the start of `d` (after its `%`):
/// (regex, bytes used, whether it reads names and wants case folding).
fn directive(d: &str) -> Result<(String, usize, bool), String> {
    let g = |name: &str, re: &str| format!("(?P<{name}>{re})");
    if let Some(x) = d.strip_prefix("Ex") {
        let c = x.chars().next().unwrap_or(' ');
        let re = match c {
            'Y' => g("Y", &strict_years()),
            'y' => g("y", r"[0-9]{2}"),
            'm' => g("m", "1[0-2]|0[1-9]"),
            'd' => g("d", "3[01]|[12][0-9]|0[1-9]"),
            'H' => g("H", "2[0-3]|[01][0-9]"),
            'k' => format!(" ?{}", g("H", "2[0-3]|[01]?[0-9]")),
            'l' => format!(" ?{}", g("I", "1[0-2]|[0-9]")),
            'M' => g("M", "[0-5][0-9]"),
            'S' => g("S", "6[01]|[0-5][0-9]"),
            'Z' => g("Z", "[A-Z](?:[A-Z]{2,4})?"),
            'z' => g("z", "(?:[A-Z]{3,5})?[+-][01][0-9](?::?[0-9]{2})?|[A-Z]{3,5}"),
            _ => {
                return Err(format!(
                    "unknown directive %Ex{c}; the strict forms are %ExY %Exy %Exm %Exd %ExH %Exk %Exl %ExM %ExS %ExZ %Exz"
                ))
            }
        };
        return Ok((re, 3, false));
    }
    let c = d
        .chars()
        .next()
        .ok_or("it ends with a lone %; write %% for a percent sign")?;
    let (re, alpha) = match c {
        '%' => ("%".to_string(), false),
        'a' => (g("a", "mon|tue|wed|thu|fri|sat|sun"), true),
        'A' => (g("A", "monday|tuesday|wednesday|thursday|friday|saturday|sunday"), true),
        'b' => (g("b", MON), true),
        'B' => (g("B", MONTHS), true),
        'p' => (g("p", "am|pm"), true),
        'd' => (g("d", "3[01]|[12][0-9]|[0 ]?[1-9]"), false),
        'f' => (g("f", r"[0-9]{1,6}"), false),
        'H' => (g("H", "2[0-3]|[01]?[0-9]"), false),
        'k' => (format!(" ?{}", g("H", "[0-2]?[0-9]")), false),
        'I' => (g("I", "1[0-2]|0?[1-9]"), false),
        'l' => (format!(" ?{}", g("I", "1?[0-9]")), false),
        'j' => (g("j", r"[0-9]{1,3}"), false),
        'm' => (g("m", "1[0-2]|0?[1-9]"), false),
        'M' => (g("M", "[0-5]?[0-9]"), false),
        'S' => (g("S", "6[01]|[0-5]?[0-9]"), false),
        'U' => (g("U", r"[0-9]{1,2}"), false),
        'W' => (g("W", r"[0-9]{1,2}"), false),
        'w' => (g("w", "[0-6]"), false),
        'y' => (g("y", r"[0-9][0-9]"), false),
        'Y' => (g("Y", r"[0-9]{4}"), false),
        'z' => (g("z", "Z|UTC|GMT|[+-][01][0-9](?::?[0-9]{2})?"), false),
        'Z' => (g("Z", "Z|[A-Z]{3,5}"), false),
        other => {
            return Err(format!(
                "unsupported directive %{other}; use %Y %y %m %d %H %k %I %l %M %S %f %b %B %a %A %p %j %z %Z, the strict %Ex.. forms or %%"
            ))
        }
    };
    Ok((re, c.len_utf8(), alpha))
}

/// `%ExY`: a year from 2000 to the end of the decade three years from now
/// (a strict year cannot be mistaken for another 4-digit number).
fn strict_years() -> String {
    let last = Local::now().year() + 3;
    let decades: Vec<String> = (200..=last / 10).map(|d| d.to_string()).collect();
    format!(r"(?:{})[0-9]", decades.join("|"))
}

/// The time of a template match; `None` when it is no valid date.
fn resolve(t: &Template, c: &Captures, now: SystemTime) -> Option<SystemTime> {
    let text = |n: &str| {
        let k = FIELDS.iter().position(|f| *f == n)?;
        c.get(t.groups[k]?).map(|m| m.as_str())
    };
    let num = |n: &str| text(n).and_then(|s| s.trim().parse::<u32>().ok());
    let mut f = Fields::default();
    if let Some(e) = text("E") {
        let (s, frac) = e.split_once('.').unwrap_or((e, ""));
        f.epoch = Some((s.parse().ok()?, nanos(frac)));
        return f.resolve(now);
    }
    if let Some(l) = text("L") {
        let (s, frac) = l.split_once('.').unwrap_or((l, ""));
        let (secs, sub) = match s.len() {
            n if n >= 16 && frac.is_empty() => (&s[..n - 6], &s[n - 6..]),
            n if n >= 13 => (&s[..n - 3], &s[n - 3..]),
            _ => (s, frac),
        };
        let sub = if s.len() >= 13 && !frac.is_empty() {
            format!("{sub}{frac}")
        } else {
            sub.to_string()
        };
        f.epoch = Some((secs.parse().ok()?, nanos(&sub)));
        return f.resolve(now);
    }
    if let Some(t) = text("T") {
        let (fields, _) = scan_tai64n(t.as_bytes())?;
        return fields.resolve(now);
    }
    f.year = match (num("Y"), num("y")) {
        (Some(y), _) => Some(y as i32),
        (None, Some(y)) if y < 69 => Some(2000 + y as i32),
        (None, Some(y)) => Some(1900 + y as i32),
        _ => None,
    };
    f.month = match (num("m"), text("b").or(text("B"))) {
        (Some(m), _) => m,
        (None, Some(name)) => {
            let mut b = name.as_bytes().to_vec();
            b[0] = b[0].to_ascii_uppercase();
            month_name(&b, 0)?
        }
        _ => 0,
    };
    f.day = num("d").unwrap_or(0);
    if f.month == 0 && f.day == 0 {
        // A time of day alone: today's (in local time).
        let today = chrono::DateTime::<Local>::from(now).date_naive();
        f.year = Some(today.year());
        f.month = today.month();
        f.day = today.day();
    } else if f.month == 0 || f.day == 0 {
        return None;
    }
    f.hour = match (num("H"), num("I")) {
        (Some(h), _) => h,
        (None, Some(h)) => {
            let pm = text("p").is_some_and(|p| p.eq_ignore_ascii_case("pm"));
            (h % 12) + if pm { 12 } else { 0 }
        }
        _ => 0,
    };
    f.min = num("M").unwrap_or(0);
    f.sec = num("S").unwrap_or(0);
    if let Some(fr) = text("f") {
        f.nanos = nanos(fr);
    }
    f.offset = match text("z").or(text("Z")) {
        Some(z) => zone_offset(z),
        None => None,
    };
    if f.hour > 23 || f.min > 59 || f.sec > 61 {
        return None;
    }
    f.resolve(now)
}

/// Decimal fraction digits as nanoseconds.
fn nanos(frac: &str) -> u32 {
    let digits: String = frac.chars().take(9).collect();
    if digits.is_empty() {
        return 0;
    }
    let v: u32 = digits.parse().unwrap_or(0);
    v * 10u32.pow(9 - digits.len() as u32)
}

/// A zone as seconds east of UTC: `Z`, `UTC`, `GMT`, `[NAME]+hh[[:]mm]`;
/// another name alone is read as local time.
fn zone_offset(z: &str) -> Option<i32> {
    let sign_at = z.find(['+', '-']);
    let Some(i) = sign_at else {
        return match z.to_ascii_uppercase().as_str() {
            "Z" | "UTC" | "GMT" => Some(0),
            _ => None,
        };
    };
    let sign = if z.as_bytes()[i] == b'-' { -1 } else { 1 };
    let digits: String = z[i + 1..].chars().filter(char::is_ascii_digit).collect();
    let h: i32 = digits.get(..2)?.parse().ok()?;
    let m: i32 = digits.get(2..4).map_or(Some(0), |m| m.parse().ok())?;
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
