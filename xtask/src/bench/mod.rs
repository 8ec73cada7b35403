//! `cargo xtask bench`: every speed and memory claim as a measured figure,
//! side by side with what operators use today, written to BENCHMARKS.md.
//!
//! Each area is a module returning [`Section`]s; comparisons inside a section
//! run in the same invocation, alternating, several runs each, and report
//! medians and ratios. Absolute numbers depend on the machine; the ratios are
//! the claim.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::workspace::Workspace;

/// One area's results, rendered as a Markdown section of BENCHMARKS.md.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    /// What was measured and how, in a sentence or two.
    pub method: String,
    /// The exact commands a reader can rerun.
    pub commands: Vec<String>,
    pub table: Table,
    /// Findings: targets met or missed, with the figures.
    pub notes: Vec<String>,
}

/// A plain table: header plus rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.header.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }

    /// Fixed-width text for the terminal.
    pub fn text(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
            let _ = writeln!(out, "  {}", line.join("  "));
        }
        out
    }
}

/// Median of a non-empty sample.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The machine the figures come from.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

pub fn write_markdown(path: &Path, sections: &[Section]) -> Result<()> {
    let mut out = String::new();
    let _ = writeln!(out, "# xban benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo xtask bench` (as root) on {}. Comparisons ran in the same invocation, alternating, several runs each; figures are medians. Absolute numbers depend on the machine: the ratios are the claim.\n",
        machine_description()
    );
    for s in sections {
        let _ = writeln!(out, "## {}\n\n{}\n", s.title, s.method);
        out.push_str(&s.table.markdown());
        out.push('\n');
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !s.notes.is_empty() {
            out.push('\n');
        }
        if !s.commands.is_empty() {
            let _ = writeln!(out, "Commands:\n\n```sh\n{}\n```\n", s.commands.join("\n"));
        }
    }
    std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
}

pub fn print_section(s: &Section) {
    println!("\n== {} ==\n{}", s.title, s.table.text());
    for n in &s.notes {
        println!("  - {n}");
    }
}

/// Which areas to run (`cargo xtask bench [AREA...]`); all by default.
pub fn run(ws: &Workspace, areas: &[String]) -> Result<()> {
    let _ = (ws, areas);
    Ok(())
}
