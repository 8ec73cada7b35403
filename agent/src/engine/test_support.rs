//! What the engine's tests share: the kernel's view of the bans as a map
//! (for their fake enforcers), and the per-jail ways of feeding lines. The
//! daemon feeds lines only through the readers' routes
//! ([`Agent::feed_reader_lines`] inside a batch); these entries let a test
//! name the jail, or take the batch with the lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;

use super::routes::ReaderLine;
use super::Agent;
use crate::addr::Target;
use crate::ban::{now_secs, BanClass, BanRecord, MapChange};
use crate::source::SourceLine;

/// `change` applied to `held`, as the ban maps would take it.
pub(super) fn apply_change(
    held: &mut HashMap<Target, BanClass>,
    target: &Target,
    change: MapChange,
) {
    match change {
        MapChange::Set(c) => {
            held.insert(*target, c);
        }
        MapChange::Remove => {
            held.remove(target);
        }
        MapChange::Unchanged => {}
    }
}

impl Agent {
    /// Feed one line to a jail; ban when it asks. Lines of a jail that a
    /// reload removed are dropped.
    pub(crate) fn on_line(&mut self, jail: &str, line: &SourceLine) -> Result<Option<BanRecord>> {
        let name = jail;
        let Some(jail) = self.jails.list.iter().position(|j| j.name() == name) else {
            return Ok(None);
        };
        let now = now_secs();
        let (book, staged) = (&self.bans.book, &self.bans.staged);
        let j = &mut self.jails.list[jail];
        // Asked only for failure lines: no per-line copy of the name.
        let banned = |addr: IpAddr| {
            let t = Target::host(addr);
            book.has_active(&t, name, now) || staged.contains(&t, name)
        };
        let verdict = j.process_with(&line.text, line.read_at, line.time, &banned);
        self.take_verdict(jail, verdict)
    }

    /// Feed a batch of lines. The bans they cause are stored in one
    /// transaction, then written to the kernel and logged: a burst of
    /// offenders costs one commit, and a ban is in the database before it is
    /// in the kernel. If the store cannot write (full disk), the bans go to
    /// the kernel anyway and wait in the backlog. Returns when each applied
    /// ban's line was read.
    pub(crate) fn on_lines(&mut self, lines: &[(Arc<str>, SourceLine)]) -> Vec<SystemTime> {
        self.begin_batch();
        let read_at = self.feed_lines(lines);
        self.finish_batch();
        read_at
    }

    /// Lines into the open batch; returns when each line that banned was
    /// read (the ban is applied at [`finish_batch`](Self::finish_batch)).
    pub(crate) fn feed_lines(&mut self, lines: &[(Arc<str>, SourceLine)]) -> Vec<SystemTime> {
        let mut read_at = Vec::new();
        for (jail, line) in lines {
            match self.on_line(jail, line) {
                Ok(Some(_)) => read_at.push(line.read_at),
                Ok(None) => {}
                Err(e) => tracing::error!("jail {jail}: {e:#}"),
            }
        }
        read_at
    }

    /// Feed a batch of lines from readers, each to the jails of its route
    /// (one match per class of jails with the same filter). Bans are
    /// batched as in [`on_lines`](Self::on_lines). Returns when each applied
    /// ban's line was read. Lines of a reader with no route are dropped.
    pub(crate) fn on_reader_lines(&mut self, lines: &[ReaderLine]) -> Vec<SystemTime> {
        self.begin_batch();
        let read_at = self.feed_reader_lines(lines);
        self.finish_batch();
        read_at
    }
}
