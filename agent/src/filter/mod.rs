//! TEMPORARY stand-in with the filter API; replaced by the real engine.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

pub mod builtin {
    use super::*;
    pub fn builtin(name: &str) -> Option<FilterDef> {
        (name == "sshd").then(|| FilterDef {
            failregex: vec![
                r"sshd\[\d+\]: Failed password for (?:invalid user )?\S+ from <HOST> port \d+"
                    .into(),
            ],
            ..Default::default()
        })
    }
    pub fn builtin_names() -> &'static [&'static str] {
        &["sshd"]
    }
    pub fn load_dir(_dir: &std::path::Path) -> Result<BTreeMap<String, FilterDef>, FilterError> {
        Ok(BTreeMap::new())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterMode {
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterDef {
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub datepattern: Option<String>,
    pub modes: BTreeMap<String, FilterMode>,
    pub default_mode: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UseDns {
    Yes,
    #[default]
    Warn,
    No,
}

pub struct FilterSet {
    fail: Vec<regex::Regex>,
    ignore: Vec<regex::Regex>,
}

pub enum LineMatch {
    NoMatch { time: TimeFound },
    Ignored { regex: usize, time: TimeFound },
    Failure(Failure),
}
pub struct Failure {
    pub host: Host,
    pub regex: usize,
    pub user: Option<String>,
    pub time: TimeFound,
}
pub enum TimeFound {
    Parsed(SystemTime),
    Missing,
}
pub enum Host {
    Addr(IpAddr),
    Name(String),
}

impl FilterSet {
    pub fn compile(
        failregex: &[String],
        ignoreregex: &[String],
        _dp: Option<&str>,
    ) -> Result<FilterSet, FilterError> {
        let mut fail = Vec::new();
        for (i, r) in failregex.iter().enumerate() {
            if !r.contains("<HOST>") {
                return Err(FilterError(format!("failregex[{i}] has no <HOST> tag")));
            }
            let r = r.replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)");
            fail.push(
                regex::Regex::new(&r).map_err(|e| FilterError(format!("failregex[{i}]: {e}")))?,
            );
        }
        let ignore = ignoreregex
            .iter()
            .map(|r| regex::Regex::new(r).map_err(|e| FilterError(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(FilterSet { fail, ignore })
    }
    pub fn from_def(def: &FilterDef, _mode: Option<&str>) -> Result<FilterSet, FilterError> {
        Self::compile(&def.failregex, &def.ignoreregex, None)
    }
    pub fn match_line(&self, line: &str, _now: SystemTime) -> LineMatch {
        for (i, r) in self.ignore.iter().enumerate() {
            if r.is_match(line) {
                return LineMatch::Ignored {
                    regex: i,
                    time: TimeFound::Missing,
                };
            }
        }
        for (i, r) in self.fail.iter().enumerate() {
            if let Some(c) = r.captures(line) {
                if let Ok(ip) = c["host"].parse() {
                    return LineMatch::Failure(Failure {
                        host: Host::Addr(ip),
                        regex: i,
                        user: None,
                        time: TimeFound::Missing,
                    });
                }
            }
        }
        LineMatch::NoMatch {
            time: TimeFound::Missing,
        }
    }
}
