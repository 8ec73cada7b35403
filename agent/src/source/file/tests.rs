//! Every test drives a real `FileSource` against real files in a temp dir.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::mpsc::{self, Receiver};
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn options(patterns: &[&Path]) -> FileSourceOptions {
    FileSourceOptions {
        patterns: patterns
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        ..FileSourceOptions::default()
    }
}

async fn start(opts: FileSourceOptions) -> (FileSource, Receiver<SourceLine>) {
    let (tx, rx) = mpsc::channel(1024);
    let src = FileSource::spawn(opts, tx).await.expect("spawn");
    (src, rx)
}

async fn next(rx: &mut Receiver<SourceLine>) -> SourceLine {
    let line = timeout(WAIT, rx.recv())
        .await
        .expect("no line within the timeout")
        .expect("source closed the channel");
    // Taken as processed at once, as the daemon does after each batch.
    line.processed();
    line
}

/// Receives exactly `want.len()` lines and compares their text.
async fn expect_texts(rx: &mut Receiver<SourceLine>, want: &[&str]) {
    for w in want {
        assert_eq!(next(rx).await.text, *w);
    }
}

fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
}

fn position(path: &Path, offset: u64) -> FilePosition {
    let m = fs::metadata(path).unwrap();
    FilePosition {
        dev: m.dev(),
        inode: m.ino(),
        offset,
    }
}

/// `positions` is updated right after a line is handed over, so a consumer
/// may see the line a moment before the offset: wait for it.
async fn wait_position(src: &FileSource, path: &Path, want: FilePosition) {
    let reached = timeout(WAIT, async {
        while src.positions().get(path) != Some(&want) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "position of {} is {:?}, want {want:?}",
        path.display(),
        src.positions().get(path)
    );
}

#[tokio::test]
async fn unseen_file_is_read_from_its_end() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, b"old 1\nold 2\n");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"new 1\n");
    let line = next(&mut rx).await;
    assert_eq!(line.text, "new 1");
    assert_eq!(&*line.origin, log.to_str().unwrap());
    assert_eq!(line.time, None);
    assert_eq!(src.files(), vec![log.clone()]);
    assert_eq!(src.stats().lines.load(Ordering::Relaxed), 1);
    src.shutdown().await;
}

#[tokio::test]
async fn line_being_written_at_start_is_read_whole() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, b"old\npar");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"tial\nnext\n");
    expect_texts(&mut rx, &["partial", "next"]).await;
    src.shutdown().await;
}

#[tokio::test]
async fn partial_line_is_held_until_its_newline() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"ha");
    // The event for "ha" is handled long before this; nothing may come out.
    assert!(timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
    append(&log, b"lf\r\nnext\n");
    expect_texts(&mut rx, &["half", "next"]).await;
    src.shutdown().await;
}

#[tokio::test]
async fn positions_exclude_held_lines_and_resume_reads_what_was_missed() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, b"a\nb\n");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"c\npart");
    expect_texts(&mut rx, &["c"]).await;
    // Just past "c\n": a restart must re-read "part" whole, not its tail.
    wait_position(&src, &log, position(&log, 6)).await;
    let positions = src.positions();
    src.shutdown().await;
    // The sender is dropped with the task.
    assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());

    append(&log, b"ial\nd\n");
    let mut opts = options(&[&log]);
    opts.resume = positions;
    let (src, mut rx) = start(opts).await;
    expect_texts(&mut rx, &["partial", "d"]).await;
    append(&log, b"e\n");
    expect_texts(&mut rx, &["e"]).await;
    let len = fs::metadata(&log).unwrap().len();
    wait_position(&src, &log, position(&log, len)).await;
    src.shutdown().await;
}

#[tokio::test]
async fn resume_of_a_file_truncated_while_down_reads_from_start() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, b"aaaa\nbbbb\n");
    let mut opts = options(&[&log]);
    opts.resume.insert(log.clone(), position(&log, 10));
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, b"x\n");
    let (src, mut rx) = start(opts).await;
    expect_texts(&mut rx, &["x"]).await;
    assert_eq!(src.stats().truncations.load(Ordering::Relaxed), 1);
    src.shutdown().await;
}

#[tokio::test]
async fn resume_of_a_file_rotated_while_down_reads_old_rest_then_new() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"seen\nmissed\n");
    let mut opts = options(&[&log]);
    opts.resume.insert(log.clone(), position(&log, 5));
    // logrotate ran while the agent was stopped.
    fs::rename(&log, &rotated).unwrap();
    append(&log, b"new 1\n");
    let (src, mut rx) = start(opts).await;
    let line = next(&mut rx).await;
    assert_eq!(line.text, "missed");
    // Attributed to the configured log, not to the rotated name.
    assert_eq!(&*line.origin, log.to_str().unwrap());
    expect_texts(&mut rx, &["new 1"]).await;
    append(&log, b"new 2\n");
    expect_texts(&mut rx, &["new 2"]).await;
    assert_eq!(src.stats().rotations.load(Ordering::Relaxed), 1);
    assert_eq!(src.files(), vec![log.clone()]);
    src.shutdown().await;
}

#[tokio::test]
async fn glob_matching_rotated_names_resumes_the_predecessor_once() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"seen\nmissed\n");
    let mut opts = options(&[&dir.path().join("auth.log*")]);
    opts.resume.insert(log.clone(), position(&log, 5));
    fs::rename(&log, &rotated).unwrap();
    append(&log, b"new 1\n");
    let (src, mut rx) = start(opts).await;
    let mut got = [next(&mut rx).await, next(&mut rx).await];
    got.sort_by(|a, b| a.text.cmp(&b.text));
    assert_eq!(got[0].text, "missed");
    assert_eq!(&*got[0].origin, rotated.to_str().unwrap());
    assert_eq!(got[1].text, "new 1");
    // One handle on the old file: a late write to it comes once.
    append(&rotated, b"late\n");
    expect_texts(&mut rx, &["late"]).await;
    append(&log, b"marker\n");
    expect_texts(&mut rx, &["marker"]).await;
    assert_eq!(src.files(), vec![log, rotated]);
    src.shutdown().await;
}

#[tokio::test]
async fn rename_rotation_while_running_loses_and_repeats_nothing() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"history\n");
    // The daemon's handle: it keeps writing to the old file until it reopens.
    let mut daemon = OpenOptions::new().append(true).open(&log).unwrap();
    let (src, mut rx) = start(options(&[&log])).await;
    daemon.write_all(b"before 1\nbefore 2\n").unwrap();
    expect_texts(&mut rx, &["before 1", "before 2"]).await;

    fs::rename(&log, &rotated).unwrap();
    daemon.write_all(b"late to old\n").unwrap();
    let mut daemon = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    daemon.write_all(b"after 1\n").unwrap();
    let late = next(&mut rx).await;
    assert_eq!(late.text, "late to old");
    assert_eq!(&*late.origin, log.to_str().unwrap());
    expect_texts(&mut rx, &["after 1"]).await;
    daemon.write_all(b"after 2\n").unwrap();
    expect_texts(&mut rx, &["after 2"]).await;

    assert_eq!(src.stats().rotations.load(Ordering::Relaxed), 1);
    assert_eq!(src.files(), vec![log.clone()]);
    wait_position(&src, &log, position(&log, 16)).await;
    src.shutdown().await;
}

#[tokio::test]
async fn copytruncate_restarts_at_zero_without_repeats() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"line one\nline two\n");
    expect_texts(&mut rx, &["line one", "line two"]).await;
    // copytruncate: copy away, then truncate in place; the writer goes on.
    fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, b"three\n");
    expect_texts(&mut rx, &["three"]).await;
    append(&log, b"four\n");
    expect_texts(&mut rx, &["four"]).await;
    assert_eq!(src.stats().truncations.load(Ordering::Relaxed), 1);
    wait_position(&src, &log, position(&log, 11)).await;
    src.shutdown().await;
}

#[tokio::test]
async fn deleted_and_recreated_file_is_read_from_start() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"one\n");
    expect_texts(&mut rx, &["one"]).await;
    fs::remove_file(&log).unwrap();
    append(&log, b"two\nthree\n");
    expect_texts(&mut rx, &["two", "three"]).await;
    assert_eq!(src.stats().rotations.load(Ordering::Relaxed), 1);
    src.shutdown().await;
}

#[tokio::test]
async fn missing_file_is_read_from_its_start_when_created() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("later.log");
    let (src, mut rx) = start(options(&[&log])).await;
    assert!(src.files().is_empty());
    append(&log, b"first\nsecond\n");
    expect_texts(&mut rx, &["first", "second"]).await;
    assert_eq!(src.files(), vec![log.clone()]);
    src.shutdown().await;
}

#[tokio::test]
async fn file_renamed_into_place_is_read_from_its_start() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    let tmp = dir.path().join("app.log.tmp");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&tmp, b"x1\nx2\n");
    fs::rename(&tmp, &log).unwrap();
    expect_texts(&mut rx, &["x1", "x2"]).await;
    src.shutdown().await;
}

#[tokio::test]
async fn glob_follows_existing_files_from_end_and_new_ones_from_start() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.log");
    let c = dir.path().join("c.log");
    let other = dir.path().join("b.txt");
    append(&a, b"old a\n");
    append(&other, b"old b\n");
    let (src, mut rx) = start(options(&[&dir.path().join("*.log")])).await;
    assert_eq!(src.files(), vec![a.clone()]);

    append(&a, b"a1\n");
    expect_texts(&mut rx, &["a1"]).await;
    append(&c, b"c1\nc2\n");
    let line = next(&mut rx).await;
    assert_eq!(line.text, "c1");
    assert_eq!(&*line.origin, c.to_str().unwrap());
    expect_texts(&mut rx, &["c2"]).await;
    // Not matching: must not be read. The marker proves the order.
    append(&other, b"ignored\n");
    append(&a, b"marker\n");
    expect_texts(&mut rx, &["marker"]).await;
    assert_eq!(src.files(), vec![a, c]);
    src.shutdown().await;
}

#[tokio::test]
async fn glob_rename_between_matching_names_keeps_the_offset() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"history\n");
    let (src, mut rx) = start(options(&[&dir.path().join("auth.log*")])).await;
    append(&log, b"a1\n");
    expect_texts(&mut rx, &["a1"]).await;
    fs::rename(&log, &rotated).unwrap();
    append(&log, b"b1\n");
    // "history" and "a1" are not read again from auth.log.1.
    expect_texts(&mut rx, &["b1"]).await;
    append(&rotated, b"a2\n");
    // Read once; attributed to auth.log if drained as the rotated-away file
    // before the MOVED_TO for auth.log.1 was seen, which inotify may split
    // from the MOVED_FROM.
    expect_texts(&mut rx, &["a2"]).await;
    let want = vec![log.clone(), rotated.clone()];
    timeout(WAIT, async {
        while src.files() != want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both names followed");
    append(&rotated, b"a3\n");
    let line = next(&mut rx).await;
    assert_eq!(line.text, "a3");
    assert_eq!(&*line.origin, rotated.to_str().unwrap());
    src.shutdown().await;
}

#[tokio::test]
async fn ten_megabyte_line_is_truncated_and_the_next_line_survives() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    let mut data = vec![b'x'; 10 << 20];
    data.extend_from_slice(b"\nafter\n");
    append(&log, &data);
    let long = next(&mut rx).await;
    assert_eq!(long.text.len(), DEFAULT_MAX_LINE_BYTES);
    assert!(long.text.bytes().all(|b| b == b'x'));
    expect_texts(&mut rx, &["after"]).await;
    let stats = src.stats();
    assert_eq!(stats.truncated_lines.load(Ordering::Relaxed), 1);
    assert_eq!(stats.bytes.load(Ordering::Relaxed), data.len() as u64);
    wait_position(&src, &log, position(&log, data.len() as u64)).await;
    src.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_is_decoded_lossily_and_counted() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"user \xff\xfe from 10.0.0.1\nclean\n");
    expect_texts(&mut rx, &["user \u{fffd}\u{fffd} from 10.0.0.1", "clean"]).await;
    assert_eq!(src.stats().invalid_utf8_lines.load(Ordering::Relaxed), 1);
    src.shutdown().await;
}

#[tokio::test]
async fn full_channel_slows_reading_without_dropping_lines() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"");
    let (tx, mut rx) = mpsc::channel(1);
    let src = FileSource::spawn(options(&[&log]), tx).await.unwrap();
    let data: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    append(&log, data.as_bytes());
    for i in 0..5000 {
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(next(&mut rx).await.text, format!("line {i}"));
    }
    assert_eq!(src.stats().lines.load(Ordering::Relaxed), 5000);
    src.shutdown().await;
}

#[tokio::test]
async fn lost_inotify_events_are_recovered_by_a_rescan() {
    let max_queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    let dir = TempDir::new().unwrap();
    let block = dir.path().join("block.log");
    let log = dir.path().join("app.log");
    append(&block, b"");
    append(&log, b"");
    let (tx, mut rx) = mpsc::channel(1);
    let src = FileSource::spawn(
        FileSourceOptions {
            patterns: vec![
                block.to_string_lossy().into_owned(),
                log.to_string_lossy().into_owned(),
            ],
            ..FileSourceOptions::default()
        },
        tx,
    )
    .await
    .unwrap();
    // Park the task on the full channel so nothing drains the inotify queue.
    append(&block, b"b1\nb2\n");
    assert_eq!(next(&mut rx).await.text, "b1");
    // Overflow the queue with events for other names (alternating, because
    // identical consecutive events are merged by the kernel)...
    let mut noise = [
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("n1"))
            .unwrap(),
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("n2"))
            .unwrap(),
    ];
    for i in 0..max_queued + 100 {
        noise[i % 2].write_all(b".").unwrap();
    }
    // ...so the event for this line is dropped by the kernel.
    append(&log, b"after overflow\n");
    expect_texts(&mut rx, &["b2", "after overflow"]).await;
    src.shutdown().await;
}

#[tokio::test]
async fn missing_directory_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    let (tx, _rx) = mpsc::channel(1);
    let err = FileSource::spawn(options(&[&missing.join("app.log")]), tx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::DirectoryMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
}

#[tokio::test]
async fn glob_in_directory_part_is_an_error_naming_the_pattern() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("site1")).unwrap();
    let pattern = dir.path().join("site*").join("access.log");
    let (tx, _rx) = mpsc::channel(1);
    let err = FileSource::spawn(options(&[&pattern]), tx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::GlobInDirectory { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(pattern.to_str().unwrap()), "{err}");
}

#[tokio::test]
async fn pattern_naming_a_directory_is_an_error() {
    let dir = TempDir::new().unwrap();
    let pattern = format!("{}/", dir.path().display());
    let (tx, _rx) = mpsc::channel(1);
    let opts = FileSourceOptions {
        patterns: vec![pattern.clone()],
        ..FileSourceOptions::default()
    };
    let err = FileSource::spawn(opts, tx).await.unwrap_err();
    assert!(matches!(err, SourceError::NoFileName { .. }), "{err:?}");
    assert!(err.to_string().contains(&pattern), "{err}");
}

/// Whether this process still has `path` open (as seen in /proc/self/fd).
fn holds_open(path: &Path) -> bool {
    fs::read_dir("/proc/self/fd").unwrap().flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t == path.to_string_lossy() || t == format!("{} (deleted)", path.display())
        })
    })
}

async fn eventually_closed(path: &Path) {
    let closed = timeout(WAIT, async {
        while holds_open(path) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "{} still open", path.display());
}

#[tokio::test]
async fn rotated_file_is_closed_when_deleted() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    fs::rename(&log, &rotated).unwrap();
    append(&log, b"new\n");
    expect_texts(&mut rx, &["new"]).await;
    assert!(holds_open(&rotated), "kept open for late writes");
    // Deleting it (e.g. logrotate's compress) must free its disk space.
    fs::remove_file(&rotated).unwrap();
    eventually_closed(&rotated).await;
    src.shutdown().await;
}

#[tokio::test]
async fn rotated_file_is_closed_once_quiet_after_its_replacement_has_data() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    let rotated = dir.path().join("auth.log.1");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    fs::rename(&log, &rotated).unwrap();
    append(&log, b"new\n");
    expect_texts(&mut rx, &["new"]).await;
    assert!(holds_open(&rotated));
    tokio::time::sleep(RETIRED_GRACE + Duration::from_millis(100)).await;
    // Closing is checked when the directory next has an event, after the
    // event's lines are delivered.
    append(&log, b"marker\n");
    expect_texts(&mut rx, &["marker"]).await;
    eventually_closed(&rotated).await;
    src.shutdown().await;
}

#[tokio::test]
async fn positions_pass_only_lines_the_consumer_processed() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("auth.log");
    append(&log, b"");
    let (src, mut rx) = start(options(&[&log])).await;
    append(&log, b"one\ntwo\nthree\n");
    // Delivered but not yet processed: a stop now must re-read all three.
    let one = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let two = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let three = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(src.positions()[&log], position(&log, 0));
    one.processed();
    assert_eq!(src.positions()[&log], position(&log, 4));
    two.processed();
    assert_eq!(src.positions()[&log], position(&log, 8));
    // A resume from here reads what was never processed.
    let resume = src.positions();
    src.shutdown().await;
    drop(three);
    let (src, mut rx) = start(FileSourceOptions {
        resume,
        ..options(&[&log])
    })
    .await;
    expect_texts(&mut rx, &["three"]).await;
    wait_position(&src, &log, position(&log, 14)).await;
    src.shutdown().await;
}

/// Issue 10 item 7: a log replaced by a symlink (rotation by swapping a
/// link to a new file, here in another directory) is followed to its
/// target: every line written there is read, in order, also after a second
/// swap to a target in the same directory under a non-matching name.
#[tokio::test]
async fn log_replaced_by_a_symlink_is_followed_to_its_target() {
    let dir = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"before start\n");
    let (_src, mut rx) = start(options(&[&log])).await;
    append(&log, b"plain 1\n");
    expect_texts(&mut rx, &["plain 1"]).await;

    let target = elsewhere.path().join("app-2.log");
    append(&target, b"");
    let tmp = dir.path().join(".app.log.new");
    std::os::unix::fs::symlink(&target, &tmp).unwrap();
    fs::rename(&tmp, &log).unwrap();
    let mut want = Vec::new();
    for i in 0..2000 {
        append(&target, format!("linked {i}\n").as_bytes());
        want.push(format!("linked {i}"));
    }
    for w in &want {
        assert_eq!(next(&mut rx).await.text, *w);
    }

    // Second swap: the target is in the log's own directory, under a name
    // the pattern does not match.
    let target2 = dir.path().join("app-3.data");
    append(&target2, b"");
    std::os::unix::fs::symlink(&target2, &tmp).unwrap();
    fs::rename(&tmp, &log).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..500 {
        append(&target2, format!("linked again {i}\n").as_bytes());
    }
    for i in 0..500 {
        assert_eq!(next(&mut rx).await.text, format!("linked again {i}"));
    }
    // A writer still holding the first target open is drained like any
    // rotated-away file (read once, never twice); the new target goes on.
    append(&target, b"stale target\n");
    append(&target2, b"last\n");
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("last") {
        got.push(next(&mut rx).await.text);
    }
    assert!(
        got.len() <= 2 && got.iter().filter(|l| *l == "last").count() == 1,
        "{got:?}"
    );
    assert!(
        got.iter().all(|l| l == "last" || l == "stale target"),
        "{got:?}"
    );
}

/// A symlink configured from the start, into another directory.
#[tokio::test]
async fn symlink_into_another_directory_is_followed_from_start() {
    let dir = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    let target = elsewhere.path().join("real.log");
    append(&target, b"old\n");
    let log = dir.path().join("app.log");
    std::os::unix::fs::symlink(&target, &log).unwrap();
    let (_src, mut rx) = start(options(&[&log])).await;
    // Past the start-up read: from now on only watches bring lines.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..100 {
        append(&target, format!("l{i}\n").as_bytes());
    }
    for i in 0..100 {
        assert_eq!(next(&mut rx).await.text, format!("l{i}"));
    }
}

/// Issue 10 item 7: a rotated name that a glob follows is overwritten in
/// place by a copy of the live log (same inode, new content, larger than
/// before): the copied lines were read already and are not read again; the
/// live log's new lines are read once.
#[tokio::test]
async fn rotated_file_overwritten_in_place_is_not_read_again() {
    let dir = TempDir::new().unwrap();
    let live = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    append(&rotated, b"an old rotated line\n");
    append(&live, b"");
    let pattern = dir.path().join("app.log*");
    let (src, mut rx) = start(options(&[&pattern])).await;
    let mut lines = Vec::new();
    for i in 0..50 {
        let l = format!("Nov 21 05:28:{:02} host sshd[1]: line {i}", i % 60);
        append(&live, format!("{l}\n").as_bytes());
        lines.push(l);
    }
    for l in &lines {
        assert_eq!(next(&mut rx).await.text, *l);
    }
    let ino = fs::metadata(&rotated).unwrap().ino();
    // Rotation by copy: the old name is rewritten in place (O_TRUNC keeps the
    // inode), then the live log is truncated and written on.
    fs::write(&rotated, fs::read(&live).unwrap()).unwrap();
    assert_eq!(fs::metadata(&rotated).unwrap().ino(), ino, "same inode");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&live)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&live, b"after rotation\n");
    expect_texts(&mut rx, &["after rotation"]).await;
    // Nothing else: no repeated line arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&live, b"end\n");
    expect_texts(&mut rx, &["end"]).await;
    assert!(rx.try_recv().is_err());
    drop(src);
}

/// A followed file rewritten in place with new content (same inode, first
/// line changed, size above the old offset) is read from its start, not
/// from the old offset in the middle of a foreign line.
#[tokio::test]
async fn file_overwritten_with_new_content_is_read_from_its_start() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"first line of the old content\n");
    let (_src, mut rx) = start(options(&[&log])).await;
    append(&log, b"old 1\n");
    expect_texts(&mut rx, &["old 1"]).await;
    let new: String = (0..20).map(|i| format!("new content line {i}\n")).collect();
    fs::write(&log, &new).unwrap();
    for i in 0..20 {
        assert_eq!(next(&mut rx).await.text, format!("new content line {i}"));
    }
}
