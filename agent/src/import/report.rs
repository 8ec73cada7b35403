//! What the import did with every key: mapped, approximated, dropped (with
//! the reason), and the filter variants and jails it refused.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Same meaning in xban.
    Mapped,
    /// Close, with a difference the reason names.
    Approximated,
    /// Not carried over; the reason says why.
    Dropped,
    /// The jail or filter variant was not imported at all.
    Refused,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Mapped => "mapped",
            Outcome::Approximated => "approximated",
            Outcome::Dropped => "dropped",
            Outcome::Refused => "REFUSED",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `[jail]`, or `*` for the whole config.
    pub jail: String,
    pub key: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    pub fn add(&mut self, jail: &str, key: &str, outcome: Outcome, detail: impl Into<String>) {
        self.lines.push(Line {
            jail: jail.to_string(),
            key: key.to_string(),
            outcome,
            detail: detail.into(),
        });
    }

    pub fn find(&self, jail: &str, key: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.jail == jail && l.key == key)
    }

    pub fn refused(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter().filter(|l| l.outcome == Outcome::Refused)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Grouped by jail, in the order jails first appear.
        let mut jails: Vec<&str> = Vec::new();
        for l in &self.lines {
            if !jails.contains(&l.jail.as_str()) {
                jails.push(&l.jail);
            }
        }
        for jail in jails {
            writeln!(f, "[{jail}]")?;
            for l in self.lines.iter().filter(|l| l.jail == jail) {
                writeln!(
                    f,
                    "  {:<22} {:<12} {}",
                    l.key,
                    l.outcome,
                    shorten(&l.detail)
                )?;
            }
        }
        let refused = self.refused().count();
        writeln!(
            f,
            "{} keys mapped, {} approximated, {} dropped, {} refused",
            self.lines
                .iter()
                .filter(|l| l.outcome == Outcome::Mapped)
                .count(),
            self.lines
                .iter()
                .filter(|l| l.outcome == Outcome::Approximated)
                .count(),
            self.lines
                .iter()
                .filter(|l| l.outcome == Outcome::Dropped)
                .count(),
            refused
        )
    }
}

/// Long details (whole regexes) cut for the terminal; the full text stays
/// in [`Line::detail`].
fn shorten(detail: &str) -> String {
    const MAX: usize = 160;
    if detail.chars().count() <= MAX {
        return detail.to_string();
    }
    let cut: String = detail.chars().take(MAX).collect();
    format!("{cut}...")
}
