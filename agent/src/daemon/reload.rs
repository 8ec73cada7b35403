//! A reload: the new config prepared whole (jails built, new sources
//! opened and held) before anything running changes; a refusal leaves the
//! running jails and sources as they were.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;

use super::readers::{self, ReaderKey};
use super::{load_config, Daemon};

impl Daemon {
    /// Re-read the config. A broken one is refused with its errors and the
    /// running one kept; a good one is applied without touching bans.
    pub(super) async fn reload(&mut self) -> Result<String> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let result = self.reload_inner().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        match &result {
            Ok(m) => tracing::info!("reload: {m}"),
            Err(e) => tracing::error!("reload refused, running config kept: {e:#}"),
        }
        result
    }

    pub(super) async fn reload_inner(&mut self) -> Result<String> {
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
        // Which jails leave or join a running reader, which readers open
        // and which stop (readers::plan_reload).
        let keyed: Vec<(String, ReaderKey)> = new
            .jails
            .iter()
            .map(|j| (j.name.clone(), ReaderKey::of(j)))
            .collect();
        let running: Vec<_> = self
            .readers
            .iter()
            .map(|(id, r)| (*id, r.key.clone(), r.names()))
            .collect();
        let plan = readers::plan_reload(&running, &keyed, &prepared.restart);
        let mut opened = Vec::new();
        for (key, jails) in plan.open.clone() {
            match self.prepare_reader(key, jails).await {
                Ok(p) => opened.push(p),
                Err(e) => {
                    for p in opened {
                        p.reader.source.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        let restart = match self.core.apply_reload(prepared, &new) {
            Ok(r) => r,
            Err(e) => {
                for p in opened {
                    p.reader.source.shutdown().await;
                }
                return Err(e);
            }
        };
        let removed = self
            .resolved
            .jails
            .iter()
            .filter(|old| !new.jails.iter().any(|j| j.name == old.name))
            .count();
        for (id, jail) in &plan.leave {
            self.leave_reader(*id, jail);
        }
        for id in &plan.stop {
            self.stop_reader(*id).await;
        }
        for (id, jail) in &plan.join {
            self.join_reader(*id, jail);
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
            self.install_reader(p);
        }
        // Every route again: the jails were rebuilt, members changed.
        let routes: Vec<_> = self
            .readers
            .iter()
            .map(|(id, r)| (*id, r.names()))
            .collect();
        for (id, names) in routes {
            self.core.set_route(id, names);
        }
        notes.insert(
            0,
            format!(
                "{} jails ({} sources restarted, {} removed, {} log readers); bans kept",
                new.jails.len(),
                restart.len(),
                removed,
                self.readers.len()
            ),
        );
        Ok(notes.join("; "))
    }
}

/// The background lookups of ignoreip names, if there are any.
pub(super) fn start_refresher(
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
