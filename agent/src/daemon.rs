//! `xban run`: privileged set-up, restore, attach, then one loop that feeds
//! source lines to the core, answers control requests, expires bans, and
//! reloads the config on SIGHUP or `xban reload`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::actions::{self, ActionConfig};
use crate::api::metrics::Metrics;
use crate::api::protocol::{ControlMessage, Reply, Request};
use crate::api::socket;
use crate::ban::now_secs;
use crate::config::{Config, JailSettings, ResolvedConfig, SourceSpec};
use crate::enforce::iptables::TarpitSteering;
use crate::enforce::xdp::{self, XdpEnforcer, XdpStats};
use crate::enforce::{DryRunEnforcer, Enforcer, KernelEnforcer};
use crate::engine::status::{BanListing, LoopTurns, LISTING_SLICE};
use crate::engine::Agent;
use crate::source::file::{FilePosition, FileSource, FileSourceOptions};
use crate::source::journal::{journal_available, JournalSource, JournalSourceOptions};
use crate::source::{SourceLine, SourceStats};
use crate::store::BanStore;

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Everything runs and is reported; nothing is written to the kernel
    /// (no XDP, no iptables) and bans live in memory only.
    pub dry_run: bool,
}

/// A running source, whatever its kind.
enum RunningSource {
    Files(FileSource),
    Journal(JournalSource),
}

impl RunningSource {
    fn following(&self) -> Vec<String> {
        match self {
            RunningSource::Files(s) => {
                let mut f: Vec<String> =
                    s.files().iter().map(|p| p.display().to_string()).collect();
                f.sort();
                f
            }
            RunningSource::Journal(_) => vec!["journal".into()],
        }
    }

    fn stats(&self) -> Arc<SourceStats> {
        match self {
            RunningSource::Files(s) => s.stats(),
            RunningSource::Journal(s) => s.stats(),
        }
    }

    async fn shutdown(self) {
        match self {
            RunningSource::Files(s) => s.shutdown().await,
            RunningSource::Journal(s) => s.shutdown().await,
        }
    }
}

fn position_prefix(jail: &str) -> String {
    format!("file:{jail}:")
}

fn journal_key(jail: &str) -> String {
    format!("journal:{jail}")
}

/// Lines taken from the channel at once, at most.
const LINE_BATCH: usize = 1024;
/// Lines handled (and committed) together: a chunk costs about a
/// millisecond even when most of its lines ban.
const LINE_CHUNK: usize = 128;
/// A turn of the loop stops taking chunks after this long, so that a
/// request waits a few milliseconds behind a burst, not the whole batch.
const LINE_TURN_BUDGET: Duration = Duration::from_millis(5);

/// Lines from every source, tagged with their jail's name and the
/// generation of the source that read them.
type TaggedLine = (Arc<str>, u64, SourceLine);
type LineSender = mpsc::Sender<TaggedLine>;

/// A source opened for a jail but not yet delivering: its lines wait until
/// [`Daemon::install_source`] (a reload switches only once every new source
/// opened), or are dropped with it.
struct PreparedSource {
    jail: String,
    generation: u64,
    source: RunningSource,
    go: tokio::sync::oneshot::Sender<()>,
}

struct Daemon {
    config_path: PathBuf,
    resolved: ResolvedConfig,
    core: Agent,
    sources: HashMap<String, RunningSource>,
    /// The generation of each jail's running source: lines a stopped source
    /// left queued are dropped (their positions were not saved past them, so
    /// its successor reads them again).
    generations: HashMap<String, u64>,
    next_generation: u64,
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

/// Files if any of them is there now; otherwise the journal, if this
/// machine has one; otherwise wait for the files.
fn choose_source(spec: &SourceSpec) -> SourceSpec {
    match spec {
        SourceSpec::FilesOrJournal {
            files,
            journalmatch,
        } => {
            let any_file = files.iter().any(|p| {
                let path = Path::new(p);
                if p.contains(['*', '?', '[']) {
                    path.parent().is_some_and(Path::exists)
                } else {
                    path.exists()
                }
            });
            if !any_file && journal_available() {
                SourceSpec::Journal(journalmatch.clone())
            } else {
                SourceSpec::Files(files.clone())
            }
        }
        other => other.clone(),
    }
}

impl Daemon {
    async fn start_source(&mut self, jail: &JailSettings) -> Result<()> {
        let prepared = self.prepare_source(jail).await?;
        self.install_source(prepared);
        Ok(())
    }

    /// Start delivering a prepared source's lines.
    fn install_source(&mut self, p: PreparedSource) {
        let _ = p.go.send(());
        self.generations.insert(p.jail.clone(), p.generation);
        self.sources.insert(p.jail, p.source);
    }

    /// Open a jail's source (files watched and opened, or journalctl
    /// started) from the saved positions; its lines are held until it is
    /// installed.
    async fn prepare_source(&mut self, jail: &JailSettings) -> Result<PreparedSource> {
        let (tx, mut rx) = mpsc::channel::<SourceLine>(1024);
        let fwd = self.line_tx.clone();
        let name: Arc<str> = Arc::from(jail.name.as_str());
        self.next_generation += 1;
        let generation = self.next_generation;
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if go_rx.await.is_err() {
                return;
            }
            while let Some(l) = rx.recv().await {
                if fwd.send((name.clone(), generation, l)).await.is_err() {
                    break;
                }
            }
        });
        let source = match choose_source(&jail.source) {
            SourceSpec::Journal(matches) => {
                let cursor = self.core.store().cursor(&journal_key(&jail.name))?;
                let s = JournalSource::spawn(JournalSourceOptions { matches, cursor }, tx)
                    .await
                    .with_context(|| format!("jails.{} (journal)", jail.name))?;
                tracing::info!(jail = %jail.name, "following the systemd journal");
                RunningSource::Journal(s)
            }
            SourceSpec::Files(patterns)
            | SourceSpec::FilesOrJournal {
                files: patterns, ..
            } => {
                let prefix = position_prefix(&jail.name);
                let resume = self
                    .core
                    .store()
                    .positions_with_prefix(&prefix)?
                    .into_iter()
                    .map(|(k, dev, inode, offset)| {
                        (
                            PathBuf::from(&k[prefix.len()..]),
                            FilePosition { dev, inode, offset },
                        )
                    })
                    .collect();
                let s = FileSource::spawn(
                    FileSourceOptions {
                        patterns: patterns.clone(),
                        resume,
                        max_line_bytes: 64 * 1024,
                    },
                    tx,
                )
                .await
                .with_context(|| format!("jails.{}.logpath", jail.name))?;
                tracing::info!(jail = %jail.name, files = ?patterns, "following log files");
                RunningSource::Files(s)
            }
        };
        Ok(PreparedSource {
            jail: jail.name.clone(),
            generation,
            source,
            go,
        })
    }

    async fn stop_source(&mut self, jail: &str) {
        self.save_positions();
        self.generations.remove(jail);
        if let Some(s) = self.sources.remove(jail) {
            s.shutdown().await;
        }
    }

    fn save_positions(&mut self) {
        for (jail, s) in &self.sources {
            let r: Result<()> = match s {
                RunningSource::Files(src) => src.positions().iter().try_for_each(|(path, pos)| {
                    self.core
                        .save_position(&format!("{}{}", position_prefix(jail), path.display()), pos)
                }),
                RunningSource::Journal(src) => match src.cursor() {
                    Some(c) => self
                        .core
                        .store()
                        .save_cursor(&journal_key(jail), &c)
                        .map_err(Into::into),
                    None => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::warn!("saving source positions: {e:#}");
            }
        }
    }

    fn actions_for(&self, jail: &str) -> &[ActionConfig] {
        self.resolved
            .jails
            .iter()
            .find(|j| j.name == jail)
            .map(|j| j.actions.as_slice())
            .unwrap_or(&self.resolved.default_actions)
    }

    /// Actions and metrics for what the core just did.
    fn drain_events(&mut self) {
        let events = self.core.take_events();
        if let Some(f) = self.fleet.as_mut() {
            f.on_events(&mut self.core, &events);
        }
        for ev in events {
            self.metrics.record_event(&ev);
            // Actions run where the ban was decided, not on every node.
            if !crate::engine::fleet_sync::is_fleet_jail(&ev.record.jail) {
                actions::dispatch(self.actions_for(&ev.record.jail), &ev);
            }
        }
    }

    /// An operator's unban; with `[fleet]`, for every node unless `--local`
    /// or one jail's.
    fn unban(&mut self, req: &Request) -> Reply {
        let reply = crate::api::handler::handle(&mut self.core, req);
        if let (
            Request::Unban {
                jail: None,
                local: false,
                ..
            },
            true,
            Some(f),
        ) = (req, reply.ok, self.fleet.as_mut())
        {
            let mut targets: Vec<crate::addr::Target> = reply
                .data
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["address"].as_str()?.parse().ok())
                .collect();
            targets.sort();
            targets.dedup();
            f.publish_unbans(&mut self.core, &targets);
        }
        reply
    }

    /// A batch of lines: the bans they cause share one database commit.
    /// Handle pending lines a chunk at a time until they are done or the
    /// turn's budget is spent; the rest wait for the next turn.
    fn take_lines(&mut self) {
        let started = Instant::now();
        while !self.pending_lines.is_empty() {
            let n = self.pending_lines.len().min(LINE_CHUNK);
            let chunk: Vec<TaggedLine> = self.pending_lines.drain(..n).collect();
            self.on_lines(chunk);
            if started.elapsed() >= LINE_TURN_BUDGET {
                break;
            }
        }
    }

    fn on_lines(&mut self, batch: Vec<TaggedLine>) {
        let lines: Vec<(Arc<str>, SourceLine)> = batch
            .into_iter()
            .filter(|(jail, generation, _)| self.generations.get(&**jail) == Some(generation))
            .map(|(jail, _, line)| (jail, line))
            .collect();
        let lines = &lines[..];
        let banned = self.core.on_lines(lines);
        // Only now may the saved positions pass these lines: a stop with
        // lines still queued re-reads them at the next start.
        for (_, line) in lines {
            line.processed();
        }
        // After on_lines: the bans are in the kernel now.
        let now = SystemTime::now();
        for read_at in banned {
            self.metrics
                .record_latency(now.duration_since(read_at).unwrap_or_default());
        }
        self.drain_events();
    }

    /// Re-read the config. A broken one is refused with its errors and the
    /// running one kept; a good one is applied without touching bans.
    async fn reload(&mut self) -> Result<String> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let result = self.reload_inner().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        match &result {
            Ok(m) => tracing::info!("reload: {m}"),
            Err(e) => tracing::error!("reload refused, running config kept: {e:#}"),
        }
        result
    }

    async fn reload_inner(&mut self) -> Result<String> {
        let new = load_config(&self.config_path)?;
        let mut notes = Vec::new();
        let (old_a, new_a) = (&self.resolved.agent, &new.agent);
        if old_a.interfaces != new_a.interfaces
            || old_a.xdp_mode != new_a.xdp_mode
            || old_a.bpf_pin_dir != new_a.bpf_pin_dir
            || old_a.state_dir != new_a.state_dir
            || old_a.socket != new_a.socket
            || old_a.metrics_listen != new_a.metrics_listen
            || self.resolved.tarpit != new.tarpit
        {
            notes.push(
                "[agent] paths/interfaces/metrics and [tarpit] take effect at the next restart"
                    .to_string(),
            );
        }
        if self.resolved.fleet != new.fleet {
            notes.push("[fleet] takes effect at the next restart".to_string());
        }
        for w in &new.warnings {
            tracing::warn!("config: {w}");
        }
        // Prepared whole before anything running changes: the jails built,
        // then every new or changed source opened (held, not delivering).
        // Any refusal leaves the running jails and sources as they were.
        let prepared = self.core.prepare_reload(&new)?;
        // Positions as of now, so the new sources resume where the old ones
        // stop (no lines are processed while the reload runs).
        self.save_positions();
        let mut opened = Vec::new();
        for name in &prepared.restart {
            let jail = new
                .jails
                .iter()
                .find(|j| &j.name == name)
                .expect("restart lists new jails")
                .clone();
            match self.prepare_source(&jail).await {
                Ok(p) => opened.push(p),
                Err(e) => {
                    for p in opened {
                        p.source.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        let restart = match self.core.apply_reload(prepared, &new) {
            Ok(r) => r,
            Err(e) => {
                for p in opened {
                    p.source.shutdown().await;
                }
                return Err(e);
            }
        };
        let removed: Vec<String> = self
            .sources
            .keys()
            .filter(|name| !new.jails.iter().any(|j| &j.name == *name))
            .cloned()
            .collect();
        for name in removed.iter().chain(&restart) {
            self.stop_source(name).await;
        }
        self.resolved.jails = new.jails.clone();
        self.resolved.allowlist = new.allowlist.clone();
        self.resolved.default_actions = new.default_actions.clone();
        if crate::engine::all_names(&self.resolved) != crate::engine::all_names(&new)
            || self.resolved.dns != new.dns
        {
            // New names are looked up now; the others again soon.
            self.resolved.allow_names = new.allow_names.clone();
            self.resolved.dns = new.dns.clone();
            self.dns = None;
            let first = crate::engine::all_names(&new)
                .into_iter()
                .map(|n| (n, Duration::ZERO))
                .collect();
            self.dns = start_refresher(&new.dns, first, self.dns_tx.clone());
        }
        for p in opened {
            self.install_source(p);
        }
        notes.insert(
            0,
            format!(
                "{} jails ({} sources restarted, {} removed); bans kept",
                new.jails.len(),
                restart.len(),
                removed.len()
            ),
        );
        Ok(notes.join("; "))
    }

    /// Start a `banned` reply: read a slice per loop turn (so that a ban
    /// never waits behind a million-ban listing), sorted and sent off the
    /// loop.
    fn start_listing(&mut self, jail: Option<&str>, reply: oneshot::Sender<Reply>) {
        match self.core.start_listing(jail) {
            Ok(l) => self.listings.push_back((l, reply)),
            Err(e) => {
                let _ = reply.send(Reply::err(format!("{e:#}")));
            }
        }
    }

    /// One slice of the oldest listing; a finished one is sorted and sent
    /// from a blocking thread.
    fn continue_listing(&mut self) {
        let Some((listing, _)) = self.listings.front_mut() else {
            return;
        };
        self.core.continue_listing(listing, LISTING_SLICE);
        if listing.is_finished() {
            let (listing, reply) = self.listings.pop_front().expect("front exists");
            tokio::task::spawn_blocking(move || {
                let _ = reply.send(Reply::ok(listing.into_sorted()));
            });
        }
    }

    /// The core's status plus what only the daemon knows: the sources.
    fn status(&self, jail: Option<&str>) -> Result<serde_json::Value> {
        let mut st = self.core.status(jail)?;
        st.fleet = self.fleet.as_ref().map(|f| f.status(&self.core));
        for j in &mut st.jails {
            j.following = self
                .sources
                .get(&j.name)
                .map(RunningSource::following)
                .unwrap_or_default();
        }
        st.links = self.xdp.as_ref().map(XdpEnforcer::link_status);
        st.event_loop = Some(self.turns.clone());
        Ok(serde_json::to_value(st)?)
    }

    /// Check the XDP links and pins, repairing what was lost.
    fn check_links(&mut self) {
        if let Some(x) = self.xdp.as_mut() {
            x.check();
        }
    }

    fn metrics_text(&mut self) -> Result<String> {
        for (jail, s) in &self.sources {
            let st = s.stats();
            use std::sync::atomic::Ordering::Relaxed;
            self.metrics.source_errors.insert(
                jail.clone(),
                (
                    st.truncated_lines.load(Relaxed),
                    st.invalid_utf8_lines.load(Relaxed),
                ),
            );
        }
        let mut status = self.core.status(None)?;
        status.links = self.xdp.as_ref().map(XdpEnforcer::link_status);
        status.event_loop = Some(self.turns.clone());
        let mut text = self
            .metrics
            .render(&status, u64::from(xban_common::BANS_MAX_ENTRIES));
        if let Some(f) = &self.fleet {
            f.metrics(&self.core, &mut text);
        }
        Ok(text)
    }
}

/// The background lookups of ignoreip names, if there are any.
fn start_refresher(
    settings: &crate::dns::DnsSettings,
    first: Vec<(String, Duration)>,
    tx: mpsc::Sender<crate::dns::LookupResult>,
) -> Option<crate::dns::Refresher> {
    if first.is_empty() {
        return None;
    }
    match crate::dns::Refresher::spawn(settings.clone(), first, tx) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!("dns: ignoreip names will not be kept current: {e:#}");
            None
        }
    }
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

pub async fn run(config_path: &Path, opts: RunOptions) -> Result<()> {
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
    // Held until the process ends: one agent per pin and per state directory.
    let mut _locks = Vec::new();
    if !opts.dry_run {
        crate::sys::setup::check_capabilities()?;
        crate::sys::setup::ensure_bpffs(&agent.bpf_pin_dir)?;
        crate::sys::setup::private_dir(&agent.state_dir)?;
        crate::sys::setup::private_dir(&agent.bpf_pin_dir)?;
        _locks.push(crate::sys::instance::lock_dir(
            &agent.bpf_pin_dir,
            "pin directory",
            "bpf_pin_dir",
        )?);
        _locks.push(crate::sys::instance::lock_dir(
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
            let store = BanStore::open(&agent.state_dir)?;
            let (program, mut maps) = XdpEnforcer::load(&agent.bpf_pin_dir)?;
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

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMessage>(64);
    if let (Some(addr), Some(l)) = (agent.metrics_listen, checked.metrics) {
        let l = tokio::net::TcpListener::from_std(l)
            .with_context(|| format!("[agent] metrics_listen: {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(crate::api::metrics::serve(l, ctl_tx.clone()));
    }
    tokio::spawn(socket::serve(listener, ctl_tx));

    // Link events wake the XDP check at once; a periodic one catches what
    // no event says (a detached link, removed pins).
    let (link_tx, mut link_rx) = mpsc::channel::<()>(1);
    if program.is_some() {
        if let Err(e) = crate::enforce::links::watch_link_events(link_tx) {
            tracing::warn!("{e:#}; XDP links are checked every 500 ms only");
        }
    }
    let mut link_check = tokio::time::interval(Duration::from_millis(500));
    link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (line_tx, mut line_rx) = mpsc::channel::<TaggedLine>(4096);
    let (dns_tx, mut dns_rx) = mpsc::channel::<crate::dns::LookupResult>(64);
    let dns = start_refresher(&resolved.dns, dns_due, dns_tx.clone());
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        resolved: resolved.clone(),
        core,
        sources: HashMap::new(),
        generations: HashMap::new(),
        next_generation: 0,
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
    for jail in &resolved.jails {
        d.start_source(jail).await?;
    }
    d.drain_events();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(interfaces = ?interfaces, jails = resolved.jails.len(), bans = report.restored, "xban ready");

    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut teardown_requested = false;
    loop {
        let fleet_next = async {
            match d.fleet.as_mut() {
                Some(f) => f.incoming.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(first) = fleet_next => {
                let started = Instant::now();
                let mut batch = vec![first];
                if let Some(f) = d.fleet.as_mut() {
                    while batch.len() < crate::engine::fleet_sync::APPLY_BATCH {
                        match f.incoming.try_recv() {
                            Ok(i) => batch.push(i),
                            Err(_) => break,
                        }
                    }
                    f.on_incoming(&mut d.core, batch);
                }
                d.drain_events();
                d.turns.record("fleet", started);
            }
            Some(first) = line_rx.recv(), if d.pending_lines.is_empty() => {
                let started = Instant::now();
                // Whatever else is queued is taken too, and handled in
                // chunks within the turn's budget.
                d.pending_lines.push_back(first);
                while d.pending_lines.len() < LINE_BATCH {
                    match line_rx.try_recv() {
                        Ok(l) => d.pending_lines.push_back(l),
                        Err(_) => break,
                    }
                }
                d.take_lines();
                d.turns.record("lines", started);
            }
            _ = std::future::ready(()), if !d.pending_lines.is_empty() => {
                let started = Instant::now();
                d.take_lines();
                d.turns.record("lines", started);
            }
            _ = std::future::ready(()), if !d.listings.is_empty() => {
                let started = Instant::now();
                d.continue_listing();
                d.turns.record("listing", started);
            }
            Some(msg) = ctl_rx.recv() => {
                let started = Instant::now();
                if let Request::Banned { jail } = &msg.request {
                    let jail = jail.clone();
                    d.start_listing(jail.as_deref(), msg.reply);
                    d.turns.record("banned", started);
                    continue;
                }
                let reply = match &msg.request {
                    Request::Reload => match d.reload().await {
                        Ok(m) => Reply::ok(m),
                        Err(e) => Reply::err(format!("reload refused, running config kept: {e:#}")),
                    },
                    Request::Metrics => match d.metrics_text() {
                        Ok(t) => Reply::ok(t),
                        Err(e) => Reply::err(format!("{e:#}")),
                    },
                    Request::Status { jail } => match d.status(jail.as_deref()) {
                        Ok(v) => Reply::ok(v),
                        Err(e) => Reply::err(format!("{e:#}")),
                    },
                    Request::Unban { .. } => d.unban(&msg.request),
                    other => crate::api::handler::handle(&mut d.core, other),
                };
                d.drain_events();
                let is_teardown = msg.request == Request::Teardown;
                let _ = msg.reply.send(reply);
                d.turns.record(msg.request.kind(), started);
                if is_teardown {
                    teardown_requested = true;
                    break;
                }
            }
            Some((name, lookup)) = dns_rx.recv() => {
                let started = Instant::now();
                if let Err(e) = d.core.dns_result(&name, &lookup) {
                    tracing::error!("dns: {name}: {e:#}");
                }
                d.drain_events();
                d.turns.record("dns", started);
            }
            _ = tick.tick() => {
                let started = Instant::now();
                ticks += 1;
                if d.core.geo_changed() {
                    if let Err(e) = d.core.reload_geo() {
                        tracing::error!("geo: {e:#}; the rules in force are kept");
                    }
                }
                if let Err(e) = d.core.expire(now_secs()) {
                    tracing::error!("expiring bans: {e:#}");
                }
                d.core.retry_store();
                if d.core.blocklists_changed() {
                    if let Err(e) = d.core.sync_blocklists(true) {
                        tracing::error!("reloading blocklists: {e:#}");
                    }
                }
                d.drain_events();
                if ticks.is_multiple_of(10) {
                    d.core.prune_windows(SystemTime::now());
                    d.save_positions();
                }
                if ticks.is_multiple_of(3600) {
                    if let Err(e) = d.core.purge_history(now_secs()) {
                        tracing::warn!("purging ban history: {e:#}");
                    }
                    if d.fleet.is_some() {
                        if let Err(e) = crate::fleet::state::purge_applied(d.core.store(), now_secs()) {
                            tracing::warn!("fleet: purging applied ids: {e:#}");
                        }
                    }
                }
                d.turns.record("tick", started);
            }
            _ = link_check.tick(), if d.xdp.is_some() => {
                let started = Instant::now();
                d.check_links();
                d.turns.record("links", started);
            }
            Some(()) = link_rx.recv() => {
                let started = Instant::now();
                d.check_links();
                d.turns.record("links", started);
            }
            _ = sighup.recv() => { let _ = d.reload().await; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    d.save_positions();
    for (_, s) in d.sources.drain() {
        s.shutdown().await;
    }
    let _ = std::fs::remove_file(&agent.socket);
    // The agent's own link handles go with it; the pins keep XDP attached.
    drop(d);
    if opts.dry_run {
        return Ok(());
    }
    if teardown_requested || !agent.keep_on_exit {
        TarpitSteering::teardown(&resolved.tarpit)?;
        let removed = xdp::teardown(&agent.bpf_pin_dir)?;
        tracing::info!(
            removed = removed.len(),
            "teardown: XDP detached, maps and pins removed"
        );
    } else {
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
