//! `xban`: the agent (`xban run`) and the operator's commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use xban::api::protocol::{Reply, Request};
use xban::api::socket;
use xban::api::views::{BanView, FleetStatus, StatusView, XdpStats};
use xban::cli::{Cli, Command};
use xban::config::Config;
use xban::sys::paths;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(xban::daemon::turn_log::TurnLog);
    // Under systemd, journald stamps each line itself: no time, no colours.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().with_ansi(false).init();
    } else {
        logs.init();
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xban: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { dry_run } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(xban::daemon::run(
                &cli.config,
                xban::daemon::RunOptions { dry_run },
            ))
        }
        Command::Import { dir, out, dry_run } => import(&cli.config, &dir, out.as_deref(), dry_run),
        Command::Check {
            config,
            config_only,
        } => {
            let path = config.unwrap_or(cli.config);
            let resolved = Config::load(&path)?
                .validate()
                .with_context(|| format!("config {}", path.display()))?;
            // The start-up checks too, where they can run here: the
            // metrics address only when no agent holds it already.
            let checked = if config_only {
                Default::default()
            } else {
                xban::preflight::preflight(
                    &resolved,
                    xban::preflight::PreflightOptions {
                        bind_metrics: !socket::agent_running(&resolved.agent.socket),
                        kernel_side: true,
                    },
                )
                .with_context(|| format!("config {}", path.display()))?
            };
            for w in resolved.warnings.iter().chain(&checked.notes) {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} jails: {})",
                path.display(),
                resolved.jails.len(),
                resolved
                    .jails
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if resolved.geo_db.is_some() {
                let (v4, v6) = resolved.geo_set.counts();
                println!(
                    "geo: {} rule(s): {v4} IPv4 + {v6} IPv6 prefixes banned, {} allowed",
                    resolved.geo.rules.len(),
                    resolved.geo_set.allow.len()
                );
            }
            check_names(&resolved)
        }
        Command::Geo { address, json } => {
            let data = ask(&cli.config, &Request::Geo { address })?;
            if json {
                return print_json(&data);
            }
            let g: xban::geo::GeoInfo = serde_json::from_value(data)?;
            let none = || "-".to_string();
            println!("address  {}", g.address);
            println!(
                "country  {}{}",
                g.country.clone().unwrap_or_else(none),
                g.country_name
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            println!(
                "asn      {}{}",
                g.asn.map(|a| format!("AS{a}")).unwrap_or_else(none),
                g.asn_org.map(|n| format!(" ({n})")).unwrap_or_default()
            );
            println!("network  {}", g.network.unwrap_or_else(none));
            match (g.rule, g.prefix) {
                (Some(r), Some(p)) => println!("rule     {r} (prefix {p})"),
                _ => println!("rule     none"),
            }
            if let Some(a) = g.allowlisted_by {
                println!("allowed  by the allowlist entry {a}: never banned, passed at XDP");
            }
            Ok(())
        }
        Command::Status { jail, json } => {
            let data = ask(&cli.config, &Request::Status { jail })?;
            if json {
                return print_json(&data);
            }
            let s: StatusView = serde_json::from_value(data)?;
            print_status(&s);
            Ok(())
        }
        Command::Banned { jail, json } => {
            let data = ask(&cli.config, &Request::Banned { jail })?;
            if json {
                return print_json(&data);
            }
            let bans: Vec<BanView> = serde_json::from_value(data)?;
            print_bans(&bans);
            Ok(())
        }
        Command::Ban {
            target,
            jail,
            bantime,
            class,
            force,
            json,
        } => {
            let data = ask(
                &cli.config,
                &Request::Ban {
                    target,
                    jail,
                    bantime,
                    class,
                    force,
                },
            )?;
            if json {
                return print_json(&data);
            }
            let b: BanView = serde_json::from_value(data)?;
            println!(
                "banned {} (jail {}, class {}, {})",
                b.address,
                b.jail,
                b.class,
                expires_text(b.expires_at)
            );
            Ok(())
        }
        Command::Reload => {
            let data = ask(&cli.config, &Request::Reload)?;
            println!("reloaded: {}", data.as_str().unwrap_or_default());
            Ok(())
        }
        Command::Unban {
            target,
            all,
            jail,
            local,
            json,
        } => {
            let data = ask(
                &cli.config,
                &Request::Unban {
                    target,
                    jail,
                    all,
                    local,
                },
            )?;
            if json {
                return print_json(&data);
            }
            let removed: Vec<BanView> = serde_json::from_value(data)?;
            for b in removed {
                println!("unbanned {} (jail {})", b.address, b.jail);
            }
            Ok(())
        }
        Command::Stats { json } => {
            let pin_dir = agent_config(&cli.config)?.bpf_pin_dir;
            let stats = xban::daemon::read_stats(&pin_dir)?;
            if json {
                return print_json(&serde_json::to_value(stats)?);
            }
            print_xdp(&stats);
            Ok(())
        }
        Command::Teardown => teardown(&cli.config),
        Command::FleetKey { file } => {
            let public = xban::fleet::new_node_key(&file)?;
            println!("{public}");
            eprintln!(
                "seed written to {} (0600); put the public key above in the server's users: {{ nkey: {public}, ... }}",
                file.display()
            );
            Ok(())
        }
        Command::Manpage { dir } => {
            for page in xban::cli::write_man_pages(&dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?
            {
                println!("{}", page.display());
            }
            Ok(())
        }
        Command::Regex {
            input,
            filter,
            ignoreregex,
            mode,
            print_missed,
            json,
        } => {
            // The config is optional here: it only says where operators' filters live.
            let filters_dir = Config::load(&cli.config)
                .map(|c| c.agent.filters_dir)
                .unwrap_or_else(|_| PathBuf::from(paths::FILTERS_DIR));
            let report = xban::filter::regex_tool::run(&xban::filter::regex_tool::RegexToolArgs {
                input,
                filter,
                ignoreregex,
                mode,
                print_missed,
                filters_dir: Some(filters_dir),
            })?;
            if json {
                return print_json(&serde_json::to_value(&report)?);
            }
            print!("{report}");
            Ok(())
        }
    }
}

/// `[agent]` of the config; commands only need paths, so a config whose jails
/// do not validate still lets the operator reach the agent.
fn agent_config(path: &Path) -> Result<xban::config::AgentConfig> {
    Ok(Config::load_agent_section(path)?)
}

fn ask(config: &Path, req: &Request) -> Result<serde_json::Value> {
    let socket = agent_config(config)?.socket;
    let Reply { ok, error, data } = socket::request(&socket, req)?;
    if !ok {
        bail!(
            "{}",
            error.unwrap_or_else(|| "the agent refused the request".into())
        );
    }
    Ok(data)
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn time_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

fn expires_text(expires_at: Option<i64>) -> String {
    match expires_at {
        None => "permanent".into(),
        Some(e) => {
            let left = (e - xban::ban::now_secs()).max(0) as u64;
            format!(
                "until {} (in {})",
                time_text(e),
                xban::units::format_duration(Duration::from_secs(left))
            )
        }
    }
}

/// `check`: each ignoreip host name is looked up once; one that does not
/// resolve is reported (the agent would allowlist nothing for it yet).
fn check_names(resolved: &xban::config::ResolvedConfig) -> Result<()> {
    let names = xban::engine::all_names(resolved);
    if names.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let r = xban::dns::build_resolver(&resolved.dns)?;
        anyhow::Ok(xban::dns::lookup_all(&r, &names).await)
    })?;
    for (name, lookup) in results {
        match lookup {
            xban::dns::Lookup::Found(addrs, ttl) => println!(
                "ignoreip {name}: {} (ttl {}s)",
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                ttl.as_secs()
            ),
            xban::dns::Lookup::Failed(why) => println!(
                "warning: ignoreip {name} does not resolve ({why}): nothing is allowlisted for it until it does"
            ),
        }
    }
    Ok(())
}

fn print_bans(bans: &[BanView]) {
    if bans.is_empty() {
        println!("no active bans");
        return;
    }
    println!(
        "{:<40} {:<12} {:<7} {:<20} EXPIRES",
        "ADDRESS", "JAIL", "CLASS", "BANNED"
    );
    for b in bans {
        let jail = match &b.origin {
            Some(o) => format!("{}@{o}", b.jail),
            None => b.jail.clone(),
        };
        println!(
            "{:<40} {:<12} {:<7} {:<20} {}{}",
            b.address,
            jail,
            b.class.as_str(),
            time_text(b.banned_at),
            expires_text(b.expires_at),
            b.country
                .as_deref()
                .map(|c| format!("  country={c}"))
                .unwrap_or_default()
        );
    }
    println!("{} ban(s)", bans.len());
}

fn print_xdp(x: &XdpStats) {
    for (k, n) in x.named() {
        println!("  {k:<20} {n}");
    }
}

fn print_status(s: &StatusView) {
    println!("XDP on {} (mode {})", s.interfaces.join(", "), s.xdp_mode);
    if let Some(links) = &s.links {
        for l in &links.interfaces {
            println!(
                "  {}: {}{}{}",
                l.interface,
                l.state,
                l.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                if l.repairs > 0 {
                    format!(
                        ", {} repairs, last: {}",
                        l.repairs,
                        l.last_repair.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                }
            );
        }
        if links.pin_repairs > 0 {
            println!("  pins re-created {} times", links.pin_repairs);
        }
    }
    if let Some(fp) = &s.fast_path {
        for (name, f) in [("IPv4", &fp.v4), ("IPv6", &fp.v6)] {
            if f.table_entries + f.overflow_entries + f.trie_only == 0 {
                continue;
            }
            println!(
                "fast path {name}: {} in table ({} max), {} in overflow ({} max), capacity {}, {} in the trie only, {} regions in trie fallback",
                f.table_entries, f.table_capacity, f.overflow_entries, f.overflow_capacity, f.capacity, f.trie_only, f.fallback_regions
            );
            if f.trie_pending > 0 {
                println!(
                    "ban trie {name}: {} entries still being written behind the fast path (which drops them meanwhile)",
                    f.trie_pending
                );
            }
        }
    }
    println!(
        "bans: {} active ({} drop, {} tarpit), {} map entries",
        s.bans_active, s.bans_drop, s.bans_tarpit, s.map_entries
    );
    if s.store.failing_since.is_some() || s.store.backlog > 0 {
        println!(
            "STORE NOT WRITABLE: {} bans enforced but waiting to be stored (max {}, {} dropped): {}",
            s.store.backlog,
            s.store.backlog_max,
            s.store.backlog_dropped,
            s.store.last_error.as_deref().unwrap_or("?")
        );
    }
    if s.blocklists.bad_lines > 0 || !s.blocklists.unreadable_files.is_empty() {
        println!(
            "blocklists: {} bad lines skipped; unreadable (previous entries kept): {:?}",
            s.blocklists.bad_lines, s.blocklists.unreadable_files
        );
    }
    if let Some(x) = &s.xdp {
        println!("packets:");
        print_xdp(x);
    }
    if let Some(t) = &s.tarpit {
        println!(
            "tarpit engine: {} ({}; limit {}, burst {})",
            t.engine, t.reason, t.limit, t.burst
        );
        println!(
            "tarpit steering: {} ({} addresses in the sets)",
            t.mode, t.members
        );
        if let Some(e) = &t.counters_error {
            println!("  counters not readable: {e}");
        }
        if let Some(c) = &t.counters {
            println!(
                "  counters read {:.1} s ago:",
                t.counters_age_secs.unwrap_or(0.0)
            );
            for (fam, f) in [("v4", &c.v4), ("v6", &c.v6)] {
                println!(
                    "  {fam}: steered {} packets, {} to the target, {} dropped over the limit",
                    f.steered_packets, f.limited_packets, f.dropped_over_limit
                );
            }
        }
    }
    if let Some(l) = &s.event_loop {
        println!(
            "event loop: {} turns, {} over {} ms, slowest {:.1} ms ({})",
            l.turns,
            l.slow_turns,
            xban::api::views::LoopTurns::SLOW_MS,
            l.slowest_ms,
            l.slowest_work
        );
    }
    for r in &s.ban_refusals {
        println!(
            "bans refused: {} by rule {} (origin {})",
            r.count, r.rule, r.origin
        );
    }
    for n in &s.dns {
        let addrs = if n.addresses.is_empty() {
            "unresolved".to_string()
        } else {
            n.addresses.join(", ")
        };
        let err = n
            .last_error
            .as_deref()
            .map(|e| format!(" (last lookup failed: {e})"))
            .unwrap_or_default();
        println!("ignoreip {}: {addrs}{err}", n.name);
    }
    if let Some(g) = &s.geo {
        println!(
            "geo: {} IPv4 + {} IPv6 prefixes banned, {} allowed",
            g.prefixes_v4, g.prefixes_v6, g.allow_prefixes
        );
    }
    if !s.bans_by_country.is_empty() {
        let parts: Vec<String> = s
            .bans_by_country
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        println!("bans by country: {}", parts.join(", "));
    }
    if let Some(f) = &s.fleet {
        print_fleet(f);
    }
    for j in &s.jails {
        let c = &j.counters;
        println!(
            "jail {}: failing now {}, failures total {}, bans now {}, bans total {}, lines {}",
            j.name, j.failing_now, c.failures_total, j.bans_now, c.bans_total, c.lines
        );
        if c.window_evictions > 0 {
            println!(
                "  forgot {} failing addresses at max_tracked",
                c.window_evictions
            );
        }
        if c.connection_evictions > 0 {
            println!(
                "  stopped following {} connections before they ended (table full)",
                c.connection_evictions
            );
        }
        if c.backtrack_limit_hits > 0 {
            println!(
                "  {} regex searches gave up at the backtrack limit (counted as no match)",
                c.backtrack_limit_hits
            );
        }
        if !j.following.is_empty() {
            println!("  following: {}", j.following.join(", "));
        }
        for (addr, n) in &j.failing {
            println!("  {addr:<40} {n} failure(s)");
        }
    }
}

fn print_fleet(f: &FleetStatus) {
    println!(
        "fleet: node {} {} ({}), stream {} {} (last seq {}, {} messages)",
        f.node,
        if f.connected {
            "connected"
        } else {
            "NOT connected"
        },
        f.servers.join(", "),
        f.stream.name,
        if f.stream.ready { "ready" } else { "not ready" },
        f.stream.last_seq,
        f.stream.messages,
    );
    println!(
        "  consumer {}: acknowledged up to {}, lag {}",
        f.consumer.name, f.consumer.ack_floor, f.consumer.lag
    );
    println!(
        "  outbox {}, sent {}, applied {} (+{} unbans), refused {} {}, malformed {}, oversized {}, duplicates {}",
        f.outbox,
        f.sent,
        f.applied,
        f.applied_unbans,
        f.refused,
        // As the JSON object it was printed as (`{"allowlist":1}`).
        serde_json::to_string(&f.refused_by_reason).unwrap_or_default(),
        f.malformed,
        f.oversized,
        f.duplicates
    );
    if !f.bans_by_origin.is_empty() {
        let list: Vec<String> = f
            .bans_by_origin
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  fleet bans by origin: {}", list.join(", "));
    }
    if !f.last_error.is_empty() {
        println!("  last error: {}", f.last_error);
    }
}

fn teardown(config: &Path) -> Result<()> {
    let agent = agent_config(config)?;
    if socket::agent_running(&agent.socket) {
        let reply = socket::request(&agent.socket, &Request::Teardown)?;
        if !reply.ok {
            bail!("{}", reply.error.unwrap_or_default());
        }
        // The agent removes its pins as it exits; wait for it.
        for _ in 0..100 {
            if !agent.bpf_pin_dir.exists() {
                println!(
                    "agent stopped; XDP detached, maps and pins removed from {}",
                    agent.bpf_pin_dir.display()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent accepted the teardown but {} still exists after 10 s",
            agent.bpf_pin_dir.display()
        );
    }
    let tarpit = Config::load(config)?.tarpit;
    xban::enforce::steering::TarpitSteering::teardown(&tarpit)
        .context("remove the tarpit chain and sets")?;
    let removed = xban::enforce::xdp::teardown(&agent.bpf_pin_dir)
        .with_context(|| format!("teardown of {}", agent.bpf_pin_dir.display()))?;
    if removed.is_empty() {
        println!(
            "nothing to remove: {} does not exist",
            agent.bpf_pin_dir.display()
        );
    } else {
        println!(
            "XDP detached, {} pins removed from {}",
            removed.len(),
            agent.bpf_pin_dir.display()
        );
    }
    Ok(())
}

/// `xban import`: everything is built in memory first, so an error writes
/// nothing; the report goes to stdout either way.
fn import(config: &Path, dir: &Path, out: Option<&Path>, dry_run: bool) -> Result<()> {
    // Without --out: beside the config the agent reads (-c), so that the
    // import is what `systemctl start xban` runs.
    let out = out.unwrap_or_else(|| config.parent().unwrap_or(Path::new(".")));
    let out_dir = std::path::absolute(out).with_context(|| format!("--out {}", out.display()))?;
    let import = xban::import::import(dir, &out_dir)
        .with_context(|| format!("importing fail2ban's configuration from {}", dir.display()))?;
    print!("{}", import.report);
    if dry_run {
        println!(
            "\n# ---- {}/xban.toml ----\n{}",
            out_dir.display(),
            import.config
        );
        for (name, text) in &import.filters {
            println!(
                "# ---- {}/filters/{name}.toml ----\n{text}",
                out_dir.display()
            );
        }
        return Ok(());
    }
    let written = import.write(&out_dir, xban::config::DEFAULT_CONFIG)?;
    if written.replaced_default {
        println!(
            "replaced {}: it was the untouched default config",
            out_dir.join("xban.toml").display()
        );
    }
    for path in &written.files {
        println!("wrote {}", path.display());
    }
    println!("next: xban check {}", out_dir.join("xban.toml").display());
    Ok(())
}
