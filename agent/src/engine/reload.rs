//! A reload: prepared whole (every jail built, filters compiled) before
//! anything running changes, then switched to, keeping the jails' counters,
//! the failures they are counting and, under an unchanged filter, the
//! connections they follow.

use anyhow::{Context, Result};

use super::{dynamic, Agent};
use crate::config::ResolvedConfig;
use crate::jail::Jail;

/// A checked reload, ready to switch to ([`Agent::apply_reload`]).
pub struct PreparedReload {
    jails: Vec<Jail>,
    /// Jails whose source is new or changed.
    pub restart: Vec<String>,
}

impl Agent {
    /// Apply a new configuration: allowlist, jails (keeping their counters
    /// and the failures they are counting), escalation, blocklists. Bans are
    /// untouched. Returns the jails whose source must (re)start.
    pub fn reload(&mut self, cfg: &ResolvedConfig) -> Result<Vec<String>> {
        let prepared = self.prepare_reload(cfg)?;
        self.apply_reload(prepared, cfg)
    }

    /// Everything a reload can refuse for, checked without changing
    /// anything: each jail is built anew (filters compiled).
    pub fn prepare_reload(&self, cfg: &ResolvedConfig) -> Result<PreparedReload> {
        let mut jails = Vec::new();
        let mut restart = Vec::new();
        for settings in &cfg.jails {
            let jail = Jail::with_host(settings.clone(), self.guard.host.clone())
                .with_context(|| format!("jails.{}", settings.name))?;
            match self.jails.find(&settings.name) {
                Some(old) if old.settings.source == settings.source => {}
                _ => restart.push(settings.name.clone()),
            }
            jails.push(jail);
        }
        Ok(PreparedReload { jails, restart })
    }

    /// Switch to a prepared reload. Returns the jails whose source must
    /// (re)start.
    pub fn apply_reload(
        &mut self,
        prepared: PreparedReload,
        cfg: &ResolvedConfig,
    ) -> Result<Vec<String>> {
        let PreparedReload { mut jails, restart } = prepared;
        for jail in &mut jails {
            if let Some(old) = self.jails.list.iter_mut().find(|j| j.name() == jail.name()) {
                jail.counters = std::mem::take(&mut old.counters);
                // Connections half read stay followed under the same filter.
                if old.settings.filter == jail.settings.filter
                    && old.settings.mode == jail.settings.mode
                {
                    std::mem::swap(&mut jail.connections, &mut old.connections);
                    std::mem::swap(&mut jail.lines, &mut old.lines);
                }
                if old.settings.findtime == jail.settings.findtime
                    && old.settings.maxretry == jail.settings.maxretry
                {
                    std::mem::swap(&mut jail.window, &mut old.window);
                    jail.window.set_max_tracked(jail.settings.max_tracked);
                }
            }
        }
        self.guard.min_prefix_v4 = cfg.agent.min_prefix_v4;
        self.guard.min_prefix_v6 = cfg.agent.min_prefix_v6;
        self.jails.list = jails;
        self.routes.rebuild(&self.jails.list);
        // The allowlist map: the configured entries with the names'
        // current addresses and geo allow rules, written whole.
        self.dynamic.self_addrs = self.guard.host.current().to_vec();
        let old_db = self.dynamic.geo.db.clone();
        self.dynamic.configure(cfg);
        if !dynamic::same_db(&old_db, &self.dynamic.geo.db) {
            self.bans
                .book
                .set_labeller(dynamic::country_labeller(&self.dynamic.geo.db));
        }
        self.refresh_jail_ignores();
        self.rebuild_allowlist()?;
        self.sync_geo(true)?;
        self.default_bantime = cfg.default_bantime;
        self.default_class = cfg.default_class;
        self.escalator.config = cfg.escalation.clone();
        self.bans.dbpurgeage = cfg.dbpurgeage;
        self.blocklists
            .configure(&cfg.agent.blocklist_files, cfg.agent.blocklist_append);
        if let Err(e) = self.sync_blocklists(true) {
            tracing::error!("reload: blocklist files: {e:#}");
        }
        Ok(restart)
    }
}
