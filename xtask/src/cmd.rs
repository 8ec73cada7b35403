//! Running child processes: every command is echoed before it runs, and a
//! failing one becomes an error that carries its exit status.

use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// Variables that cargo/rustup set for the xtask process itself. Inherited by
/// a nested `cargo +nightly`, they would pin it back to the toolchain (and
/// compiler flags) that built xtask: RUSTUP_TOOLCHAIN in particular makes the
/// rustup `rustc` proxy pick stable even though cargo is nightly.
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
];

/// `cargo` for host builds, with the toolchain (and flags) xtask runs under.
pub(crate) fn cargo() -> Command {
    Command::new("cargo")
}

/// `cargo +<toolchain>` with the variables that would override the toolchain
/// (or leak host rustflags into it) removed.
pub(crate) fn cargo_on(toolchain: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"));
    scrub(&mut cmd);
    cmd
}

/// `rustup` that reports on (and installs) the toolchains named on its
/// command line, not the one xtask happens to run under.
pub(crate) fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    scrub(&mut cmd);
    cmd
}

fn scrub(cmd: &mut Command) {
    for var in TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
}

/// Echoes `cmd`, runs it with inherited stdio and fails unless it succeeds.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failed { cmd: shown, status }.into())
    }
}

/// Runs `cmd` quietly (a check, not an action) and returns its stdout.
pub(crate) fn stdout(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !out.status.success() {
        return Err(Failed {
            cmd: shown,
            status: out.status,
        }
        .into());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// Echoes `cmd` and replaces this process with it, so that its exit code and
/// signals (Ctrl-C) reach the caller directly. Returns only on failure.
pub(crate) fn exec(cmd: &mut Command) -> anyhow::Error {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("could not execute `{shown}`"))
}

/// A command that ran but did not succeed.
#[derive(Debug)]
pub(crate) struct Failed {
    cmd: String,
    status: ExitStatus,
}

impl Failed {
    /// The exit code to hand on: the child's own, or 128+signal as shells do.
    pub(crate) fn exit_code(&self) -> u8 {
        let code = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        };
        u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.cmd, self.status)
    }
}

impl std::error::Error for Failed {}

/// Shell-like rendering of a command (the lab's, which the benchmarks use too).
pub(crate) use xban_lab::cmd::display;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_removed_variables() {
        let cmd = cargo_on("nightly");
        assert_eq!(display(&cmd), "cargo +nightly");
    }

    #[test]
    fn exit_code_is_forwarded() {
        let failed = |raw| Failed {
            cmd: String::new(),
            status: ExitStatus::from_raw(raw),
        };
        assert_eq!(failed(101 << 8).exit_code(), 101);
        assert_eq!(failed(libc::SIGINT).exit_code(), 130);
    }
}
