//! The command line: `xban run` and the operator's subcommands, as clap
//! reads them. The binary (main.rs) acts on them; the man pages are made
//! from the same definitions (`xban manpage DIR`, used by `cargo xtask deb`).

use std::io;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::sys::paths;

#[derive(Parser)]
#[command(
    name = "xban",
    version,
    about = "Bans attackers found in logs, dropping their packets at XDP"
)]
pub struct Cli {
    /// Config file (also gives the control socket and pin directory).
    #[arg(short = 'c', long = "config", global = true, default_value = paths::CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent in the foreground.
    Run {
        /// Run and report everything, write nothing to XDP maps or iptables
        /// (bans are kept in memory).
        #[arg(long)]
        dry_run: bool,
    },
    /// Jails, bans, interfaces and counters (or one jail's failing addresses).
    Status {
        jail: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Active bans (of one jail, if given).
    Banned {
        jail: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or CIDR prefix now.
    Ban {
        target: String,
        /// Account the ban to this jail (its bantime and class apply).
        #[arg(long)]
        jail: Option<String>,
        /// e.g. 1h, 1d, 1w, or permanent.
        #[arg(long)]
        bantime: Option<String>,
        /// drop or tarpit.
        #[arg(long)]
        class: Option<String>,
        /// Ban a prefix wider than [agent] min_prefix_v4/min_prefix_v6 (the
        /// allowlist and this host's own addresses stay protected).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban now (all jails' bans of it, or one jail's), or every ban with --all.
    Unban {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        target: Option<String>,
        /// Every active ban (of --jail, if given).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        jail: Option<String>,
        /// With [fleet]: lift it on this host only, not on every node.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config (also on SIGHUP); a broken one is refused and the running one kept.
    Reload,
    /// XDP packet counters, summed over CPUs (works while the agent is stopped).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// What the geo database says of an address: country, ASN, and the rule
    /// (if any) that covers it.
    Geo {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a config file (default: the -c one) and exit: the file itself,
    /// then what `xban run` checks on this machine before touching the
    /// kernel (log files readable, log directories there, interfaces,
    /// metrics address free, pin directory on bpffs).
    Check {
        config: Option<PathBuf>,
        /// Check the file only, not this machine (for a config meant for
        /// another host).
        #[arg(long)]
        config_only: bool,
    },
    /// Turn a fail2ban configuration into an xban one: the enabled jails,
    /// the filters they use (translated, or refused naming what xban's
    /// engine lacks) and a report of every key mapped, approximated or
    /// dropped. Nothing is written on any error.
    Import {
        /// fail2ban's configuration directory.
        #[arg(default_value = "/etc/fail2ban")]
        dir: PathBuf,
        /// Where xban.toml and filters/ go (must not hold them already; an
        /// untouched default xban.toml is replaced). Default: the directory
        /// of the -c config, /etc/xban.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report, the config and the filters; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Test a filter on a log file or one line, without a running agent
    /// or root: hits per regex, matched/ignored/missed lines, hosts, times.
    Regex {
        /// A log file, or a literal log line.
        input: String,
        /// A filter name (built-in or in filters_dir), a filter file
        /// (`.toml`), or a literal failregex with <HOST>.
        filter: String,
        /// Extra ignoreregex (repeatable).
        #[arg(long)]
        ignoreregex: Vec<String>,
        /// The filter's mode (e.g. sshd: normal, ddos, aggressive).
        #[arg(long)]
        mode: Option<String>,
        /// List the lines that matched nothing.
        #[arg(long)]
        print_missed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Detach XDP and remove every map and pin (stops a running agent first).
    Teardown,
    /// A new [fleet] node key: the seed into FILE (0600, for
    /// nkey_seed_file), the public key printed for the NATS server's config.
    FleetKey { file: PathBuf },
    /// Write the man pages, xban(8) and xban-COMMAND(8), into DIR (for
    /// packagers: `cargo xtask deb` runs it).
    #[command(hide = true)]
    Manpage { dir: PathBuf },
}

/// Section 8: system administration commands (xban runs as root).
const MAN_SECTION: &str = "8";

/// xban(8) and one page per visible subcommand, as (file name, roff text).
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command().version(env!("CARGO_PKG_VERSION"));
    // Built, so that the global -c/--config is on every subcommand too.
    cmd.build();
    let mut pages = Vec::new();
    let mut top = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(MAN_SECTION)
        .render(&mut top)?;
    top.extend_from_slice(files_section().as_bytes());
    pages.push((format!("xban.{MAN_SECTION}"), top));
    // clap's own `help` subcommand needs no page.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // `xban-ban(8)`, as git names its subcommands' pages.
        let name = format!("xban-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("xban {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .section(MAN_SECTION)
            .render(&mut page)?;
        pages.push((format!("{name}.{MAN_SECTION}"), page));
    }
    Ok(pages)
}

/// Where xban keeps things, for xban(8): the paths the agent uses by
/// default (each can be moved in the config).
fn files_section() -> String {
    let files = [
        (
            paths::CONFIG,
            "the configuration (see the comments in the default one)",
        ),
        (
            paths::FILTERS_DIR,
            "your own filters, NAME.toml; the built-in ones are inside the binary",
        ),
        (
            paths::STATE_DIR,
            "the ban database (SQLite) and saved log positions",
        ),
        (paths::SOCKET, "the control socket the subcommands talk to"),
        (
            paths::BPF_PIN_DIR,
            "the pinned XDP program, links and ban maps (bpftool map dump pinned ...)",
        ),
    ];
    let mut out = String::from(".SH FILES\n");
    for (path, what) in files {
        out += &format!(".TP\n{}\n{}\n", roff_escape(path), roff_escape(what));
    }
    out += ".SH \"SEE ALSO\"\nbpftool(8), systemctl(1), fail2ban-client(1)\n";
    out
}

/// Text for a roff line: backslashes and hyphens escaped, no leading dot.
fn roff_escape(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Writes [`man_pages`] into `dir` (created if missing).
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in man_pages()? {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_pages_cover_every_visible_subcommand_and_its_options() {
        let pages = man_pages().unwrap();
        let text = |name: &str| {
            let (_, t) = pages.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
                panic!(
                    "no page {name} in {:?}",
                    pages.iter().map(|p| &p.0).collect::<Vec<_>>()
                )
            });
            String::from_utf8(t.clone()).unwrap()
        };
        let top = text("xban.8");
        assert!(top.contains(".TH xban 8"), "{top}");
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            if sub.is_hide_set() {
                assert!(!pages.iter().any(|(n, _)| n == &format!("xban-{name}.8")));
                continue;
            }
            let roff_name = name.replace('-', "\\-");
            assert!(
                top.contains(&format!("xban\\-{roff_name}(8)")),
                "xban.8 lists {name}"
            );
            let page = text(&format!("xban-{name}.8"));
            assert!(page.contains(&format!(".TH xban-{name} 8")), "{page}");
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    assert!(
                        page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                        "xban-{name}.8 documents --{long}:\n{page}"
                    );
                }
            }
            // `check` has its own CONFIG argument, which hides the global
            // one there (as on the command line).
            if !sub.get_arguments().any(|a| a.get_id() == "config") {
                assert!(
                    page.contains("\\-\\-config"),
                    "the global --config on xban-{name}.8"
                );
            }
        }
        assert!(!pages.iter().any(|(n, _)| n == "xban-help.8"));
        assert!(text("xban-ban.8").contains("CIDR prefix"));
        assert!(
            top.contains(".SH FILES") && top.contains("/etc/xban/xban.toml"),
            "{top}"
        );
    }

    #[test]
    fn man_pages_are_written_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man8");
        let written = write_man_pages(&out).unwrap();
        assert!(written.len() > 10);
        for p in &written {
            assert!(std::fs::metadata(p).unwrap().len() > 100, "{}", p.display());
        }
    }
}
