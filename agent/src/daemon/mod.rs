//! `xban run`: privileged set-up, restore, attach, then one loop that feeds
//! source lines to the core, answers control requests, expires bans, and
//! reloads the config on SIGHUP or `xban reload`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::api::metrics::Metrics;
use crate::api::protocol::{ControlMessage, Reply};
use crate::api::socket;
use crate::config::{Config, ResolvedConfig};
use crate::enforce::steering::TarpitSteering;
use crate::enforce::xdp::{self, XdpEnforcer, XdpStats};
use crate::engine::status::{BanListing, LoopTurns};
use crate::engine::Agent;

mod event_loop;
mod readers;
mod reload;
mod sources;
mod startup;
pub mod turn_log;

use crate::engine::routes::ReaderId;
use event_loop::{Inbox, LineSender, TaggedLine};
use reload::start_refresher;
use sources::Reader;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Everything runs and is reported; nothing is written to the kernel
    /// (no XDP, no iptables) and bans live in memory only.
    pub dry_run: bool,
}

struct Daemon {
    config_path: PathBuf,
    resolved: ResolvedConfig,
    core: Agent,
    /// The running sources, each read once for the jails that follow it.
    /// Lines a stopped reader left queued are dropped (their positions were
    /// not saved past them, so its successor reads them again): ids are
    /// never reused.
    readers: BTreeMap<ReaderId, Reader>,
    next_reader: ReaderId,
    line_tx: LineSender,
    metrics: Metrics,
    /// The XDP program and its links (none in a dry run).
    xdp: Option<XdpEnforcer>,
    /// Looks up ignoreip host names when their TTL runs out.
    dns: Option<crate::dns::Refresher>,
    dns_tx: mpsc::Sender<crate::dns::LookupResult>,
    /// `[fleet]`, when on.
    fleet: Option<crate::engine::fleet_sync::FleetRuntime>,
    /// `banned` replies being read, a slice per loop turn, oldest first.
    listings: std::collections::VecDeque<(BanListing, oneshot::Sender<Reply>)>,
    /// How long the loop's turns take (status, metrics).
    turns: LoopTurns,
    /// Lines taken from the channel, not handled yet (see LINE_TURN_BUDGET).
    pending_lines: std::collections::VecDeque<TaggedLine>,
}

fn load_config(path: &Path) -> Result<ResolvedConfig> {
    let cfg = Config::load(path)?;
    cfg.validate()
        .with_context(|| format!("config {}", path.display()))
}

pub async fn run(config_path: &Path, opts: RunOptions) -> Result<()> {
    let startup::Started {
        resolved,
        core,
        program,
        listener,
        metrics,
        interfaces,
        dns_due,
        restored,
        locks: _locks,
    } = startup::start(config_path, opts).await?;
    let agent = resolved.agent.clone();
    let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMessage>(64);
    if let (Some(addr), Some(l)) = (agent.metrics_listen, metrics) {
        let l = tokio::net::TcpListener::from_std(l)
            .with_context(|| format!("[agent] metrics_listen: {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(crate::api::metrics::serve(l, ctl_tx.clone()));
    }
    tokio::spawn(socket::serve(listener, ctl_tx));

    let (link_tx, link_rx) = mpsc::channel::<()>(1);
    if program.is_some() {
        if let Err(e) = crate::enforce::xdp::links::watch_link_events(link_tx) {
            tracing::warn!("{e:#}; XDP links are checked every 500 ms only");
        }
    }
    let mut link_check = tokio::time::interval(Duration::from_millis(500));
    link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (line_tx, line_rx) = mpsc::channel::<TaggedLine>(4096);
    let (dns_tx, dns_rx) = mpsc::channel::<crate::dns::LookupResult>(64);
    let dns = start_refresher(&resolved.dns, dns_due, dns_tx.clone());
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        resolved: resolved.clone(),
        core,
        readers: BTreeMap::new(),
        next_reader: 0,
        line_tx,
        metrics: Metrics::default(),
        xdp: program,
        dns,
        dns_tx,
        fleet: None,
        listings: Default::default(),
        turns: LoopTurns::default(),
        pending_lines: Default::default(),
    };
    match (&resolved.fleet, opts.dry_run) {
        (Some(_), true) => tracing::warn!("dry run: [fleet] is off (nothing published or applied)"),
        (Some(settings), false) => {
            d.fleet = Some(crate::engine::fleet_sync::FleetRuntime::start(
                settings.clone(),
                &mut d.core,
                crate::sys::interfaces::read_host_addresses(),
            )?)
        }
        (None, _) => {}
    }
    d.start_readers(&resolved.jails).await?;
    d.drain_events();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(interfaces = ?interfaces, jails = resolved.jails.len(), bans = restored, "xban ready");

    let inbox = Inbox {
        control: ctl_rx,
        lines: line_rx,
        dns: dns_rx,
        links: link_rx,
        link_check,
    };
    let teardown_requested = event_loop::run(&mut d, inbox).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    d.save_positions();
    for (_, r) in std::mem::take(&mut d.readers) {
        r.source.shutdown().await;
    }
    let _ = std::fs::remove_file(&agent.socket);
    // Taken while the maps are open; written once the store is closed.
    let marker = d.core.restore_marker();
    let program_mark = d.xdp.as_mut().and_then(|p| p.mark());
    // The agent's own link handles go with it; the pins keep XDP attached.
    drop(d);
    if opts.dry_run {
        return Ok(());
    }
    // The store is closed: the next start reads its bans from one compact
    // file instead of the database (store::snapshot).
    let writing = std::time::Instant::now();
    match crate::store::snapshot::write(&agent.state_dir) {
        Ok(()) => tracing::info!(
            secs = format!("{:.2}", writing.elapsed().as_secs_f64()),
            "bans snapshot written"
        ),
        Err(e) => tracing::warn!("bans snapshot not written: {e}"),
    }
    if teardown_requested || !agent.keep_on_exit {
        TarpitSteering::teardown(&resolved.tarpit)?;
        let removed = xdp::teardown(&agent.bpf_pin_dir)?;
        tracing::info!(
            removed = removed.len(),
            "teardown: XDP detached, maps and pins removed"
        );
    } else {
        if let Some((maps, extra)) = marker {
            // The next start need not read the maps back (store::marker).
            let program = program_mark.map(|m| m.to_words()).unwrap_or_default();
            if let Err(e) = crate::store::marker::write(&agent.state_dir, maps, &extra, program) {
                tracing::warn!("restore marker not written: {e}");
            }
        }
        tracing::info!(
            "stopped; XDP stays attached and bans keep dropping until the next agent adopts them"
        );
    }
    Ok(())
}

/// XDP counters from the pinned map, with or without a running agent.
pub fn read_stats(pin_dir: &Path) -> Result<XdpStats> {
    xdp::stats_from_pins(pin_dir)
}
