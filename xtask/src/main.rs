//! `cargo xtask`: builds, runs and tests xban (see `cargo xtask --help`).

mod cmd;
mod deb;
mod demo;
mod fuzz;
mod install;
mod journal;
#[cfg(test)]
mod layout;
mod prereq;
mod tasks;
mod workspace;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use prereq::Purpose;
use tasks::Profile;
use workspace::Workspace;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test xban; installs missing prerequisites first"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP program (nightly, bpfel-unknown-none) and print the object's path
    BuildEbpf,
    /// Build the XDP program, then the xban agent embedding it; print the agent's path
    Build {
        /// Build the agent with the dev profile (target/debug/xban); the XDP program is always release
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent as root: `xban run --config deploy/xban.toml`, or `xban ARGS...`
    Run {
        /// Arguments for xban instead of the default `run --config deploy/xban.toml`
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Build, then install xban, its systemd unit and its default config (root, or --root DIR)
    Install {
        /// Install under DIR instead of / (staging, images); systemd is not told
        #[arg(long, value_name = "DIR")]
        root: Option<std::path::PathBuf>,
        /// Install this xban binary instead of building one
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
    /// Tear down XDP and the bans, then remove the binary and the unit (keeps /etc/xban, /var/lib/xban)
    Uninstall {
        /// Uninstall from under DIR instead of /
        #[arg(long, value_name = "DIR")]
        root: Option<std::path::PathBuf>,
    },
    /// Build, then make a Debian package: target/deb/xban_VERSION_ARCH.deb
    Deb {
        /// Package this xban binary instead of building one
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
    /// Build, then watch xban ban, escalate and tarpit an attacker in a throwaway lab (root)
    Demo {
        /// Run this xban binary instead of building one
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
    /// Build, run unit and doc tests, then the privileged integration tests (root)
    Test {
        /// Arguments for the test binaries of both runs, e.g. a test name filter
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Fuzz the parsers (cargo-fuzz, nightly): every target, or TARGET, for --seconds each
    Fuzz {
        /// One of: time_scan, host_extract, filter_match, config_parse, control_request, blocklist_parse
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        /// How long to run each target
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
    /// Build, then benchmark (root): log matching vs fail2ban, XDP cost, floods vs iptables/ipset/nft, ban latency, scale; writes BENCHMARKS.md
    Bench {
        /// Areas to run (all by default); with a subset, BENCHMARKS.md holds only those
        #[arg(value_enum, value_name = "AREA")]
        areas: Vec<xban_bench::Area>,
        /// Small data sets, one run each (smoke test); writes target/BENCHMARKS-quick.md
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            // Hand on a failing child's own exit code (e.g. 101 from cargo).
            let code = err
                .chain()
                .find_map(|e| e.downcast_ref::<cmd::Failed>())
                .map_or(1, cmd::Failed::exit_code);
            ExitCode::from(code)
        }
    }
}

fn dispatch(task: Task) -> Result<()> {
    match task {
        Task::Test { .. } => tasks::require_root_for_tests()?,
        Task::Bench { .. } => xban_bench::require_root()?,
        _ => {}
    }
    let purpose = match task {
        Task::Test { .. } => Purpose::Test,
        Task::Bench { .. } => Purpose::Bench,
        Task::Fuzz { .. } => Purpose::Fuzz,
        Task::Deb { .. } => Purpose::Package,
        _ => Purpose::Build,
    };
    prereq::ensure(purpose)?;
    let ws = Workspace::locate()?;
    match task {
        Task::BuildEbpf => println!("{}", tasks::build_ebpf(&ws)?.display()),
        Task::Build { debug } => {
            let profile = if debug {
                Profile::Debug
            } else {
                Profile::Release
            };
            println!("{}", tasks::build(&ws, profile)?.display());
        }
        Task::Run { args } => tasks::run(&ws, &args)?,
        Task::Install { root, binary } => install::install(&ws, root, binary)?,
        Task::Uninstall { root } => install::uninstall(root)?,
        Task::Demo { binary } => demo::demo(&ws, binary)?,
        Task::Deb { binary } => {
            let binary = match binary {
                Some(b) => b,
                None => tasks::build(&ws, Profile::Release)?,
            };
            let deb = deb::build(&ws, &binary)?;
            println!("{}", deb.display());
            eprintln!(
                "xtask: install with: apt install {} (enables nothing; it says how to go on)",
                deb.display()
            );
        }
        Task::Test { args } => tasks::test(&ws, &args)?,
        Task::Bench { areas, quick } => {
            let setup = xban_bench::Setup {
                xban: tasks::build(&ws, Profile::Release)?,
                root: ws.root.clone(),
                target_dir: ws.target_dir.clone(),
            };
            xban_bench::run(&setup, &areas, quick)?
        }
        Task::Fuzz { target, seconds } => fuzz::run(&ws, target.as_deref(), seconds)?,
    }
    Ok(())
}
