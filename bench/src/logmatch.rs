//! Log matching: how many log lines per second go through the sshd filter,
//! xban's against fail2ban's, on the same generated auth.log; then the real
//! agent following that log with 1 and with 20 jails.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::loggen::{self, LogStats};
use super::{median, num, run_timed, thousands, Ctx, Section, Table};
use crate::rig::AgentRig;

/// The generator's seed: the published figures come from this data set.
pub(crate) const SEED: u64 = 0x5eed_0001;
const F2B_FILTER: &str = "/etc/fail2ban/filter.d/sshd.conf";
/// Throughput targets the figures are checked against: lines/s on one core
/// and the ratio to fail2ban, for the ordinary mix ...
const TARGETS: Targets = Targets {
    lines_per_sec: 1_000_000.0,
    ratio: 50.0,
};
/// ... and for a log under attack, where half of the lines are failures and
/// the capture pass dominates (issue 12).
const ATTACK_TARGETS: Targets = Targets {
    lines_per_sec: 1_500_000.0,
    ratio: 100.0,
};

#[derive(Clone, Copy)]
struct Targets {
    lines_per_sec: f64,
    ratio: f64,
}

/// What one `xban regex --json` run reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct XbanRegexOut {
    pub lines: u64,
    pub matched: u64,
    pub elapsed_secs: f64,
    pub lines_per_sec: f64,
}

pub(crate) fn parse_xban_regex(json: &str) -> Result<XbanRegexOut> {
    let v: serde_json::Value = serde_json::from_str(json).context("xban regex --json output")?;
    let u = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("xban regex --json: no integer {k}"))
    };
    let f = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("xban regex --json: no number {k}"))
    };
    Ok(XbanRegexOut {
        lines: u("lines_total")?,
        matched: u("lines_matched")?,
        elapsed_secs: f("elapsed_secs")?,
        lines_per_sec: f("lines_per_sec")?,
    })
}

/// What one `fail2ban-regex` run reported: its `Lines: N lines, I ignored,
/// M matched, X missed` and `[processed in S sec]` lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct F2bRegexOut {
    pub lines: u64,
    pub ignored: u64,
    pub matched: u64,
    pub missed: u64,
    pub processed_secs: f64,
}

pub(crate) fn parse_fail2ban_regex(text: &str) -> Result<F2bRegexOut> {
    let lines_line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Lines: "))
        .context("fail2ban-regex printed no `Lines:` summary")?;
    let mut counts = [None; 4];
    for part in lines_line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let slot = match what {
            "lines" => 0,
            "ignored" => 1,
            "matched" => 2,
            "missed" => 3,
            _ => continue,
        };
        counts[slot] = n.parse::<u64>().ok();
    }
    let [Some(lines), Some(ignored), Some(matched), Some(missed)] = counts else {
        bail!("unreadable fail2ban-regex summary: Lines: {lines_line}");
    };
    let processed_secs = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[processed in "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .context("fail2ban-regex printed no `[processed in S sec]`")?;
    Ok(F2bRegexOut {
        lines,
        ignored,
        matched,
        missed,
        processed_secs,
    })
}

/// `taskset -c 0 xban -c CFG regex LOG sshd --json`. The config only names
/// an empty filters_dir, so the built-in sshd filter is used whatever
/// /etc/xban holds.
fn xban_regex_cmd(ctx: &Ctx, cfg: &Path, log: &Path) -> Command {
    xban_regex_filter_cmd(ctx, cfg, log, Path::new("sshd"))
}

/// `xban regex` with `filter`: a built-in's name or a filter file.
fn xban_regex_filter_cmd(ctx: &Ctx, cfg: &Path, log: &Path, filter: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"])
        .arg(&ctx.xban)
        .arg("-c")
        .arg(cfg)
        .arg("regex")
        .arg(log)
        .arg(filter)
        .arg("--json");
    c
}

/// Minimum ratio of the imported stock sshd filter's lines/s to
/// fail2ban-regex's with the same filter (issue 14).
const IMPORTED_RATIO: f64 = 30.0;

/// fail2ban's own sshd filter, imported by `xban import` from a copy of
/// /etc/fail2ban with an `[sshd]` jail enabled, run by `xban regex` on the
/// ordinary log against `f2b` (fail2ban-regex with that same filter).
fn imported_section(
    ctx: &Ctx,
    cfg: &Path,
    log: &Path,
    stats: &LogStats,
    f2b: &[(F2bRegexOut, Duration, Duration)],
    runs: usize,
) -> Result<Section> {
    let etc = ctx.scratch.join("fail2ban-etc");
    let out = ctx.scratch.join("imported");
    let _ = std::fs::remove_dir_all(&etc);
    let _ = std::fs::remove_dir_all(&out);
    let copied = Command::new("cp")
        .args(["-a", "/etc/fail2ban"])
        .arg(&etc)
        .status()?;
    if !copied.success() {
        bail!("cp -a /etc/fail2ban {} failed", etc.display());
    }
    let _ = std::fs::remove_file(etc.join("jail.local"));
    let _ = std::fs::remove_dir_all(etc.join("jail.d"));
    std::fs::create_dir(etc.join("jail.d"))?;
    std::fs::write(
        etc.join("jail.d/bench.local"),
        format!("[sshd]\nenabled = true\nlogpath = {}\n", log.display()),
    )?;
    let mut import = Command::new(&ctx.xban);
    import.arg("import").arg(&etc).arg("--out").arg(&out);
    let t = run_timed(&mut import, &ctx.scratch, Duration::from_secs(120))?;
    let filters: Vec<_> = std::fs::read_dir(out.join("filters"))
        .with_context(|| format!("xban import wrote no filters: {}", t.stdout))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let [filter] = filters.as_slice() else {
        bail!(
            "xban import wrote {} filters, expected sshd's alone",
            filters.len()
        );
    };
    let mut xban = Vec::new();
    for i in 0..runs {
        eprintln!(
            "xtask: logmatch {} run {}/{runs}: xban regex, imported sshd",
            log.display(),
            i + 1
        );
        xban.push(xban_regex_run(
            ctx,
            &mut xban_regex_filter_cmd(ctx, cfg, log, filter),
        )?);
    }
    let n = stats.lines as f64;
    let rate = |xs: Vec<f64>| median(&mut xs.into_iter().map(|s| n / s).collect::<Vec<_>>());
    let x_wall = rate(xban.iter().map(|r| r.1.as_secs_f64()).collect());
    let x_cpu = rate(xban.iter().map(|r| r.2.as_secs_f64()).collect());
    let f_wall = rate(f2b.iter().map(|r| r.1.as_secs_f64()).collect());
    let f_cpu = rate(f2b.iter().map(|r| r.2.as_secs_f64()).collect());
    let ratio = x_wall / f_wall;
    let (x_matched, f_matched) = (xban[0].0.matched, f2b[0].0.matched);
    let mut table = Table::new(&[
        "tool",
        "lines/s (wall)",
        "lines/s (CPU time)",
        "lines matched",
    ]);
    table.row(vec![
        "xban regex, imported sshd.conf".into(),
        num(x_wall),
        num(x_cpu),
        thousands(x_matched),
    ]);
    table.row(vec![
        "fail2ban-regex 1.0.2 (sshd.conf)".into(),
        num(f_wall),
        num(f_cpu),
        thousands(f_matched),
    ]);
    table.row(vec![
        "ratio xban / fail2ban".into(),
        format!("{ratio:.0}×"),
        format!("{:.0}×", x_cpu / f_cpu),
        String::new(),
    ]);
    Ok(Section {
        title: "Log matching: fail2ban's own sshd filter, imported".into(),
        method: format!(
            "The ordinary log above ({} lines). `xban import` read a copy of /etc/fail2ban with `[sshd]` enabled (fail2ban's sshd.conf, mode normal, its prefregex, connection state and all) and wrote the filter; `xban regex` ran it {}, pinned to CPU 0; fail2ban-regex's runs with the same sshd.conf are the ones above. Medians.",
            thousands(stats.lines),
            super::times(xban.len())
        ),
        commands: vec![
            xban_lab::cmd::display(&import),
            xban_lab::cmd::display(&xban_regex_filter_cmd(ctx, cfg, log, filter)),
        ],
        table,
        notes: vec![
            format!(
                "Target ≥ {IMPORTED_RATIO}× fail2ban-regex with the same filter: {} ({ratio:.0}× by wall time, {:.0}× by CPU time).",
                met(ratio >= IMPORTED_RATIO),
                x_cpu / f_cpu
            ),
            format!(
                "Agreement: the same filter found {} failures in xban, {} in fail2ban{}.",
                thousands(x_matched),
                thousands(f_matched),
                if x_matched == f_matched {
                    ": equal".to_string()
                } else {
                    format!(" ({:+})", x_matched as i64 - f_matched as i64)
                }
            ),
        ],
    })
}

fn f2b_regex_cmd(log: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args([
        "-c",
        "0",
        "fail2ban-regex",
        "--print-no-missed",
        "--print-no-ignored",
    ])
    .arg(log)
    .arg(F2B_FILTER);
    c
}

/// `XBAN_BENCH_LOGMATCH=agent`: the area runs the agent section alone (1
/// and 20 jails on one log), without the `xban regex` / fail2ban-regex runs;
/// with `XBAN_BIN`, of that agent (an older build, for a before/after).
const ONLY_VAR: &str = "XBAN_BENCH_LOGMATCH";

/// `XBAN_BENCH_LOGMATCH_PERF=PREFIX`: `perf record` the agent during the
/// first run of each jail configuration into PREFIX-1-sshd, PREFIX-20-sshd
/// and PREFIX-20-filters.
const PERF_VAR: &str = "XBAN_BENCH_LOGMATCH_PERF";

fn only_agent() -> bool {
    std::env::var(ONLY_VAR).is_ok_and(|v| v == "agent")
}

pub(crate) fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let lines = ctx.size(1_000_000, 100_000);
    let runs = ctx.size(3, 1) as usize;
    if only_agent() {
        // XBAN_BIN: another agent build, for a before/after.
        let ctx = &Ctx {
            xban: crate::rig::agent_binary(ctx)?,
            scratch: ctx.scratch.clone(),
            quick: ctx.quick,
        };
        let log = ctx.scratch.join("auth-mixed.log");
        let stats = generate(&log, lines, loggen::generate)?;
        let mut section = agent_section(ctx, &log, &stats)?;
        section
            .notes
            .push(format!("Only this section ran ({ONLY_VAR}=agent)."));
        return Ok(vec![section]);
    }
    let cfg = ctx.scratch.join("regex.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nfilters_dir = \"{}\"\n",
            ctx.scratch.join("no-filters").display()
        ),
    )?;
    let log = ctx.scratch.join("auth-mixed.log");
    let stats = generate(&log, lines, loggen::generate)?;
    let (xban, f2b) = regex_runs(ctx, &cfg, &log, runs)?;
    let mut sections = vec![regex_section(
        ctx,
        &cfg,
        &log,
        &stats,
        &xban,
        &f2b,
        "Log matching: sshd filter, xban vs fail2ban",
        TARGETS,
    )?];
    sections.push(imported_section(ctx, &cfg, &log, &stats, &f2b, runs)?);
    let attack = ctx.scratch.join("auth-attack.log");
    let attack_stats = generate(&attack, ctx.size(200_000, 50_000), loggen::generate_attack)?;
    let (xban_a, f2b_a) = regex_runs(ctx, &cfg, &attack, runs)?;
    sections.push(regex_section(
        ctx,
        &cfg,
        &attack,
        &attack_stats,
        &xban_a,
        &f2b_a,
        "Log matching under attack: half the lines are failures",
        ATTACK_TARGETS,
    )?);
    sections.push(agent_section(ctx, &log, &stats)?);
    Ok(sections)
}

/// Writes the two logs this area matches, at full size and with the
/// published seed, into `dir`: `auth-mixed.log` (1,000,000 lines) and
/// `auth-attack.log` (200,000 lines, half failures), so that the matcher
/// can be profiled on the very data the figures come from
/// (`cargo run -p xban-bench --release --example logmatch_logs -- DIR`).
pub fn write_logs(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mixed = dir.join("auth-mixed.log");
    generate(&mixed, 1_000_000, loggen::generate)?;
    let attack = dir.join("auth-attack.log");
    generate(&attack, 200_000, loggen::generate_attack)?;
    Ok(vec![mixed, attack])
}

type Gen = fn(File, u64, u64) -> std::io::Result<LogStats>;

/// Writes the log with `gen` and reads it once, so that every tool reads it
/// from the page cache.
fn generate(log: &Path, lines: u64, gen: Gen) -> Result<LogStats> {
    let started = Instant::now();
    let stats = gen(File::create(log)?, lines, SEED)?;
    eprintln!(
        "xtask: generated {} ({} lines, {:.0} MB) in {:.1} s",
        log.display(),
        thousands(stats.lines),
        stats.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    std::fs::read(log)?;
    Ok(stats)
}

type Runs<T> = Vec<(T, Duration, Duration)>;

/// One `xban regex --json` run: what it reported, wall and CPU time.
fn xban_regex_run(ctx: &Ctx, cmd: &mut Command) -> Result<(XbanRegexOut, Duration, Duration)> {
    let t = run_timed(cmd, &ctx.scratch, Duration::from_secs(300))?;
    Ok((parse_xban_regex(&t.stdout)?, t.wall, t.cpu))
}

/// `runs` runs of each tool on `log`, alternating.
fn regex_runs(
    ctx: &Ctx,
    cfg: &Path,
    log: &Path,
    runs: usize,
) -> Result<(Runs<XbanRegexOut>, Runs<F2bRegexOut>)> {
    let mut xban = Vec::new();
    let mut f2b = Vec::new();
    for i in 0..runs {
        eprintln!(
            "xtask: logmatch {} run {}/{runs}: xban regex, then fail2ban-regex",
            log.display(),
            i + 1
        );
        xban.push(xban_regex_run(ctx, &mut xban_regex_cmd(ctx, cfg, log))?);
        let t = run_timed(
            &mut f2b_regex_cmd(log),
            &ctx.scratch,
            Duration::from_secs(1200),
        )?;
        f2b.push((parse_fail2ban_regex(&t.stdout)?, t.wall, t.cpu));
    }
    Ok((xban, f2b))
}

#[allow(clippy::too_many_arguments)]
fn regex_section(
    ctx: &Ctx,
    cfg: &Path,
    log: &Path,
    stats: &LogStats,
    xban: &[(XbanRegexOut, Duration, Duration)],
    f2b: &[(F2bRegexOut, Duration, Duration)],
    title: &str,
    targets: Targets,
) -> Result<Section> {
    let n = stats.lines as f64;
    for (x, _, _) in xban {
        if x.lines != stats.lines {
            bail!("xban regex read {} lines of {}", x.lines, stats.lines);
        }
    }
    for (f, _, _) in f2b {
        if f.lines != stats.lines {
            bail!("fail2ban-regex read {} lines of {}", f.lines, stats.lines);
        }
    }
    let rate = |xs: Vec<f64>| median(&mut xs.into_iter().map(|s| n / s).collect::<Vec<_>>());
    let x_wall = rate(xban.iter().map(|r| r.1.as_secs_f64()).collect());
    let x_cpu = rate(xban.iter().map(|r| r.2.as_secs_f64()).collect());
    let x_own = median(&mut xban.iter().map(|r| r.0.lines_per_sec).collect::<Vec<_>>());
    let f_wall = rate(f2b.iter().map(|r| r.1.as_secs_f64()).collect());
    let f_cpu = rate(f2b.iter().map(|r| r.2.as_secs_f64()).collect());
    let f_own = rate(f2b.iter().map(|r| r.0.processed_secs).collect());
    let x_matched = xban[0].0.matched;
    let f_matched = f2b[0].0.matched;
    let ratio = x_wall / f_wall;

    let mut table = Table::new(&[
        "tool",
        "lines/s (wall)",
        "lines/s (CPU time)",
        "lines/s (own timer)",
        "wall per run",
        "lines matched",
    ]);
    let walls = |w: Vec<Duration>| {
        w.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ")
            + " s"
    };
    table.row(vec![
        "xban regex (sshd)".into(),
        num(x_wall),
        num(x_cpu),
        num(x_own),
        walls(xban.iter().map(|r| r.1).collect()),
        thousands(x_matched),
    ]);
    table.row(vec![
        "fail2ban-regex 1.0.2 (sshd.conf)".into(),
        num(f_wall),
        num(f_cpu),
        num(f_own),
        walls(f2b.iter().map(|r| r.1).collect()),
        thousands(f_matched),
    ]);
    table.row(vec![
        "ratio xban / fail2ban".into(),
        format!("{ratio:.0}×"),
        format!("{:.0}×", x_cpu / f_cpu),
        format!("{:.0}×", x_own / f_own),
        String::new(),
        String::new(),
    ]);

    let mut notes = vec![
        format!(
            "Target ≥ {}× fail2ban's lines/s: {} ({ratio:.0}× by wall time).",
            targets.ratio,
            met(ratio >= targets.ratio)
        ),
        format!(
            "Target ≥ {} lines/s on one core for the sshd filter: {} ({} lines/s by wall time; {} by CPU time; {} by xban's own timer, which leaves out process start and filter compilation).",
            thousands(targets.lines_per_sec as u64),
            met(x_wall >= targets.lines_per_sec),
            num(x_wall),
            num(x_cpu),
            num(x_own)
        ),
        format!(
            "Load: the machine is shared; the 1-minute load average was {} at the end of these runs. Wall time counts time a process waits for the CPU, CPU time does not.",
            load_average()
        ),
    ];
    let expected_f2b = stats.failures_both;
    let expected_xban = stats.failures_both + stats.failures_xban_only;
    notes.push(format!(
        "Agreement: the generator wrote {} failure lines both filters count, plus {} `Disconnecting invalid user X ADDR port N: Too many authentication failures` lines that only xban's filter counts (fail2ban 1.0.2's pattern expects `Disconnecting: Too many authentication failures`). Expected xban {}, fail2ban {}; measured xban {}, fail2ban {}{}.",
        thousands(stats.failures_both),
        thousands(stats.failures_xban_only),
        thousands(expected_xban),
        thousands(expected_f2b),
        thousands(x_matched),
        thousands(f_matched),
        if x_matched == expected_xban && f_matched == expected_f2b {
            ": both exact".to_string()
        } else {
            format!(
                ": MISMATCH (xban {:+}, fail2ban {:+}), the filters are not equivalent on this data",
                x_matched as i64 - expected_xban as i64,
                f_matched as i64 - expected_f2b as i64
            )
        }
    ));
    notes.push(format!(
        "fail2ban-regex also reported {} lines as `ignored`: lines its normal mode matches only as helpers (`<F-NOFAIL>`: PAM `rhost=`, pre-auth closes, `Accepted`), which xban's filter does not match at all.",
        thousands(f2b[0].0.ignored)
    ));
    Ok(Section {
        title: title.into(),
        method: format!(
            "One generated auth.log of {} lines ({:.0} MB, seed {SEED:#x}): {:.1}% failures from {} IPv4/IPv6 attacker addresses, the rest attack noise (PAM, pre-auth disconnects) and ordinary sshd/PAM/cron/logind/systemd/sudo/kernel lines. Each tool ran {} on it, alternating, pinned to CPU 0 (`taskset -c 0`), file in the page cache. lines/s (wall) = lines / wall time of the whole process (start, filter compilation, reading, matching); CPU time = the process's user + system time (getrusage); own timer = xban's `lines_per_sec`, fail2ban's `[processed in S sec]`. Medians.",
            thousands(stats.lines),
            stats.bytes as f64 / 1e6,
            100.0 * (stats.failures_both + stats.failures_xban_only) as f64 / stats.lines as f64,
            thousands(stats.attackers),
            super::times(xban.len())
        ),
        commands: vec![
            format!(
                "{}   # config: [agent] filters_dir = <empty dir> (built-in filters only)",
                xban_lab::cmd::display(&xban_regex_cmd(ctx, cfg, log))
            ),
            xban_lab::cmd::display(&f2b_regex_cmd(log)),
        ],
        table,
        notes,
    })
}

/// The 1-minute load average (/proc/loadavg), for the reader to judge
/// wall-time figures by.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Twenty different filters: every built-in in its default mode, plus the
/// other modes of those that have them.
const MIXED_FILTERS: [(&str, Option<&str>); 20] = [
    ("sshd", None),
    ("sshd", Some("ddos")),
    ("sshd", Some("aggressive")),
    ("nginx-http-auth", None),
    ("nginx-http-auth", Some("aggressive")),
    ("nginx-botsearch", None),
    ("nginx-limit-req", None),
    ("apache-auth", None),
    ("apache-auth", Some("aggressive")),
    ("apache-noscript", None),
    ("apache-overflows", None),
    ("postfix", None),
    ("postfix", Some("ddos")),
    ("postfix", Some("aggressive")),
    ("dovecot", None),
    ("dovecot", Some("aggressive")),
    ("vsftpd", None),
    ("pure-ftpd", None),
    ("proftpd", None),
    ("recidive", None),
];

/// What the jails of an agent run use.
#[derive(Clone, Copy)]
enum Jails {
    /// This many jails, all with the sshd filter.
    Sshd(usize),
    /// The 20 jails of [`MIXED_FILTERS`].
    Mixed,
}

impl Jails {
    fn count(self) -> usize {
        self.filters().len()
    }

    /// (filter, mode) of each jail.
    fn filters(self) -> Vec<(&'static str, Option<&'static str>)> {
        match self {
            Jails::Sshd(n) => vec![("sshd", None); n],
            Jails::Mixed => MIXED_FILTERS.to_vec(),
        }
    }

    /// A short name for file names.
    fn tag(self) -> String {
        match self {
            Jails::Sshd(n) => format!("{n}-sshd"),
            Jails::Mixed => "20-filters".into(),
        }
    }

    fn label(self) -> String {
        match self {
            Jails::Sshd(1) => "xban run, 1 jail, sshd filter".into(),
            Jails::Sshd(n) => format!("xban run, {n} jails, all sshd filter"),
            Jails::Mixed => "xban run, 20 jails, 20 different filters".into(),
        }
    }
}

/// What one agent run measured.
struct AgentRun {
    wall: Duration,
    /// The agent's user + system CPU time over the same span.
    cpu: f64,
    command: String,
}

/// The real agent following the log with the given jails, all on the same
/// file: the file is appended in one go and the clock stops when every jail
/// has counted every line. `perf` names a `perf record` output, if any.
fn agent_run(
    ctx: &Ctx,
    log: &Path,
    lines: u64,
    jails: Jails,
    perf: Option<std::ffi::OsString>,
) -> Result<AgentRun> {
    let mut rest = String::from(
        "[defaults]\n# Far above any address's failures: this measures the line path, not bans.\nmaxretry = 1000000\nfindtime = \"10m\"\nbantime = \"1h\"\n\n",
    );
    for (j, (filter, mode)) in jails.filters().into_iter().enumerate() {
        rest.push_str(&format!(
            "[jails.j{j:02}]\nfilter = \"{filter}\"\nlogpath = [\"{{LOG}}\"]\n"
        ));
        if let Some(mode) = mode {
            rest.push_str(&format!("mode = \"{mode}\"\n"));
        }
        rest.push('\n');
    }
    let mut rig = AgentRig::new(ctx, &rest)?;
    rig.start_and_wait()?;
    let data = std::fs::read(log)?;
    let perf = crate::scale::PerfRecord::start_to(perf, rig.running()?.pid())?;
    let cpu_before = rig.cpu_secs()?;
    let started = Instant::now();
    rig.append(&data)?;
    let jails_n = jails.count();
    let timeout = Duration::from_secs(60 + lines * jails_n as u64 / 20_000);
    let done = super::wait_for(timeout, Duration::from_millis(50), || {
        let s = rig.status().ok()?;
        let all = s["jails"]
            .as_array()?
            .iter()
            .all(|j| j["counters"]["lines"].as_u64() == Some(lines));
        all.then_some(())
    });
    let elapsed = started.elapsed();
    let cpu_after = rig.cpu_secs()?;
    perf.stop()?;
    if done.is_none() {
        bail!(
            "the agent with {jails_n} jails did not count {lines} lines within {timeout:?}: {}",
            rig.status().map(|s| s.to_string()).unwrap_or_default()
        );
    }
    let command = rig.run_command_text();
    rig.stop()?;
    Ok(AgentRun {
        wall: elapsed,
        cpu: (cpu_after.0 + cpu_after.1) - (cpu_before.0 + cpu_before.1),
        command,
    })
}

fn agent_section(ctx: &Ctx, log: &Path, stats: &LogStats) -> Result<Section> {
    let runs = ctx.size(3, 1) as usize;
    let mut table = Table::new(&[
        "agent",
        "line×jail checks/s",
        "log lines/s",
        "time for the whole log",
        "agent CPU",
    ]);
    let mut notes = Vec::new();
    let mut commands = Vec::new();
    let mut times_of = Vec::new();
    for jails in [Jails::Sshd(1), Jails::Sshd(20), Jails::Mixed] {
        let mut times = Vec::new();
        let mut cpus = Vec::new();
        for r in 0..runs {
            eprintln!("xtask: {}, run {}/{runs}", jails.label(), r + 1);
            let perf = std::env::var_os(PERF_VAR).filter(|_| r == 0).map(|mut p| {
                p.push(format!("-{}", jails.tag()));
                p
            });
            let run = agent_run(ctx, log, stats.lines, jails, perf)?;
            times.push(run.wall.as_secs_f64());
            cpus.push(run.cpu);
            if r == 0 {
                commands.push(format!("{}   # {}", run.command, jails.label()));
            }
        }
        let t = median(&mut times);
        let cpu = median(&mut cpus);
        let checks = (stats.lines * jails.count() as u64) as f64 / t;
        times_of.push(t);
        table.row(vec![
            jails.label(),
            num(checks),
            num(stats.lines as f64 / t),
            format!("{t:.2} s"),
            format!("{cpu:.2} s"),
        ]);
    }
    notes.push(format!(
        "20 sshd jails take {:.1}× as long as 1 for the same lines: the jails share one reader of the file, and jails with the same filter share one match of each line, counted in each jail (and each counts the failures in its own window). With 20 different filters one literal scan over all of them drops a line no filter can match and picks the filters that can; 20 jails take {:.1}× as long as 1 sshd jail.",
        times_of[1] / times_of[0],
        times_of[2] / times_of[0]
    ));
    Ok(Section {
        title: "Log matching in the agent: 1 and 20 jails on one log".into(),
        method: format!(
            "The real agent (`xban run`, in its own network namespace, XDP on a veth) follows the same {}-line log with 1 jail, 20 jails all using the sshd filter (every line tested by every jail: the worst case, since sshd lines pass the sshd filter's literal prefilter), and 20 jails with 20 different filters (every built-in filter, plus the ddos/aggressive modes of those that have them), all on that one file. The whole file is appended at once; the time runs until every jail's `lines` counter (`xban status --json`, polled every 50 ms) reaches the line count. maxretry is set above any address's failure count, so this is the line path (read, match, count failures), not the ban path (see latency and scale). Agent CPU is its user + system time over the same span (/proc/PID/stat), less disturbed by other load than the wall clock. Each configuration ran {}, median; not pinned (the agent reads the file in one task shared by the jails that follow it, and matches in its main loop).",
            thousands(stats.lines),
            super::times(runs)
        ),
        commands,
        table,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim tail of a fail2ban-regex 1.0.2 run (Debian bookworm).
    const F2B_OUT: &str = "\
Date template hits:
|- [# of hits] date format
|  [13] {^LN-BEG}(?:DAY )?MON Day %k:Minute:Second(?:\\.Microseconds)?(?: ExYear)?
`-

Lines: 13 lines, 5 ignored, 4 matched, 4 missed
[processed in 0.00 sec]

|- Ignored line(s):
";

    #[test]
    fn fail2ban_regex_summary() {
        let f = parse_fail2ban_regex(F2B_OUT).unwrap();
        assert_eq!(
            f,
            F2bRegexOut {
                lines: 13,
                ignored: 5,
                matched: 4,
                missed: 4,
                processed_secs: 0.0
            }
        );
        let big = "Lines: 1000000 lines, 174512 ignored, 135023 matched, 690465 missed\n[processed in 38.51 sec]\n";
        let f = parse_fail2ban_regex(big).unwrap();
        assert_eq!(
            (f.lines, f.matched, f.processed_secs),
            (1_000_000, 135_023, 38.51)
        );
        assert!(parse_fail2ban_regex("Lines: 3 lines, 1 matched\n[processed in 1 sec]").is_err());
        assert!(parse_fail2ban_regex("no summary").is_err());
    }

    #[test]
    fn xban_regex_json() {
        let x = parse_xban_regex(
            r#"{"filter":"builtin sshd","lines_total":10,"lines_matched":3,"elapsed_secs":0.5,"lines_per_sec":20.0,"hosts":[]}"#,
        )
        .unwrap();
        assert_eq!(
            x,
            XbanRegexOut {
                lines: 10,
                matched: 3,
                elapsed_secs: 0.5,
                lines_per_sec: 20.0
            }
        );
        assert!(parse_xban_regex(r#"{"lines_total":10}"#).is_err());
    }
}
