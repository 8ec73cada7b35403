//! Build and test prerequisites: checked on every run (cheaply), installed
//! only when missing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// What the caller is about to do; tests need more than builds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Build,
    Test,
    /// The tests' tools plus what the benchmarks compare against.
    Bench,
    /// `cargo xtask fuzz`: cargo-fuzz on nightly.
    Fuzz,
    /// `cargo xtask deb`: a build, then the Debian packaging tools.
    Package,
}

/// LLVM for building bpf-linker, which must match the LLVM of the nightly
/// rustc that emits the bitcode it links.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
/// Tools the privileged integration tests drive.
const TEST_PACKAGES: &[&str] = &[
    // journalctl, systemd-cat and systemd-journald, for the journal source's test.
    "systemd",
    // fail2ban's annotated test logs: a peer corpus the filter tests check against.
    "fail2ban",
    "iproute2",
    "bpftool",
    "iptables",
    "ipset",
    "nftables",
    "sqlite3",
    "util-linux",
    // The unit's test under a real systemd: a Debian tree booted with
    // systemd-nspawn (dbus for systemctl inside the container's tools).
    "debootstrap",
    "systemd-container",
    "dbus",
    // A DNS server in a test namespace, for DNS names in ignoreip.
    "dnsmasq",
    // Writes the MaxMind DB files the geo tests build themselves.
    "libmaxmind-db-writer-perl",
    // JetStream servers for the fleet tests (started and removed by them).
    "nats-server",
    // The fleet TLS test's throwaway CA and certificates.
    "openssl",
];
/// `cargo xtask deb` (and the test that installs the package it makes):
/// dpkg-shlibdeps for Depends, strip, xz for dpkg-deb.
const PACKAGE_PACKAGES: &[&str] = &["dpkg-dev", "binutils", "xz-utils"];
/// Compared against by `cargo xtask bench` (fail2ban-regex and the daemon).
const BENCH_PACKAGES: &[&str] = &["fail2ban"];
/// libfuzzer-sys compiles libFuzzer's C++ sources.
const FUZZ_PACKAGES: &[&str] = &["g++"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_INSTALL: &[&str] = &[
    "install",
    "bpf-linker",
    "--no-default-features",
    "--features",
    "llvm-22",
];

/// Makes sure everything needed for `purpose` is installed. Order matters:
/// system packages (LLVM) first, since bpf-linker is built against them.
pub(crate) fn ensure(purpose: Purpose) -> Result<()> {
    add_cargo_bin_to_path();
    let mut packages = BUILD_PACKAGES.to_vec();
    if matches!(purpose, Purpose::Test | Purpose::Bench) {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    if purpose == Purpose::Bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    if matches!(purpose, Purpose::Test | Purpose::Package) {
        packages.extend_from_slice(PACKAGE_PACKAGES);
    }
    if matches!(purpose, Purpose::Test | Purpose::Fuzz) {
        packages.extend_from_slice(FUZZ_PACKAGES);
    }
    let packages = ensure_packages(&packages)?;
    ensure_nightly_rust_src()?;
    let linker = ensure_bpf_linker()?;
    let fuzz = if matches!(purpose, Purpose::Test | Purpose::Fuzz) {
        format!(", {}", ensure_cargo_fuzz()?)
    } else {
        String::new()
    };
    eprintln!("xtask: prerequisites ok (nightly+rust-src, {linker}, {packages}{fuzz})");
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// rustc finds the linker for bpfel-unknown-none by the name `bpf-linker`,
/// and `cargo install` puts it in $CARGO_HOME/bin, which is often missing
/// from PATH (e.g. under sudo). Prepending it covers both.
fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_home().map(|home| home.join("bin")) else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if !bin.is_dir() || env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Single-threaded at this point; every child inherits the new PATH.
        env::set_var("PATH", joined);
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
}

// ---- Debian packages ------------------------------------------------------

/// Returns a summary for the "prerequisites ok" line.
fn ensure_packages(packages: &[&str]) -> Result<String> {
    if !is_debian() {
        // Without dpkg there is no reliable way to tell what is installed;
        // later steps fail with their own messages if something is missing.
        eprintln!(
            "xtask: warning: not a Debian system (no /etc/debian_version, apt-get or dpkg-query); \
             make sure the equivalents of these are installed: {}",
            packages.join(" ")
        );
        return Ok("system packages unchecked".to_owned());
    }
    let summary = format!("{} Debian packages", packages.len());
    let missing = missing_packages(packages, &dpkg_status(packages)?);
    if missing.is_empty() {
        return Ok(summary);
    }
    let mut update = apt_update();
    let mut install = apt_install(&missing);
    if !is_root() {
        bail!("{}", needs_root_message(&missing, &update, &install));
    }
    eprintln!("xtask: installing {} (apt-get)", missing.join(" "));
    cmd::run(&mut update).context("apt-get update failed")?;
    cmd::run(&mut install).context(
        "apt-get install failed; llvm-22-dev and libpolly-22-dev come from https://apt.llvm.org: \
         add its repository for this Debian release if apt cannot find them",
    )?;
    Ok(summary)
}

fn needs_root_message(missing: &[&str], update: &Command, install: &Command) -> String {
    format!(
        "missing Debian packages: {}; installing them needs root. Run:\n  sudo {}\n  sudo {}\n\
         then rerun this command (llvm-22-* come from https://apt.llvm.org)",
        missing.join(" "),
        cmd::display(update),
        cmd::display(install),
    )
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && on_path("apt-get") && on_path("dpkg-query")
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .map(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// `<package>\t<status>` lines for those of `packages` dpkg knows about.
fn dpkg_status(packages: &[&str]) -> Result<String> {
    // Exit status 1 only means some package is unknown to dpkg (so, not
    // installed); the known ones are still listed, so it is not checked.
    let out = Command::new("dpkg-query")
        .arg("--show")
        .arg("--showformat=${Package}\t${Status}\n")
        .args(packages)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("could not run dpkg-query to check installed packages")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Those of `wanted` that `dpkg_status` output does not show as installed.
/// A status is "<want> <flag> <state>"; only the state matters, so that held
/// packages ("hold ok installed") count as installed and removed ones with
/// leftover config ("deinstall ok config-files") do not.
fn missing_packages<'a>(wanted: &[&'a str], dpkg_status: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = dpkg_status
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.split_whitespace().nth(2) == Some("installed"))
        .map(|(name, _)| name)
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|pkg| !installed.contains(pkg))
        .collect()
}

fn apt_update() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("update");
    cmd
}

fn apt_install(packages: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages);
    cmd
}

// ---- Rust toolchain -------------------------------------------------------

/// The eBPF crate is built with `-Z build-std=core`, which needs nightly and
/// its standard library sources.
fn ensure_nightly_rust_src() -> Result<()> {
    let toolchains = cmd::stdout(cmd::rustup().args(["toolchain", "list"])).context(
        "could not list Rust toolchains; rustup is required (https://rustup.rs) \
         because the eBPF program is built with a nightly toolchain",
    )?;
    if !has_nightly(&toolchains) {
        eprintln!("xtask: installing the nightly toolchain with rust-src (rustup)");
        return cmd::run(cmd::rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("could not install the nightly toolchain");
    }
    let components = cmd::stdout(
        cmd::rustup()
            .args(["+nightly", "component", "list", "--installed"])
            // Never let a check install anything behind our back.
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .context("could not list the nightly toolchain's components")?;
    if !has_component(&components, "rust-src") {
        eprintln!("xtask: adding rust-src to the nightly toolchain (rustup)");
        cmd::run(cmd::rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("could not add rust-src to the nightly toolchain")?;
    }
    Ok(())
}

/// Whether `rustup toolchain list` shows the floating `nightly` channel
/// (`nightly-<host>`), as opposed to only dated ones (`nightly-2025-01-01-…`).
fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| name.strip_prefix("nightly-"))
        .any(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn has_component(component_list: &str, component: &str) -> bool {
    component_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == component)
}

// ---- bpf-linker -----------------------------------------------------------

/// Returns the installed version (e.g. "bpf-linker 0.13.0").
fn ensure_bpf_linker() -> Result<String> {
    if let Some(version) = bpf_linker_version() {
        return Ok(version);
    }
    eprintln!(
        "xtask: installing bpf-linker against LLVM 22 in {LLVM_PREFIX} (cargo install; takes a few minutes)"
    );
    cmd::run(&mut bpf_linker_install()).with_context(|| {
        format!(
            "could not install bpf-linker; it needs llvm-22-dev and libpolly-22-dev \
             (LLVM in {LLVM_PREFIX}); by hand: {}",
            cmd::display(&bpf_linker_install())
        )
    })?;
    bpf_linker_version().context(
        "bpf-linker was installed but `bpf-linker --version` still fails: \
         add $CARGO_HOME/bin (usually ~/.cargo/bin) to PATH",
    )
}

fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(if version.is_empty() {
        "bpf-linker".to_owned()
    } else {
        version
    })
}

/// Plain stable cargo: the xtask's own toolchain variables must not leak in.
fn bpf_linker_install() -> Command {
    let mut cmd = cmd::cargo_on("stable");
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).args(BPF_LINKER_INSTALL);
    cmd
}

// ---- cargo-fuzz -------------------------------------------------------------

/// cargo-fuzz drives the fuzz targets (`fuzz/`) for `cargo xtask test` and
/// `cargo xtask fuzz`; returns its version.
fn ensure_cargo_fuzz() -> Result<String> {
    if let Some(version) = cargo_fuzz_version() {
        return Ok(version);
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install; takes a minute or two)");
    cmd::run(&mut cargo_fuzz_install()).with_context(|| {
        format!(
            "could not install cargo-fuzz; by hand: {}",
            cmd::display(&cargo_fuzz_install())
        )
    })?;
    cargo_fuzz_version().context(
        "cargo-fuzz was installed but `cargo fuzz --version` still fails: \
         add $CARGO_HOME/bin (usually ~/.cargo/bin) to PATH",
    )
}

fn cargo_fuzz_version() -> Option<String> {
    let out = Command::new("cargo-fuzz")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(if version.is_empty() {
        "cargo-fuzz".to_owned()
    } else {
        version
    })
}

fn cargo_fuzz_install() -> Command {
    let mut cmd = cmd::cargo_on("stable");
    cmd.args(["install", "cargo-fuzz", "--locked"]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_installed() {
        let status = "llvm-22-dev\tinstall ok installed\nlibpolly-22-dev\tinstall ok installed\n";
        assert!(missing_packages(BUILD_PACKAGES, status).is_empty());
    }

    #[test]
    fn unknown_removed_and_half_installed_are_missing() {
        // bpftool unknown to dpkg: no line at all.
        let status = "iproute2\tinstall ok installed\n\
                      ipset\tdeinstall ok config-files\n\
                      sqlite3\tinstall ok half-configured\n\
                      nftables\tunknown ok not-installed\n\
                      iptables\thold ok installed\n";
        assert_eq!(
            missing_packages(
                &["iproute2", "bpftool", "ipset", "sqlite3", "nftables", "iptables"],
                status
            ),
            ["bpftool", "ipset", "sqlite3", "nftables"]
        );
    }

    #[test]
    fn multiarch_package_installed_for_one_arch() {
        let status = "util-linux\tunknown ok not-installed\nutil-linux\tinstall ok installed\n";
        assert!(missing_packages(&["util-linux"], status).is_empty());
    }

    #[test]
    fn non_root_gets_commands_to_paste() {
        let missing = ["bpftool", "ipset"];
        let msg = needs_root_message(&missing, &apt_update(), &apt_install(&missing));
        assert!(msg.contains("\n  sudo apt-get update\n"), "{msg}");
        assert!(
            msg.contains(
                "\n  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y \
                 --no-install-recommends bpftool ipset\n"
            ),
            "{msg}"
        );
    }

    #[test]
    fn nightly_detection() {
        assert!(has_nightly(
            "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2025-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }

    #[test]
    fn component_detection() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }

    #[test]
    fn install_commands_are_shown_in_full() {
        assert_eq!(
            cmd::display(&apt_install(&["llvm-22-dev", "libpolly-22-dev"])),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
             llvm-22-dev libpolly-22-dev"
        );
        assert_eq!(
            cmd::display(&bpf_linker_install()),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo +stable install bpf-linker \
             --no-default-features --features llvm-22"
        );
    }
}
