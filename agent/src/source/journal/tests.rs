use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::mpsc::{self, Receiver};
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(15);

fn origin() -> Arc<str> {
    Arc::from(JOURNAL_ORIGIN)
}

fn entry(json: &str) -> Entry {
    parse_entry(json.as_bytes(), &origin(), SystemTime::now()).expect("valid JSON")
}

async fn next(rx: &mut Receiver<SourceLine>) -> SourceLine {
    let line = timeout(WAIT, rx.recv())
        .await
        .expect("no journal line within the timeout")
        .expect("source closed the channel");
    // Taken as processed at once, as the daemon does after each batch.
    line.processed();
    line
}

#[test]
fn entry_becomes_a_syslog_style_line_with_its_time() {
    let e = entry(
        r#"{"__CURSOR":"s=abc;i=1","__REALTIME_TIMESTAMP":"1700000000123456",
            "MESSAGE":"Failed password for root from 192.0.2.7 port 22 ssh2\n",
            "SYSLOG_IDENTIFIER":"sshd","_PID":"812","_COMM":"sshd"}"#,
    );
    assert_eq!(e.cursor.as_deref(), Some("s=abc;i=1"));
    let line = e.line.unwrap();
    assert_eq!(
        line.text,
        "sshd[812]: Failed password for root from 192.0.2.7 port 22 ssh2"
    );
    assert_eq!(&*line.origin, "journal");
    assert_eq!(
        line.time,
        Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456))
    );
    assert!(!e.invalid_utf8 && !e.truncated);
}

#[test]
fn byte_array_message_is_decoded_lossily() {
    // journalctl prints non-UTF-8 (or control-character) data as byte arrays.
    let e = entry(r#"{"__CURSOR":"c","MESSAGE":[104,105,32,255,33],"SYSLOG_IDENTIFIER":"app"}"#);
    assert_eq!(e.line.unwrap().text, "app: hi \u{fffd}!");
    assert!(e.invalid_utf8);
}

#[test]
fn identifier_and_pid_fall_back_and_may_be_absent() {
    let e = entry(r#"{"MESSAGE":"m","_COMM":"dropbear","SYSLOG_PID":"9"}"#);
    assert_eq!(e.line.unwrap().text, "dropbear[9]: m");
    let e = entry(r#"{"MESSAGE":"bare"}"#);
    let line = e.line.unwrap();
    assert_eq!(line.text, "bare");
    assert_eq!(line.time, None);
}

#[test]
fn repeated_field_uses_its_first_value() {
    let e = entry(r#"{"MESSAGE":["first",[115,101,99]],"SYSLOG_IDENTIFIER":["a","b"]}"#);
    assert_eq!(e.line.unwrap().text, "a: first");
}

#[test]
fn entry_without_message_only_advances_the_cursor() {
    let e = entry(r#"{"__CURSOR":"c9","MESSAGE":null,"SYSLOG_IDENTIFIER":"x"}"#);
    assert_eq!(e.cursor.as_deref(), Some("c9"));
    assert!(e.line.is_none());
}

#[test]
fn oversized_message_is_truncated_and_flagged() {
    let big = "y".repeat(MAX_MESSAGE_BYTES + 10);
    let e = entry(&format!(r#"{{"MESSAGE":"{big}"}}"#));
    assert_eq!(e.line.unwrap().text.len(), MAX_MESSAGE_BYTES);
    assert!(e.truncated);
}

#[test]
fn matches_are_validated() {
    for ok in [
        "_SYSTEMD_UNIT=sshd.service",
        "SYSLOG_IDENTIFIER=xban-test",
        "+",
        "/usr/sbin/sshd",
        "PRIORITY=",
    ] {
        assert!(valid_match(ok), "{ok}");
    }
    for bad in [
        "--since=yesterday",
        "sshd",
        "_systemd_unit=x",
        "1FIELD=x",
        "=x",
    ] {
        assert!(!valid_match(bad), "{bad}");
    }
}

#[tokio::test]
async fn invalid_match_is_an_error_naming_it() {
    let (tx, _rx) = mpsc::channel(1);
    let opts = JournalSourceOptions {
        matches: vec!["--merge".into()],
        cursor: None,
    };
    let err = JournalSource::spawn(opts, tx).await.unwrap_err();
    assert!(matches!(err, SourceError::JournalMatch { .. }), "{err:?}");
    assert!(err.to_string().contains("--merge"), "{err}");
}

#[tokio::test]
async fn missing_journalctl_says_what_to_install() {
    let dir = TempDir::new().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = JournalSource::spawn_program(
        &dir.path().join("journalctl"),
        JournalSourceOptions::default(),
        tx,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SourceError::JournalctlMissing), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("install systemd") && msg.contains("file logs"),
        "{msg}"
    );
}

/// Exercises the process plumbing with a scripted journalctl: arguments, JSON
/// over a real pipe, restart after exit from the last cursor. The real
/// journal is covered by `real_journal_round_trip` where one exists.
#[tokio::test]
async fn journalctl_is_restarted_after_the_last_delivered_cursor() {
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("journalctl");
    let d = dir.path().display();
    fs::write(
        &script,
        format!(
            r#"#!/bin/sh
printf '%s\n' "$*" >> "{d}/args"
case " $* " in
  *" --follow "*) ;;
  *) echo '{{"__CURSOR":"c0","MESSAGE":"old","SYSLOG_IDENTIFIER":"sshd"}}'; exit 0 ;;
esac
n=$(cat "{d}/runs" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "{d}/runs"
if [ "$n" = 1 ]; then
  echo '{{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1700000000000000","MESSAGE":"first","SYSLOG_IDENTIFIER":"sshd","_PID":"42"}}'
  echo 'simulated failure' >&2
  exit 1
fi
echo '{{"__CURSOR":"c2","MESSAGE":[104,105],"SYSLOG_IDENTIFIER":"sshd"}}'
exec sleep 30
"#
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

    let (tx, mut rx) = mpsc::channel(4);
    let opts = JournalSourceOptions {
        matches: vec!["SYSLOG_IDENTIFIER=sshd".into()],
        cursor: None,
    };
    let src = spawn_retrying_busy_text(&script, opts, tx).await;
    // Fresh start: after the newest existing entry, so "old" is not read.
    assert_eq!(src.cursor().as_deref(), Some("c0"));
    let first = next(&mut rx).await;
    assert_eq!(first.text, "sshd[42]: first");
    assert_eq!(
        first.time,
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );
    assert_eq!(next(&mut rx).await.text, "sshd: hi");
    // The cursor is recorded right after delivery.
    timeout(WAIT, async {
        while src.cursor().as_deref() != Some("c2") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("cursor c2 recorded");
    assert_eq!(
        src.stats().lines.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    src.shutdown().await;

    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    let runs: Vec<&str> = args.lines().collect();
    assert_eq!(runs.len(), 3, "{args}");
    assert_eq!(
        runs[0],
        "--lines=1 --output=json --no-pager --quiet SYSLOG_IDENTIFIER=sshd"
    );
    assert!(runs[1].starts_with("--follow --output=json"), "{args}");
    assert!(
        runs[1].ends_with("--after-cursor=c0 SYSLOG_IDENTIFIER=sshd"),
        "{args}"
    );
    assert!(
        runs[2].ends_with("--after-cursor=c1 SYSLOG_IDENTIFIER=sshd"),
        "{args}"
    );
}

#[tokio::test]
async fn unusable_saved_cursor_is_dropped_for_a_fresh_start() {
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("journalctl");
    let d = dir.path().display();
    // Like journalctl: a malformed cursor makes --follow exit at once.
    fs::write(
        &script,
        format!(
            r#"#!/bin/sh
printf '%s\n' "$*" >> "{d}/args"
case " $* " in
  *" --after-cursor=bogus "*) echo 'Failed to seek to cursor: Invalid argument' >&2; exit 1 ;;
  *" --follow "*)
    # The first fresh run fails too: the bad cursor must not come back.
    if [ ! -e "{d}/failed-once" ]; then touch "{d}/failed-once"; exit 1; fi
    echo '{{"__CURSOR":"c1","MESSAGE":"fresh","SYSLOG_IDENTIFIER":"sshd"}}'; exec sleep 30 ;;
esac
# The newest-entry query finds nothing: a journal without matching entries.
"#
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let opts = JournalSourceOptions {
        matches: Vec::new(),
        cursor: Some("bogus".into()),
    };
    let src = spawn_retrying_busy_text(&script, opts, tx).await;
    assert_eq!(src.cursor().as_deref(), Some("bogus"));
    assert_eq!(next(&mut rx).await.text, "sshd: fresh");
    timeout(WAIT, async {
        while src.cursor().as_deref() != Some("c1") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("cursor c1 recorded");
    src.shutdown().await;
    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    let bogus = args
        .lines()
        .filter(|l| l.contains("--after-cursor=bogus"))
        .count();
    assert_eq!(bogus as u32, CURSOR_GIVE_UP, "{args}");
    // No entry to start after: from the second of the fallback on.
    let fresh = args.lines().filter(|l| l.contains("--since=@")).count();
    assert_eq!(fresh, 2, "{args}");
    assert!(args.lines().last().unwrap().contains("--since=@"), "{args}");
}

/// A freshly written script can briefly be "text file busy" when another
/// test thread forks while our write handle is open; that is not our bug.
async fn spawn_retrying_busy_text(
    program: &Path,
    opts: JournalSourceOptions,
    tx: mpsc::Sender<SourceLine>,
) -> JournalSource {
    for _ in 0..20 {
        match JournalSource::spawn_program(program, opts.clone(), tx.clone()).await {
            Ok(src) => return src,
            Err(SourceError::JournalSpawn { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("spawn: {e}"),
        }
    }
    panic!("script stayed busy");
}

/// Writes an entry with systemd-cat and reads it back through journalctl.
#[tokio::test]
async fn real_journal_round_trip() {
    // `cargo xtask test` guarantees a journald (starting one if needed) and
    // says so: then a missing journal is a failure, never a skip.
    let required = std::env::var_os("XBAN_REQUIRE_JOURNAL").is_some();
    if let Err(why) = journal_status() {
        assert!(
            !required,
            "XBAN_REQUIRE_JOURNAL is set but there is no journal: {why}"
        );
        println!("SKIPPED: no journal on this machine (journalctl: {why})");
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("xban-test-{}-{nanos}", std::process::id());
    let (tx, mut rx) = mpsc::channel(16);
    let opts = JournalSourceOptions {
        matches: vec![format!("SYSLOG_IDENTIFIER={tag}")],
        cursor: None,
    };
    let src = JournalSource::spawn(opts, tx).await.expect("spawn");
    let message = format!("Failed password for invalid user {tag} from 203.0.113.9");
    match std::process::Command::new("systemd-cat")
        .args(["-t", &tag, "echo", &message])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            assert!(
                !required,
                "XBAN_REQUIRE_JOURNAL is set but systemd-cat failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!(
                "SKIPPED: no journal on this machine (systemd-cat: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            src.shutdown().await;
            return;
        }
        Err(e) => {
            println!("SKIPPED: no journal on this machine (systemd-cat: {e})");
            src.shutdown().await;
            return;
        }
    }
    let line = next(&mut rx).await;
    assert!(line.text.starts_with(&tag), "{}", line.text);
    assert!(
        line.text.ends_with(&format!(": {message}")),
        "{}",
        line.text
    );
    assert!(line.time.is_some());
    assert!(src.cursor().is_some());
    src.shutdown().await;
}
