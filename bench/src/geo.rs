//! Geo rules: compiling a MaxMind DB rule of about 10,000 IPv4 and 5,000
//! IPv6 prefixes and loading it into the XDP maps, at start and when the
//! database file is replaced.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use xban_lab::require_tool;

use crate::rig::{agent_binary, lab, Agent};
use crate::{median, require_root, Ctx, Section, Table};

const V4_PREFIXES: usize = 10_000;
const V6_PREFIXES: usize = 5_000;
/// Target: compile and load one such rule.
const TARGET_MS: f64 = 1000.0;

/// One country's networks, none adjacent (so none merge): /31s every 4
/// addresses in 198.18.0.0/15 and /48s every other one in 2001:db8:8000::/33 (clear of the lab),
/// shifted by `shift` steps (a new database version moves them).
fn records(shift: usize) -> String {
    let mut out = String::new();
    for i in shift..shift + V4_PREFIXES {
        let a = (198u32 << 24 | 18 << 16) + (i as u32) * 4;
        let b = a.to_be_bytes();
        out.push_str(&format!("{}.{}.{}.{}/31 XA\n", b[0], b[1], b[2], b[3]));
    }
    for i in shift..shift + V6_PREFIXES {
        out.push_str(&format!("2001:db8:{:x}::/48 XA\n", 0x8000 + i * 2));
    }
    out
}

fn write_mmdb(path: &Path, records: &str) -> Result<()> {
    let script = r#"
use strict; use warnings; use MaxMind::DB::Writer::Tree;
my %types = (country => 'map', iso_code => 'utf8_string');
my $tree = MaxMind::DB::Writer::Tree->new(ip_version => 6, record_size => 28,
    database_type => 'xban-bench-Country', languages => ['en'], description => { en => 'bench' },
    map_key_type_callback => sub { $types{ $_[0] } }, remove_reserved_networks => 0, alias_ipv6_to_ipv4 => 0);
while (my $l = <STDIN>) { chomp $l; my ($n, $c) = split ' ', $l; $tree->insert_network($n, { country => { iso_code => $c } }); }
open my $fh, '>:raw', "$ARGV[0].tmp" or die; $tree->write_tree($fh); close $fh or die;
rename "$ARGV[0].tmp", $ARGV[0] or die;
"#;
    let mut child = Command::new("perl")
        .args(["-e", script, path.to_str().context("utf-8 path")?])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("perl")?;
    child
        .stdin
        .take()
        .context("perl stdin")?
        .write_all(records.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "writing the MaxMind DB needs libmaxmind-db-writer-perl (cargo xtask test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn geo_status(agent: &Agent) -> Result<serde_json::Value> {
    let st: serde_json::Value = serde_json::from_str(&agent.xban(&["status", "--json"])?)?;
    Ok(st["geo"].clone())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Vec<Section>> {
    let quick = ctx.quick;
    require_root()?;
    require_tool("perl")?;
    let bin = agent_binary(ctx)?;
    let runs = if quick { 1 } else { 3 };
    let dir = std::env::temp_dir().join(format!("xban-geobench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("country.mmdb");
    let (mut check, mut compile, mut load, mut reload_wall) = (vec![], vec![], vec![], vec![]);
    let (mut swap_compile, mut swap_load, mut swap_wall) = (vec![], vec![], vec![]);
    for run in 0..runs {
        write_mmdb(&db, &records(0))?;
        let lab = lab()?;
        // The bench agent's config takes the ignoreip list verbatim: the
        // [geo] tables follow it (the jail's table comes after).
        let ignoreip = format!(
            "[\"127.0.0.0/8\"]\n\n[geo]\ndatabase = \"{}\"\n[[geo.rules]]\ncountries = [\"XA\"]\n",
            db.display()
        );
        // Started without the rule, which a reload then adds: the reload
        // compiles it and writes every prefix into the running maps.
        let agent = Agent::start(&bin, &lab, "[\"127.0.0.0/8\"]")?;
        let plain = std::fs::read_to_string(agent.dir.config_path())?;
        std::fs::write(
            agent.dir.config_path(),
            plain.replacen(
                "ignoreip = [\"127.0.0.0/8\"]",
                &format!("ignoreip = {ignoreip}"),
                1,
            ),
        )?;
        let started = Instant::now();
        agent.xban(&["reload"])?;
        reload_wall.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let out = agent.xban(&["check"])?;
        check.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            out.contains(&format!(
                "{V4_PREFIXES} IPv4 + {V6_PREFIXES} IPv6 prefixes banned"
            )),
            "check: {out}"
        );
        let g = geo_status(&agent)?;
        ensure!(
            g["prefixes_v4"] == V4_PREFIXES && g["prefixes_v6"] == V6_PREFIXES,
            "geo status: {g}"
        );
        compile.push(g["compile_ms"].as_f64().context("compile_ms")?);
        load.push(g["load_ms"].as_f64().context("load_ms")?);
        let generation = g["generation"].as_u64().unwrap_or(0);

        // A new version moves half of the prefixes.
        let replaced = Instant::now();
        write_mmdb(&db, &records(V4_PREFIXES.min(V6_PREFIXES) / 2 + run))?;
        let written = replaced.elapsed();
        let deadline = Instant::now() + Duration::from_secs(30);
        let g = loop {
            let g = geo_status(&agent)?;
            if g["generation"].as_u64().unwrap_or(0) > generation {
                break g;
            }
            ensure!(
                Instant::now() < deadline,
                "the new database was not applied: {g}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        swap_wall.push((replaced.elapsed() - written).as_secs_f64() * 1000.0);
        swap_compile.push(g["compile_ms"].as_f64().context("compile_ms")?);
        swap_load.push(g["load_ms"].as_f64().context("load_ms")?);
        agent.stop()?;
        drop(lab);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mut table = Table::new(&["step", "median (ms)", "runs"]);
    let n = runs.to_string();
    let total = median(&mut compile.clone()) + median(&mut load.clone());
    for (step, xs) in [
        (
            "compile (open the DB, walk its networks, merge)",
            &mut compile,
        ),
        (
            "load (every prefix into the running ban maps and geo label tries)",
            &mut load,
        ),
        ("`xban reload` adding the rule, wall time", &mut reload_wall),
        ("`xban check` wall time (config, DB, compile)", &mut check),
        ("new DB version: compile", &mut swap_compile),
        (
            "new DB version: apply the difference (half the prefixes moved)",
            &mut swap_load,
        ),
        (
            "new DB version: file renamed to applied (includes the 1 s poll)",
            &mut swap_wall,
        ),
    ] {
        table.row(vec![step.into(), format!("{:.0}", median(xs)), n.clone()]);
    }
    Ok(vec![Section {
        title: "Geo rules: compile and load".into(),
        method: format!(
            "A MaxMind DB written by libmaxmind-db-writer-perl with one country of {V4_PREFIXES} IPv4 and {V6_PREFIXES} IPv6 networks, none adjacent (so none merge); the real agent in a lab namespace with `[[geo.rules]] countries = [\"XA\"]`. The agent starts without the rule and `xban reload` adds it; compile and load times are the agent's own (`xban status --json`: geo.compile_ms, geo.load_ms); then the file is replaced by rename with half of the networks moved, and the difference applied."
        ),
        commands: vec![format!("cargo xtask bench geo{}", if quick { " --quick" } else { "" })],
        table,
        notes: vec![format!(
            "Compile + load of the rule: {total:.0} ms (target ≤ {TARGET_MS:.0} ms): {}.",
            if total <= TARGET_MS { "met" } else { "missed" }
        )],
    }])
}
