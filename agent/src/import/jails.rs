//! Expanded fail2ban jails → xban's `[jails.NAME]`, `[escalation]` and
//! filter files, with a report line for every key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::filters::{translate, Translated};
use super::reader::ExpandedJail;
use super::report::{Outcome, Report};
use super::ImportError;
use crate::units::{format_duration, MAX_DURATION};

/// Jail names xban keeps for its own ban origins.
const RESERVED_JAILS: [&str; 7] = [
    "manual",
    "blocklist",
    "subnet",
    "fleet",
    "geo",
    "allowlist",
    "xban",
];

/// fail2ban's `str2seconds`: `10m`, `1h30m`, `1d 12h`, `3600`, `1w`, `-1`,
/// sums of `NUMBER[UNIT]` terms.
pub fn fail2ban_seconds(text: &str) -> Result<f64, String> {
    let s = text.trim().to_lowercase();
    if s.is_empty() {
        return Err("empty".into());
    }
    let units: [(&[&str], f64); 7] = [
        (&["days", "day", "da", "dd", "d"], 86_400.0),
        (&["weeks", "week", "wee", "we", "ww", "w"], 604_800.0),
        (&["months", "month", "mon", "mo"], 2_629_800.0),
        (&["years", "year", "yea", "ye", "yy", "y"], 31_557_600.0),
        (&["seconds", "second", "sec", "se", "ss", "s"], 1.0),
        (&["minutes", "minute", "min", "mi", "mm", "m"], 60.0),
        (&["hours", "hour", "hou", "ho", "hh", "h"], 3600.0),
    ];
    let b = s.as_bytes();
    let mut i = 0;
    let mut total = 0.0;
    let mut any = false;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'+') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        if b[i] == b'-' {
            i += 1;
        }
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let num: f64 = s[start..i]
            .parse()
            .map_err(|_| format!("`{text}` is not a fail2ban time (e.g. 10m, 1h30m, 1d, 3600)"))?;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let factor = if unit.is_empty() {
            1.0
        } else {
            units
                .iter()
                .find(|(names, _)| names.contains(&unit))
                .map(|(_, f)| *f)
                .ok_or_else(|| format!("`{text}`: unknown time unit `{unit}`"))?
        };
        total += num * factor;
        any = true;
    }
    if !any {
        return Err(format!("`{text}` is not a fail2ban time"));
    }
    Ok(total)
}

/// A fail2ban time as xban's duration text; `None` for negative (permanent).
fn duration_text(text: &str) -> Result<Option<String>, String> {
    let secs = fail2ban_seconds(text)?;
    if secs < 0.0 {
        return Ok(None);
    }
    let d = Duration::from_secs(secs.round() as u64);
    if d.is_zero() {
        return Err(format!("`{text}` is zero"));
    }
    if d > MAX_DURATION {
        return Err(format!("`{text}` is longer than xban's maximum of 3650d"));
    }
    Ok(Some(format_duration(d)))
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn bool_value(v: &str) -> bool {
    matches!(v.to_lowercase().as_str(), "1" | "on" | "true" | "yes")
}

/// fail2ban action names whose job is the ban itself (a firewall rule):
/// XDP does it.
fn is_ban_action(name: &str) -> bool {
    const PREFIXES: [&str; 14] = [
        "iptables",
        "ip6tables",
        "nftables",
        "firewallcmd",
        "ufw",
        "shorewall",
        "pf",
        "ipfw",
        "route",
        "ipset",
        "bsd-ipfw",
        "apf",
        "hostsdeny",
        "npf",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Mail actions: xban's `kind = "mail"` sends the same report (whois and
/// matched lines) through sendmail.
fn is_mail_action(name: &str) -> bool {
    matches!(
        name,
        "sendmail"
            | "sendmail-whois"
            | "sendmail-whois-lines"
            | "sendmail-whois-matches"
            | "sendmail-whois-ipmatches"
            | "sendmail-buffered"
            | "mail"
            | "mail-whois"
            | "mail-whois-lines"
            | "mail-buffered"
    )
}

/// The name a translated variant gets: `f2b-FILTER[-MODE][-journal]`, so
/// that it never replaces xban's own built-in filter of that name.
fn variant_name(jail: &ExpandedJail) -> String {
    let mut name = format!("f2b-{}", jail.filter_name);
    for (k, v) in &jail.filter_args {
        if k == "mode" {
            name.push('-');
            name.push_str(v);
        } else if k != "logtype" {
            name.push('-');
            name.push_str(k);
        }
    }
    if jail.logtype != "file" {
        name.push('-');
        name.push_str(&jail.logtype);
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A filter file, one regex a line (`toml::to_string` would put each list
/// on one line and add an empty `[modes]`).
fn filter_file(def: &crate::filter::FilterDef) -> String {
    let mut text = String::new();
    if let Some(d) = &def.description {
        text.push_str(&format!("description = {}\n", Value::String(d.clone())));
    }
    if let Some(d) = &def.datepattern {
        text.push_str(&format!("datepattern = {}\n", Value::String(d.clone())));
    }
    if def.date_cut == crate::filter::time::DateCut::Anywhere {
        text.push_str("date_cut = \"anywhere\"\n");
    }
    if let Some(p) = &def.prefregex {
        text.push_str(&format!("prefregex = {}\n", Value::String(p.clone())));
    }
    for (key, list) in [
        ("failregex", &def.failregex),
        ("ignoreregex", &def.ignoreregex),
    ] {
        text.push_str(&format!("{key} = ["));
        for r in list {
            text.push_str(&format!("\n    {},", Value::String(r.clone())));
        }
        text.push_str(if list.is_empty() { "]\n" } else { "\n]\n" });
    }
    text
}

/// Builds `xban.toml` and the filter files for `jails`.
pub fn build(
    jails: &[ExpandedJail],
    filters_dir: &Path,
    report: &mut Report,
) -> Result<(String, Vec<(String, String)>), ImportError> {
    let mut filters: Vec<(String, String)> = Vec::new();
    let mut out_jails = Table::new();
    let mut increments: Vec<(&ExpandedJail, BTreeMap<String, String>)> = Vec::new();
    let mut without_increment: Vec<String> = Vec::new();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    for jail in jails {
        let name = jail.name.as_str();
        if RESERVED_JAILS.contains(&name)
            || name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            report.add(
                name,
                "jail",
                Outcome::Refused,
                "xban jail names are letters, digits, -, _, . and not one of manual, blocklist, subnet, fleet, geo, allowlist, xban: rename the jail",
            );
            continue;
        }
        let mut t = Table::new();
        // Filter first: a refused variant refuses the jail.
        if jail.filter_spec.is_empty() {
            report.add(name, "filter", Outcome::Refused, "the jail has no filter");
            continue;
        }
        let translated = translate(jail);
        let was_translated = translated.is_ok();
        match translated {
            Ok(Translated { def, notes }) => {
                let text = filter_file(&def);
                let base = variant_name(jail);
                let mut fname = base.clone();
                let mut n = 2;
                loop {
                    match filters.iter().find(|(f, _)| *f == fname) {
                        Some((_, existing)) if *existing == text => break,
                        Some(_) => {
                            fname = format!("{base}-{n}");
                            n += 1;
                        }
                        None => {
                            filters.push((fname.clone(), text.clone()));
                            break;
                        }
                    }
                }
                report.add(
                    name,
                    "filter",
                    Outcome::Mapped,
                    format!(
                        "{} -> {}/{fname}.toml ({} failregex, {} ignoreregex)",
                        jail.filter_spec,
                        filters_dir.display(),
                        def.failregex.len(),
                        def.ignoreregex.len()
                    ),
                );
                for note in notes {
                    report.add(name, "datepattern", Outcome::Approximated, note);
                }
                t.insert("filter".into(), Value::String(fname));
            }
            Err(refusal) => {
                // xban's recidive reads xban's own ban lines, not fail2ban's
                // log: it is no stand-in for fail2ban's.
                let stand_in = match jail.filter_name.as_str() {
                    "recidive" => None,
                    other => crate::filter::builtin::builtin(other),
                };
                let Some(builtin) = stand_in else {
                    let hint = if jail.filter_name == "recidive" {
                        " (xban's [escalation] does recidive's job: repeat offenders get longer bans)"
                    } else {
                        ""
                    };
                    report.add(
                        name,
                        "filter",
                        Outcome::Refused,
                        format!("{}: {refusal}{hint}", jail.filter_spec),
                    );
                    continue;
                };
                report.add(
                    name,
                    "filter",
                    Outcome::Approximated,
                    format!(
                        "fail2ban's {} needs {refusal} (not in xban's engine); using xban's own built-in `{}` filter instead, written for the same logs",
                        jail.filter_spec, jail.filter_name
                    ),
                );
                t.insert("filter".into(), Value::String(jail.filter_name.clone()));
                match jail.filter_args.iter().find(|(k, _)| k == "mode") {
                    Some((_, mode)) if builtin.modes.contains_key(mode) => {
                        t.insert("mode".into(), Value::String(mode.clone()));
                        report.add(name, "mode", Outcome::Mapped, mode.clone());
                    }
                    Some((_, mode)) => report.add(
                        name,
                        "mode",
                        Outcome::Approximated,
                        format!(
                            "xban's `{}` has no mode `{mode}` (it has {}): its default is used",
                            jail.filter_name,
                            builtin.modes.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    None => {}
                }
            }
        }
        if was_translated {
            // A translated variant has its arguments built in.
            for (k, v) in &jail.filter_args {
                let key = if k == "mode" {
                    "mode".to_string()
                } else {
                    format!("filter[{k}]")
                };
                report.add(
                    name,
                    &key,
                    Outcome::Mapped,
                    format!("{k}={v}: folded into the imported filter"),
                );
            }
        }
        // Source.
        let systemd = jail.backend.starts_with("systemd");
        if systemd {
            t.insert("backend".into(), Value::String("systemd".into()));
            let mut words: Vec<String> = Vec::new();
            for group in &jail.journalmatch {
                if !words.is_empty() {
                    words.push("+".into());
                }
                words.extend(group.iter().cloned());
            }
            if words.is_empty() {
                report.add(
                    name,
                    "journalmatch",
                    Outcome::Refused,
                    "backend = systemd without journalmatch: xban would read the whole journal; add a journalmatch",
                );
                continue;
            }
            report.add(name, "journalmatch", Outcome::Mapped, words.join(" "));
            t.insert("journalmatch".into(), strings(&words));
            report.add(name, "backend", Outcome::Mapped, jail.backend.clone());
            if jail.backend.contains('[') {
                report.add(
                    name,
                    "backend",
                    Outcome::Dropped,
                    format!("{}: journal options are not taken (xban runs journalctl on the system journal)", jail.backend),
                );
            }
        } else {
            if jail.logpath.is_empty() {
                report.add(name, "logpath", Outcome::Refused, "no logpath");
                continue;
            }
            let paths: Vec<String> = jail.logpath.iter().map(|(p, _)| p.clone()).collect();
            t.insert("backend".into(), Value::String("file".into()));
            t.insert("logpath".into(), strings(&paths));
            report.add(name, "logpath", Outcome::Mapped, paths.join(" "));
            let heads = jail.logpath.iter().filter(|(_, t)| t == "head").count();
            if heads > 0 {
                report.add(
                    name,
                    "logpath",
                    Outcome::Approximated,
                    "fail2ban reads a file it has not seen from its start (head); xban starts at its end, then resumes where it stopped",
                );
            }
            report.add(
                name,
                "backend",
                Outcome::Mapped,
                format!("{} -> file (inotify)", jail.backend),
            );
            if !jail.journalmatch.is_empty() {
                report.add(
                    name,
                    "journalmatch",
                    Outcome::Dropped,
                    "only used with backend = systemd",
                );
            }
        }
        // Counting and ban length.
        for key in ["maxretry", "findtime", "bantime"] {
            let Some(v) = jail.settings.get(key) else {
                continue;
            };
            let bad = |message: String| ImportError::Option {
                file: jail.key_file(key),
                section: name.to_string(),
                key: key.to_string(),
                message,
            };
            let value = match key {
                "maxretry" => match v.trim().parse::<u32>() {
                    Ok(n) if n > 0 => Value::Integer(n.into()),
                    _ => return Err(bad(format!("`{v}` is not a positive whole number"))),
                },
                _ => match duration_text(v) {
                    Ok(Some(d)) => Value::String(d),
                    Ok(None) if key == "bantime" => Value::String("permanent".into()),
                    Ok(None) => return Err(bad(format!("`{v}` is negative"))),
                    Err(message) => return Err(bad(message)),
                },
            };
            report.add(name, key, Outcome::Mapped, format!("{v} -> {value}"));
            t.insert(key.into(), value);
        }
        if !jail.ignoreip.is_empty() {
            let (kept, dropped): (Vec<String>, Vec<String>) = jail
                .ignoreip
                .iter()
                .cloned()
                .partition(|a| !a.starts_with("file:"));
            for d in dropped {
                report.add(
                    name,
                    "ignoreip",
                    Outcome::Dropped,
                    format!("{d}: xban does not read ignoreip from files; list the addresses"),
                );
            }
            report.add(name, "ignoreip", Outcome::Mapped, kept.join(" "));
            t.insert("ignoreip".into(), strings(&kept));
        } else {
            t.insert("ignoreip".into(), Value::Array(Vec::new()));
        }
        if let Some(v) = jail.settings.get("ignoreself") {
            t.insert("ignoreself".into(), Value::Boolean(bool_value(v)));
            report.add(name, "ignoreself", Outcome::Mapped, v.clone());
        }
        if let Some(v) = &jail.usedns {
            let (mapped, outcome, why) = match v.to_lowercase().as_str() {
                "yes" => ("yes", Outcome::Mapped, String::new()),
                "warn" => ("warn", Outcome::Mapped, String::new()),
                "no" => ("no", Outcome::Mapped, String::new()),
                "raw" => (
                    "no",
                    Outcome::Approximated,
                    ": fail2ban's raw keeps a host name as the ban id without resolving it; xban bans addresses only, so names are skipped".into(),
                ),
                other => {
                    return Err(ImportError::Option {
                        file: jail.key_file("usedns"),
                        section: name.into(),
                        key: "usedns".into(),
                        message: format!("`{other}` is not yes, warn, no or raw"),
                    })
                }
            };
            t.insert("usedns".into(), Value::String(mapped.into()));
            report.add(name, "usedns", outcome, format!("{v} -> {mapped}{why}"));
        }
        if let Some(v) = jail
            .settings
            .get("ignorecommand")
            .filter(|v| !v.trim().is_empty())
        {
            report.add(
                name,
                "ignorecommand",
                Outcome::Dropped,
                format!("`{v}`: xban runs no command to decide whom to ignore; put those addresses in ignoreip"),
            );
        }
        for (key, why) in [
            (
                "maxmatches",
                "xban's mail action includes the matched lines it keeps itself",
            ),
            (
                "logencoding",
                "xban reads UTF-8 and replaces invalid bytes (counted)",
            ),
            (
                "logtimezone",
                "xban reads the zone from the timestamp, else local time",
            ),
            (
                "ignorecache",
                "xban keeps its ignore sets in memory already",
            ),
        ] {
            if let Some(v) = jail.settings.get(key) {
                report.add(name, key, Outcome::Dropped, format!("{v}: {why}"));
            }
        }
        // bantime.* → [escalation.increment] (global in xban).
        let inc: BTreeMap<String, String> = jail
            .settings
            .iter()
            .filter(|(k, _)| k.starts_with("bantime."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if inc.get("bantime.increment").is_some_and(|v| bool_value(v)) {
            increments.push((jail, inc));
        } else {
            without_increment.push(name.to_string());
        }
        // Firewall keys: XDP drops every port and protocol of a banned source.
        for (key, v) in &jail.action_keys {
            report.add(
                name,
                key,
                Outcome::Dropped,
                format!("{v}: meaningless at XDP, which drops every port and protocol of a banned address"),
            );
        }
        // Actions.
        let mut actions = Vec::new();
        for action in &jail.actions {
            let arg = |k: &str| action.options.get(k).cloned();
            if is_ban_action(&action.name) {
                report.add(
                    name,
                    &format!("action {}", action.name),
                    Outcome::Mapped,
                    "the ban itself: xban drops the address at XDP",
                );
                for k in ["port", "protocol", "chain", "blocktype"] {
                    // Said once: the jail's own key already is in the report.
                    let same_as_jail = jail
                        .action_keys
                        .get(k)
                        .is_some_and(|j| action.args.iter().any(|(a, v)| a == k && v == j));
                    if same_as_jail {
                        continue;
                    }
                    if let Some(v) = action.args.iter().find(|(a, _)| a == k).map(|(_, v)| v) {
                        report.add(
                            name,
                            &format!("action {} {k}", action.name),
                            Outcome::Dropped,
                            format!("{v}: meaningless at XDP, which drops every port and protocol of a banned address"),
                        );
                    }
                }
            } else if is_mail_action(&action.name) {
                let mut m = Table::new();
                m.insert("kind".into(), Value::String("mail".into()));
                let to = arg("dest").unwrap_or_else(|| "root".into());
                m.insert("to".into(), Value::String(to.clone()));
                let mut detail = format!("-> kind = \"mail\", to = {to}");
                if let Some(sender) = arg("sender") {
                    let resolved = sender.replace("<fq-hostname>", &hostname);
                    if resolved.contains('<') {
                        report.add(
                            name,
                            &format!("action {} sender", action.name),
                            Outcome::Dropped,
                            format!("{sender}: a tag only fail2ban resolves; xban's default sender is used"),
                        );
                    } else {
                        if resolved != sender {
                            report.add(
                                name,
                                &format!("action {} sender", action.name),
                                Outcome::Approximated,
                                format!(
                                    "{sender}: <fq-hostname> resolved at import time to {hostname}"
                                ),
                            );
                        }
                        detail.push_str(&format!(", from = {resolved}"));
                        m.insert("from".into(), Value::String(resolved));
                    }
                }
                report.add(
                    name,
                    &format!("action {}", action.name),
                    Outcome::Mapped,
                    detail,
                );
                if !action.name.ends_with("-lines") && !action.name.ends_with("matches") {
                    report.add(
                        name,
                        &format!("action {}", action.name),
                        Outcome::Approximated,
                        "xban's mail always includes whois and the matched lines",
                    );
                }
                if action.name.starts_with("mail") {
                    report.add(
                        name,
                        &format!("action {}", action.name),
                        Outcome::Approximated,
                        "sent through sendmail instead of mail(1)",
                    );
                }
                report.add(
                    name,
                    &format!("action {}", action.name),
                    Outcome::Dropped,
                    "fail2ban's mails on jail start and stop: xban mails on bans only",
                );
                actions.push(Value::Table(m));
            } else {
                report.add(
                    name,
                    &format!("action {}", action.name),
                    Outcome::Dropped,
                    "no xban equivalent: write an exec action ([[jails.NAME.actions]] command = [...]) for it",
                );
            }
        }
        if !actions.is_empty() {
            t.insert("actions".into(), Value::Array(actions));
        }
        out_jails.insert(name.to_string(), Value::Table(t));
    }
    let mut root = Table::new();
    let mut agent = Table::new();
    agent.insert(
        "filters_dir".into(),
        Value::String(filters_dir.display().to_string()),
    );
    root.insert("agent".into(), Value::Table(agent));
    if !increments.is_empty() {
        for name in &without_increment {
            if out_jails.contains_key(name) {
                report.add(
                    name,
                    "bantime.increment",
                    Outcome::Approximated,
                    "off in fail2ban for this jail, but xban's increment is one for all jails: its bans grow too",
                );
            }
        }
    }
    root.insert(
        "escalation".into(),
        Value::Table(escalation(&increments, report)?),
    );
    root.insert("jails".into(), Value::Table(out_jails));
    let header =
        "# Imported from fail2ban by `xban import`: check it with `xban check THIS_FILE`.\n";
    let text = format!(
        "{header}{}",
        toml::to_string(&root).expect("tables serialize")
    );
    Ok((text, filters))
}

/// `bantime.*` of the jails that use it → `[escalation]`. xban's increment
/// is global: the first such jail's values are taken and any difference
/// reported.
fn escalation(
    increments: &[(&ExpandedJail, BTreeMap<String, String>)],
    report: &mut Report,
) -> Result<Table, ImportError> {
    let mut e = Table::new();
    let Some((first, inc)) = increments.first() else {
        // fail2ban does not escalate unless told to: neither does the import.
        e.insert("enabled".into(), Value::Boolean(false));
        report.add(
            "*",
            "escalation",
            Outcome::Mapped,
            "no jail has bantime.increment: xban's escalation ladder is turned off, as fail2ban has none",
        );
        return Ok(e);
    };
    e.insert("enabled".into(), Value::Boolean(true));
    e.insert("steps".into(), Value::Array(Vec::new()));
    let overall = inc
        .get("bantime.overalljails")
        .is_some_and(|v| bool_value(v));
    e.insert("overalljails".into(), Value::Boolean(overall));
    let mut i = Table::new();
    i.insert("enabled".into(), Value::Boolean(true));
    let first_jail = &first.name;
    let bad = |key: &str, message: String| ImportError::Option {
        file: first.key_file(key),
        section: first_jail.clone(),
        key: key.into(),
        message,
    };
    if let Some(f) = inc.get("bantime.factor") {
        let v: f64 = f
            .trim()
            .parse()
            .map_err(|_| bad("bantime.factor", format!("`{f}` is not a number")))?;
        i.insert("factor".into(), Value::Float(v));
    }
    if let Some(m) = inc
        .get("bantime.multipliers")
        .filter(|m| !m.trim().is_empty())
    {
        let list = m
            .split_whitespace()
            .map(|w| w.parse::<u32>().map(|n| Value::Integer(n.into())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(
                    "bantime.multipliers",
                    format!("`{m}` is not a list of whole numbers"),
                )
            })?;
        i.insert("multipliers".into(), Value::Array(list));
    }
    for (key, out) in [
        ("bantime.maxtime", "maxtime"),
        ("bantime.rndtime", "rndtime"),
    ] {
        if let Some(v) = inc.get(key).filter(|v| !v.trim().is_empty()) {
            match duration_text(v).map_err(|m| bad(key, m))? {
                Some(d) => {
                    i.insert(out.into(), Value::String(d));
                }
                None => return Err(bad(key, format!("`{v}` is negative"))),
            }
        }
    }
    if let Some(f) = inc.get("bantime.formula") {
        report.add(
            first_jail,
            "bantime.formula",
            Outcome::Dropped,
            format!("`{f}`: xban computes bantime * factor * 2^n (or the multipliers), not a Python formula"),
        );
    }
    report.add(
        first_jail,
        "bantime.increment",
        Outcome::Mapped,
        format!(
            "-> [escalation.increment] {} (overalljails = {overall}; the escalation ladder is turned off)",
            inc.iter()
                .filter(|(k, _)| *k != "bantime.increment" && *k != "bantime.formula")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for (jail, other) in &increments[1..] {
        if other != inc {
            report.add(
                &jail.name,
                "bantime.increment",
                Outcome::Approximated,
                format!("xban's increment is one for all jails: [{first_jail}]'s values are used"),
            );
        }
    }
    e.insert("increment".into(), Value::Table(i));
    Ok(e)
}
