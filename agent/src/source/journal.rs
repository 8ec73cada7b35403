//! The systemd journal, read by following `journalctl --output=json`.
//!
//! Running journalctl instead of linking libsystemd keeps the agent free of
//! C dependencies, and journalctl already copes with journal file rotation,
//! vacuuming and access rights. If it exits, it is restarted after the last
//! delivered entry's cursor, with backoff.

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::line::{decode, LineAssembler, LineKind};
use super::{LineEnd, SourceError, SourceLine, SourceStats};

/// `origin` of every journal line.
pub(crate) const JOURNAL_ORIGIN: &str = "journal";
/// Messages are cut to this, like file lines with the default limit.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// A JSON entry longer than this is skipped: a byte-array MESSAGE of
/// `MAX_MESSAGE_BYTES` is about 4 bytes of JSON per byte, plus other fields.
const MAX_JSON_LINE_BYTES: usize = 4 << 20;
const RESTART_MIN: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// Failed journalctl runs without a single entry before a saved cursor is
/// considered unusable (journalctl refuses malformed cursors).
const CURSOR_GIVE_UP: u32 = 3;

#[derive(Debug, Clone, Default)]
pub(crate) struct JournalSourceOptions {
    /// journalctl matches, e.g. `_SYSTEMD_UNIT=sshd.service`; `+` separates
    /// alternatives, as on journalctl's command line.
    pub matches: Vec<String>,
    /// Resume after this entry (from [`JournalSource::cursor`] of a previous run).
    pub cursor: Option<String>,
}

/// Handle on the task following the journal.
#[derive(Debug)]
pub(crate) struct JournalSource {
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The last entry delivered: where a restarted journalctl continues.
    cursor: Mutex<Option<String>>,
    /// The last entry whose line the consumer processed: what is persisted.
    processed: Arc<Mutex<Option<String>>>,
    stats: Arc<SourceStats>,
}

impl Shared {
    fn cursor(&self) -> Option<String> {
        self.cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn processed(&self) -> Option<String> {
        self.processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_cursor(&self, cursor: String) {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = Some(cursor);
    }

    /// The cursor to persist for a new starting point.
    fn reset_to(&self, start: &Start) {
        let cursor = match start {
            Start::AfterCursor(c) => Some(c.clone()),
            Start::Since(_) => None,
        };
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = cursor.clone();
        *self
            .processed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = cursor;
    }
}

/// Where journalctl starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    AfterCursor(String),
    /// Seconds since the epoch; only used when no matching entry existed yet.
    Since(u64),
}

impl JournalSource {
    /// Starts `journalctl --follow`. Without a cursor, reading starts after
    /// the newest matching entry as of this call (looked up before
    /// returning), so entries logged after `spawn` returns are not missed.
    pub(crate) async fn spawn(
        opts: JournalSourceOptions,
        tx: mpsc::Sender<SourceLine>,
    ) -> Result<JournalSource, SourceError> {
        Self::spawn_program(Path::new("journalctl"), opts, tx).await
    }

    /// `spawn` with another journalctl binary (tests use a scripted one).
    async fn spawn_program(
        program: &Path,
        opts: JournalSourceOptions,
        tx: mpsc::Sender<SourceLine>,
    ) -> Result<JournalSource, SourceError> {
        for m in &opts.matches {
            if !valid_match(m) {
                return Err(SourceError::JournalMatch { matched: m.clone() });
            }
        }
        let start = match opts.cursor {
            Some(c) => Start::AfterCursor(c),
            None => tail_start(program, &opts.matches).await?,
        };
        let child = start_journalctl(program, &opts.matches, &start)?;
        let shared = Arc::new(Shared::default());
        // Until an entry arrives, the starting point is what to persist.
        shared.reset_to(&start);
        let follower = Follower {
            program: program.to_path_buf(),
            matches: opts.matches,
            start,
            shared: shared.clone(),
            tx,
            origin: Arc::from(JOURNAL_ORIGIN),
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            // Dropping the follower kills journalctl (`kill_on_drop`).
            tokio::select! {
                _ = stop_rx => debug!("journal source stopped"),
                _ = follower.run(child) => debug!("line receiver closed; journal source stops"),
            }
        });
        Ok(JournalSource { shared, stop, task })
    }

    /// Cursor of the last entry whose line was
    /// [processed](super::SourceLine::processed) (or the starting point if
    /// none was yet), for persisting and resuming.
    pub(crate) fn cursor(&self) -> Option<String> {
        self.shared.processed()
    }

    pub(crate) fn stats(&self) -> Arc<SourceStats> {
        self.shared.stats.clone()
    }

    /// Stops the task and journalctl.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            if e.is_panic() {
                error!("journal source task panicked: {e}");
            }
        }
    }
}

/// Whether journalctl is installed and shows at least one journal entry.
/// Runs journalctl once (blocking): call it at start-up, not per line.
pub(crate) fn journal_available() -> bool {
    journal_status().is_ok()
}

/// Why the journal is not usable here, in journalctl's words where possible.
pub(crate) fn journal_status() -> Result<(), String> {
    let out = std::process::Command::new("journalctl")
        .args(["--lines=1", "--output=json", "--no-pager", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run journalctl: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(format!("exited with {}: {stderr}", out.status));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(if stderr.is_empty() {
            "no journal entries readable".to_string()
        } else {
            stderr
        });
    }
    Ok(())
}

/// journalctl's own match syntax; anything else (notably a leading `-`)
/// would be taken as an option.
fn valid_match(m: &str) -> bool {
    if m == "+" || m.starts_with('/') {
        return true;
    }
    match m.split_once('=') {
        Some((field, _)) => {
            field
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && field.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        }
        None => false,
    }
}

fn spawn_error(program: &Path, e: std::io::Error) -> SourceError {
    if e.kind() == std::io::ErrorKind::NotFound {
        SourceError::JournalctlMissing
    } else {
        SourceError::JournalSpawn {
            program: program.to_path_buf(),
            source: e,
        }
    }
}

/// The starting point for a fresh start: after the newest matching entry.
/// `--lines=0` would instead seek the tail only once journalctl has got
/// going, losing whatever is logged in between.
async fn tail_start(program: &Path, matches: &[String]) -> Result<Start, SourceError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let out = Command::new(program)
        .args(["--lines=1", "--output=json", "--no-pager", "--quiet"])
        .args(matches)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| spawn_error(program, e))?;
    if !out.status.success() {
        warn!(status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "journalctl could not show the newest journal entry; following from now");
    }
    let cursor = out
        .stdout
        .split(|&b| b == b'\n')
        .rev()
        .find_map(|l| serde_json::from_slice::<Map<String, Value>>(l).ok())
        .and_then(|m| m.get("__CURSOR").and_then(Value::as_str).map(str::to_owned));
    Ok(match cursor {
        Some(c) => Start::AfterCursor(c),
        // No matching entry at all yet, so nothing from this second is old.
        None => Start::Since(now),
    })
}

fn journalctl_args(matches: &[String], start: &Start) -> Vec<String> {
    let mut args: Vec<String> = [
        "--follow",
        "--output=json",
        "--no-pager",
        "--quiet",
        // Without it, fields over 4 KiB are printed as null.
        "--all",
        // With --follow journalctl otherwise limits its first batch to 10.
        "--lines=all",
    ]
    .map(String::from)
    .to_vec();
    args.push(match start {
        Start::AfterCursor(c) => format!("--after-cursor={c}"),
        Start::Since(secs) => format!("--since=@{secs}"),
    });
    args.extend(matches.iter().cloned());
    args
}

fn start_journalctl(
    program: &Path,
    matches: &[String],
    start: &Start,
) -> Result<Child, SourceError> {
    Command::new(program)
        .args(journalctl_args(matches, start))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(program, e))
}

/// The receiver was dropped.
struct Closed;

struct Follower {
    program: PathBuf,
    matches: Vec<String>,
    start: Start,
    shared: Arc<Shared>,
    tx: mpsc::Sender<SourceLine>,
    origin: Arc<str>,
}

impl Follower {
    async fn run(mut self, mut child: Child) {
        let mut backoff = RESTART_MIN;
        let mut empty_runs = 0;
        loop {
            let entries = match self.read_child(&mut child).await {
                Ok(n) => n,
                Err(Closed) => return,
            };
            let status = child.wait().await;
            let failed = !matches!(&status, Ok(s) if s.success());
            if entries > 0 {
                backoff = RESTART_MIN;
                empty_runs = 0;
            } else if failed {
                empty_runs += 1;
            }
            // Continue after the last delivered entry: nothing lost or repeated.
            if let Some(c) = self.shared.cursor() {
                self.start = Start::AfterCursor(c);
            }
            if empty_runs >= CURSOR_GIVE_UP && matches!(self.start, Start::AfterCursor(_)) {
                warn!("journalctl keeps exiting when started after the saved cursor; continuing from the newest entry instead");
                empty_runs = 0;
                // A new starting point, not a retry of the failing one.
                backoff = RESTART_MIN;
                match tail_start(&self.program, &self.matches).await {
                    Ok(start) => {
                        // Replace the bad cursor, or it would be picked up again above.
                        self.shared.reset_to(&start);
                        self.start = start;
                    }
                    Err(e) => error!("{e}"),
                }
            }
            warn!(status = ?status, "journalctl exited; restarting in {backoff:?}");
            child = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESTART_MAX);
                match start_journalctl(&self.program, &self.matches, &self.start) {
                    Ok(child) => break child,
                    Err(e) => error!("{e}; retrying in {backoff:?}"),
                }
            };
            info!("journalctl restarted");
        }
    }

    /// Delivers entries until journalctl's output ends; returns how many
    /// entries it parsed.
    async fn read_child(&mut self, child: &mut Child) -> Result<u64, Closed> {
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_stderr(stderr));
        }
        let Some(mut stdout) = child.stdout.take() else {
            return Ok(0);
        };
        let stats = self.shared.stats.clone();
        let mut asm = LineAssembler::new(MAX_JSON_LINE_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        let mut entries = 0;
        loop {
            let n = match stdout.read(&mut buf).await {
                Ok(0) => return Ok(entries),
                Ok(n) => n,
                Err(e) => {
                    warn!("cannot read journalctl output: {e}");
                    return Ok(entries);
                }
            };
            SourceStats::bump(&stats.bytes, n as u64);
            let mut jsons = Vec::new();
            asm.feed(&buf[..n], |bytes, kind, _| jsons.push((bytes, kind)));
            for (json, kind) in jsons {
                if kind != LineKind::Whole {
                    SourceStats::bump(&stats.truncated_lines, 1);
                    warn!("journal entry over {MAX_JSON_LINE_BYTES} bytes of JSON skipped");
                    continue;
                }
                if json.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let entry = match parse_entry(&json, &self.origin, SystemTime::now()) {
                    Ok(entry) => entry,
                    Err(e) => {
                        warn!("journalctl printed something that is not a JSON entry: {e}");
                        continue;
                    }
                };
                entries += 1;
                if let Some(mut line) = entry.line {
                    if let Some(c) = &entry.cursor {
                        line.end = LineEnd::Journal {
                            processed: self.shared.processed.clone(),
                            cursor: c.clone(),
                        };
                    }
                    if entry.invalid_utf8 {
                        SourceStats::bump(&stats.invalid_utf8_lines, 1);
                    }
                    if entry.truncated {
                        SourceStats::bump(&stats.truncated_lines, 1);
                    }
                    self.tx.send(line).await.map_err(|_| Closed)?;
                    SourceStats::bump(&stats.lines, 1);
                }
                // Only after delivery: a resume must not skip an undelivered entry.
                if let Some(c) = entry.cursor {
                    self.shared.set_cursor(c);
                }
            }
        }
    }
}

async fn log_stderr(stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        warn!("journalctl: {line}");
    }
}

/// One journal entry as journalctl prints it, turned into what we deliver.
#[derive(Debug)]
struct Entry {
    cursor: Option<String>,
    /// `None` for entries without MESSAGE: nothing for filters to match.
    line: Option<SourceLine>,
    invalid_utf8: bool,
    truncated: bool,
}

/// Converts one line of `journalctl --output=json`. The text is
/// `IDENT[PID]: MESSAGE` (or `IDENT: MESSAGE`) so filters written for
/// syslog files match journal entries too.
fn parse_entry(json: &[u8], origin: &Arc<str>, read_at: SystemTime) -> serde_json::Result<Entry> {
    let map: Map<String, Value> = serde_json::from_slice(json)?;
    let cursor = map
        .get("__CURSOR")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(mut message) = map.get("MESSAGE").and_then(field_bytes) else {
        return Ok(Entry {
            cursor,
            line: None,
            invalid_utf8: false,
            truncated: false,
        });
    };
    // Inner newlines of multi-line messages stay; a trailing one goes, as for file lines.
    while message.last() == Some(&b'\n') {
        message.pop();
    }
    let truncated = message.len() > MAX_MESSAGE_BYTES;
    message.truncate(MAX_MESSAGE_BYTES);
    let (message, invalid_utf8) = decode(message, truncated);

    // The same fallbacks syslog uses when a program sets no identifier.
    let ident = field_text(&map, "SYSLOG_IDENTIFIER").or_else(|| field_text(&map, "_COMM"));
    let pid = field_text(&map, "_PID").or_else(|| field_text(&map, "SYSLOG_PID"));
    let text = match (ident, pid) {
        (Some(ident), Some(pid)) => format!("{ident}[{pid}]: {message}"),
        (Some(ident), None) => format!("{ident}: {message}"),
        (None, _) => message,
    };
    let time = map
        .get("__REALTIME_TIMESTAMP")
        .and_then(Value::as_str)
        .and_then(|us| us.parse::<u64>().ok())
        .map(|us| UNIX_EPOCH + Duration::from_micros(us));
    Ok(Entry {
        cursor,
        line: Some(SourceLine {
            origin: origin.clone(),
            text,
            read_at,
            time,
            end: LineEnd::None,
        }),
        invalid_utf8,
        truncated,
    })
}

/// A field's bytes. journalctl prints a string, an array of byte values for
/// binary data, an array of values when the field occurs more than once
/// (we take the first), or null for data over its size limit.
fn field_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Array(items) if items.iter().all(Value::is_number) => items
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        Value::Array(items) => items.first().and_then(field_bytes),
        _ => None,
    }
}

fn field_text(map: &Map<String, Value>, key: &str) -> Option<String> {
    let bytes = map.get(key).and_then(field_bytes)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
