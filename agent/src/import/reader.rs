//! What fail2ban would run: its jail, filter and action readers
//! (`JailsReader`, `JailReader`, `FilterReader`, `ActionReader`) redone on
//! top of [`super::ini`], ending in the same values `fail2ban-client -d`
//! prints for each enabled jail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::ini::{read_layered, GetError, Ini};
use super::tags::{extract_options, split_with_options, split_words, substitute_recursive_tags};
use super::ImportError;

/// The options a filter contributes (`FilterReader._configOpts`).
pub const FILTER_OPTIONS: [&str; 7] = [
    "usedns",
    "prefregex",
    "ignoreregex",
    "failregex",
    "maxlines",
    "datepattern",
    "journalmatch",
];

/// The jail options fail2ban reads (`JailReader._configOpts`, without the
/// filter's), with their defaults where fail2ban has one.
const JAIL_OPTIONS: [(&str, Option<&str>); 23] = [
    ("enabled", Some("false")),
    ("backend", Some("auto")),
    ("maxretry", None),
    ("maxmatches", None),
    ("findtime", None),
    ("bantime", None),
    ("bantime.increment", None),
    ("bantime.factor", None),
    ("bantime.formula", None),
    ("bantime.multipliers", None),
    ("bantime.maxtime", None),
    ("bantime.rndtime", None),
    ("bantime.overalljails", None),
    ("ignorecommand", None),
    ("ignoreself", None),
    ("ignoreip", None),
    ("ignorecache", None),
    ("filter", Some("")),
    ("logtimezone", None),
    ("logencoding", None),
    ("logpath", None),
    ("action", Some("")),
    ("usedns", None),
];

/// One action of a jail: its name, the arguments the jail gave it, and its
/// `[Init]` values with those arguments applied (tags resolved where the
/// action's own options resolve them).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandedAction {
    pub name: String,
    pub args: Vec<(String, String)>,
    pub options: BTreeMap<String, String>,
}

/// A jail as fail2ban would run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandedJail {
    pub name: String,
    /// The file that enabled it (where its `enabled` was last set).
    pub file: PathBuf,
    pub backend: String,
    /// `filter` as written (`sshd[mode=aggressive]`), its name and arguments.
    pub filter_spec: String,
    pub filter_name: String,
    pub filter_args: Vec<(String, String)>,
    /// The filter's files, for messages.
    pub filter_file: Option<PathBuf>,
    /// `logtype` the filter saw (file or journal).
    pub logtype: String,
    pub usedns: Option<String>,
    pub prefregex: Option<String>,
    pub maxlines: Option<String>,
    pub datepattern: Option<String>,
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    /// Each `journalmatch` line, split into words (`+` separates groups).
    pub journalmatch: Vec<Vec<String>>,
    /// `logpath` lines as (glob, `head`|`tail`).
    pub logpath: Vec<(String, String)>,
    pub ignoreip: Vec<String>,
    /// Every other jail option fail2ban sends (`maxretry`, `bantime`, ...).
    pub settings: BTreeMap<String, String>,
    pub actions: Vec<ExpandedAction>,
    /// The file each jail option was last set in (for error messages).
    pub key_files: BTreeMap<String, PathBuf>,
    /// Raw `[DEFAULT]`/jail keys xban reports on although fail2ban only
    /// uses them inside actions (`banaction`, `port`, `protocol`, `chain`).
    pub action_keys: BTreeMap<String, String>,
}

impl ExpandedJail {
    /// Where `key` was set for this jail (the jail's own file if unknown).
    pub fn key_file(&self, key: &str) -> PathBuf {
        self.key_files
            .get(key)
            .filter(|f| !f.as_os_str().is_empty())
            .cloned()
            .unwrap_or_else(|| self.file.clone())
    }
}

/// Every enabled jail of `basedir` (`jail.conf`, `jail.d/`, `jail.local`),
/// in fail2ban's order.
pub fn read_jails(basedir: &Path) -> Result<Vec<ExpandedJail>, ImportError> {
    let Some((mut ini, _files)) = read_layered(basedir, "jail")? else {
        return Err(ImportError::NoJailConf {
            dir: basedir.to_path_buf(),
        });
    };
    ini.defaults.insert(
        "fail2ban_confpath".into(),
        super::ini::Entry {
            value: basedir.display().to_string(),
            file: PathBuf::new(),
        },
    );
    let names: Vec<String> = ini
        .section_names()
        .filter(|n| *n != "INCLUDES")
        .map(String::from)
        .collect();
    let mut jails = Vec::new();
    for name in names {
        if let Some(j) = read_jail(basedir, &mut ini, &name)? {
            jails.push(j);
        }
    }
    Ok(jails)
}

fn as_bool(v: &str) -> bool {
    matches!(v.to_lowercase().as_str(), "1" | "on" | "true" | "yes")
}

fn place_of(ini: &Ini, section: &str, key: &str) -> PathBuf {
    ini.raw(section, key)
        .map(|e| e.file.clone())
        .unwrap_or_default()
}

/// `ConfigReader.getOptions` for the given names: values that exist (or
/// their defaults), skipping names already in `vars`.
fn get_options(
    ini: &Ini,
    section: &str,
    names: &[(&str, Option<&str>)],
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ImportError> {
    let mut out = BTreeMap::new();
    for &(name, default) in names {
        if vars.contains_key(name) {
            continue;
        }
        match ini.get(section, name, vars) {
            Ok(v) => {
                out.insert(name.to_string(), v);
            }
            Err(GetError::NoOption) => {
                if let Some(d) = default {
                    out.insert(name.to_string(), d.to_string());
                }
            }
            Err(e) => {
                return Err(ImportError::from_get(
                    e,
                    &place_of(ini, section, name),
                    section,
                    name,
                ))
            }
        }
    }
    Ok(out)
}

/// A filter or action file read for one jail (fail2ban's
/// `DefinitionInitConfigReader`).
struct DefinitionReader {
    ini: Ini,
    file: PathBuf,
    /// `[Init]` values and the jail's arguments (arguments win).
    init: Vec<(String, String)>,
    /// Definition options of the last `get_options`.
    opts: Vec<(String, String)>,
    /// Variables of the last `get_options` (jail options, then init).
    vars: BTreeMap<String, String>,
    /// `getCombOption` cache: fail2ban keeps it for the reader's life.
    combined_cache: BTreeMap<String, Option<String>>,
}

fn set(list: &mut Vec<(String, String)>, key: &str, value: String) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.to_string(), value)),
    }
}

fn lookup<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl DefinitionReader {
    fn open(
        basedir: &Path,
        dir: &str,
        name: &str,
        args: &[(String, String)],
    ) -> Result<Option<DefinitionReader>, ImportError> {
        let Some((ini, files)) = read_layered(basedir, &format!("{dir}/{name}"))? else {
            return Ok(None);
        };
        Ok(Some(DefinitionReader {
            ini,
            file: files
                .iter()
                .find(|f| f.file_stem().is_some_and(|s| s == name))
                .cloned()
                .unwrap_or_else(|| basedir.join(dir).join(format!("{name}.conf"))),
            init: args.to_vec(),
            opts: Vec::new(),
            vars: BTreeMap::new(),
            combined_cache: BTreeMap::new(),
        }))
    }

    fn err(&self, e: GetError, section: &str, key: &str) -> ImportError {
        let file = self
            .ini
            .raw(section, key)
            .map(|e| e.file.clone())
            .unwrap_or_else(|| self.file.clone());
        ImportError::from_get(e, &file, section, key)
    }

    /// `DefinitionInitConfigReader.getOptions(pOpts, all)`.
    fn get_options(
        &mut self,
        jail_opts: &BTreeMap<String, String>,
        names: &[&str],
        all: bool,
    ) -> Result<(), ImportError> {
        let mut vars = jail_opts.clone();
        for (k, v) in &self.init {
            vars.insert(k.clone(), v.clone());
        }
        self.opts.clear();
        if self.ini.has_section("Definition") {
            for &name in names {
                if vars.contains_key(name) {
                    continue;
                }
                match self.ini.get("Definition", name, &vars) {
                    Ok(v) => self.opts.push((name.to_string(), v)),
                    Err(GetError::NoOption) => {}
                    Err(e) => return Err(self.err(e, "Definition", name)),
                }
            }
        }
        self.vars = vars;
        if self.ini.has_section("Init") {
            for opt in self.ini.options("Init", false) {
                let value = self
                    .ini
                    .get("Init", &opt, &BTreeMap::new())
                    .map_err(|e| self.err(e, "Init", &opt))?;
                if !opt.starts_with("known/") {
                    set(&mut self.init, &format!("known/{opt}"), value.clone());
                }
                if lookup(&self.init, &opt).is_none() {
                    self.init.push((opt.clone(), value));
                }
            }
        }
        if all && self.ini.has_section("Definition") {
            for opt in self.ini.options("Definition", true) {
                if lookup(&self.opts, &opt).is_some() {
                    continue;
                }
                let v = self
                    .ini
                    .get("Definition", &opt, &BTreeMap::new())
                    .map_err(|e| self.err(e, "Definition", &opt))?;
                self.opts.push((opt, v));
            }
        }
        Ok(())
    }

    /// `getCombined`: options and init values with `<tags>` resolved.
    fn combined(&mut self) -> Result<Vec<(String, String)>, ImportError> {
        let mut tags = self.opts.clone();
        for (k, v) in &self.init {
            set(&mut tags, k, v.clone());
        }
        let ignore: BTreeSet<String> = tags
            .iter()
            .filter_map(|(k, _)| k.split_once('?').map(|(n, _)| n.to_string()))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .collect();
        let ini = &self.ini;
        let vars = &self.vars;
        let cache = &mut self.combined_cache;
        let file = &self.file;
        let mut get_combined = |name: &str| -> Result<Option<String>, ImportError> {
            if let Some(v) = cache.get(name) {
                return Ok(v.clone());
            }
            let v = match ini.get_ex("Definition", name, vars) {
                Ok(v) => Some(v),
                Err(GetError::NoOption | GetError::NoSection) => None,
                Err(e) => {
                    let f = ini
                        .raw("Definition", name)
                        .map(|e| e.file.clone())
                        .unwrap_or_else(|| file.clone());
                    return Err(ImportError::from_get(e, &f, "Definition", name));
                }
            };
            cache.insert(name.to_string(), v.clone());
            Ok(v)
        };
        substitute_recursive_tags(&mut tags, &ignore, &mut get_combined)?.map_err(|message| {
            ImportError::Option {
                file: self.file.clone(),
                section: "Definition".into(),
                key: "<tags>".into(),
                message,
            }
        })?;
        Ok(tags)
    }
}

/// Lines of a multi-line option, without empty ones.
fn lines(v: &str) -> Vec<String> {
    v.split('\n')
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Adds a jail's or filter's filter options the way `_fillStream` sends
/// them: regex lists and journal matches accumulate, the rest is replaced.
fn fill_filter_options(jail: &mut ExpandedJail, opts: &[(String, String)]) {
    for (k, v) in opts {
        match k.as_str() {
            "failregex" => jail.failregex.extend(lines(v)),
            "ignoreregex" => jail.ignoreregex.extend(lines(v)),
            "usedns" => jail.usedns = Some(v.clone()),
            "prefregex" => jail.prefregex = Some(v.clone()),
            "maxlines" => jail.maxlines = Some(v.clone()),
            "datepattern" => jail.datepattern = Some(v.clone()),
            "journalmatch" => {
                for line in lines(v) {
                    jail.journalmatch.push(shell_words(&line));
                }
            }
            _ => {}
        }
    }
}

/// `shlex.split` for journal matches: blanks separate, quotes group.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn read_jail(
    basedir: &Path,
    ini: &mut Ini,
    name: &str,
) -> Result<Option<ExpandedJail>, ImportError> {
    const FIRST: [(&str, Option<&str>); 3] = [
        ("enabled", Some("false")),
        ("backend", Some("auto")),
        ("filter", Some("")),
    ];
    let first = get_options(ini, name, &FIRST, &BTreeMap::new())?;
    if !as_bool(&first["enabled"]) {
        return Ok(None);
    }
    let jail_file = place_of(ini, name, "enabled");
    let filter_spec = first["filter"].clone();
    let backend_first = first["backend"].clone();
    let mut filter = None;
    let (mut filter_name, mut filter_args) = (String::new(), Vec::new());
    let mut logtype = String::new();
    if !filter_spec.is_empty() {
        let (fname, fargs) = extract_options(&filter_spec).map_err(|m| ImportError::Option {
            file: place_of(ini, name, "filter"),
            section: name.into(),
            key: "filter".into(),
            message: format!("`{filter_spec}` is not `NAME` or `NAME[key=value, ...]`: {m}"),
        })?;
        let Some(mut reader) = DefinitionReader::open(basedir, "filter.d", &fname, &fargs)? else {
            return Err(ImportError::Option {
                file: place_of(ini, name, "filter"),
                section: name.into(),
                key: "filter".into(),
                message: format!(
                    "no filter `{fname}`: {} does not exist; install the filter or fix the name",
                    basedir
                        .join("filter.d")
                        .join(format!("{fname}.conf"))
                        .display()
                ),
            });
        };
        // applyAutoOptions: logtype from the backend unless set.
        if lookup(&reader.init, "logtype").is_none_or(str::is_empty)
            && !reader
                .ini
                .section("Definition")
                .is_some_and(|s| s.contains_key("logtype"))
        {
            let lt = if backend_first.starts_with("systemd") {
                "journal"
            } else {
                "file"
            };
            set(&mut reader.init, "logtype", lt.to_string());
        }
        reader.get_options(&first, &FILTER_OPTIONS, true)?;
        let combined = reader.combined()?;
        logtype = lookup(&combined, "logtype").unwrap_or("file").to_string();
        let known: super::ini::Section = combined
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    super::ini::Entry {
                        value: v.clone(),
                        file: reader.file.clone(),
                    },
                )
            })
            .collect();
        ini.merge_section(name, known, "known/");
        filter_name = fname;
        filter_args = fargs;
        filter = Some(reader);
    }
    let mut all_names: Vec<(&str, Option<&str>)> = JAIL_OPTIONS.to_vec();
    for f in FILTER_OPTIONS {
        if !all_names.iter().any(|(n, _)| *n == f) {
            all_names.push((f, None));
        }
    }
    let opts = get_options(ini, name, &all_names, &BTreeMap::new())?;
    let mut jail = ExpandedJail {
        name: name.to_string(),
        file: jail_file,
        backend: opts["backend"].clone(),
        filter_spec,
        filter_name,
        filter_args,
        filter_file: filter.as_ref().map(|f| f.file.clone()),
        logtype,
        usedns: None,
        prefregex: None,
        maxlines: None,
        datepattern: None,
        failregex: Vec::new(),
        ignoreregex: Vec::new(),
        journalmatch: Vec::new(),
        logpath: Vec::new(),
        ignoreip: Vec::new(),
        settings: BTreeMap::new(),
        actions: Vec::new(),
        key_files: opts
            .keys()
            .map(|k| (k.clone(), place_of(ini, name, k)))
            .collect(),
        action_keys: BTreeMap::new(),
    };
    if let Some(reader) = filter.as_mut() {
        reader.get_options(&opts, &FILTER_OPTIONS, false)?;
        let combined = reader.combined()?;
        let own: Vec<(String, String)> = combined
            .into_iter()
            .filter(|(k, _)| FILTER_OPTIONS.contains(&k.as_str()))
            .collect();
        fill_filter_options(&mut jail, &own);
    }
    let jail_filter_opts: Vec<(String, String)> = FILTER_OPTIONS
        .iter()
        .filter_map(|k| opts.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    fill_filter_options(&mut jail, &jail_filter_opts);
    for (k, v) in &opts {
        match k.as_str() {
            "logpath" => {
                for line in lines(v) {
                    let (path, tail) = match line.rsplit_once(' ') {
                        Some((p, t)) => (p.to_string(), t.to_string()),
                        None => (line.clone(), "head".to_string()),
                    };
                    jail.logpath.push((path, tail));
                }
            }
            "ignoreip" => jail.ignoreip = split_words(v),
            "backend" | "action" | "filter" | "enabled" => {}
            k if FILTER_OPTIONS.contains(&k) => {}
            _ => {
                jail.settings.insert(k.clone(), v.clone());
            }
        }
    }
    for key in [
        "banaction",
        "banaction_allports",
        "port",
        "protocol",
        "chain",
    ] {
        if let Ok(v) = ini.get(name, key, &BTreeMap::new()) {
            jail.action_keys.insert(key.to_string(), v);
        }
    }
    for spec in split_with_options(&opts["action"]) {
        if spec.is_empty() {
            continue;
        }
        let (aname, args) = extract_options(&spec).map_err(|m| ImportError::Option {
            file: place_of(ini, name, "action"),
            section: name.into(),
            key: "action".into(),
            message: format!("`{spec}` is not `NAME[key=value, ...]`: {m}"),
        })?;
        let aname = aname.trim().to_string();
        // ActionReader: `name` defaults to the jail's, `actname` to the file's.
        let mut args = args;
        if lookup(&args, "name").is_none() {
            args.push(("name".into(), name.to_string()));
        }
        if lookup(&args, "actname").is_none() {
            let n = lookup(&args, "name").unwrap_or(name).to_string();
            let mut actname = aname.clone();
            if n != name {
                match n.strip_prefix(name) {
                    Some(rest) => actname.push_str(rest),
                    None => actname.push_str(&format!("-{n}")),
                }
            }
            args.push(("actname".into(), actname));
        }
        let mut options = BTreeMap::new();
        if !aname.ends_with(".py") {
            let Some(mut reader) = DefinitionReader::open(basedir, "action.d", &aname, &args)?
            else {
                return Err(ImportError::Option {
                    file: place_of(ini, name, "action"),
                    section: name.into(),
                    key: "action".into(),
                    message: format!(
                        "no action `{aname}`: {} does not exist; install it or fix the name",
                        basedir
                            .join("action.d")
                            .join(format!("{aname}.conf"))
                            .display()
                    ),
                });
            };
            reader.get_options(&opts, &[], false)?;
            // What `fail2ban-client -d` lists: the init values as given.
            for (k, v) in &reader.init {
                if !k.starts_with("known/") {
                    options.insert(k.clone(), v.clone());
                }
            }
        }
        jail.actions.push(ExpandedAction {
            name: aname,
            args,
            options,
        });
    }
    Ok(Some(jail))
}

/// The modes a filter offers: the `M` of every `PREFIX-M` option where the
/// filter refers to `<PREFIX-<mode>>` (how stock filters spell modes). A
/// reference `<PREFIX-<mode>SUFFIX>` (sshd's `<mdre-<mode>-other>`) makes
/// `PREFIX-MSUFFIX` keys belong to mode `M`, not to a mode `MSUFFIX`.
pub fn filter_modes(basedir: &Path, filter: &str) -> Result<Vec<String>, ImportError> {
    let Some((ini, _)) = read_layered(basedir, &format!("filter.d/{filter}"))? else {
        return Ok(Vec::new());
    };
    let mut references = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (_, section) in &ini.sections {
        for (k, e) in section {
            keys.insert(k.clone());
            let v = &e.value;
            let mut from = 0;
            while let Some(p) = v[from..].find("-<mode>") {
                let at = from + p;
                let start = v[..at].rfind('<').map_or(at, |s| s + 1);
                let after = at + "-<mode>".len();
                let end = v[after..].find('>').map_or(after, |e| after + e);
                references.insert((v[start..at].to_string(), v[after..end].to_string()));
                from = after;
            }
        }
    }
    let mut modes = BTreeSet::new();
    for k in &keys {
        for (prefix, suffix) in references.iter().filter(|(_, s)| s.is_empty()) {
            if let Some(m) = k.strip_prefix(&format!("{prefix}-")) {
                if !m.is_empty() && !m.contains(['<', '>', '/']) {
                    modes.insert(m.to_string());
                }
            }
            let _ = suffix;
        }
    }
    let suffixes: Vec<&String> = references
        .iter()
        .map(|(_, s)| s)
        .filter(|s| !s.is_empty())
        .collect();
    let all = modes.clone();
    modes.retain(|m| {
        !suffixes.iter().any(|s| {
            m.strip_suffix(s.as_str())
                .is_some_and(|base| all.contains(base))
        })
    });
    Ok(modes.into_iter().collect())
}
