//! `cargo xtask deb`: xban as a Debian package, `target/deb/xban_VERSION_ARCH.deb`.
//!
//! What goes in, and where (the paths the agent uses by default):
//! - `/usr/sbin/xban` (0755), the XDP object embedded;
//! - `/lib/systemd/system/xban.service` (0644): `deploy/xban.service` with
//!   the binary's path changed to `/usr/sbin/xban`;
//! - `/etc/xban/xban.toml` (0600, a conffile: dpkg keeps the operator's
//!   edits on upgrade) and an empty `/etc/xban/filters/`;
//! - man pages made from the CLI (`xban manpage`), README and copyright
//!   under `/usr/share`.
//!
//! Installing enables and starts nothing: the postinst says how to import
//! a fail2ban configuration and start the service. Removing stops the agent
//! and tears down its XDP program and maps (nothing would expire those bans
//! any more); an upgrade restarts a running agent, which adopts the pinned
//! bans without a gap. Purging also removes `/var/lib/xban`, the ban database.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::cmd;
use crate::workspace::Workspace;

/// The binary's path in the package, and the one the unit must run.
const BINARY: &str = "usr/sbin/xban";
/// `cargo xtask install` puts the binary here; the unit in deploy/ says so.
const INSTALL_BINARY: &str = "/usr/local/sbin/xban";
const UNIT: &str = "lib/systemd/system/xban.service";
const CONFIG: &str = "etc/xban/xban.toml";
const FILTERS: &str = "etc/xban/filters";
const MAN_DIR: &str = "usr/share/man/man8";
const DOC_DIR: &str = "usr/share/doc/xban";

/// Builds the package from `binary` (a release build with the XDP object),
/// returns its path.
pub(crate) fn build(ws: &Workspace, binary: &Path) -> Result<PathBuf> {
    let version = binary_version(binary)?;
    let arch = cmd::stdout(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture (is this Debian?)")?
        .trim()
        .to_string();
    let out_dir = ws.target_dir.join("deb");
    let root = out_dir.join(format!("xban_{version}_{arch}"));
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }

    let bin = root.join(BINARY);
    put(
        &bin,
        &fs::read(binary).with_context(|| format!("read {}", binary.display()))?,
        0o755,
    )?;
    // Debug sections only: symbols stay for backtraces; the XDP object is
    // data, untouched.
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&bin))
        .context("strip --strip-debug (binutils)")?;

    let deploy = ws.root.join("deploy");
    let unit =
        fs::read_to_string(deploy.join("xban.service")).context("read deploy/xban.service")?;
    put(&root.join(UNIT), packaged_unit(&unit)?.as_bytes(), 0o644)?;
    put(
        &root.join(CONFIG),
        &fs::read(deploy.join("xban.toml")).context("read deploy/xban.toml")?,
        0o600,
    )?;
    dir(&root.join(FILTERS))?;

    let man_tmp = out_dir.join("man");
    let _ = fs::remove_dir_all(&man_tmp);
    cmd::run(Command::new(binary).arg("manpage").arg(&man_tmp))
        .context("xban manpage (writes the man pages)")?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_tmp)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    ensure!(
        !pages.is_empty(),
        "xban manpage wrote no page into {}",
        man_tmp.display()
    );
    for page in &pages {
        let name = page.file_name().unwrap().to_string_lossy();
        put(
            &root.join(MAN_DIR).join(format!("{name}.gz")),
            &gzip(page)?,
            0o644,
        )?;
    }
    fs::remove_dir_all(&man_tmp)?;
    put(
        &root.join(DOC_DIR).join("README.md.gz"),
        &gzip(&ws.root.join("README.md"))?,
        0o644,
    )?;
    put(
        &root.join(DOC_DIR).join("copyright"),
        copyright(ws)?.as_bytes(),
        0o644,
    )?;

    let depends = depends(&root.join(BINARY), &out_dir)?;
    // Debian's packaging tools take the maintainer from these too.
    let maintainer = match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(email)) if !name.trim().is_empty() && email.contains('@') => {
            format!("{} <{}>", name.trim(), email.trim())
        }
        _ => "xban developers <root@localhost>".to_string(),
    };
    let control = control(
        &version,
        &arch,
        &maintainer,
        &depends,
        installed_kib(&root)?,
    );
    let debian = root.join("DEBIAN");
    put(&debian.join("control"), control.as_bytes(), 0o644)?;
    put(
        &debian.join("conffiles"),
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    put(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    put(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    put(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    put(&debian.join("md5sums"), md5sums(&root)?.as_bytes(), 0o644)?;

    // Every directory of the package is 0755, whatever the umask made of
    // the parents `create_dir_all` added on the way (dpkg-deb records them,
    // and refuses a DEBIAN/ that is not 0755).
    for d in walk(&root)?.iter().chain([&root]).filter(|p| p.is_dir()) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out_dir.join(format!("xban_{version}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )
    .context("dpkg-deb --build")?;
    Ok(deb)
}

/// `xban --version` prints `xban X.Y.Z`: the package has the binary's version.
fn binary_version(binary: &Path) -> Result<String> {
    let out = cmd::stdout(Command::new(binary).arg("--version"))?;
    let version = out
        .trim()
        .strip_prefix("xban ")
        .with_context(|| format!("unexpected `xban --version`: {out:?}"))?;
    ensure!(
        !version.is_empty()
            && version.starts_with(|c: char| c.is_ascii_digit())
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c)),
        "`xban --version` gave {version:?}, not a Debian version"
    );
    Ok(version.to_string())
}

/// deploy/xban.service runs `cargo xtask install`'s path; the package's
/// binary is /usr/sbin/xban.
fn packaged_unit(unit: &str) -> Result<String> {
    ensure!(
        unit.contains(INSTALL_BINARY),
        "deploy/xban.service no longer runs {INSTALL_BINARY}: update the packaging (xtask/src/deb.rs)"
    );
    Ok(unit.replace(INSTALL_BINARY, &format!("/{BINARY}")).replace(
        "Installed by `cargo xtask install` as /etc/systemd/system/xban.service.",
        "Installed by the xban Debian package as /lib/systemd/system/xban.service.",
    ))
}

fn control(
    version: &str,
    arch: &str,
    maintainer: &str,
    depends: &str,
    installed_kib: u64,
) -> String {
    format!(
        "Package: xban\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: iptables, ipset\n\
         Section: net\n\
         Priority: optional\n\
         Description: ban attackers found in service logs, dropping their packets at XDP\n \
         xban follows service logs (files, the journal), matches failures with\n \
         regex filters, counts them per address and bans repeat offenders in BPF\n \
         maps that an XDP program consults for every packet. It reads fail2ban's\n \
         jail and filter configuration with `xban import`.\n \
         .\n \
         Installing enables nothing: see /usr/share/doc/xban/README.md.gz,\n \
         \"Moving from fail2ban\".\n"
    )
}

/// What the binary links against, as dpkg-shlibdeps says (libc6, libgcc).
fn depends(binary: &Path, scratch: &Path) -> Result<String> {
    // dpkg-shlibdeps wants a source package around it: a stub control file.
    let src = scratch.join("shlibdeps");
    let _ = fs::remove_dir_all(&src);
    dir(&src.join("debian"))?;
    fs::write(
        src.join("debian/control"),
        "Source: xban\n\nPackage: xban\nArchitecture: any\n",
    )?;
    let out = cmd::stdout(
        Command::new("dpkg-shlibdeps")
            .current_dir(&src)
            .arg("-O")
            .arg(binary),
    )
    .context("dpkg-shlibdeps (dpkg-dev)")?;
    fs::remove_dir_all(&src)?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))?;
    ensure!(
        line.contains("libc6"),
        "dpkg-shlibdeps: no libc6 in {line:?}"
    );
    Ok(line.to_string())
}

/// Installed-Size, in KiB as dpkg counts it (files rounded up, dirs 1).
fn installed_kib(root: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in walk(root)? {
        if entry.starts_with(root.join("DEBIAN")) {
            continue;
        }
        let meta = fs::symlink_metadata(&entry)?;
        kib += if meta.is_dir() {
            1
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

fn md5sums(root: &Path) -> Result<String> {
    let mut files: Vec<String> = walk(root)?
        .into_iter()
        .filter(|p| p.is_file() && !p.starts_with(root.join("DEBIAN")))
        // Conffiles are listed in conffiles with their own sums, not here.
        .filter(|p| !p.ends_with(CONFIG))
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("nothing to package under {}", root.display());
    }
    let out = cmd::stdout(Command::new("md5sum").current_dir(root).args(&files))?;
    Ok(out)
}

fn copyright(ws: &Workspace) -> Result<String> {
    let manifest = fs::read_to_string(ws.root.join("Cargo.toml"))?;
    let license = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("license = "))
        .map(|l| l.trim_matches('"').to_string())
        .context("no license = in the workspace Cargo.toml")?;
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: xban\n\n\
         Files: *\n\
         Copyright: the xban developers\n\
         License: {license}\n"
    ))
}

/// Every path under `root`, directories included.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    Ok(out)
}

fn gzip(path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(path)
        .output()
        .context("gzip")?;
    ensure!(out.status.success(), "gzip {} failed", path.display());
    Ok(out.stdout)
}

/// Writes `bytes` at `path` with `mode`, as `cargo xtask install` writes
/// its files (directory modes are set once the tree is complete).
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::install::replace_file(path, bytes, mode)
}

fn dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("mkdir {}", path.display()))
}

/// After unpacking: tell systemd about the unit, restart a running agent on
/// upgrade (it adopts the pinned bans: no gap), enable nothing, and say how
/// to go on.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        # An upgrade: a running agent is restarted into the new binary.
        if [ -n "$2" ] && systemctl is-active --quiet xban.service; then
            systemctl restart xban.service || true
        fi
    fi
    if [ -z "$2" ]; then
        cat <<'EOF'
xban is installed, not enabled and not started.
  Moving from fail2ban:
    xban import --dry-run            # read /etc/fail2ban: the report, the config, the filters
    xban import                      # write /etc/xban/xban.toml (replaces the untouched default) and filters
    xban check                       # this machine: logs, interfaces, bpffs
    systemctl disable --now fail2ban && systemctl enable --now xban
  Starting fresh: edit /etc/xban/xban.toml, `xban check`, then systemctl enable --now xban
  man xban; /usr/share/doc/xban/README.md.gz
EOF
    fi
fi
exit 0
"#;

/// Before removal (not upgrade): stop the agent and take its XDP program and
/// maps out of the kernel, since nothing would expire those bans any more.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop xban.service >/dev/null 2>&1 || true
    fi
    if ! /usr/sbin/xban -c /etc/xban/xban.toml teardown; then
        echo "xban: teardown failed (see above): XDP and the pinned maps may still be there; bpftool net, ls /sys/fs/bpf/xban" >&2
    fi
fi
exit 0
"#;

/// After removal: systemd forgets the unit; purge also removes the ban
/// database and whatever is left in /etc/xban.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/xban
    rm -rf /etc/xban
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let unit = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xban.service"),
        )
        .unwrap();
        let packaged = packaged_unit(&unit).unwrap();
        assert!(!packaged.contains(INSTALL_BINARY), "{packaged}");
        assert!(packaged.contains("ExecStart=/usr/sbin/xban -c /etc/xban/xban.toml run"));
        assert!(packaged.contains("ExecReload=/usr/sbin/xban -c /etc/xban/xban.toml reload"));
        assert!(packaged.contains("/lib/systemd/system/xban.service"));
        assert!(packaged_unit("ExecStart=/opt/xban run").is_err());
    }

    #[test]
    fn the_control_file_is_well_formed() {
        let c = control(
            "0.1.0",
            "amd64",
            "A <a@example.org>",
            "libc6 (>= 2.34)",
            21000,
        );
        let fields: Vec<&str> = c
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        for f in [
            "Package",
            "Version",
            "Architecture",
            "Maintainer",
            "Depends",
            "Description",
        ] {
            assert!(fields.contains(&f), "{f} in {c}");
        }
        // Continuation lines start with a space; an empty one is " .".
        assert!(c.lines().all(|l| !l.is_empty()), "{c}");
        assert!(c.ends_with('\n'));
    }

    #[test]
    fn maintainer_scripts_are_valid_sh() {
        for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
            let out = Command::new("sh")
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(script.starts_with("#!/bin/sh\nset -e\n"), "{name}");
        }
    }
}
