//! Fuzzing with cargo-fuzz (libFuzzer, nightly): the targets in `fuzz/`,
//! a bounded run of each inside `cargo xtask test`, longer runs with
//! `cargo xtask fuzz [TARGET] [--seconds N]`.
//!
//! The committed seed corpora (`fuzz/corpus/TARGET`) are only read: what
//! libFuzzer finds goes to `target/fuzz/corpus/TARGET`, crashes to
//! `target/fuzz/artifacts/TARGET/`, each run's log to `target/fuzz/logs/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::workspace::Workspace;

/// Every fuzz target (`fuzz/fuzz_targets/NAME.rs`).
pub(crate) const TARGETS: &[&str] = &[
    "time_scan",
    "host_extract",
    "filter_match",
    "config_parse",
    "control_request",
    "blocklist_parse",
];

/// Seconds per target inside `cargo xtask test` (6 targets: 2.5 minutes).
pub(crate) const TEST_SECONDS: u64 = 25;
/// Default for `cargo xtask fuzz`.
pub(crate) const DEFAULT_SECONDS: u64 = 300;

/// What one bounded run did, from libFuzzer's final statistics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RunStats {
    pub execs: u64,
    pub execs_per_sec: u64,
    pub new_units: u64,
    pub peak_rss_mb: u64,
}

/// Builds the targets, then runs `only` (or all) for `seconds` each. A
/// finding fails with the crashing input's path and what to do with it.
pub(crate) fn run(ws: &Workspace, only: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<&str> = match only {
        None => TARGETS.to_vec(),
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "unknown fuzz target `{name}`: use one of {}",
            TARGETS.join(", ")
        ),
    };
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let dirs = Dirs::new(ws);
    cmd::run(cargo_fuzz(&dirs).arg("build"))
        .context("building the fuzz targets failed (cargo fuzz build on nightly)")?;
    let mut summary = Vec::new();
    for target in targets {
        let stats = run_one(&dirs, target, seconds)?;
        summary.push(format!(
            "{target}: {} execs in {seconds} s ({}/s), {} new inputs, peak RSS {} MB, no finding",
            stats.execs, stats.execs_per_sec, stats.new_units, stats.peak_rss_mb
        ));
    }
    for line in &summary {
        eprintln!("xtask: fuzz {line}");
    }
    Ok(())
}

struct Dirs {
    fuzz: PathBuf,
    out: PathBuf,
}

impl Dirs {
    fn new(ws: &Workspace) -> Self {
        Self {
            fuzz: ws.root.join("fuzz"),
            out: ws.target_dir.join("fuzz"),
        }
    }
}

fn cargo_fuzz(dirs: &Dirs) -> std::process::Command {
    let mut c = cmd::cargo_on("nightly");
    c.current_dir(&dirs.fuzz)
        .arg("fuzz")
        .env("CARGO_TARGET_DIR", dirs.out.join("build"));
    c
}

fn run_one(dirs: &Dirs, target: &str, seconds: u64) -> Result<RunStats> {
    let corpus = dirs.out.join("corpus").join(target);
    let artifacts = dirs.out.join("artifacts").join(target);
    let logs = dirs.out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let seeds = dirs.fuzz.join("corpus").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut c = cargo_fuzz(dirs);
    c.args(["run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // One input may take at most this long (a hang is a finding too).
        .arg("-timeout=10")
        .stderr(log);
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let result = cmd::run(&mut c);
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if let Err(e) = result {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!("{}", tail.join("\n"));
        let found = newest_artifact(&artifacts);
        return Err(e).context(match found {
            Some(p) => format!(
                "fuzz target {target} found a failing input: {} (reproduce: cd fuzz && cargo +nightly fuzz run {target} {}); fix it and add the input as a unit test",
                p.display(),
                p.display()
            ),
            None => format!("fuzz target {target} failed; see {}", log_path.display()),
        });
    }
    Ok(parse_stats(&text))
}

fn newest_artifact(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// Reads libFuzzer's `-print_final_stats=1` lines (`stat::NAME: VALUE`).
pub(crate) fn parse_stats(log: &str) -> RunStats {
    let mut s = RunStats::default();
    for line in log.lines() {
        let Some((name, value)) = line
            .strip_prefix("stat::")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        match name {
            "number_of_executed_units" => s.execs = v,
            "average_exec_per_sec" => s.execs_per_sec = v,
            "new_units_added" => s.new_units = v,
            "peak_rss_mb" => s.peak_rss_mb = v,
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let log = "INFO: seed\nDone 123 runs in 2 second(s)\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     4938\nstat::new_units_added:          17\nstat::slowest_unit_time_sec:    0\nstat::peak_rss_mb:              61\n";
        assert_eq!(
            parse_stats(log),
            RunStats {
                execs: 123_456,
                execs_per_sec: 4938,
                new_units: 17,
                peak_rss_mb: 61
            }
        );
        assert_eq!(parse_stats("no stats"), RunStats::default());
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(fuzz.join(format!("fuzz_targets/{t}.rs")).is_file(), "{t}");
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} in fuzz/Cargo.toml"
            );
            let seeds = fs::read_dir(fuzz.join("corpus").join(t)).unwrap().count();
            assert!(seeds > 0, "{t}: no seed inputs");
        }
        let sources = fs::read_dir(fuzz.join("fuzz_targets")).unwrap().count();
        assert_eq!(sources, TARGETS.len(), "a target missing from TARGETS");
    }
}
