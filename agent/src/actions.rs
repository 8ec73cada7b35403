//! Actions: commands run on ban and unban (notifications, extra firewalls),
//! and a ready mail action with whois and the matched lines.
//!
//! An action never blocks or delays a ban: it runs in its own task after the
//! ban is in the kernel, with a timeout, and a failure is only logged.
//!
//! Log lines are attacker-controlled text, so no action goes through a
//! shell: `command` is an argument vector, tags are replaced inside each
//! argument, and the same values are also in `XBAN_*` environment variables.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::ban::{BanEvent, BanEventKind};
use crate::units::{format_duration, DurationSetting};
use crate::validation::ValidationError;

/// `[[jails.NAME.actions]]` or `[[defaults.actions]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// `exec` (default) runs `command`; `mail` sends a report through sendmail.
    #[serde(default)]
    pub kind: ActionKind,
    /// When: `["ban"]` (default), `["unban"]`, or both.
    #[serde(default = "default_on")]
    pub on: Vec<BanEventKindSetting>,
    /// exec: the program and its arguments; tags `<ip>`, `<jail>`,
    /// `<bantime>`, `<failures>`, `<class>`, `<matches>` are replaced.
    #[serde(default)]
    pub command: Vec<String>,
    /// Killed after this long.
    #[serde(default = "default_timeout")]
    pub timeout: DurationSetting,
    /// mail: recipient, sender, and the sendmail-compatible program.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default = "default_from")]
    pub from: String,
    #[serde(default = "default_sendmail")]
    pub sendmail: Vec<String>,
    /// mail: the whois program (`[]` to leave whois out).
    #[serde(default = "default_whois")]
    pub whois: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    #[default]
    Exec,
    Mail,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BanEventKindSetting {
    Ban,
    Unban,
}

fn default_on() -> Vec<BanEventKindSetting> {
    vec![BanEventKindSetting::Ban]
}
fn default_timeout() -> DurationSetting {
    DurationSetting(Duration::from_secs(30))
}
fn default_from() -> String {
    "xban@localhost".into()
}
fn default_sendmail() -> Vec<String> {
    vec!["/usr/sbin/sendmail".into(), "-t".into(), "-oi".into()]
}
fn default_whois() -> Vec<String> {
    vec!["whois".into()]
}

impl ActionConfig {
    /// Checks serde cannot make; `place` is where the action is listed
    /// (`jails.NAME.actions[I]`), the message names the key within it.
    pub fn validate(&self, place: &str) -> Result<(), ValidationError> {
        let problem: Result<(), String> = match self.kind {
            ActionKind::Exec if self.command.is_empty() => {
                Err("command: an exec action needs a command, e.g. command = [\"/usr/local/bin/notify\", \"<ip>\"]".into())
            }
            ActionKind::Mail if self.to.as_deref().is_none_or(str::is_empty) => {
                Err("to: a mail action needs a recipient, e.g. to = \"root@localhost\"".into())
            }
            ActionKind::Mail if self.sendmail.is_empty() => Err("sendmail: must name a program".into()),
            _ if self.timeout.0.is_zero() => Err("timeout: must be longer than 0".into()),
            _ => Ok(()),
        };
        problem.map_err(|message| ValidationError::new(place, message))
    }

    fn wants(&self, kind: BanEventKind) -> bool {
        self.on.iter().any(|o| {
            matches!(
                (o, kind),
                (BanEventKindSetting::Ban, BanEventKind::Ban)
                    | (BanEventKindSetting::Unban, BanEventKind::Unban)
            )
        })
    }
}

/// The tag values of an event.
fn tags(ev: &BanEvent) -> Vec<(&'static str, String)> {
    let r = &ev.record;
    let bantime = match r.expires_at {
        Some(e) => format_duration(Duration::from_secs((e - r.banned_at).max(0) as u64)),
        None => "permanent".into(),
    };
    vec![
        ("ip", r.target.to_string()),
        ("jail", r.jail.clone()),
        ("bantime", bantime),
        ("failures", r.failures.to_string()),
        ("class", r.class.to_string()),
        ("matches", r.matches.join("\n")),
        (
            "event",
            match ev.kind {
                BanEventKind::Ban => "ban".into(),
                BanEventKind::Unban => "unban".into(),
            },
        ),
    ]
}

/// Replace `<tag>`s in one argument. The result is one argument whatever
/// it contains: no shell ever sees it.
pub(crate) fn substitute(arg: &str, tags: &[(&'static str, String)]) -> String {
    let mut out = arg.to_string();
    for (name, value) in tags {
        out = out.replace(&format!("<{name}>"), value);
    }
    out
}

/// Run every action of `actions` that wants this event, each in its own task.
pub(crate) fn dispatch(actions: &[ActionConfig], ev: &BanEvent) {
    for a in actions.iter().filter(|a| a.wants(ev.kind)) {
        let (a, ev) = (a.clone(), ev.clone());
        tokio::spawn(async move {
            let what = match a.kind {
                ActionKind::Exec => a.command.first().cloned().unwrap_or_default(),
                ActionKind::Mail => format!("mail to {}", a.to.as_deref().unwrap_or("")),
            };
            let result = match a.kind {
                ActionKind::Exec => run_exec(&a, &ev).await,
                ActionKind::Mail => run_mail(&a, &ev).await,
            };
            match result {
                Ok(()) => tracing::debug!(action = %what, ip = %ev.record.target, "action done"),
                Err(e) => {
                    tracing::warn!(action = %what, ip = %ev.record.target, jail = %ev.record.jail, "action failed: {e}")
                }
            }
        });
    }
}

async fn run_exec(a: &ActionConfig, ev: &BanEvent) -> Result<(), String> {
    let t = tags(ev);
    let argv: Vec<String> = a.command.iter().map(|c| substitute(c, &t)).collect();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
    for (name, value) in &t {
        cmd.env(format!("XBAN_{}", name.to_uppercase()), value);
    }
    let child = cmd.output();
    match tokio::time::timeout(a.timeout.0, child).await {
        Err(_) => Err(format!("killed after {}", format_duration(a.timeout.0))),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", argv[0])),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{} exited with {}: {}",
            argv[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// whois output for the mail, bounded in time and size.
async fn whois(a: &ActionConfig, ip: &str) -> String {
    let Some(prog) = a.whois.first() else {
        return String::new();
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(&a.whois[1..])
        .arg(ip)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.truncate(16 * 1024);
            text
        }
        Ok(Err(e)) => format!("(whois unavailable: {e})"),
        Err(_) => "(whois timed out)".into(),
    }
}

/// Only the jail name and address (both checked by xban) reach the headers;
/// log text goes to the body only.
pub(crate) fn compose_mail(a: &ActionConfig, ev: &BanEvent, whois_text: &str) -> String {
    let r = &ev.record;
    let t = tags(ev);
    let value = |n: &str| {
        t.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let verb = match ev.kind {
        BanEventKind::Ban => "banned",
        BanEventKind::Unban => "unbanned",
    };
    let mut body = format!(
        "xban {verb} {} (jail {}, class {}, bantime {}, {} failures).\n",
        r.target,
        r.jail,
        r.class,
        value("bantime"),
        r.failures
    );
    if !r.matches.is_empty() {
        body.push_str("\nMatched log lines:\n");
        for m in &r.matches {
            body.push_str("  ");
            body.push_str(m);
            body.push('\n');
        }
    }
    if !whois_text.is_empty() {
        body.push_str("\nwhois ");
        body.push_str(&r.target.to_string());
        body.push_str(":\n");
        body.push_str(whois_text);
        body.push('\n');
    }
    format!(
        "From: {}\nTo: {}\nSubject: [xban] {} {verb} by jail {}\nContent-Type: text/plain; charset=utf-8\n\n{body}",
        a.from,
        a.to.as_deref().unwrap_or(""),
        r.target,
        r.jail
    )
}

async fn run_mail(a: &ActionConfig, ev: &BanEvent) -> Result<(), String> {
    let w = whois(a, &ev.record.target.addr().to_string()).await;
    let message = compose_mail(a, ev, &w);
    let mut cmd = tokio::process::Command::new(&a.sendmail[0]);
    cmd.args(&a.sendmail[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", a.sendmail[0]))?;
    let send = async {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(message.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        drop(stdin);
        child.wait_with_output().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(a.timeout.0, send).await {
        Err(_) => Err(format!(
            "sendmail killed after {}",
            format_duration(a.timeout.0)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "sendmail exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ban::{BanClass, BanRecord};

    fn event(kind: BanEventKind) -> BanEvent {
        BanEvent {
            kind,
            record: BanRecord {
                target: "203.0.113.7".parse().unwrap(),
                jail: "sshd".into(),
                class: BanClass::Drop,
                banned_at: 1000,
                expires_at: Some(4600),
                failures: 2,
                matches: vec![
                    "Failed password for $(reboot) from 203.0.113.7".into(),
                    "`id`; rm -rf / from 203.0.113.7".into(),
                ],
            },
            reason: "",
        }
    }

    fn action(text: &str) -> ActionConfig {
        let a: ActionConfig = toml::from_str(text).unwrap();
        a.validate("actions[0]").unwrap();
        a
    }

    #[test]
    fn tags_are_substituted_inside_single_arguments() {
        let t = tags(&event(BanEventKind::Ban));
        assert_eq!(
            substitute("ban <ip> for <bantime> (<jail>, <class>, <failures>)", &t),
            "ban 203.0.113.7 for 1h (sshd, drop, 2)"
        );
        assert_eq!(substitute("<matches>", &t).lines().count(), 2);
    }

    #[tokio::test]
    async fn exec_action_writes_a_file_and_never_runs_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // printf receives the matched lines as one argument: `$(reboot)` and
        // backticks stay text.
        let a = action(&format!(
            "command = [\"/bin/sh\", \"-c\", 'printf \"%s|%s|%s\\n\" \"$1\" \"$2\" \"$XBAN_JAIL\" > {}', \"sh\", \"<ip>\", \"<matches>\"]\non = [\"ban\", \"unban\"]\n",
            out.display()
        ));
        run_exec(&a, &event(BanEventKind::Ban)).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("203.0.113.7|Failed password for $(reboot) from 203.0.113.7\n`id`; rm -rf / from 203.0.113.7|sshd"), "{text}");
        assert!(a.wants(BanEventKind::Unban));
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_reported() {
        let a = action("command = [\"/bin/false\"]");
        assert!(run_exec(&a, &event(BanEventKind::Ban))
            .await
            .unwrap_err()
            .contains("exited with"));
        let a = action("command = [\"/bin/sleep\", \"5\"]\ntimeout = \"1s\"");
        assert!(run_exec(&a, &event(BanEventKind::Ban))
            .await
            .unwrap_err()
            .contains("killed after 1s"));
        let a = action("command = [\"/nonexistent/prog\"]");
        assert!(run_exec(&a, &event(BanEventKind::Ban))
            .await
            .unwrap_err()
            .contains("cannot run /nonexistent/prog"));
        assert!(!a.wants(BanEventKind::Unban), "ban only by default");
    }

    #[tokio::test]
    async fn mail_action_sends_whois_and_matched_lines_through_sendmail() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = dir.path().join("mailbox");
        // A sendmail-compatible program that delivers into a file, and a
        // whois that answers from a fixed registry entry.
        let sendmail = dir.path().join("sendmail");
        std::fs::write(
            &sendmail,
            format!(
                "#!/bin/sh\n[ \"$1\" = -t ] || exit 3\ncat > {}\n",
                mailbox.display()
            ),
        )
        .unwrap();
        let whois = dir.path().join("whois");
        std::fs::write(
            &whois,
            "#!/bin/sh\necho \"inetnum: $1 netname: TEST-NET-3\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for p in [&sendmail, &whois] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let a = action(&format!(
            "kind = \"mail\"\nto = \"root@example.org\"\nsendmail = [\"{}\", \"-t\"]\nwhois = [\"{}\"]\n",
            sendmail.display(),
            whois.display()
        ));
        run_mail(&a, &event(BanEventKind::Ban)).await.unwrap();
        let mail = std::fs::read_to_string(&mailbox).unwrap();
        assert!(mail.starts_with("From: xban@localhost\nTo: root@example.org\nSubject: [xban] 203.0.113.7 banned by jail sshd\n"), "{mail}");
        assert!(mail.contains("  Failed password for $(reboot) from 203.0.113.7\n"));
        assert!(mail.contains("inetnum: 203.0.113.7 netname: TEST-NET-3"));
        let err = toml::from_str::<ActionConfig>("kind = \"mail\"")
            .unwrap()
            .validate("actions[0]")
            .unwrap_err()
            .message;
        assert!(err.starts_with("to:"), "{err}");
    }
}
