//! Start-up: the config checked, privileged set-up in one place
//! (capabilities, bpffs, private directories, the one-agent locks), the
//! socket bound, the XDP program loaded, bans restored, then XDP attached.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{load_config, RunOptions};
use crate::api::socket;
use crate::ban::now_secs;
use crate::config::ResolvedConfig;
use crate::enforce::steering::TarpitSteering;
use crate::enforce::xdp::{self, XdpEnforcer};
use crate::enforce::{DryRunEnforcer, Enforcer, KernelEnforcer};
use crate::engine::Agent;
use crate::store::BanStore;
use crate::sys::instance::DirLock;

/// Everything start-up made, handed to the event loop.
pub(super) struct Started {
    pub(super) resolved: ResolvedConfig,
    pub(super) core: Agent,
    /// The XDP program and its links (none in a dry run).
    pub(super) program: Option<XdpEnforcer>,
    pub(super) listener: tokio::net::UnixListener,
    /// `[agent] metrics_listen`, bound by the preflight.
    pub(super) metrics: Option<std::net::TcpListener>,
    pub(super) interfaces: Vec<String>,
    /// When each ignoreip name is due for a new lookup.
    pub(super) dns_due: Vec<(String, Duration)>,
    pub(super) restored: usize,
    /// Held until the process ends: one agent per pin and per state directory.
    pub(super) locks: Vec<DirLock>,
}

pub(super) async fn start(config_path: &Path, opts: RunOptions) -> Result<Started> {
    let resolved = load_config(config_path)?;
    for w in &resolved.warnings {
        tracing::warn!("config: {w}");
    }
    // Everything that would fail once XDP is attached, found first.
    let checked = crate::preflight::preflight(
        &resolved,
        crate::preflight::PreflightOptions {
            bind_metrics: true,
            kernel_side: !opts.dry_run,
        },
    )?;
    for note in &checked.notes {
        tracing::warn!("{note}");
    }
    let agent = resolved.agent.clone();
    let nofile = crate::sys::setup::raise_nofile_limit();
    tracing::debug!(nofile, "open-file limit");
    let mut locks = Vec::new();
    if !opts.dry_run {
        crate::sys::setup::check_capabilities()?;
        crate::sys::setup::ensure_bpffs(&agent.bpf_pin_dir)?;
        crate::sys::setup::private_dir(&agent.state_dir)?;
        crate::sys::setup::private_dir(&agent.bpf_pin_dir)?;
        locks.push(crate::sys::instance::lock_dir(
            &agent.bpf_pin_dir,
            "pin directory",
            "bpf_pin_dir",
        )?);
        locks.push(crate::sys::instance::lock_dir(
            &agent.state_dir,
            "state directory",
            "state_dir",
        )?);
    }
    let interfaces = if agent.interfaces.is_empty() {
        vec![crate::sys::interfaces::default_route_interface()?]
    } else {
        agent.interfaces.clone()
    };
    // Bind first: a second agent must fail before touching the kernel.
    let listener = socket::bind(&agent.socket)?;

    let (mut program, store, enforcer): (Option<XdpEnforcer>, BanStore, Box<dyn Enforcer>) =
        if opts.dry_run {
            tracing::warn!(
                "dry run: nothing is written to XDP maps or iptables, bans are kept in memory"
            );
            (
                None,
                BanStore::open_in_memory()?,
                Box::new(DryRunEnforcer::default()),
            )
        } else {
            let loading = std::time::Instant::now();
            // Before the store is opened: the marker holds only for the
            // database file as the last clean stop left it.
            let warm = match crate::store::marker::take(&agent.state_dir) {
                Ok(w) => Some(xdp::WarmMaps {
                    fingerprint: w.maps,
                    extra: w.extra,
                    program: xdp::ProgramMark::from_words(&w.program),
                }),
                Err(why) => {
                    tracing::info!("restore marker not used: {why}; the ban maps are read back");
                    None
                }
            };
            // Also before: it holds only for the database as it was written.
            let snapshot = match crate::store::snapshot::take(&agent.state_dir) {
                Ok(s) => Some(s),
                Err(why) => {
                    tracing::info!("bans snapshot not used: {why}; the ban database is read");
                    None
                }
            };
            let mut store = BanStore::open(&agent.state_dir)?;
            // The book's rows are read meanwhile, on a thread of their own.
            store.read_bans_ahead(snapshot);
            let (program, mut maps) =
                XdpEnforcer::load(&agent.bpf_pin_dir, warm, agent.fast_path_capacity)?;
            tracing::info!(
            secs = format!("{:.2}", loading.elapsed().as_secs_f64()),
            "XDP program loaded, its maps opened and the fast path checked against the ban tries"
        );
            let steering = setup_steering(&resolved, &mut maps)?;
            let geo = crate::enforce::geo_maps::GeoMaps::open(&agent.bpf_pin_dir)
                .context("the XDP program's geo maps")?;
            let enforcer = KernelEnforcer {
                xdp: maps,
                steering: Some(steering),
                tarpit: resolved.tarpit.clone(),
                geo: Some(geo),
                steered: Default::default(),
            };
            (Some(program), store, Box::new(enforcer))
        };
    let mut core = Agent::with_host(&resolved, store, enforcer, crate::guard::HostAddrs::live())?;
    let dns_due = resolve_names_at_start(&mut core, &resolved.dns).await;
    let report = core.restore(now_secs())?;
    // A million rows were read (on another thread), sorted and written:
    // their buffers go back to the system instead of staying in the
    // allocator's arenas as the agent's resident memory.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    core.lift_bans_of_names()?;
    tracing::info!(
        restored = report.restored,
        expired = report.expired,
        stale = report.stale_map_entries,
        adopted = report.adopted,
        phases = %report.phases.render(),
        "bans restored"
    );
    core.set_interfaces(interfaces.clone(), opts.dry_run);
    if let Some(p) = program.as_mut() {
        p.attach(&interfaces, agent.xdp_mode)?;
    }

    Ok(Started {
        resolved,
        core,
        program,
        listener,
        metrics: checked.metrics,
        interfaces,
        dns_due,
        restored: report.restored,
        locks,
    })
}

/// Resolve every ignoreip name once before the allowlist is written, so
/// the administrator's address is let through from the first packet.
/// Returns when each name is due next.
async fn resolve_names_at_start(
    core: &mut Agent,
    settings: &crate::dns::DnsSettings,
) -> Vec<(String, Duration)> {
    let names = core.dns_names();
    if names.is_empty() {
        return Vec::new();
    }
    let results = match crate::dns::build_resolver(settings) {
        Ok(r) => crate::dns::lookup_all(&r, &names).await,
        Err(e) => {
            tracing::error!("dns: {e:#}");
            names
                .iter()
                .map(|n| (n.clone(), crate::dns::Lookup::Failed(format!("{e:#}"))))
                .collect()
        }
    };
    let mut due = Vec::new();
    for (name, lookup) in results {
        let ttl = match &lookup {
            crate::dns::Lookup::Found(_, t) => Some(*t),
            crate::dns::Lookup::Failed(_) => None,
        };
        if let Err(e) = core.dns_result(&name, &lookup) {
            tracing::error!("dns: {name}: {e:#}");
        }
        due.push((name, crate::dns::refresh_after(ttl, settings)));
    }
    let unresolved = core
        .dns_status()
        .into_iter()
        .filter(|s| !s.resolved)
        .count();
    if unresolved > 0 {
        tracing::warn!(
            unresolved,
            "dns: some ignoreip names did not resolve (see xban status)"
        );
    }
    due
}

/// Create or adopt the tarpit chain and sets; say clearly when TARPIT is
/// missing and what happens instead.
fn setup_steering(cfg: &ResolvedConfig, maps: &mut xdp::XdpMaps) -> Result<TarpitSteering> {
    let steering = TarpitSteering::setup(&cfg.tarpit).context("[tarpit] steering set-up")?;
    if let Some(notice) = steering.notice() {
        tracing::warn!("{notice}");
    }
    let engine = crate::enforce::tarpit::Engine::of(steering.mode());
    if !steering.mode().is_active() {
        // Before any earlier chain goes: the attached program reads this
        // map, so the class is answered (or dropped) in XDP from now on.
        crate::enforce::configure_tarpit(maps, engine, &cfg.tarpit)?;
    }
    tracing::info!(
        engine = engine.name(),
        reason = steering.reason(),
        "tarpit engine"
    );
    if !steering.mode().is_active() && steering.leftovers() {
        // Tarpit bans are now dropped at XDP; the old chain and sets would
        // keep steering addresses that get unbanned later.
        TarpitSteering::teardown(&cfg.tarpit)
            .context("remove the tarpit chain and sets an earlier run left")?;
        tracing::info!("removed the tarpit chain and sets left by an earlier run");
    }
    tracing::info!(mode = %steering.mode(), "tarpit steering");
    Ok(steering)
}
