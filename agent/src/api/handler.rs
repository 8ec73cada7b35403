//! Answering control requests: the CLI's strings parsed into the engine's
//! types, the engine asked, its answer turned into a reply.

use std::time::Duration;

use anyhow::{bail, Result};

use super::protocol::{Reply, Request};
use super::views::BanView;
use super::views::StatusView;
use crate::addr::Target;
use crate::ban::BanClass;
use crate::engine::status::BanListing;
use crate::engine::{Agent, ManualBan};
use crate::units::BanTime;

/// `xban ban TARGET [--jail J] [--bantime B] [--class C] [--force]`, parsed.
pub fn parse_ban(
    target: &str,
    jail: Option<&str>,
    bantime: Option<&str>,
    class: Option<&str>,
    force: bool,
) -> Result<ManualBan> {
    let target: Target = target.parse()?;
    let bantime = match bantime {
        Some(b) => {
            let b = b
                .parse::<BanTime>()
                .map_err(|e| anyhow::anyhow!("--bantime: {e}"))?;
            if b == BanTime::Finite(Duration::ZERO) {
                bail!("--bantime: a ban of 0 s ends as it starts: give a duration like 1h, or permanent");
            }
            Some(b)
        }
        None => None,
    };
    let class = match class {
        Some(c) => Some(
            c.parse::<BanClass>()
                .map_err(|e| anyhow::anyhow!("--class: {e}"))?,
        ),
        None => None,
    };
    Ok(ManualBan {
        target,
        jail: jail.map(str::to_string),
        bantime,
        class,
        force,
    })
}

/// What answers requests beyond the engine's state: the daemon, which holds
/// the config file, the sources, the XDP links and the fleet.
pub trait Runner {
    fn agent(&mut self) -> &mut Agent;
    /// Fill in what only the runner knows: sources followed, links, the
    /// event loop's turns, the fleet.
    fn complete_status(&self, status: &mut StatusView);
    /// Re-read the config: what changed, or why it was refused.
    fn reload(&mut self) -> impl std::future::Future<Output = Result<String>>;
    /// The Prometheus exposition text.
    fn metrics_text(&mut self) -> Result<String>;
    /// An operator lifted these targets here (all jails, not `--local`):
    /// with `[fleet]`, for every node.
    fn unbanned_everywhere(&mut self, targets: &[Target]);
}

/// An answer: a reply now, or a `banned` listing the caller reads a slice
/// per loop turn (so that a ban never waits behind a million-ban listing).
pub enum Answer {
    Now(Reply),
    Listing(BanListing),
}

/// Answer any control request.
pub async fn answer(runner: &mut impl Runner, req: &Request) -> Answer {
    let reply = match req {
        Request::Banned { jail } => {
            return match runner.agent().start_listing(jail.as_deref()) {
                Ok(l) => Answer::Listing(l),
                Err(e) => Answer::Now(Reply::err(format!("{e:#}"))),
            }
        }
        Request::Reload => match runner.reload().await {
            Ok(m) => Reply::ok(m),
            Err(e) => Reply::err(format!("reload refused, running config kept: {e:#}")),
        },
        Request::Metrics => match runner.metrics_text() {
            Ok(t) => Reply::ok(t),
            Err(e) => Reply::err(format!("{e:#}")),
        },
        Request::Status { jail } => match runner.agent().status(jail.as_deref()) {
            Ok(mut st) => {
                runner.complete_status(&mut st);
                Reply::ok(st)
            }
            Err(e) => Reply::err(format!("{e:#}")),
        },
        Request::Unban { jail, local, .. } => {
            let reply = handle(runner.agent(), req);
            if jail.is_none() && !local && reply.ok {
                let mut targets: Vec<Target> = reply
                    .data
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["address"].as_str()?.parse().ok())
                    .collect();
                targets.sort();
                targets.dedup();
                runner.unbanned_everywhere(&targets);
            }
            reply
        }
        other => handle(runner.agent(), other),
    };
    Answer::Now(reply)
}

/// Answer a request from the engine's state alone (a `banned` listing read
/// whole; reload, metrics and teardown answered with nothing).
pub fn handle(agent: &mut Agent, req: &Request) -> Reply {
    let result: Result<serde_json::Value> = (|| match req {
        Request::Status { jail } => Ok(serde_json::to_value(agent.status(jail.as_deref())?)?),
        Request::Banned { jail } => {
            let mut listing = agent.start_listing(jail.as_deref())?;
            while !listing.is_finished() {
                agent.continue_listing(&mut listing, usize::MAX);
            }
            Ok(serde_json::to_value(listing.into_sorted())?)
        }
        Request::Ban {
            target,
            jail,
            bantime,
            class,
            force,
        } => {
            let ban = parse_ban(
                target,
                jail.as_deref(),
                bantime.as_deref(),
                class.as_deref(),
                *force,
            )?;
            let rec = agent.manual_ban(ban)?;
            Ok(serde_json::to_value(BanView::from(&rec))?)
        }
        Request::Unban {
            target: None,
            jail,
            all: true,
            ..
        } => {
            if let Some(j) = jail {
                agent.known_ban_owner(j)?;
            }
            let removed = agent.unban_all(jail.as_deref())?;
            let views: Vec<BanView> = removed.iter().map(BanView::from).collect();
            Ok(serde_json::to_value(views)?)
        }
        Request::Unban { target: None, .. } => {
            bail!("say which address or prefix to unban, or --all")
        }
        Request::Unban {
            target: Some(_),
            all: true,
            ..
        } => bail!("give an address or --all, not both"),
        Request::Unban {
            target: Some(target),
            jail,
            ..
        } => {
            let t: Target = target.parse()?;
            if let Some(j) = jail {
                agent.known_ban_owner(j)?;
            }
            let removed = agent.unban(&t, jail.as_deref())?;
            if removed.is_empty() {
                let covering: Vec<String> =
                    agent.covering(&t).iter().map(Target::to_string).collect();
                if covering.is_empty() {
                    bail!(
                        "{t} is not banned{}",
                        jail.as_ref()
                            .map(|j| format!(" by jail {j}"))
                            .unwrap_or_default()
                    );
                }
                bail!(
                    "{t} is not banned itself but lies in banned prefix {}: unban that prefix",
                    covering.join(", ")
                );
            }
            let views: Vec<BanView> = removed.iter().map(BanView::from).collect();
            Ok(serde_json::to_value(views)?)
        }
        Request::Stats => Ok(serde_json::to_value(agent.xdp_stats()?)?),
        Request::Geo { address } => Ok(serde_json::to_value(agent.geo_info(address)?)?),
        // The daemon answers these itself (they need the config file
        // and the running sources).
        Request::Teardown | Request::Reload | Request::Metrics => Ok(serde_json::Value::Null),
    })();
    match result {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(format!("{e:#}")),
    }
}

/// Tests' manual bans from the CLI's strings, parsed as a request's are.
#[cfg(test)]
pub(crate) trait BanText {
    fn ban_text(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
    ) -> Result<crate::ban::BanRecord>;
    fn ban_text_forced(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
        force: bool,
    ) -> Result<crate::ban::BanRecord>;
}

#[cfg(test)]
impl BanText for Agent {
    fn ban_text(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
    ) -> Result<crate::ban::BanRecord> {
        self.ban_text_forced(target, jail, bantime, class, false)
    }

    fn ban_text_forced(
        &mut self,
        target: &str,
        jail: Option<&str>,
        bantime: Option<&str>,
        class: Option<&str>,
        force: bool,
    ) -> Result<crate::ban::BanRecord> {
        self.manual_ban(parse_ban(target, jail, bantime, class, force)?)
    }
}
