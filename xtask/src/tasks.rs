//! The subcommands proper. Prerequisites are the caller's job (see main.rs)
//! since `test` needs more of them than the builds.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;
use crate::prereq::is_root;
use crate::workspace::{Workspace, EBPF_PACKAGE, EBPF_TARGET};

/// Read by the agent's build.rs, which embeds the XDP object it names.
const EBPF_OBJ_VAR: &str = "XBAN_EBPF_OBJ";
/// A digest of that object's bytes, for build.rs to rerun on: cargo's
/// `rerun-if-changed` compares mtimes, and cargo may hand back an older
/// object with its older mtime (e.g. after eBPF flags flip back), which
/// would leave the agent embedding the wrong program.
const EBPF_DIGEST_VAR: &str = "XBAN_EBPF_DIGEST";

/// The variables that make the agent's build embed `obj`, and re-embed it
/// whenever its content changes.
fn embed_vars(obj: &std::path::Path) -> Result<[(&'static str, OsString); 2]> {
    let bytes =
        fs::read(obj).with_context(|| format!("reading the XDP object {}", obj.display()))?;
    Ok([
        (EBPF_OBJ_VAR, obj.as_os_str().to_owned()),
        (EBPF_DIGEST_VAR, format!("{:016x}", fnv1a(&bytes)).into()),
    ])
}

/// FNV-1a, 64 bits: enough to tell two builds of one object apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Tells the integration tests which agent binary to drive.
const AGENT_BIN_VAR: &str = "XBAN_BIN";
/// And which Debian package to install.
const DEB_VAR: &str = "XBAN_DEB";
const AGENT_PACKAGE: &str = "xban";
const TESTS_PACKAGE: &str = "xban-tests";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Release,
    Debug,
}

/// Builds the XDP program with nightly and returns the object's path.
pub(crate) fn build_ebpf(ws: &Workspace) -> Result<PathBuf> {
    cmd::run(
        cmd::cargo_on("nightly")
            .current_dir(&ws.root)
            .args(["build", "-Z", "build-std=core", "--target", EBPF_TARGET])
            .args(["--release", "-p", EBPF_PACKAGE]),
    )
    .context("building the eBPF program failed")?;
    let obj = ws.ebpf_object();
    ensure!(
        obj.is_file(),
        "the eBPF build succeeded but {} is missing: does {EBPF_PACKAGE} still have a bin named after it?",
        obj.display()
    );
    Ok(tidy(obj))
}

/// Builds the eBPF object, then the agent that embeds it; returns the
/// agent's path.
pub(crate) fn build(ws: &Workspace, profile: Profile) -> Result<PathBuf> {
    let obj = build_ebpf(ws)?;
    eprintln!("xtask: eBPF object: {}", obj.display());
    let mut cargo = cmd::cargo();
    cargo.current_dir(&ws.root).arg("build");
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    cargo.args(["-p", AGENT_PACKAGE]).envs(embed_vars(&obj)?);
    cmd::run(&mut cargo).context("building the xban agent failed")?;
    let dir = match profile {
        Profile::Release => "release",
        Profile::Debug => "debug",
    };
    let bin = ws.agent_binary(dir);
    ensure!(
        bin.is_file(),
        "the agent build succeeded but {} is missing (is build.target set in cargo config?)",
        bin.display()
    );
    Ok(tidy(bin))
}

/// Builds, then replaces this process with the agent. Without `args` it runs
/// the daemon with the repository's deploy/xban.toml.
pub(crate) fn run(ws: &Workspace, args: &[OsString]) -> Result<()> {
    let bin = build(ws, Profile::Release)?;
    let mut agent = Command::new(&bin);
    if args.is_empty() {
        let config = ws.root.join("deploy").join("xban.toml");
        ensure!(
            config.is_file(),
            "{} not found; pass xban's arguments yourself: cargo xtask run -- run --config PATH",
            config.display()
        );
        agent.arg("run").arg("--config").arg(config);
    } else {
        agent.args(args);
    }
    // Always set explicitly so that the `sudo` hint below carries it too
    // (sudo drops the environment).
    let log = env::var_os("RUST_LOG").unwrap_or_else(|| "info".into());
    agent.env("RUST_LOG", log);
    if !is_root() {
        bail!(
            "xban attaches XDP programs and must run as root; run it with:\n  sudo {}",
            cmd::display(&agent)
        );
    }
    Err(cmd::exec(&mut agent))
}

/// Unit and doc tests of the whole workspace, then the privileged
/// integration tests, stopping at the first failure. `args` go to the test
/// binaries of both runs (e.g. a name filter).
pub(crate) fn test(ws: &Workspace, args: &[OsString]) -> Result<()> {
    let bin = build(ws, Profile::Release)?;
    let obj = ws.ebpf_object();
    let deb = crate::deb::build(ws, &bin).context("building the Debian package failed")?;
    let journald = crate::journal::JournalGuard::ensure();

    // Same profile and XBAN_EBPF_OBJ as `build`, so its artifacts are reused.
    // xban-ebpf is excluded because it only builds for the BPF target (above).
    cmd::run(
        cmd::cargo()
            .current_dir(&ws.root)
            .args(["test", "--workspace", "--release"])
            .args(["--exclude", TESTS_PACKAGE, "--exclude", EBPF_PACKAGE])
            // The agent's tests that compare `xban import` with the
            // installed fail2ban (plain `cargo test` leaves them out).
            .args(["--features", "xban/fail2ban-tests"])
            .envs(embed_vars(&obj)?)
            .envs(
                journald
                    .available()
                    .then_some((crate::journal::REQUIRE_VAR, "1")),
            )
            .args(test_binary_args(&[], args)),
    )
    .context("unit/doc tests failed")?;

    // A bounded fuzz run of every target; a test filter narrows the run to
    // tests, so the fuzzing is left to `cargo xtask fuzz` then (said aloud).
    if args.is_empty() {
        crate::fuzz::run(ws, None, crate::fuzz::TEST_SECONDS).context("fuzzing failed")?;
    } else {
        eprintln!(
            "xtask: NOT fuzzing: a test filter was given; `cargo xtask test` without arguments \
             fuzzes every target for {} s, `cargo xtask fuzz` for longer",
            crate::fuzz::TEST_SECONDS
        );
    }

    // One thread: the tests create network namespaces, attach XDP programs
    // and change firewall state, which must not interleave.
    cmd::run(
        cmd::cargo()
            .current_dir(&ws.root)
            .args(["test", "--release", "-p", TESTS_PACKAGE])
            .env(AGENT_BIN_VAR, &bin)
            .env(DEB_VAR, &deb)
            .envs(embed_vars(&obj)?)
            .args(test_binary_args(&["--test-threads=1"], args)),
    )
    .context("integration tests failed")?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// Checked before anything is built: the integration tests cannot run
/// unprivileged and must fail loudly rather than be skipped.
pub(crate) fn require_root_for_tests() -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` runs privileged integration tests (network namespaces, XDP) \
             and must run as root, e.g.:\n  sudo -E env \"PATH=$PATH\" cargo xtask test"
        );
    }
    Ok(())
}

/// Resolves `..` left by a relative CARGO_TARGET_DIR, for readable output.
fn tidy(path: PathBuf) -> PathBuf {
    fs::canonicalize(&path).unwrap_or(path)
}

/// `-- <fixed> <extra>`, or nothing when both are empty.
fn test_binary_args(fixed: &[&str], extra: &[OsString]) -> Vec<OsString> {
    let args: Vec<OsString> = fixed
        .iter()
        .map(OsString::from)
        .chain(extra.iter().cloned())
        .collect();
    if args.is_empty() {
        return args;
    }
    std::iter::once(OsStr::new("--").to_owned())
        .chain(args)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embed_digest_follows_the_objects_content_not_its_mtime() {
        let dir = std::env::temp_dir().join(format!("xtask-embed-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let obj = dir.join("xban-xdp");
        let digest = |bytes: &[u8]| {
            fs::write(&obj, bytes).unwrap();
            let vars = embed_vars(&obj).unwrap();
            assert_eq!(vars[0], (EBPF_OBJ_VAR, obj.as_os_str().to_owned()));
            vars[1].1.clone()
        };
        let a = digest(b"\x7fELF one program");
        let b = digest(b"\x7fELF another program");
        assert_ne!(a, b, "a new object must rerun the agent's build script");
        assert_eq!(digest(b"\x7fELF one program"), a, "same bytes, same digest");
        fs::remove_dir_all(&dir).unwrap();
        assert!(embed_vars(&obj).is_err(), "a missing object is an error");
    }

    #[test]
    fn test_binary_args_only_add_separator_when_needed() {
        assert!(test_binary_args(&[], &[]).is_empty());
        assert_eq!(
            test_binary_args(&["--test-threads=1"], &["ban".into()]),
            ["--", "--test-threads=1", "ban"]
        );
        assert_eq!(test_binary_args(&[], &["ban".into()]), ["--", "ban"]);
    }
}
