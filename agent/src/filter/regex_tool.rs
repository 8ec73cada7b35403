//! Core of `xban regex`: run a filter over a log file (or one literal line)
//! and report what matched, like `fail2ban-regex`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::{builtin, FilterDef, FilterError, FilterSet, Host, LineMatch, TimeFound};

/// Lines longer than this are truncated (and counted) so that a runaway
/// line cannot exhaust memory.
pub const MAX_LINE: usize = 64 * 1024;
/// At most this many missed lines are kept for the report.
pub const MAX_MISSED: usize = 1000;
/// Line numbers kept for lines without a timestamp.
const MAX_NO_TIME_LINES: usize = 10;

/// What `xban regex` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RegexToolArgs {
    /// A file path, or (if no such file exists) a literal log line.
    pub input: String,
    /// A built-in or user filter name, a path ending in `.toml`, or a
    /// literal failregex.
    pub filter: String,
    /// Extra ignoreregexes.
    pub ignoreregex: Vec<String>,
    pub mode: Option<String>,
    pub print_missed: bool,
    /// User filter directory (`/etc/xban/filters`).
    pub filters_dir: Option<PathBuf>,
}

/// Hits of one failregex or ignoreregex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegexHits {
    pub index: usize,
    pub regex: String,
    pub hits: u64,
}

/// Failures per host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCount {
    pub host: String,
    pub failures: u64,
}

/// A line that matched nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissedLine {
    pub line_no: u64,
    pub text: String,
}

/// Lines in which no timestamp was recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NoTimestamp {
    pub count: u64,
    /// The first few line numbers (1-based).
    pub first_lines: Vec<u64>,
}

/// The result of [`run`]; `Display` renders it for humans, `Serialize` for
/// `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RegexReport {
    /// `builtin NAME`, `file PATH` or `regex`.
    pub filter: String,
    pub mode: Option<String>,
    /// `file PATH` or `line`.
    pub input: String,
    pub failregex: Vec<RegexHits>,
    pub ignoreregex: Vec<RegexHits>,
    pub lines_total: u64,
    pub lines_matched: u64,
    pub lines_ignored: u64,
    pub lines_missed: u64,
    /// Lines cut at [`MAX_LINE`] bytes.
    pub lines_truncated: u64,
    /// Sorted by failures, most first.
    pub hosts: Vec<HostCount>,
    pub timestamps_found: u64,
    pub no_timestamp: NoTimestamp,
    /// Only with `print_missed`; at most [`MAX_MISSED`].
    pub missed: Vec<MissedLine>,
    /// Missed lines not listed because of the cap.
    pub missed_omitted: u64,
    /// Searches of look-around / back-reference regexes that gave up at
    /// the backtrack limit (counted as no match).
    pub backtrack_limit_hits: u64,
    pub elapsed_secs: f64,
    pub lines_per_sec: f64,
}

/// A loaded filter plus a description of where it came from.
struct Resolved {
    set: FilterSet,
    label: String,
    failregex: Vec<String>,
    ignoreregex: Vec<String>,
}

fn from_def(def: &FilterDef, args: &RegexToolArgs, label: String) -> Result<Resolved, FilterError> {
    let (failregex, mut ignoreregex) = def.lists(args.mode.as_deref())?;
    ignoreregex.extend(args.ignoreregex.iter().cloned());
    let set = FilterSet::compile_def(def, &failregex, &ignoreregex)?;
    Ok(Resolved {
        set,
        label,
        failregex,
        ignoreregex,
    })
}

fn resolve_filter(args: &RegexToolArgs) -> Result<Resolved, FilterError> {
    let name = args.filter.as_str();
    let named = match &args.filters_dir {
        Some(dir) => builtin::load_dir(dir)?.remove(name),
        None => builtin::builtin(name),
    };
    if let Some(def) = named {
        let kind = if builtin::builtin_names().contains(&name)
            && args
                .filters_dir
                .as_ref()
                .is_none_or(|d| !d.join(format!("{name}.toml")).is_file())
        {
            "builtin"
        } else {
            "user filter"
        };
        return from_def(&def, args, format!("{kind} {name}"));
    }
    let path = Path::new(name);
    if name.ends_with(".toml") && path.is_file() {
        let def = builtin::load_file(path)?;
        return from_def(&def, args, format!("file {}", path.display()));
    }
    if args.mode.is_some() {
        return Err(FilterError::ModeOnRegex);
    }
    let failregex = vec![args.filter.clone()];
    let set = FilterSet::compile(&failregex, &args.ignoreregex, None)?;
    Ok(Resolved {
        set,
        label: "regex".to_string(),
        failregex,
        ignoreregex: args.ignoreregex.clone(),
    })
}

/// Reads lines with bounded memory: bytes past [`MAX_LINE`] are dropped.
/// Returns `Ok(None)` at end of input, else whether the line was truncated.
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut truncated = false;
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some(truncated));
        }
        any = true;
        let (chunk, used, done) = match memchr::memchr(b'\n', avail) {
            Some(p) => (p, p + 1, true),
            None => (avail.len(), avail.len(), false),
        };
        let room = MAX_LINE - buf.len();
        let take = chunk.min(room);
        buf.extend_from_slice(&avail[..take]);
        truncated |= chunk > take;
        r.consume(used);
        if done {
            return Ok(Some(truncated));
        }
    }
}

/// The per-host tally's hash: one multiply-fold per word, keyed per run.
/// On a log under attack every other line adds to the tally, and SipHash
/// cost a tenth of the matching; the random key keeps an attacker who
/// writes the log from aiming addresses at one bucket.
#[derive(Clone)]
struct TallyHash(u64);

impl Default for TallyHash {
    fn default() -> Self {
        TallyHash(fastrand::u64(..))
    }
}

impl BuildHasher for TallyHash {
    type Hasher = TallyHasher;
    fn build_hasher(&self) -> TallyHasher {
        TallyHasher(self.0)
    }
}

struct TallyHasher(u64);

impl TallyHasher {
    fn mix(&mut self, word: u64) {
        const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
        let m = u128::from(self.0 ^ word) * u128::from(MUL);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for TallyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        // The length tells `ab` + `c` from `a` + `bc` across writes.
        self.mix(bytes.len() as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Tally {
    fail_hits: Vec<u64>,
    ignore_hits: Vec<u64>,
    /// Keyed by the parsed host: formatting it per failure would cost more
    /// than matching the line.
    hosts: HashMap<Host, u64, TallyHash>,
    total: u64,
    matched: u64,
    ignored: u64,
    missed: u64,
    truncated: u64,
    times: u64,
    no_time: NoTimestamp,
    missed_lines: Vec<MissedLine>,
    missed_omitted: u64,
    /// The lines' connections, for a filter with `<F-MLFID>`.
    conns: super::conn::Connections,
    /// The last lines, for a filter with `maxlines` above 1.
    lines: super::lines::LineBuffer,
}

impl Tally {
    fn line(&mut self, set: &FilterSet, text: &str, now: SystemTime, keep_missed: bool) {
        self.total += 1;
        let m = if set.max_lines() > 1 {
            self.lines.match_entry(set, text, now, None)
        } else {
            set.match_line_uncopied_user(text, now)
        };
        let time = match &m {
            LineMatch::NoMatch { time } | LineMatch::Ignored { time, .. } => *time,
            LineMatch::Failure(f) => f.time,
            LineMatch::Connection(c) => c.time,
        };
        let m = self.conns.resolve(m, now);
        match time {
            TimeFound::Parsed(_) => self.times += 1,
            TimeFound::Missing => {
                self.no_time.count += 1;
                if self.no_time.first_lines.len() < MAX_NO_TIME_LINES {
                    self.no_time.first_lines.push(self.total);
                }
            }
        }
        match m {
            LineMatch::Failure(f) => {
                self.matched += 1;
                self.fail_hits[f.regex] += 1;
                *self.hosts.entry(f.host).or_default() += 1;
            }
            LineMatch::Ignored { regex, .. } => {
                self.ignored += 1;
                self.ignore_hits[regex] += 1;
            }
            // A connection's line that is no failure (yet).
            LineMatch::NoMatch { .. } | LineMatch::Connection(_) => {
                self.missed += 1;
                if keep_missed {
                    if self.missed_lines.len() < MAX_MISSED {
                        self.missed_lines.push(MissedLine {
                            line_no: self.total,
                            text: text.to_string(),
                        });
                    } else {
                        self.missed_omitted += 1;
                    }
                }
            }
        }
    }
}

/// Runs the filter over the input and builds the report.
pub fn run(args: &RegexToolArgs) -> Result<RegexReport, FilterError> {
    let resolved = resolve_filter(args)?;
    let set = &resolved.set;
    let now = SystemTime::now();
    let mut t = Tally {
        fail_hits: vec![0; resolved.failregex.len()],
        ignore_hits: vec![0; resolved.ignoreregex.len()],
        ..Tally::default()
    };
    let started = Instant::now();
    let input_path = Path::new(&args.input);
    let input = if input_path.exists() {
        let io_err = |source| FilterError::Io {
            path: input_path.to_path_buf(),
            source,
        };
        let mut reader =
            BufReader::with_capacity(256 * 1024, File::open(input_path).map_err(io_err)?);
        let mut buf = Vec::with_capacity(4096);
        while let Some(truncated) = read_line_capped(&mut reader, &mut buf).map_err(io_err)? {
            t.truncated += u64::from(truncated);
            // std's validator is several times faster than the lossy
            // decoder's; almost every log line is valid UTF-8.
            let text = match std::str::from_utf8(&buf) {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(&buf),
            };
            t.line(set, &text, now, args.print_missed);
        }
        format!("file {}", input_path.display())
    } else {
        for line in args.input.lines() {
            t.line(set, line, now, args.print_missed);
        }
        "line".to_string()
    };
    let elapsed = started.elapsed().as_secs_f64();

    let hits = |srcs: &[String], counts: &[u64]| -> Vec<RegexHits> {
        srcs.iter()
            .zip(counts)
            .enumerate()
            .map(|(index, (regex, &hits))| RegexHits {
                index,
                regex: regex.clone(),
                hits,
            })
            .collect()
    };
    let mut hosts: Vec<HostCount> = t
        .hosts
        .into_iter()
        .map(|(host, failures)| HostCount {
            host: host.to_string(),
            failures,
        })
        .collect();
    hosts.sort_by(|a, b| {
        b.failures
            .cmp(&a.failures)
            .then_with(|| a.host.cmp(&b.host))
    });
    Ok(RegexReport {
        filter: resolved.label,
        mode: args.mode.clone(),
        input,
        failregex: hits(&resolved.failregex, &t.fail_hits),
        ignoreregex: hits(&resolved.ignoreregex, &t.ignore_hits),
        lines_total: t.total,
        lines_matched: t.matched,
        lines_ignored: t.ignored,
        lines_missed: t.missed,
        lines_truncated: t.truncated,
        hosts,
        timestamps_found: t.times,
        no_timestamp: t.no_time,
        missed: t.missed_lines,
        missed_omitted: t.missed_omitted,
        backtrack_limit_hits: resolved.set.backtrack_limit_hits(),
        elapsed_secs: elapsed,
        lines_per_sec: if elapsed > 0.0 {
            t.total as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// Hosts listed by `Display` before "... and N more".
const DISPLAY_HOSTS: usize = 50;

impl fmt::Display for RegexReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Some(m) => writeln!(f, "Filter:  {} (mode {m})", self.filter)?,
            None => writeln!(f, "Filter:  {}", self.filter)?,
        }
        writeln!(f, "Input:   {}", self.input)?;
        writeln!(f)?;
        for (title, list) in [
            ("Failregex", &self.failregex),
            ("Ignoreregex", &self.ignoreregex),
        ] {
            if list.is_empty() {
                continue;
            }
            let total: u64 = list.iter().map(|h| h.hits).sum();
            writeln!(f, "{title}: {total} hits")?;
            for h in list {
                writeln!(f, "  [{:>2}] {:>8}  {}", h.index, h.hits, h.regex)?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "Lines:   {} total, {} matched, {} ignored, {} missed",
            self.lines_total, self.lines_matched, self.lines_ignored, self.lines_missed
        )?;
        if self.lines_truncated > 0 {
            write!(
                f,
                " ({} truncated at {} KiB)",
                self.lines_truncated,
                MAX_LINE / 1024
            )?;
        }
        writeln!(f)?;
        if self.backtrack_limit_hits > 0 {
            writeln!(
                f,
                "Limit:   {} searches gave up at the backtrack limit (counted as no match)",
                self.backtrack_limit_hits
            )?;
        }
        write!(
            f,
            "Times:   {} found, {} missing",
            self.timestamps_found, self.no_timestamp.count
        )?;
        if !self.no_timestamp.first_lines.is_empty() {
            let nums: Vec<String> = self
                .no_timestamp
                .first_lines
                .iter()
                .map(u64::to_string)
                .collect();
            write!(f, " (first at line {})", nums.join(", "))?;
        }
        writeln!(f)?;
        if !self.hosts.is_empty() {
            writeln!(
                f,
                "\nHosts:   {} distinct (failures, host)",
                self.hosts.len()
            )?;
            for h in self.hosts.iter().take(DISPLAY_HOSTS) {
                writeln!(f, "  {:>8}  {}", h.failures, h.host)?;
            }
            if self.hosts.len() > DISPLAY_HOSTS {
                writeln!(
                    f,
                    "  ... and {} more (use --json for all)",
                    self.hosts.len() - DISPLAY_HOSTS
                )?;
            }
        }
        if !self.missed.is_empty() {
            writeln!(f, "\nMissed lines:")?;
            for m in &self.missed {
                writeln!(f, "  {:>6}: {}", m.line_no, m.text)?;
            }
            if self.missed_omitted > 0 {
                writeln!(f, "  ... and {} more", self.missed_omitted)?;
            }
        }
        writeln!(
            f,
            "\nSpeed:   {:.3} s, {:.0} lines/s",
            self.elapsed_secs, self.lines_per_sec
        )
    }
}

#[cfg(test)]
mod tests;
