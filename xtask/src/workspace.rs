//! Where the workspace and its build outputs live.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd;

/// Target triple and package of the XDP program.
pub(crate) const EBPF_TARGET: &str = "bpfel-unknown-none";
pub(crate) const EBPF_PACKAGE: &str = "xban-ebpf";
const EBPF_BIN: &str = "xban-xdp";
const AGENT_BIN: &str = "xban";

#[derive(Debug, PartialEq)]
pub(crate) struct Workspace {
    pub root: PathBuf,
    /// Absolute; honours CARGO_TARGET_DIR and `build.target-dir`.
    pub target_dir: PathBuf,
}

impl Workspace {
    /// Asks cargo rather than assuming `<root>/target`, so that
    /// CARGO_TARGET_DIR and cargo config are respected.
    pub(crate) fn locate() -> Result<Self> {
        absolutize_target_dir_var()?;
        // xtask is compiled from inside the workspace; its parent is the root.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let json = cmd::stdout(
            cmd::cargo()
                .args(["metadata", "--format-version", "1", "--no-deps"])
                .arg("--manifest-path")
                .arg(&manifest),
        )
        .context("could not locate the workspace with `cargo metadata`")?;
        parse_metadata(&json)
    }

    /// The XDP object that `cargo xtask build-ebpf` produces.
    pub(crate) fn ebpf_object(&self) -> PathBuf {
        self.target_dir
            .join(EBPF_TARGET)
            .join("release")
            .join(EBPF_BIN)
    }

    /// The agent binary built with the given profile directory
    /// (`release` or `debug`).
    pub(crate) fn agent_binary(&self, profile_dir: &str) -> PathBuf {
        self.target_dir.join(profile_dir).join(AGENT_BIN)
    }
}

/// Nested builds run from the workspace root, where a relative
/// CARGO_TARGET_DIR would name another directory than the one the caller
/// meant (cargo resolves it against the current directory).
fn absolutize_target_dir_var() -> Result<()> {
    let Some(dir) = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) else {
        return Ok(());
    };
    if dir.is_relative() {
        let cwd = env::current_dir().context("cannot resolve a relative CARGO_TARGET_DIR")?;
        // Single-threaded at this point; every child inherits the new value.
        env::set_var("CARGO_TARGET_DIR", cwd.join(dir));
    }
    Ok(())
}

fn parse_metadata(json: &str) -> Result<Workspace> {
    let meta: serde_json::Value =
        serde_json::from_str(json).context("`cargo metadata` printed invalid JSON")?;
    let path = |key: &str| {
        meta[key]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("`cargo metadata` output has no string `{key}`"))
    };
    Ok(Workspace {
        root: path("workspace_root")?,
        target_dir: path("target_directory")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata() {
        let ws = parse_metadata(
            r#"{"packages":[],"workspace_root":"/src/xban","target_directory":"/tmp/t","version":1}"#,
        )
        .unwrap();
        assert_eq!(ws.root, Path::new("/src/xban"));
        assert_eq!(
            ws.ebpf_object(),
            Path::new("/tmp/t/bpfel-unknown-none/release/xban-xdp")
        );
        assert_eq!(ws.agent_binary("release"), Path::new("/tmp/t/release/xban"));
    }

    #[test]
    fn rejects_metadata_without_target_dir() {
        let err = parse_metadata(r#"{"workspace_root":"/src/xban"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("target_directory"));
    }
}
