//! Reading what iptables prints: `iptables -S CHAIN -v` rules (with
//! counters and quoted words) and `ipset save` members.

use crate::addr::Target;

use super::SteeringError;

/// A rule as `iptables -S CHAIN -v` prints it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rule {
    /// Position in the chain, from 1.
    pub(super) num: usize,
    /// The rule's words after `-A CHAIN`, counters removed.
    pub(super) spec: Vec<String>,
    pub(super) packets: u64,
}

impl Rule {
    pub(super) fn parse(num: usize, chain: &str, line: &str) -> Option<Rule> {
        let words = split_saved(line);
        if words.len() < 2 || words[0] != "-A" || words[1] != chain {
            return None;
        }
        let mut spec = Vec::new();
        let mut packets = 0;
        let mut rest = words[2..].iter();
        while let Some(w) = rest.next() {
            if w == "-c" {
                packets = rest.next()?.parse().ok()?;
                rest.next()?; // bytes
            } else {
                spec.push(w.clone());
            }
        }
        Some(Rule { num, spec, packets })
    }

    pub(super) fn has(&self, word: &str) -> bool {
        self.spec.iter().any(|w| w == word)
    }

    pub(super) fn has_seq(&self, seq: &[&str]) -> bool {
        self.spec.windows(seq.len()).any(|w| w == seq)
    }

    pub(super) fn jumps_to(&self, target: &str) -> bool {
        self.has_seq(&["-j", target])
    }
}

/// Split a line of `iptables -S` output into words: iptables double-quotes
/// words with spaces (comments) and backslash-escapes quotes inside them.
fn split_saved(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The members of `set` in `ipset save SET` output (`add SET MEMBER ...`
/// lines); `command` names the command in the error for a bad line.
pub(super) fn set_members(
    out: &str,
    set: &str,
    command: &str,
) -> Result<Vec<Target>, SteeringError> {
    let prefix = format!("add {set} ");
    let mut members = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            let entry = rest.split_whitespace().next().unwrap_or("");
            members.push(entry.parse().map_err(|_| SteeringError::Parse {
                command: command.to_string(),
                line: line.to_string(),
            })?);
        }
    }
    Ok(members)
}
