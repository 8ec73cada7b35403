//! fail2ban's `maxlines`: a filter that reads several lines at once.
//!
//! A [`FilterSet`] with `maxlines` above 1 is matched through a
//! [`LineBuffer`], held per jail beside its [`super::conn::Connections`]
//! (the filter itself stays stateless, shared and reloadable). Each line,
//! after its date cut, joins the buffer; the last `maxlines` lines joined
//! with `\n` are the text the failregexes and ignoreregexes see. When a
//! failregex matches (a failure, an ignored match or a connection's line),
//! the lines its match covers leave the buffer, except those a
//! `<SKIPLINES>` skipped over: they stay, in order, for later matches.
//! The result's time is the newest line's, or when it has none (the
//! continuation of a record), the last time a line of the log had.
//!
//! Where xban differs from fail2ban: its ignoreregexes see the whole
//! buffer, not only the lines the failregex matched.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::SystemTime;

use regex_automata::{Input, PatternID};

use super::host::SKIPLINES_GROUP;
use super::time::{self, DateCut};
use super::{with_slots, FilterSet, LineMatch, TimeFound};

/// The largest `maxlines` a filter may set: fail2ban's stock filters use
/// up to 20; the buffer is joined and searched on every line.
pub const MAX_LINES: usize = 1000;

/// The last lines of a multi-line filter's log (fail2ban's line buffer).
#[derive(Debug, Default)]
pub struct LineBuffer {
    lines: VecDeque<String>,
    /// The last time a line had: a line without one (the continuation of
    /// a multi-line record) takes it, as in fail2ban.
    last_time: Option<SystemTime>,
}

impl LineBuffer {
    pub fn new() -> LineBuffer {
        LineBuffer::default()
    }

    /// Lines held (at most the filter's `maxlines`).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// [`FilterSet::match_entry`] for a filter whose `maxlines` is above
    /// 1 (with 1 it is exactly that): the line joins the buffer and the
    /// buffer is matched.
    pub fn match_entry(
        &mut self,
        set: &FilterSet,
        line: &str,
        now: SystemTime,
        entry_time: Option<SystemTime>,
    ) -> LineMatch {
        if set.max_lines <= 1 {
            return set.match_entry(line, now, false, entry_time);
        }
        let (time, text) = cut(set, line, now, entry_time);
        let time = match time {
            TimeFound::Parsed(t) => {
                self.last_time = Some(t);
                time
            }
            TimeFound::Missing => self.last_time.map_or(time, TimeFound::Parsed),
        };
        self.lines.push_back(text);
        while self.lines.len() > set.max_lines {
            self.lines.pop_front();
        }
        let joined = self.joined();
        let found = set.match_text(&joined, time, true, false);
        let regex = match &found {
            LineMatch::NoMatch { .. } => return found,
            LineMatch::Failure(f) => Some(f.regex),
            LineMatch::Connection(c) => Some(c.regex),
            LineMatch::Ignored { .. } => None,
        };
        if let Some((span, skipped)) = matched_span(set, regex, &joined) {
            self.remove_matched(&joined, span, &skipped);
        }
        found
    }

    fn joined(&self) -> String {
        let len = self.lines.iter().map(|l| l.len() + 1).sum();
        let mut joined = String::with_capacity(len);
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                joined.push('\n');
            }
            joined.push_str(l);
        }
        joined
    }

    /// Drops the lines `span` of `joined` covers, keeping those inside a
    /// `skipped` span.
    fn remove_matched(&mut self, joined: &str, span: Range<usize>, skipped: &[Range<usize>]) {
        let line_of = |pos: usize| {
            joined.as_bytes()[..pos]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        };
        // The line the match starts on; a match starting at a line's
        // newline starts on the next one.
        let first = if span.start < joined.len() {
            line_of(span.start + 1)
        } else {
            line_of(joined.len())
        };
        // The line of the match's last character.
        let last = line_of(span.end.saturating_sub(1));
        let mut keep = vec![true; self.lines.len()];
        for (i, k) in keep.iter_mut().enumerate() {
            *k = i < first || i > last;
        }
        for s in skipped.iter().filter(|s| s.start < s.end) {
            for k in keep
                .iter_mut()
                .take(line_of(s.end - 1) + 1)
                .skip(line_of(s.start))
            {
                *k = true;
            }
        }
        let mut i = 0;
        self.lines.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}

/// The line's time and its text after the date cut, as
/// [`FilterSet::match_entry`] cuts it.
fn cut(
    set: &FilterSet,
    line: &str,
    now: SystemTime,
    entry_time: Option<SystemTime>,
) -> (TimeFound, String) {
    let line = line.trim_end_matches(['\n', '\r']);
    if set.date_cut == DateCut::Anywhere {
        if let Some(t) = entry_time {
            return (TimeFound::Parsed(t), line.to_string());
        }
        let found = set
            .datepattern
            .as_ref()
            .and_then(|d| time::find_date(line, now, d));
        let Some((t, range)) = found else {
            return (TimeFound::Missing, line.to_string());
        };
        let time = t.map_or(TimeFound::Missing, TimeFound::Parsed);
        let mut text = String::with_capacity(line.len() - range.len());
        text.push_str(&line[..range.start]);
        text.push_str(&line[range.end..]);
        return (time, text);
    }
    match time::parse_time(line, now, set.datepattern.as_ref()) {
        Some((t, range)) => {
            let text = match time::leading_stamp_end(line, &range) {
                Some(end) => &line[end..],
                None => line,
            };
            (TimeFound::Parsed(t), text.to_string())
        }
        None => (TimeFound::Missing, line.to_string()),
    }
}

/// The span of failregex `regex`'s match in `text` (of the first
/// failregex that matches, when `None`) and the spans its `<SKIPLINES>`
/// skipped.
fn matched_span(
    set: &FilterSet,
    regex: Option<usize>,
    text: &str,
) -> Option<(Range<usize>, Vec<Range<usize>>)> {
    match regex {
        Some(i) => span_of(set, i, text),
        None => (0..set.fails.len()).find_map(|i| span_of(set, i, text)),
    }
}

fn span_of(set: &FilterSet, idx: usize, text: &str) -> Option<(Range<usize>, Vec<Range<usize>>)> {
    let fr = &set.fails[idx];
    let groups = match &fr.fancy {
        Some(f) => f.group_count(),
        None => fr.regex.group_info().group_len(PatternID::ZERO),
    };
    let index = |n: &str| match &fr.fancy {
        Some(f) => f.group_index(n),
        None => fr.regex.group_info().to_index(PatternID::ZERO, n),
    };
    let skip_groups: Vec<usize> = (0..).map_while(|n| index(&skip_name(n))).collect();
    with_slots(2 * groups, |slots| {
        match &fr.fancy {
            Some(f) => f.search_slots(text, 0, slots)?,
            None => {
                fr.regex.search_slots(&Input::new(text), slots)?;
            }
        }
        let whole = super::group_span(slots, 0)?;
        let skipped = skip_groups
            .iter()
            .filter_map(|&g| super::group_span(slots, g))
            .map(|(s, e)| s..e)
            .collect();
        Some((whole.0..whole.1, skipped))
    })
}

fn skip_name(n: usize) -> String {
    format!("{SKIPLINES_GROUP}{n}")
}

#[cfg(test)]
mod tests;
