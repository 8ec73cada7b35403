//! Running the lab's commands (`ip`, `nsenter`, `bpftool`, `xban`): one
//! helper whose error names the command and carries its stderr, the shell
//! rendering the reports print, and the checks that fail before anything is
//! made.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `program args`; its stdout, or an error naming the command with its
/// stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_cmd(Command::new(program).args(args))
}

/// Runs `cmd` (stdin closed); its stdout, or an error naming the command
/// with its stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`: is it installed?"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// For clean-up on drop: in its own process group, so that a second Ctrl-C
/// does not cut it short; a failure is reported on stderr, never fatal.
/// Its stdout when it succeeded.
pub fn cleanup(cmd: &mut Command) -> Option<String> {
    cmd.stdin(Stdio::null()).process_group(0);
    match cmd.output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            eprintln!(
                "lab: clean-up `{}` failed: {}",
                display(cmd),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("lab: clean-up `{}` failed: {e}", display(cmd));
            None
        }
    }
}

/// Shell-like rendering of a command, including variables it sets, so that
/// it can be copied and rerun by hand.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", quote(k), quote(v))));
    let program = std::iter::once(quote(cmd.get_program()));
    let args = cmd.get_args().map(quote);
    envs.chain(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fail loudly (never skip) when the tests cannot do what they claim.
pub fn require_root() {
    assert!(
        is_root(),
        "the integration tests load XDP programs and create network namespaces: run them as root (cargo xtask test)"
    );
}

/// `name` is on PATH, or an error saying what to install.
pub fn require_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    anyhow::ensure!(found, "`{name}` is not installed (apt-get install {name})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("dpkg-query");
        cmd.env("A", "x y")
            .args(["-W", "--showformat=${Status}\n", "it's"]);
        assert_eq!(
            display(&cmd),
            "A='x y' dpkg-query -W '--showformat=${Status}\n' 'it'\\''s'"
        );
    }

    #[test]
    fn a_failing_command_is_named_with_its_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("`sh -c 'echo oops >&2; exit 3'` failed"),
            "{text}"
        );
        assert!(text.contains("oops"), "{text}");
    }
}
