//! The built-in filter library (`agent/filters/*.toml`, embedded at build
//! time) and loading of user filter files.
//!
//! Each built-in has a sample log in `agent/filters/samples/NAME.log`,
//! checked by this module's tests. Sample format: every log line is preceded
//! by an expectation comment,
//!
//! ```text
//! # expect: 203.0.113.7            a failure from that address
//! # expect: 203.0.113.7 user=root  ... and that <F-USER> capture
//! # expect: none                   no failure
//! # expect: ignored                a failregex matched, an ignoreregex vetoed
//! ```
//!
//! and `# modes: normal, ddos` lines select the modes the following lines
//! are checked under (`# modes: default` = the filter's default mode).
//! Other `#` lines and blank lines are comments.

use std::collections::BTreeMap;
use std::path::Path;

use super::{FilterDef, FilterError};

macro_rules! builtins {
    ($($name:literal),* $(,)?) => {
        const NAMES: &[&str] = &[$($name),*];
        const SOURCES: &[&str] = &[$(include_str!(concat!("../../filters/", $name, ".toml"))),*];
        #[cfg(test)]
        const SAMPLES: &[&str] = &[$(include_str!(concat!("../../filters/samples/", $name, ".log"))),*];
    };
}

builtins!(
    "sshd",
    "nginx-http-auth",
    "nginx-botsearch",
    "nginx-limit-req",
    "apache-auth",
    "apache-noscript",
    "apache-overflows",
    "postfix",
    "dovecot",
    "vsftpd",
    "pure-ftpd",
    "proftpd",
    "recidive",
);

/// Names of the built-in filters.
pub fn builtin_names() -> &'static [&'static str] {
    NAMES
}

/// A built-in filter by name.
pub fn builtin(name: &str) -> Option<FilterDef> {
    let i = NAMES.iter().position(|n| *n == name)?;
    // The files are tested to parse; a failure here is a build defect.
    Some(toml::from_str(SOURCES[i]).expect("built-in filter TOML parses"))
}

/// Parses one filter file; errors name the file.
pub fn load_file(path: &Path) -> Result<FilterDef, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|source| FilterError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let def: FilterDef = toml::from_str(&text).map_err(|e| FilterError::Toml {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    def.validate().map_err(|e| FilterError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(def)
}

/// All built-ins, overridden and extended by the `*.toml` files in `dir`
/// (file stem = filter name). A missing directory yields just the
/// built-ins; every user file is compiled (all modes) so that mistakes are
/// reported at load, with the file name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, FilterDef>, FilterError> {
    let mut map: BTreeMap<String, FilterDef> = NAMES
        .iter()
        .filter_map(|n| Some((n.to_string(), builtin(n)?)))
        .collect();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(source) => {
            return Err(FilterError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FilterError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let def = load_file(&path)?;
        map.insert(stem.to_string(), def);
    }
    Ok(map)
}

#[cfg(test)]
mod injection_tests;
#[cfg(test)]
pub(crate) mod tests;
