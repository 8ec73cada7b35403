//! fail2ban's configuration reader, as it behaves: Python's `ConfigParser`
//! (strict, `;` inline comments, lower-cased option names, indented
//! continuation lines, `%(name)s` interpolation) plus fail2ban's own layer
//! on top (`[INCLUDES] before/after`, `NAME.conf` < `NAME.d/*.conf` <
//! `NAME.local` < `NAME.d/*.local`, the `KNOWN/` copy of overridden values
//! and `%(section/option)s`, `%(known/option)s`, `%(default/option)s`).
//!
//! Every value remembers the file it came from, so that an error names the
//! file, the section and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ImportError;

/// One option's raw (uninterpolated) value and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub value: String,
    pub file: PathBuf,
}

pub type Section = BTreeMap<String, Entry>;

/// A parsed file or a merge of several, as fail2ban holds them.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    pub defaults: Section,
    /// In the order sections were first seen (jails are listed this way).
    pub sections: Vec<(String, Section)>,
}

/// Why a `get` failed, before it is placed in a file and section.
#[derive(Debug, Clone, PartialEq)]
pub enum GetError {
    NoSection,
    NoOption,
    /// Interpolation failed: the message says which reference and why.
    Interpolation {
        file: PathBuf,
        message: String,
    },
}

/// Python's `MAX_INTERPOLATION_DEPTH`.
const MAX_INTERPOLATION_DEPTH: usize = 10;

impl Ini {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    fn section_mut(&mut self, name: &str) -> Option<&mut Section> {
        self.sections
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.section(name).is_some()
    }

    /// Section names without fail2ban's internal `KNOWN/` copies.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !n.starts_with("KNOWN/"))
    }

    /// Option names of a section; with `with_defaults`, `[DEFAULT]`'s too.
    pub fn options(&self, section: &str, with_defaults: bool) -> Vec<String> {
        let mut names: Vec<String> = self
            .section(section)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        if with_defaults {
            for k in self.defaults.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        names
    }

    /// Parses one file as Python's strict `ConfigParser` does.
    pub fn parse_file(path: &Path) -> Result<Ini, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ini::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Ini, ImportError> {
        let syntax = |line: usize, message: String| ImportError::Syntax {
            file: path.to_path_buf(),
            line,
            message,
        };
        let mut ini = Ini::default();
        // (section, option) -> the value's lines, joined at the end.
        let mut current: Option<String> = None; // None: no section yet; "" never used
        let mut in_default = false;
        let mut option: Option<String> = None;
        let mut indent_level = 0usize;
        let mut lines_of: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut order: Vec<(String, String)> = Vec::new();
        let mut seen_sections: Vec<String> = Vec::new();
        const DEFAULT_KEY: &str = "\u{0}DEFAULT";
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let line = raw.trim_end_matches('\r');
            // Full-line comments ('#' or ';'), then inline ';' after blank.
            let trimmed = line.trim();
            let comment_start = if trimmed.starts_with('#') || trimmed.starts_with(';') {
                Some(0)
            } else {
                inline_comment_start(line)
            };
            let value = match comment_start {
                Some(c) => line[..c].trim(),
                None => trimmed,
            };
            if value.is_empty() {
                // An empty line inside a value is kept (Python's
                // empty_lines_in_values); a comment line is not.
                if comment_start.is_none() {
                    if let (Some(sec), Some(opt)) = (
                        if in_default {
                            Some(DEFAULT_KEY.to_string())
                        } else {
                            current.clone()
                        },
                        option.clone(),
                    ) {
                        if let Some(v) = lines_of.get_mut(&(sec, opt)) {
                            v.push(String::new());
                        }
                    }
                }
                continue;
            }
            let cur_indent = line.len() - line.trim_start().len();
            let sect_key = if in_default {
                Some(DEFAULT_KEY.to_string())
            } else {
                current.clone()
            };
            if let (Some(sec), Some(opt)) = (&sect_key, &option) {
                if cur_indent > indent_level {
                    lines_of
                        .get_mut(&(sec.clone(), opt.clone()))
                        .expect("option started")
                        .push(value.to_string());
                    continue;
                }
            }
            indent_level = cur_indent;
            if let Some(header) = section_header(value) {
                if header != "DEFAULT" && seen_sections.iter().any(|s| s == header) {
                    return Err(syntax(
                        lineno,
                        format!("section [{header}] appears twice in this file: merge the two"),
                    ));
                }
                seen_sections.push(header.to_string());
                option = None;
                if header == "DEFAULT" {
                    in_default = true;
                    current = Some("DEFAULT".into());
                } else {
                    in_default = false;
                    if ini.section(header).is_none() {
                        ini.sections.push((header.to_string(), Section::new()));
                    }
                    current = Some(header.to_string());
                }
                continue;
            }
            let Some(sec) = sect_key else {
                return Err(syntax(
                    lineno,
                    format!("`{value}` comes before any [section] header: start the file with one, e.g. [Definition]"),
                ));
            };
            let Some(sep) = value.find(['=', ':']) else {
                return Err(syntax(
                    lineno,
                    format!("`{value}` is neither `key = value`, a [section], nor an indented continuation line"),
                ));
            };
            let name = value[..sep].trim_end().to_lowercase();
            if name.is_empty() {
                return Err(syntax(lineno, format!("`{value}` has no option name")));
            }
            let key = (sec.clone(), name.clone());
            if lines_of.contains_key(&key) {
                let shown = if in_default { "DEFAULT" } else { sec.as_str() };
                return Err(syntax(
                    lineno,
                    format!("option `{name}` appears twice in section [{shown}]: keep one"),
                ));
            }
            lines_of.insert(key.clone(), vec![value[sep + 1..].trim().to_string()]);
            order.push(key);
            option = Some(name);
        }
        for key in order {
            let lines = &lines_of[&key];
            let joined = lines.join("\n").trim_end().to_string();
            let entry = Entry {
                value: joined,
                file: path.to_path_buf(),
            };
            if key.0 == DEFAULT_KEY {
                ini.defaults.insert(key.1, entry);
            } else {
                ini.section_mut(&key.0)
                    .expect("section created")
                    .insert(key.1, entry);
            }
        }
        Ok(ini)
    }

    /// Merges a later file over this one, as fail2ban does: `[DEFAULT]`
    /// values replace, sections merge key by key, and the values a section
    /// overrides are kept in `KNOWN/NAME` for `%(known/...)s`. A section
    /// `NAME?COND` adds its keys to `NAME` as `KEY?COND`.
    pub fn merge(&mut self, later: Ini) {
        self.defaults.extend(later.defaults);
        for (name, section) in later.sections {
            let (name, section) = match name.split_once('?') {
                Some((base, cond))
                    if !base.is_empty()
                        && base.chars().all(|c| c.is_alphanumeric() || c == '_') =>
                {
                    let renamed = section
                        .into_iter()
                        .map(|(k, v)| (format!("{k}?{cond}"), v))
                        .collect();
                    (base.to_string(), renamed)
                }
                _ => (name, section),
            };
            if let Some(existing) = self.section(&name).cloned() {
                let known: Section = existing
                    .iter()
                    .filter(|(k, _)| section.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.merge_section(&format!("KNOWN/{name}"), known, "");
                self.section_mut(&name).expect("exists").extend(section);
            } else {
                self.sections.push((name, section));
            }
        }
    }

    /// fail2ban's `merge_section`: with a prefix, keys already carrying it
    /// are left out.
    pub fn merge_section(&mut self, name: &str, options: Section, prefix: &str) {
        if self.section(name).is_none() {
            self.sections.push((name.to_string(), Section::new()));
        }
        let target = self.section_mut(name).expect("created");
        for (k, v) in options {
            if prefix.is_empty() {
                target.insert(k, v);
            } else if !k.starts_with(prefix) {
                target.insert(format!("{prefix}{k}"), v);
            }
        }
    }

    pub fn raw(&self, section: &str, option: &str) -> Option<&Entry> {
        self.section(section)
            .and_then(|s| s.get(option))
            .or_else(|| self.defaults.get(option))
    }

    /// `ConfigParser.get(section, option, vars=vars)`: `vars` first, then
    /// the section, then `[DEFAULT]`, interpolated in the section's context.
    pub fn get(
        &self,
        section: &str,
        option: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, GetError> {
        let sec = if section == "DEFAULT" {
            None
        } else {
            Some(self.section(section).ok_or(GetError::NoSection)?)
        };
        let option = option.to_lowercase();
        let lookup = |name: &str| -> Option<(String, PathBuf)> {
            if let Some(v) = vars.get(name) {
                return Some((v.clone(), PathBuf::new()));
            }
            sec.and_then(|s| s.get(name))
                .or_else(|| self.defaults.get(name))
                .map(|e| (e.value.clone(), e.file.clone()))
        };
        let (value, file) = lookup(&option).ok_or(GetError::NoOption)?;
        if !value.contains('%') {
            return Ok(value);
        }
        let mut out = String::new();
        self.interpolate(section, &option, &value, &file, &lookup, &mut out, 1)?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn interpolate(
        &self,
        section: &str,
        option: &str,
        rest: &str,
        file: &Path,
        lookup: &dyn Fn(&str) -> Option<(String, PathBuf)>,
        out: &mut String,
        depth: usize,
    ) -> Result<(), GetError> {
        let fail = |message: String| GetError::Interpolation {
            file: file.to_path_buf(),
            message,
        };
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(fail(format!(
                "`{option}` refers to itself through more than {MAX_INTERPOLATION_DEPTH} %(...)s levels: break the loop"
            )));
        }
        let mut rest = rest;
        while let Some(p) = rest.find('%') {
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            match rest.as_bytes().get(1) {
                Some(b'%') => {
                    out.push('%');
                    rest = &rest[2..];
                }
                Some(b'(') => {
                    let Some(close) = rest.find(")s") else {
                        return Err(fail(format!(
                            "bad interpolation `{}`: write %(name)s, or %% for a literal %",
                            truncate(rest)
                        )));
                    };
                    let inner = &rest[2..close];
                    if inner.is_empty() || inner.contains(')') {
                        return Err(fail(format!(
                            "bad interpolation `{}`: write %(name)s, or %% for a literal %",
                            truncate(rest)
                        )));
                    }
                    let name = inner.to_lowercase();
                    rest = &rest[close + 2..];
                    // fail2ban puts the section's name in as `__name__`.
                    let found = lookup(&name)
                        .or_else(|| self.section_reference(section, &name))
                        .or_else(|| {
                            (name == "__name__").then(|| (section.to_string(), file.to_path_buf()))
                        });
                    let Some((v, vfile)) = found else {
                        return Err(fail(format!(
                            "`%({inner})s` refers to an option that is not defined in [{section}] or [DEFAULT]: define `{name}` or fix the name"
                        )));
                    };
                    if v.contains('%') {
                        let vfile = if vfile.as_os_str().is_empty() {
                            file.to_path_buf()
                        } else {
                            vfile
                        };
                        self.interpolate(section, option, &v, &vfile, lookup, out, depth + 1)?;
                    } else {
                        out.push_str(&v);
                    }
                }
                _ => {
                    return Err(fail(format!(
                        "`%` must be followed by `%` or `(`, found `{}`: write %% for a literal %",
                        truncate(rest)
                    )))
                }
            }
        }
        out.push_str(rest);
        Ok(())
    }

    /// `%(known/opt)s`, `%(default/opt)s`, `%(sec/opt)s` (fail2ban's
    /// `_map_section_options`): raw values, interpolated afterwards in the
    /// referring section.
    fn section_reference(&self, section: &str, name: &str) -> Option<(String, PathBuf)> {
        let (sec, opt) = name.split_once('/')?;
        let opt = opt.to_string();
        let from_defaults = || {
            self.defaults
                .get(&opt)
                .map(|e| (e.value.clone(), e.file.clone()))
        };
        match sec {
            "default" => from_defaults(),
            "known" => self
                .section(&format!("KNOWN/{section}"))
                .and_then(|s| s.get(&opt))
                .map(|e| (e.value.clone(), e.file.clone()))
                .or_else(from_defaults),
            other => {
                let s = self.section(other)?;
                s.get(&opt)
                    .map(|e| (e.value.clone(), e.file.clone()))
                    .or_else(from_defaults)
            }
        }
    }

    /// fail2ban's `get_ex`: `known/opt` looks in `KNOWN/section` first,
    /// `sec/opt` in that section, then the plain name in `section`.
    pub fn get_ex(
        &self,
        section: &str,
        option: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, GetError> {
        if let Some((sec, opt)) = split_section_option(option) {
            let candidates: Vec<String> = match sec.to_lowercase().as_str() {
                "known" => vec![format!("KNOWN/{section}"), section.to_string()],
                "default" => vec!["DEFAULT".into()],
                _ => vec![sec.to_string()],
            };
            for c in candidates {
                match self.get(&c, opt, &BTreeMap::new()) {
                    Ok(v) => return Ok(v),
                    Err(GetError::NoSection | GetError::NoOption) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.get(section, option, vars)
    }
}

/// `^([\w\-]+)/([^\s>]+)$`.
fn split_section_option(option: &str) -> Option<(&str, &str)> {
    let (sec, opt) = option.split_once('/')?;
    let sec_ok = !sec.is_empty()
        && sec
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let opt_ok = !opt.is_empty() && !opt.chars().any(|c| c.is_whitespace() || c == '>');
    (sec_ok && opt_ok).then_some((sec, opt))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Python's `SECTCRE` (`\[(?P<header>.+)\]` matched at the start).
fn section_header(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    (end > 0).then(|| &rest[..end])
}

/// `;` starts a comment when it opens the line or follows a blank.
fn inline_comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b';' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .map(|(i, _)| i)
}

/// Adds `stem.local` after each `X.conf` when it exists and is not listed.
fn with_local_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        out.push(f.clone());
        let local = f.with_extension("local");
        if !files.contains(&local) && local.is_file() {
            out.push(local);
        }
    }
    out
}

/// The files to read for `files`, includes first (`before`), then the file,
/// then `after`, recursively, as fail2ban orders them. A missing include is
/// an error unless it is a `.local` file (those are optional by design, as
/// stock `common.conf` includes `common.local`).
pub fn expand_includes(files: &[PathBuf], seen: &[PathBuf]) -> Result<Vec<PathBuf>, ImportError> {
    let mut out = Vec::new();
    for file in with_local_files(files) {
        let ini = Ini::parse_file(&file)?;
        let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut before = Vec::new();
        let mut after = Vec::new();
        if ini.has_section("INCLUDES") {
            for (key, list) in [("before", &mut before), ("after", &mut after)] {
                let value = match ini.get("INCLUDES", key, &BTreeMap::new()) {
                    Ok(v) => v,
                    Err(GetError::NoOption) => continue,
                    Err(e) => {
                        return Err(ImportError::from_get(e, &file, "INCLUDES", key));
                    }
                };
                for name in value.split('\n') {
                    let target = if Path::new(name).is_absolute() {
                        PathBuf::from(name)
                    } else {
                        dir.join(name)
                    };
                    if seen.contains(&target) {
                        continue;
                    }
                    if !target.is_file() {
                        if target.extension().is_some_and(|e| e == "local") {
                            continue;
                        }
                        return Err(ImportError::Option {
                            file: file.clone(),
                            section: "INCLUDES".into(),
                            key: key.into(),
                            message: format!(
                                "includes {}, which does not exist: create it or remove it from `{key}`",
                                target.display()
                            ),
                        });
                    }
                    let mut s = seen.to_vec();
                    s.push(file.clone());
                    list.extend(expand_includes(&[target], &s)?);
                }
            }
        }
        out.extend(before);
        out.push(file.clone());
        out.extend(after);
    }
    Ok(out)
}

/// fail2ban's read of `NAME` under `basedir`: `NAME.conf`, `NAME.d/*.conf`,
/// `NAME.local`, `NAME.d/*.local` (those that exist), each with its
/// includes, merged in that order. `None` when none of them exists.
pub fn read_layered(
    basedir: &Path,
    name: &str,
) -> Result<Option<(Ini, Vec<PathBuf>)>, ImportError> {
    let base = basedir.join(name);
    let sorted_glob = |ext: &str| -> Vec<PathBuf> {
        let dir = PathBuf::from(format!("{}.d", base.display()));
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    };
    let mut candidates = vec![PathBuf::from(format!("{}.conf", base.display()))];
    candidates.extend(sorted_glob("conf"));
    candidates.push(PathBuf::from(format!("{}.local", base.display())));
    candidates.extend(sorted_glob("local"));
    let existing: Vec<PathBuf> = candidates.into_iter().filter(|p| p.exists()).collect();
    if existing.is_empty() {
        return Ok(None);
    }
    let files = expand_includes(&existing, &[])?;
    let mut merged = Ini::default();
    for f in &files {
        merged.merge(Ini::parse_file(f)?);
    }
    Ok(Some((merged, files)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ini {
        Ini::parse(text, Path::new("t.conf")).unwrap()
    }

    fn no_vars() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn continuation_lines_comments_and_case() {
        let ini = parse(
            "# top\n[Definition]\nFailRegex = ^a <HOST>$\n    ^b <HOST>$ ; not a comment? yes it is\n\n  ^c <HOST>$\n; c\nother = x;y ; z\n[DEFAULT]\nd = 1\n",
        );
        assert_eq!(
            ini.get("Definition", "failregex", &no_vars()).unwrap(),
            "^a <HOST>$\n^b <HOST>$\n\n^c <HOST>$"
        );
        assert_eq!(ini.get("Definition", "other", &no_vars()).unwrap(), "x;y");
        assert_eq!(ini.get("Definition", "d", &no_vars()).unwrap(), "1");
    }

    #[test]
    fn interpolation_with_vars_known_and_sections() {
        let mut ini = parse("[DEFAULT]\nport = ssh\nbase = p=%(port)s\n[a]\nv = %(base)s %%d\n[lt]\nx = from-lt\n[b]\ny = %(lt/x)s\n");
        assert_eq!(ini.get("a", "v", &no_vars()).unwrap(), "p=ssh %d");
        let vars = BTreeMap::from([("port".to_string(), "22".to_string())]);
        assert_eq!(ini.get("a", "v", &vars).unwrap(), "p=22 %d");
        assert_eq!(ini.get("b", "y", &no_vars()).unwrap(), "from-lt");
        ini.merge(parse("[a]\nv = %(known/v)s more\n"));
        assert_eq!(ini.get("a", "v", &no_vars()).unwrap(), "p=ssh %d more");
        let e = ini.get("b", "nothing", &no_vars()).unwrap_err();
        assert_eq!(e, GetError::NoOption);
        let bad = parse("[a]\nv = %(missing)s\n");
        match bad.get("a", "v", &no_vars()).unwrap_err() {
            GetError::Interpolation { message, .. } => assert!(message.contains("missing")),
            other => panic!("{other:?}"),
        }
        let looped = parse("[a]\nv = %(w)s\nw = %(v)s\n");
        assert!(matches!(
            looped.get("a", "v", &no_vars()),
            Err(GetError::Interpolation { .. })
        ));
    }

    #[test]
    fn strict_parsing_errors_name_the_line() {
        for (text, want) in [
            ("k = v\n", "before any [section]"),
            ("[a]\nk = 1\nk = 2\n", "appears twice"),
            ("[a]\n[a]\n", "section [a] appears twice"),
            ("[a]\njunk line\n", "neither"),
        ] {
            let e = Ini::parse(text, Path::new("x.local"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("x.local"), "{text}: {e}");
        }
    }

    #[test]
    fn conditional_sections_add_suffixed_keys() {
        let mut ini = parse("[Init]\nblocktype = REJECT\n");
        ini.merge(parse("[Init?family=inet6]\nblocktype = REJECT6\n"));
        let s = ini.section("Init").unwrap();
        assert_eq!(s["blocktype?family=inet6"].value, "REJECT6");
    }
}
