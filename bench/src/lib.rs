//! `cargo xtask bench`: every speed and memory claim as a measured figure,
//! side by side with what operators use today, written to BENCHMARKS.md.
//! The agent runs in the lab of `xban-lab` ([`rig`] adapts it to the
//! benchmarks); `xtask` builds the agent and calls [`run`].
//!
//! Each area is a module returning [`Section`]s; comparisons inside a section
//! run in the same invocation, alternating, several runs each, and report
//! medians and ratios. Absolute numbers depend on the machine; the ratios are
//! the claim.

mod agent;
mod bpf;
mod fleet;
pub mod flood;
mod geo;
mod loggen;
mod logmatch;
mod maps;
mod napi;
mod rig;
mod scale;
pub mod tarpit;

pub use logmatch::write_logs as write_logmatch_logs;
pub mod xdp;

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use xban_lab::tail;
use xban_lab::{cmd, LabSpec};

/// One area's results, rendered as a Markdown section of BENCHMARKS.md.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    /// What was measured and how, in a sentence or two.
    pub method: String,
    /// The exact commands a reader can rerun.
    pub commands: Vec<String>,
    pub table: Table,
    /// Findings: targets met or missed, with the figures.
    pub notes: Vec<String>,
}

/// A plain table: header plus rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }

    /// Fixed-width text for the terminal.
    pub fn text(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  "));
        }
        out
    }
}

/// Median of a non-empty sample.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The machine the figures come from.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// `scope` is said at the top: the machine's load, and whether only some
/// areas ran (or a quick run).
fn render_markdown(sections: &[Section], scope: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# xban benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo xtask bench` (as root) on {}. Comparisons ran in the same invocation, alternating, several runs each; figures are medians. Absolute numbers depend on the machine: the ratios are the claim.\n",
        machine_description()
    );
    if let Some(scope) = scope {
        let _ = writeln!(out, "{scope}\n");
    }
    for s in sections {
        let _ = writeln!(out, "## {}\n\n{}\n", s.title, s.method);
        out.push_str(&s.table.markdown());
        out.push('\n');
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !s.notes.is_empty() {
            out.push('\n');
        }
        if !s.commands.is_empty() {
            let _ = writeln!(
                out,
                "Commands (paths are this run's scratch files, which `cargo xtask bench` creates again):\n\n```sh\n{}\n```\n",
                s.commands.join("\n")
            );
        }
    }
    out
}

/// The sections of a Markdown file: its head (before the first `## `), then
/// (title, text) for each `## TITLE` section.
fn md_sections(text: &str) -> (String, Vec<(String, String)>) {
    let mut head = String::new();
    let mut secs: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(title) = line.strip_prefix("## ") {
            secs.push((title.trim().to_string(), String::new()));
        }
        match secs.last_mut() {
            Some((_, body)) => body.push_str(line),
            None => head.push_str(line),
        }
    }
    (head, secs)
}

/// `earlier` (the committed file) with the sections of `fresh` (a run of
/// some areas): a section of the same title is replaced in place, a new one
/// goes after the last section `fresh` replaced before it (else at the end);
/// `note` (when and how the new ones ran) joins the head.
pub fn merge_markdown(earlier: &str, fresh: &str, note: &str) -> String {
    let (head, old) = md_sections(earlier);
    let (_, new) = md_sections(fresh);
    let mut out: Vec<(String, String)> = old;
    let mut after: Option<usize> = None;
    for (title, body) in new {
        match out.iter().position(|(t, _)| *t == title) {
            Some(i) => {
                out[i].1 = body;
                after = Some(i);
            }
            None => {
                let at = after.map_or(out.len(), |i| i + 1);
                out.insert(at, (title, body));
                after = Some(at);
            }
        }
    }
    let mut text = head.trim_end().to_string();
    text.push_str("\n\n");
    text.push_str(note);
    text.push_str("\n\n");
    for (_, body) in out {
        text.push_str(&body);
    }
    text
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn print_section(s: &Section) {
    println!("\n== {} ==\n{}", s.title, s.table.text());
    for n in &s.notes {
        println!("  - {n}");
    }
}

/// The benchmark areas, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Area {
    /// Log matching: `xban regex` vs `fail2ban-regex`, and the agent with 1 and 20 jails.
    Logmatch,
    /// Ban latency: log write to XDP map entry, over many bans (fail2ban alongside).
    Latency,
    /// Memory and speed at scale: 1M bans, 1M failing addresses, restore, 100k burst.
    Scale,
    /// Per-packet XDP cost (BPF_PROG_TEST_RUN) with up to 1M bans + 10k prefixes.
    Xdp,
    /// Drop under load on a veth: XDP vs iptables rules, ipset, nftables.
    Flood,
    /// Geo rules: compile and load ~10k IPv4 + 5k IPv6 prefixes, and a database swap.
    Geo,
    /// [fleet]: convergence between three agents through nats-server, a burst, catch-up.
    Fleet,
    /// Only scale's restore of 1M bans, cold and warm (not in the default run: scale has it);
    /// XBAN_BIN runs another agent build (a before/after).
    Restore,
}

impl Area {
    pub const ALL: &'static [Area] = &[
        Area::Logmatch,
        Area::Xdp,
        Area::Flood,
        Area::Latency,
        Area::Scale,
        Area::Geo,
        Area::Fleet,
    ];

    fn name(self) -> &'static str {
        match self {
            Area::Logmatch => "logmatch",
            Area::Latency => "latency",
            Area::Scale => "scale",
            Area::Xdp => "xdp",
            Area::Flood => "flood",
            Area::Geo => "geo",
            Area::Fleet => "fleet",
            Area::Restore => "restore",
        }
    }
}

/// Where the run happens, from the task runner.
pub struct Setup {
    /// The repository root: BENCHMARKS.md goes there.
    pub root: PathBuf,
    /// The target directory: a quick run writes BENCHMARKS-quick.md there.
    pub target_dir: PathBuf,
    /// The freshly built release agent, with its XDP program embedded.
    pub xban: PathBuf,
}

/// What every area needs.
pub struct Ctx {
    /// The release agent, with its XDP program embedded.
    pub xban: PathBuf,
    /// Scratch space for this run (removed at the end).
    pub scratch: PathBuf,
    /// Short run for a smoke test: small data sets, one run each.
    pub quick: bool,
}

impl Ctx {
    /// Full size, or the quick run's size.
    pub fn size(&self, full: u64, quick: u64) -> u64 {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Which areas to run (`cargo xtask bench [AREA...]`); all by default.
/// Writes BENCHMARKS.md at the repository root; a quick run writes
/// BENCHMARKS-quick.md in the target directory instead, so that a smoke test
/// never replaces the committed figures.
pub fn run(setup: &Setup, areas: &[Area], quick: bool) -> Result<()> {
    // Areas outside ALL (restore, a part of scale) run only when named.
    let chosen: Vec<Area> = Area::ALL
        .iter()
        .chain(&[Area::Restore])
        .copied()
        .filter(|a| {
            if areas.is_empty() {
                Area::ALL.contains(a)
            } else {
                areas.contains(a)
            }
        })
        .collect();
    let xban = setup.xban.clone();
    xban_lab::reap_leftovers(
        LabSpec::BENCH.ns_prefix,
        &xban_lab::pin_prefix(rig::PIN_NAME),
    );
    let load_at_start = logmatch::load_average();
    let scratch = Scratch::new()?;
    let ctx = Ctx {
        xban,
        scratch: scratch.0.clone(),
        quick,
    };
    let mut sections = Vec::new();
    for &area in &chosen {
        eprintln!("xtask: bench {}", area.name());
        let got = match area {
            Area::Logmatch => logmatch::run(&ctx),
            Area::Latency => agent::latency(&ctx),
            Area::Scale => scale::scale(&ctx),
            Area::Restore => scale::restore_only(&ctx),
            Area::Fleet => fleet::run(&ctx),
            // These take XBAN_BIN when set (rig::agent_binary).
            Area::Xdp => xdp::run(&ctx),
            Area::Flood => flood::run(&ctx),
            Area::Geo => geo::run(&ctx),
        }
        .with_context(|| format!("bench area {}", area.name()))?;
        for s in &got {
            print_section(s);
        }
        sections.extend(got);
    }
    let names: Vec<&str> = chosen.iter().map(|a| a.name()).collect();
    // Other work may share the machine; wall-clock figures suffer from it.
    let load = format!(
        "1-minute load average: {load_at_start} at the start of the run, {} at the end ({} cores).",
        logmatch::load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut scope = vec![load.clone()];
    if quick {
        scope.push(
            "Quick run (--quick): small data sets and one run each; not the published figures."
                .to_string(),
        );
    }
    let partial = chosen.len() < Area::ALL.len();
    if partial {
        scope.push(format!(
            "**Only these areas were run: {} (`cargo xtask bench {}`).**",
            names.join(", "),
            names.join(" ")
        ));
    }
    let out = if quick {
        setup.target_dir.join("BENCHMARKS-quick.md")
    } else {
        setup.root.join("BENCHMARKS.md")
    };
    let mut text = render_markdown(&sections, Some(&scope.join(" ")));
    // Some areas of a full run: their sections replace theirs in the
    // committed file, whose other figures stay.
    if partial && !quick {
        if let Ok(earlier) = std::fs::read_to_string(&out) {
            let note = format!(
                "The sections of {} come from a later run of {} alone (`cargo xtask bench {}`, {}); {load}",
                names.join(", "),
                if names.len() == 1 { "that area" } else { "those areas" },
                names.join(" "),
                today(),
            );
            text = merge_markdown(&earlier, &text, &note);
        }
    }
    std::fs::write(&out, text).with_context(|| format!("write {}", out.display()))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// Checked before anything is built or installed.
pub fn require_root() -> Result<()> {
    if !xban_lab::is_root() {
        bail!(
            "`cargo xtask bench` creates network namespaces, attaches XDP and runs the agent, \
             so it must run as root, e.g.:\n  sudo -E env \"PATH=$PATH\" cargo xtask bench"
        );
    }
    Ok(())
}

/// A scratch directory under the system temp dir, removed on drop (also
/// when a benchmark panics).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("xban-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command that succeeded: its output, wall time from spawn to exit, and
/// the CPU time (user + system) it used.
pub struct Timed {
    pub stdout: String,
    pub wall: Duration,
    pub cpu: Duration,
}

/// User + system time of this process's reaped children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we own; zeroed is a valid rusage.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `command` to completion, killing it after `timeout`. Output goes to
/// files, not pipes, so that a chatty child can never block on a full pipe
/// while we wait for it.
pub fn run_timed(command: &mut Command, scratch: &Path, timeout: Duration) -> Result<Timed> {
    let shown = cmd::display(command);
    let out_path = scratch.join("cmd.stdout");
    let err_path = scratch.join("cmd.stderr");
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    // Nothing else reaps children while this one runs, so the difference
    // is its CPU time.
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    // A watchdog, so that the wait below is exact and still bounded.
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill has no memory-safety preconditions; the child is
            // not yet reaped (we hold its Child), so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let status = child.wait()?;
    let wall = started.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if timed_out {
        bail!("`{shown}` did not finish within {timeout:?}; killed");
    }
    if !status.success() {
        bail!(
            "`{shown}` failed ({}{}):\n{}",
            status,
            status
                .signal()
                .map(|s| format!(", signal {s}"))
                .unwrap_or_default(),
            tail(&stderr, 20)
        );
    }
    Ok(Timed { stdout, wall, cpu })
}

/// Polls `f` every `every` until it yields a value or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// `once`, `twice`, `3 times`.
pub fn times(n: usize) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate or count with a readable number of digits: `1,234,567`, `12.3`.
pub fn num(x: f64) -> String {
    if x >= 1000.0 {
        thousands(x.round() as u64)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A duration in the unit that suits it.
pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// The `p`-th percentile (0..=100) of a sample, nearest rank.
pub fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_run_replaces_only_its_own_sections() {
        let earlier = "# xban benchmarks\n\nhead line\n\n## A\n\na1\n\n## B\n\nb1\n\n## C\n\nc1\n";
        let fresh = "# xban benchmarks\n\nother head\n\n## B\n\nb2\n\n## B2\n\nnew\n\n## D\n\nd\n";
        let merged = merge_markdown(earlier, fresh, "B ran later.");
        assert_eq!(
            merged,
            "# xban benchmarks\n\nhead line\n\nB ran later.\n\n## A\n\na1\n\n## B\n\nb2\n\n## B2\n\nnew\n\n## D\n\nd\n## C\n\nc1\n"
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(num(1_234_567.4), "1,234,567");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(dur(Duration::from_micros(250)), "250 µs");
        assert_eq!(dur(Duration::from_millis(1500)), "1.50 s");
    }

    #[test]
    fn stats() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut xs, 50.0), 50.0);
        assert_eq!(percentile(&mut xs, 99.0), 99.0);
        assert_eq!(percentile(&mut xs, 100.0), 100.0);
    }

    #[test]
    fn markdown_says_what_ran() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        let s = Section {
            title: "T".into(),
            method: "M".into(),
            commands: vec!["cmd".into()],
            table,
            notes: vec!["n".into()],
        };
        let text = render_markdown(&[s], Some("**Only these areas were run: x.**"));
        assert!(text.contains("**Only these areas were run: x.**"), "{text}");
        assert!(text.contains("| a | b |\n|---|---|\n| 1 | 2 |\n"), "{text}");
        assert!(
            text.contains("- n\n") && text.contains("```sh\ncmd\n```"),
            "{text}"
        );
    }
}
