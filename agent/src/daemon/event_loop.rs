//! The event loop: one turn at a time, source lines, control requests,
//! fleet messages, DNS answers, XDP link checks and the second's tick, so a
//! request never races a ban.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use tokio::sync::mpsc;

use super::Daemon;
use crate::actions::{self, ActionConfig};
use crate::addr::Target;
use crate::api::handler::{answer, Answer, Runner};
use crate::api::protocol::{ControlMessage, Reply, Request};
use crate::api::views::StatusView;
use crate::ban::now_secs;
use crate::enforce::xdp::XdpEnforcer;
use crate::engine::routes::{ReaderId, ReaderLine};
use crate::engine::status::LISTING_SLICE;
use crate::engine::Agent;
use crate::source::SourceLine;

/// Lines taken from the channel at once, at most.
const LINE_BATCH: usize = 1024;
/// Lines handled between two looks at the clock (a turn's chunks are
/// committed together at its end).
const LINE_CHUNK: usize = 128;
/// A turn of the loop stops taking chunks after this long, so that a
/// request waits a few milliseconds behind a burst, not the whole batch.
const LINE_TURN_BUDGET: Duration = Duration::from_millis(5);
/// A turn also stops taking chunks once this many bans wait for its end:
/// storing and applying them (about 15 µs each) is part of the turn too.
const TURN_BANS_MAX: usize = 128;

/// Lines from every source, tagged with the reader that read them.
pub(super) type TaggedLine = (ReaderId, SourceLine);
pub(super) type LineSender = mpsc::Sender<TaggedLine>;

/// What the loop waits on besides its timers and signals.
pub(super) struct Inbox {
    pub(super) control: mpsc::Receiver<ControlMessage>,
    pub(super) lines: mpsc::Receiver<TaggedLine>,
    pub(super) dns: mpsc::Receiver<crate::dns::LookupResult>,
    /// Link events wake the XDP check at once.
    pub(super) links: mpsc::Receiver<()>,
    /// The periodic XDP check, for what no event says (a detached link,
    /// removed pins).
    pub(super) link_check: tokio::time::Interval,
}

/// Run until a signal or a teardown request; returns whether teardown was
/// requested.
pub(super) async fn run(d: &mut Daemon, mut inbox: Inbox) -> Result<bool> {
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
            Some(first) = inbox.lines.recv(), if d.pending_lines.is_empty() => {
                let started = Instant::now();
                // Whatever else is queued is taken too, and handled in
                // chunks within the turn's budget.
                d.pending_lines.push_back(first);
                while d.pending_lines.len() < LINE_BATCH {
                    match inbox.lines.try_recv() {
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
            Some(msg) = inbox.control.recv() => {
                let started = Instant::now();
                let is_teardown = msg.request == Request::Teardown;
                match answer(d, &msg.request).await {
                    Answer::Listing(listing) => {
                        d.listings.push_back((listing, msg.reply));
                        d.turns.record("banned", started);
                        continue;
                    }
                    Answer::Now(reply) => {
                        d.drain_events();
                        let _ = msg.reply.send(reply);
                    }
                }
                d.turns.record(msg.request.kind(), started);
                if is_teardown {
                    teardown_requested = true;
                    break;
                }
            }
            Some((name, lookup)) = inbox.dns.recv() => {
                let started = Instant::now();
                if let Err(e) = d.core.dns_result(&name, &lookup) {
                    tracing::error!("dns: {name}: {e:#}");
                }
                d.drain_events();
                d.turns.record("dns", started);
            }
            _ = tick.tick() => {
                let started = Instant::now();
                let _log = super::turn_log::hold();
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
            _ = inbox.link_check.tick(), if d.xdp.is_some() => {
                let started = Instant::now();
                d.check_links();
                d.turns.record("links", started);
            }
            Some(()) = inbox.links.recv() => {
                let started = Instant::now();
                d.check_links();
                d.turns.record("links", started);
            }
            _ = sighup.recv() => { let _ = d.reload().await; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    Ok(teardown_requested)
}

impl Daemon {
    pub(super) fn actions_for(&self, jail: &str) -> &[ActionConfig] {
        self.resolved
            .jails
            .iter()
            .find(|j| j.name == jail)
            .map(|j| j.actions.as_slice())
            .unwrap_or(&self.resolved.default_actions)
    }

    /// Actions and metrics for what the core just did.
    pub(super) fn drain_events(&mut self) {
        let events = self.core.take_events();
        if let Some(f) = self.fleet.as_mut() {
            f.on_events(&mut self.core, &events);
        }
        for ev in events {
            self.metrics.record_event(&ev);
            // Actions run where the ban was decided, not on every node.
            if !crate::fleet::is_fleet_jail(&ev.record.jail) {
                actions::dispatch(self.actions_for(&ev.record.jail), &ev);
            }
        }
    }

    /// Handle pending lines a chunk at a time until they are done or the
    /// turn's budget is spent; the rest wait for the next turn. The turn is
    /// one batch: the bans of all its chunks share one database commit and
    /// one kernel batch.
    pub(super) fn take_lines(&mut self) {
        let started = Instant::now();
        // The turn's log lines (one per ban) are written together at its end.
        let _log = super::turn_log::hold();
        let mut taken: Vec<ReaderLine> = Vec::new();
        let mut banned = Vec::new();
        self.core.begin_batch();
        while !self.pending_lines.is_empty() {
            let n = self.pending_lines.len().min(LINE_CHUNK);
            // Lines of a stopped reader are dropped.
            let chunk: Vec<ReaderLine> = self
                .pending_lines
                .drain(..n)
                .filter_map(|(id, line)| Some(self.readers.get(&id)?.route(id, line)))
                .collect();
            banned.extend(self.core.feed_reader_lines(&chunk));
            taken.extend(chunk);
            if started.elapsed() >= LINE_TURN_BUDGET || self.core.staged_bans() >= TURN_BANS_MAX {
                break;
            }
        }
        self.core.finish_batch();
        // Only now may the saved positions pass these lines: a stop with
        // lines still queued re-reads them at the next start. Every jail of
        // a reader had each line in this turn.
        for l in &taken {
            l.line.processed();
        }
        // After finish_batch: the bans are in the kernel now.
        let now = SystemTime::now();
        for read_at in banned {
            self.metrics
                .record_latency(now.duration_since(read_at).unwrap_or_default());
        }
        self.drain_events();
    }

    /// One slice of the oldest listing; a finished one is sorted and sent
    /// from a blocking thread.
    pub(super) fn continue_listing(&mut self) {
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

    /// Check the XDP links and pins, repairing what was lost.
    pub(super) fn check_links(&mut self) {
        if let Some(x) = self.xdp.as_mut() {
            x.check();
        }
    }

    pub(super) fn metrics_text(&mut self) -> Result<String> {
        for r in self.readers.values() {
            let st = r.source.stats();
            use std::sync::atomic::Ordering::Relaxed;
            let errors = (
                st.truncated_lines.load(Relaxed),
                st.invalid_utf8_lines.load(Relaxed),
            );
            for m in &r.members {
                self.metrics.source_errors.insert(m.jail.clone(), errors);
            }
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

impl Runner for Daemon {
    fn agent(&mut self) -> &mut Agent {
        &mut self.core
    }

    /// What only the daemon knows: the sources, links, loop turns, fleet.
    fn complete_status(&self, st: &mut StatusView) {
        st.fleet = self.fleet.as_ref().map(|f| f.status(&self.core));
        for j in &mut st.jails {
            j.following = self
                .readers
                .values()
                .find(|r| r.has_jail(&j.name))
                .map(|r| r.source.following())
                .unwrap_or_default();
        }
        st.links = self.xdp.as_ref().map(XdpEnforcer::link_status);
        st.event_loop = Some(self.turns.clone());
    }

    async fn reload(&mut self) -> Result<String> {
        Daemon::reload(self).await
    }

    fn metrics_text(&mut self) -> Result<String> {
        Daemon::metrics_text(self)
    }

    fn unbanned_everywhere(&mut self, targets: &[Target]) {
        if let Some(f) = self.fleet.as_mut() {
            f.publish_unbans(&mut self.core, targets);
        }
    }
}
