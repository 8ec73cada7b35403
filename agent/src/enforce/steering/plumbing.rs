//! The iptables and ipset plumbing: probe a target, create or adopt sets,
//! chain, hook and notrack rule, prune duplicates, list members, tear down.
//! Every command goes through the [`Runner`].

use std::sync::Arc;

use crate::addr::Target;

use super::config::{Family, TarpitConfig, FAMILIES, SET_MAXELEM};
use super::diagnostics::unavailable_message;
use super::parse::{self, Rule};
use super::runner::{Ran, Runner};
use super::SteeringError;

/// iptables' `-w` wait for the xtables lock (legacy backend), in seconds.
const XTABLES_WAIT_SECS: &str = "10";

/// Config plus where to run: the commands behind steering and teardown.
#[derive(Debug, Clone)]
pub(super) struct Plumbing {
    pub(super) cfg: TarpitConfig,
    pub(super) runner: Arc<dyn Runner>,
}

impl Plumbing {
    /// The one place commands run (through the runner).
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        self.runner.run(program, args, stdin)
    }

    pub(super) fn ipt(&self, fam: Family, args: &[&str]) -> Result<Ran, SteeringError> {
        // -w: the legacy backend serialises on /run/xtables.lock; wait for it
        // rather than fail when another iptables runs.
        let mut all = vec!["-w", XTABLES_WAIT_SECS];
        all.extend_from_slice(args);
        self.run(self.cfg.bin(fam), &all, None)
    }

    pub(super) fn ipset(&self, args: &[&str], stdin: Option<&str>) -> Result<Ran, SteeringError> {
        self.run(&self.cfg.ipset, args, stdin)
    }

    fn chain_exists(&self, fam: Family, table: &str, chain: &str) -> Result<bool, SteeringError> {
        Ok(self.ipt(fam, &["-t", table, "-S", chain])?.success)
    }

    /// A chain's rules in order, with packet counters.
    pub(super) fn rules(
        &self,
        fam: Family,
        table: &str,
        chain: &str,
    ) -> Result<Vec<Rule>, SteeringError> {
        let out = self.ipt(fam, &["-t", table, "-S", chain, "-v"])?.ok()?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with("-A "))
            .enumerate()
            .filter_map(|(i, l)| Rule::parse(i + 1, chain, l))
            .collect())
    }

    fn hook_spec(&self, fam: Family) -> Vec<&str> {
        let c = &self.cfg;
        vec![
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            c.set(fam),
            "src",
            "-j",
            &c.chain,
        ]
    }

    pub(super) fn is_hook(&self, fam: Family, rule: &Rule) -> bool {
        rule.jumps_to(&self.cfg.chain)
            && rule.has_seq(&["--match-set", self.cfg.set(fam), "src"])
            && rule.has_seq(&["-p", "tcp"])
    }

    pub(super) fn is_notrack(&self, fam: Family, rule: &Rule) -> bool {
        rule.has_seq(&["-j", "CT", "--notrack"])
            && rule.has_seq(&["--match-set", self.cfg.set(fam), "src"])
    }

    /// `None` when `spec` works in both families, else why not, phrased for
    /// the operator.
    pub(super) fn target_problem(&self, spec: &str) -> Result<Option<String>, SteeringError> {
        Ok(self
            .probe_all(spec)?
            .map(|(family, stderr)| unavailable_message(spec, family, &stderr)))
    }

    /// Probe `spec` in each family; the first family where it fails, with
    /// the error iptables gave.
    pub(super) fn probe_all(
        &self,
        spec: &str,
    ) -> Result<Option<(&'static str, String)>, SteeringError> {
        for fam in FAMILIES {
            if let Err(stderr) = self.probe(fam, spec)? {
                return Ok(Some((fam.label(), stderr)));
            }
        }
        Ok(None)
    }

    /// Append `-p tcp -j SPEC` to a scratch chain (see the module docs).
    /// `Ok(Err(stderr))` when the target is unusable; `Err` when iptables
    /// itself does not work.
    fn probe(&self, fam: Family, spec: &str) -> Result<Result<(), String>, SteeringError> {
        let name = spec.split_whitespace().next().unwrap_or(spec);
        // A user chain of that name would turn `-j NAME` into a jump to it.
        if self.chain_exists(fam, "filter", name)? {
            return Ok(Err(format!(
                "the filter table has a chain named {name}, so `-j {name}` would jump to that chain"
            )));
        }
        self.with_scratch(fam, |scratch| {
            let mut args = vec!["-t", "filter", "-A", scratch, "-p", "tcp", "-j"];
            args.extend(spec.split_whitespace());
            let appended = self.ipt(fam, &args)?;
            Ok(if appended.success {
                Ok(())
            } else {
                Err(appended.stderr)
            })
        })
    }

    /// Run `f` with an empty scratch chain in the filter table, removed after.
    fn with_scratch<T>(
        &self,
        fam: Family,
        f: impl FnOnce(&str) -> Result<T, SteeringError>,
    ) -> Result<T, SteeringError> {
        let scratch = format!("XBAN-PROBE-{}", std::process::id());
        self.remove_chain(fam, "filter", &scratch)?;
        self.ipt(fam, &["-t", "filter", "-N", &scratch])?.ok()?;
        let result = f(&scratch);
        // Clean up even when `f` failed, and report `f`'s error first.
        let cleaned = self.remove_chain(fam, "filter", &scratch);
        let value = result?;
        cleaned?;
        Ok(value)
    }

    /// `rules` as this iptables prints them back (it normalises, e.g.
    /// `3/minute` to `3/min`), by writing them into a scratch chain.
    fn render(&self, fam: Family, rules: &[Vec<&str>]) -> Result<Vec<Vec<String>>, SteeringError> {
        self.with_scratch(fam, |scratch| {
            for rule in rules {
                let mut args = vec!["-t", "filter", "-A", scratch];
                args.extend_from_slice(rule);
                self.ipt(fam, &args)?.ok()?;
            }
            Ok(self
                .rules(fam, "filter", scratch)?
                .into_iter()
                .map(|r| r.spec)
                .collect())
        })
    }

    /// Delete rules of `table`/`chain` for which `hit` holds until at most
    /// `keep` are left (the first ones stay); returns how many are left.
    ///
    /// Deletion is by rule number, listing again before each one, and not by
    /// spec: ip6tables-legacy 1.8.9 `-C`/`-D` ignore match and target
    /// options (`-m limit --limit 3/minute` "matches" a 10/sec rule), so a
    /// spec could delete someone else's similar rule.
    fn prune(
        &self,
        fam: Family,
        table: &str,
        chain: &str,
        keep: usize,
        hit: impl Fn(&Rule) -> bool,
    ) -> Result<usize, SteeringError> {
        loop {
            let hits: Vec<usize> = self
                .rules(fam, table, chain)?
                .iter()
                .filter(|r| hit(r))
                .map(|r| r.num)
                .collect();
            match hits.last() {
                Some(last) if hits.len() > keep => {
                    self.ipt(fam, &["-t", table, "-D", chain, &last.to_string()])?
                        .ok()?;
                }
                _ => return Ok(hits.len()),
            }
        }
    }

    /// Flush and delete a chain if it exists.
    fn remove_chain(&self, fam: Family, table: &str, chain: &str) -> Result<(), SteeringError> {
        if self.chain_exists(fam, table, chain)? {
            self.ipt(fam, &["-t", table, "-F", chain])?.ok()?;
            self.ipt(fam, &["-t", table, "-X", chain])?.ok()?;
        }
        Ok(())
    }

    /// Create the set, or adopt an existing one as it is (members included).
    pub(super) fn ensure_set(&self, fam: Family) -> Result<(), SteeringError> {
        let set = self.cfg.set(fam);
        let listed = self.ipset(&["list", "-t", set], None)?;
        if listed.success {
            let field = |key: &str| {
                listed
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let (kind, header) = (field("Type:"), field("Header:"));
            let header_words: Vec<&str> = header.split_whitespace().collect();
            let right_family = header_words
                .windows(2)
                .any(|w| w == ["family", fam.ipset_family()]);
            // A timeout would expire members behind xban's back.
            if kind != "hash:net" || !right_family || header_words.contains(&"timeout") {
                return Err(SteeringError::SetMismatch {
                    set: set.to_string(),
                    found: format!("{kind} {header}"),
                    family: fam.ipset_family(),
                });
            }
            return Ok(());
        }
        if !listed.stderr.contains("does not exist") {
            listed.ok()?;
        }
        let maxelem = SET_MAXELEM.to_string();
        self.ipset(
            &[
                "create",
                set,
                "hash:net",
                "family",
                fam.ipset_family(),
                "maxelem",
                &maxelem,
            ],
            None,
        )?
        .ok()?;
        Ok(())
    }

    /// The chain holds exactly: limited jump to the target, then DROP. An
    /// existing chain that differs (compared in iptables' own rendering) is
    /// rewritten without a gap: the new rules are appended behind the old
    /// ones, then the old ones deleted, so every packet meets a verdict.
    pub(super) fn ensure_chain(&self, fam: Family, spec: &str) -> Result<(), SteeringError> {
        let chain = &self.cfg.chain;
        let burst = self.cfg.burst.to_string();
        let mut limited = vec![
            "-p",
            "tcp",
            "-m",
            "limit",
            "--limit",
            &self.cfg.limit,
            "--limit-burst",
            &burst,
            "-j",
        ];
        limited.extend(spec.split_whitespace());
        let drop = vec!["-p", "tcp", "-j", "DROP"];
        let wanted = [limited, drop];

        let old = if self.chain_exists(fam, "filter", chain)? {
            let have: Vec<Vec<String>> = self
                .rules(fam, "filter", chain)?
                .into_iter()
                .map(|r| r.spec)
                .collect();
            if have == self.render(fam, &wanted)? {
                return Ok(());
            }
            have.len()
        } else {
            self.ipt(fam, &["-t", "filter", "-N", chain])?.ok()?;
            0
        };
        for rule in &wanted {
            let mut args = vec!["-t", "filter", "-A", chain.as_str()];
            args.extend_from_slice(rule);
            self.ipt(fam, &args)?.ok()?;
        }
        for _ in 0..old {
            self.ipt(fam, &["-t", "filter", "-D", chain, "1"])?.ok()?;
        }
        Ok(())
    }

    /// Exactly one INPUT hook; a new one goes first so that no earlier ACCEPT
    /// lets set members past. Duplicates (other tools, older versions) go.
    pub(super) fn ensure_hook(&self, fam: Family) -> Result<(), SteeringError> {
        if self.prune(fam, "filter", "INPUT", 1, |r| self.is_hook(fam, r))? == 0 {
            let mut args = vec!["-t", "filter", "-I", "INPUT", "1"];
            args.extend(self.hook_spec(fam));
            self.ipt(fam, &args)?.ok()?;
        }
        Ok(())
    }

    /// The raw-table conntrack exemption: present once with `notrack`,
    /// absent without.
    pub(super) fn ensure_notrack(&self, fam: Family) -> Result<(), SteeringError> {
        let keep = usize::from(self.cfg.notrack);
        let left = self.prune(fam, "raw", "PREROUTING", keep, |r| self.is_notrack(fam, r))?;
        if self.cfg.notrack && left == 0 {
            let set = self.cfg.set(fam);
            let mut args = vec![
                "-t",
                "raw",
                "-I",
                "PREROUTING",
                "1",
                "-p",
                "tcp",
                "-m",
                "set",
            ];
            args.extend(["--match-set", set, "src", "-j", "CT", "--notrack"]);
            self.ipt(fam, &args)?.ok()?;
        }
        Ok(())
    }

    pub(super) fn set_members(&self, fam: Family) -> Result<Vec<Target>, SteeringError> {
        let set = self.cfg.set(fam);
        let ran = self.ipset(&["save", set], None)?;
        let command = ran.command.clone();
        let out = ran.ok()?;
        parse::set_members(&out, set, &command)
    }

    /// Does the chain or a set exist (in an inactive mode: from an earlier
    /// run)? Best effort: a missing tool means none were made with it.
    pub(super) fn has_leftovers(&self) -> bool {
        let found = || -> Result<bool, SteeringError> {
            for fam in FAMILIES {
                if self
                    .ipset(&["list", "-n", self.cfg.set(fam)], None)?
                    .success
                    || self.chain_exists(fam, "filter", &self.cfg.chain)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        match found() {
            Ok(found) => {
                if found {
                    tracing::warn!(
                        chain = %self.cfg.chain,
                        "tarpit steering from an earlier run is still in place; it is removed once XDP drops tarpit-class addresses"
                    );
                }
                found
            }
            Err(SteeringError::NotInstalled { .. }) => false,
            Err(e) => {
                tracing::warn!("could not check for earlier tarpit steering: {e}");
                false
            }
        }
    }

    /// Hooks first (a chain or set still referenced cannot be removed), then
    /// the chain, then the set.
    /// A tool that is not installed cannot have left anything behind (and
    /// could not remove it): its part is skipped, the rest still cleaned.
    /// Without the family's iptables its rules may still use the set, which
    /// is then kept too.
    pub(super) fn teardown(&self, fam: Family) -> Result<(), SteeringError> {
        let chain = &self.cfg.chain;
        let rules = (|| {
            // Every jump to the chain, whatever set it matched on.
            self.prune(fam, "filter", "INPUT", 0, |r| r.jumps_to(chain))?;
            self.prune(fam, "raw", "PREROUTING", 0, |r| self.is_notrack(fam, r))?;
            self.remove_chain(fam, "filter", chain)
        })();
        match rules {
            Err(SteeringError::NotInstalled { program, .. }) => {
                tracing::debug!(
                    "{program} not installed: no tarpit rules of its own to remove, its set kept"
                );
                return Ok(());
            }
            r => r?,
        }
        let set = self.cfg.set(fam);
        let sets = (|| {
            if self.ipset(&["list", "-n", set], None)?.success {
                self.ipset(&["destroy", set], None)?.ok()?;
            }
            Ok(())
        })();
        match sets {
            Err(SteeringError::NotInstalled { program, .. }) => {
                tracing::debug!("{program} not installed: no tarpit set to remove");
                Ok(())
            }
            r => r,
        }
    }
}
