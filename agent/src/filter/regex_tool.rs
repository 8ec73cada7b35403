//! Core of `xban regex`: run a filter over a log file (or one literal line)
//! and report what matched, like `fail2ban-regex`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
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
    let set = FilterSet::compile(&failregex, &ignoreregex, def.datepattern.as_deref())?;
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

#[derive(Default)]
struct Tally {
    fail_hits: Vec<u64>,
    ignore_hits: Vec<u64>,
    /// Keyed by the parsed host: formatting it per failure would cost more
    /// than matching the line.
    hosts: HashMap<Host, u64>,
    total: u64,
    matched: u64,
    ignored: u64,
    missed: u64,
    truncated: u64,
    times: u64,
    no_time: NoTimestamp,
    missed_lines: Vec<MissedLine>,
    missed_omitted: u64,
}

impl Tally {
    fn line(&mut self, set: &FilterSet, text: &str, now: SystemTime, keep_missed: bool) {
        self.total += 1;
        let m = set.match_line(text, now);
        let time = match &m {
            LineMatch::NoMatch { time } | LineMatch::Ignored { time, .. } => *time,
            LineMatch::Failure(f) => f.time,
        };
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
            LineMatch::NoMatch { .. } => {
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
mod tests {
    use super::*;
    use std::io::Write;

    const SSHD_LOG: &str = "\
Nov 21 05:28:31 bastion sshd[100]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2
Nov 21 05:28:32 bastion sshd[100]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2
Nov 21 05:28:33 bastion sshd[101]: Accepted publickey for alice from 198.51.100.2 port 40000 ssh2: ED25519 SHA256:abc
Nov 21 05:28:34 bastion sshd[102]: Invalid user oracle from 2001:db8::5 port 41000
sshd[103]: Failed password for root from 192.0.2.9 port 1 ssh2
Nov 21 05:28:35 bastion sshd[104]: Connection closed by 192.0.2.10 port 2 [preauth]
";

    fn write_temp(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn sample_file_with_builtin() {
        let f = write_temp(SSHD_LOG.as_bytes());
        let args = RegexToolArgs {
            input: f.path().display().to_string(),
            filter: "sshd".into(),
            print_missed: true,
            ..Default::default()
        };
        let r = run(&args).unwrap();
        assert_eq!(r.filter, "builtin sshd");
        assert!(r.input.starts_with("file "));
        assert_eq!(
            (
                r.lines_total,
                r.lines_matched,
                r.lines_ignored,
                r.lines_missed
            ),
            (6, 4, 0, 2)
        );
        assert_eq!(r.failregex[0].hits, 3, "the Failed-password pattern");
        assert_eq!(r.failregex.iter().map(|h| h.hits).sum::<u64>(), 4);
        assert_eq!(
            r.hosts,
            vec![
                HostCount {
                    host: "203.0.113.7".into(),
                    failures: 2
                },
                HostCount {
                    host: "192.0.2.9".into(),
                    failures: 1
                },
                HostCount {
                    host: "2001:db8::5".into(),
                    failures: 1
                },
            ]
        );
        assert_eq!(r.timestamps_found, 5);
        assert_eq!(
            r.no_timestamp,
            NoTimestamp {
                count: 1,
                first_lines: vec![5]
            }
        );
        assert_eq!(
            r.missed.iter().map(|m| m.line_no).collect::<Vec<_>>(),
            vec![3, 6]
        );
        let text = r.to_string();
        assert!(
            text.contains("6 total, 4 matched, 0 ignored, 2 missed"),
            "{text}"
        );
        assert!(text.contains("203.0.113.7"), "{text}");
        assert!(text.contains("first at line 5"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["lines_matched"], 4);
        assert_eq!(json["hosts"][0]["host"], "203.0.113.7");

        // With the ddos mode the pre-auth close counts too.
        let r = run(&RegexToolArgs {
            mode: Some("ddos".into()),
            ..args
        })
        .unwrap();
        assert_eq!(r.lines_matched, 5);
        assert_eq!(
            r.missed.iter().map(|m| m.line_no).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn literal_line_and_literal_regex() {
        let args = RegexToolArgs {
            input: "Nov 21 05:28:31 h app[1]: login failed for bob from 192.0.2.77".into(),
            filter: r"login failed for <F-USER> from <ADDR>$".into(),
            ..Default::default()
        };
        let r = run(&args).unwrap();
        assert_eq!((r.input.as_str(), r.filter.as_str()), ("line", "regex"));
        assert_eq!((r.lines_total, r.lines_matched), (1, 1));
        assert_eq!(
            r.hosts,
            vec![HostCount {
                host: "192.0.2.77".into(),
                failures: 1
            }]
        );
        assert!(r.missed.is_empty(), "not requested");
        // Extra ignoreregex.
        let r = run(&RegexToolArgs {
            ignoreregex: vec!["for bob ".into()],
            ..args.clone()
        })
        .unwrap();
        assert_eq!((r.lines_matched, r.lines_ignored), (0, 1));
        assert_eq!(r.ignoreregex[0].hits, 1);
        // A literal regex without a host tag is an error that says so.
        let e = run(&RegexToolArgs {
            filter: "login failed".into(),
            ..args.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("has no <HOST> or <ADDR> tag"));
        let e = run(&RegexToolArgs {
            mode: Some("ddos".into()),
            ..args
        })
        .unwrap_err();
        assert!(e.to_string().contains("--mode"));
    }

    #[test]
    fn toml_path_and_user_dir_override() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("myapp.toml");
        std::fs::write(&toml_path, "failregex = ['^bad login from <HOST>$']\n").unwrap();
        let args = RegexToolArgs {
            input: "bad login from 192.0.2.5".into(),
            filter: toml_path.display().to_string(),
            ..Default::default()
        };
        let r = run(&args).unwrap();
        assert!(r.filter.starts_with("file "), "{}", r.filter);
        assert_eq!(r.lines_matched, 1);
        // The same file found by name in a filters dir.
        let r = run(&RegexToolArgs {
            filter: "myapp".into(),
            filters_dir: Some(dir.path().to_path_buf()),
            ..args.clone()
        })
        .unwrap();
        assert_eq!(
            (r.filter.as_str(), r.lines_matched),
            ("user filter myapp", 1)
        );
        // A user file named like a built-in replaces it.
        std::fs::write(
            dir.path().join("sshd.toml"),
            "failregex = ['^bad login from <HOST>$']\n",
        )
        .unwrap();
        let r = run(&RegexToolArgs {
            filter: "sshd".into(),
            filters_dir: Some(dir.path().to_path_buf()),
            ..args
        })
        .unwrap();
        assert_eq!(
            (r.filter.as_str(), r.lines_matched),
            ("user filter sshd", 1)
        );
    }

    #[test]
    fn long_and_non_utf8_lines() {
        let mut content = Vec::new();
        content.extend_from_slice(
            b"sshd[1]: Failed password for r\xffoot from 192.0.2.1 port 1 ssh2\n",
        );
        content.extend_from_slice(b"sshd[2]: Invalid user ");
        content.extend(std::iter::repeat_n(b'x', MAX_LINE * 2));
        content.extend_from_slice(b" from 192.0.2.2 port 2\n");
        content.extend_from_slice(b"sshd[3]: Invalid user y from 192.0.2.3 port 3"); // no final newline
        let f = write_temp(&content);
        let r = run(&RegexToolArgs {
            input: f.path().display().to_string(),
            filter: "sshd".into(),
            print_missed: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.lines_total, 3);
        assert_eq!(r.lines_truncated, 1);
        // The truncated line lost its address; the others match.
        assert_eq!(r.lines_matched, 2);
        assert_eq!(r.missed.len(), 1);
        assert_eq!(r.missed[0].text.len(), MAX_LINE);
        let hosts: Vec<&str> = r.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, vec!["192.0.2.1", "192.0.2.3"]);
    }

    #[test]
    fn read_line_capped_handles_small_buffers() {
        let data = b"abc\n\nlong-line-here\nend";
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(tr) = read_line_capped(&mut r, &mut buf).unwrap() {
            lines.push((String::from_utf8(buf.clone()).unwrap(), tr));
        }
        assert_eq!(
            lines,
            vec![
                ("abc".to_string(), false),
                (String::new(), false),
                ("long-line-here".to_string(), false),
                ("end".to_string(), false)
            ]
        );
    }

    #[test]
    fn missing_input_file_is_a_literal_line() {
        let r = run(&RegexToolArgs {
            input: "/nonexistent/dir/auth.log".into(),
            filter: "sshd".into(),
            print_missed: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.input, "line");
        assert_eq!((r.lines_total, r.lines_missed), (1, 1));
    }
}
