//! `xban import`: a fail2ban configuration turned into an xban one.
//!
//! 1. [`reader`] expands `/etc/fail2ban` as fail2ban itself does
//!    ([`ini`] for its file format and layering, [`tags`] for `<tag>`
//!    substitution and `name[args]`), giving each enabled jail's values as
//!    `fail2ban-client -d` prints them;
//! 2. [`filters`] translates each jail's filter variant into an xban filter
//!    file, or refuses it naming the feature xban's engine lacks;
//! 3. [`jails`] maps the jail's settings to xban's, and [`report`] says for
//!    every key whether it was mapped, approximated or dropped, and why.
//!
//! Everything is prepared in memory; [`Import::write`] writes only when the
//! whole import succeeded.

pub mod filters;
pub mod ini;
pub mod jails;
pub mod reader;
pub mod report;
pub mod tags;

use std::path::{Path, PathBuf};

pub use self::report::Report;

/// An import error: where (file, section, key) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}; check the path and its permissions", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}: {message}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: [{section}] {key}: {message}", .file.display())]
    Option {
        file: PathBuf,
        section: String,
        key: String,
        message: String,
    },
    #[error("{}: no jail.conf, jail.local or jail.d/ here: pass fail2ban's configuration directory (default /etc/fail2ban)", .dir.display())]
    NoJailConf { dir: PathBuf },
    #[error("{}: {message}", .path.display())]
    Output { path: PathBuf, message: String },
}

impl ImportError {
    /// Places a failed `get` in its file, section and key.
    pub fn from_get(e: ini::GetError, file: &Path, section: &str, key: &str) -> ImportError {
        let (file, message) = match e {
            ini::GetError::NoSection => (
                file.to_path_buf(),
                format!("section [{section}] does not exist"),
            ),
            ini::GetError::NoOption => (file.to_path_buf(), format!("`{key}` is not set")),
            ini::GetError::Interpolation { file: f, message } => (
                if f.as_os_str().is_empty() {
                    file.to_path_buf()
                } else {
                    f
                },
                message,
            ),
        };
        ImportError::Option {
            file,
            section: section.to_string(),
            key: key.to_string(),
            message,
        }
    }
}

/// A finished import, not yet written.
#[derive(Debug, Clone)]
pub struct Import {
    /// `xban.toml`.
    pub config: String,
    /// Filter files: (file name without `.toml`, TOML text).
    pub filters: Vec<(String, String)>,
    pub report: Report,
    /// Every enabled jail as fail2ban expands it (what the report is about).
    pub expanded: Vec<reader::ExpandedJail>,
}

/// Reads fail2ban's configuration in `dir` and builds the xban config that
/// `out` will hold (its `filters_dir` is `out/filters`).
pub fn import(dir: &Path, out: &Path) -> Result<Import, ImportError> {
    let expanded = reader::read_jails(dir)?;
    let mut report = Report::default();
    let (config, filters) = jails::build(&expanded, &out.join("filters"), &mut report)?;
    Ok(Import {
        config,
        filters,
        report,
        expanded,
    })
}

impl Import {
    /// Writes `out/xban.toml` and `out/filters/NAME.toml`. Refuses before
    /// writing anything when one of them already exists, except an
    /// `xban.toml` that is still `default_config` byte for byte (the one
    /// the package or `cargo xtask install` put there, never edited): that
    /// one is replaced, since nothing of the operator's is in it.
    pub fn write(&self, out: &Path, default_config: &str) -> Result<Written, ImportError> {
        let filters_dir = out.join("filters");
        let config_path = out.join("xban.toml");
        let mut replaced_default = false;
        let mut targets = vec![(config_path.clone(), self.config.as_str())];
        for (name, text) in &self.filters {
            targets.push((filters_dir.join(format!("{name}.toml")), text.as_str()));
        }
        for (path, _) in &targets {
            if !path.exists() {
                continue;
            }
            if *path == config_path
                && std::fs::read(path).is_ok_and(|old| old == default_config.as_bytes())
            {
                replaced_default = true;
                continue;
            }
            return Err(ImportError::Output {
                path: path.clone(),
                message: "already exists (and is not the untouched default config): import \
                          into another --out directory (nothing was written)"
                    .into(),
            });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| ImportError::Output {
                path,
                message: e.to_string(),
            }
        };
        // Everything goes to a staging directory beside the targets first,
        // then is renamed into place: a failed write leaves nothing behind.
        std::fs::create_dir_all(out).map_err(io(out))?;
        let staging = out.join(format!(".xban-import-{}", std::process::id()));
        let staged = (|| -> Result<Vec<(PathBuf, PathBuf)>, ImportError> {
            std::fs::create_dir_all(&staging).map_err(io(&staging))?;
            let mut moves = Vec::new();
            for (i, (path, text)) in targets.iter().enumerate() {
                let tmp = staging.join(format!("{i}.toml"));
                std::fs::write(&tmp, text).map_err(io(&tmp))?;
                // The config may name management networks: owner only.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(&tmp))?;
                moves.push((tmp, path.clone()));
            }
            std::fs::create_dir_all(&filters_dir).map_err(io(&filters_dir))?;
            Ok(moves)
        })();
        let moves = match staged {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let mut written = Vec::new();
        for (tmp, path) in moves {
            if let Err(e) = std::fs::rename(&tmp, &path) {
                for done in &written {
                    let _ = std::fs::remove_file(done);
                }
                let _ = std::fs::remove_dir_all(&staging);
                return Err(io(&path)(e));
            }
            written.push(path);
        }
        let _ = std::fs::remove_dir_all(&staging);
        Ok(Written {
            files: written,
            replaced_default,
        })
    }
}

/// What [`Import::write`] did.
#[derive(Debug)]
pub struct Written {
    /// Every file written, config first.
    pub files: Vec<PathBuf>,
    /// The config replaced an untouched default one.
    pub replaced_default: bool,
}

#[cfg(all(test, feature = "fail2ban-tests"))]
mod fail2ban_tests;
#[cfg(test)]
mod tests;
