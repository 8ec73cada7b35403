//! Readers: one running source per distinct set of followed files, shared
//! by every jail that follows those files. A line is read, sent and queued
//! once, and handed to the engine once with the reader's route (its jails).
//!
//! Jails share a reader when their log paths are the same patterns (order
//! and repeats aside); a jail with other patterns, even overlapping ones,
//! has a reader of its own, as each journal jail does.
//!
//! Positions stay per jail (`file:{jail}:{path}` rows, as before readers
//! were shared): every jail of a reader processes a line in the same loop
//! turn, so the reader's processed offset is each jail's. A jail may be
//! ahead of its reader in a file: its saved row is past the reader's start
//! (rows of an older agent, whose jails each had a reader), or it joined a
//! running reader (a reload, or a new jail beside jails with saved rows:
//! as an unshared source it would start at the file's end). Such a jail
//! carries a [`StartAfter`]: the reader's lines up to its own start are not
//! for it, and its saved row never goes back.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{JailSettings, SourceSpec};
use crate::engine::routes::ReaderId;
use crate::source::file::FilePosition;
use crate::source::journal::journal_available;
use crate::source::{SourceLine, StartAfter};

/// What a reader reads: jails with equal keys share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReaderKey {
    /// File patterns, sorted, without repeats.
    Files(Vec<String>),
    /// The journal, for one jail.
    Journal { jail: String, matches: Vec<String> },
}

impl ReaderKey {
    /// The key of a jail's source (`auto` decided now: the files if any of
    /// them is there, else the journal if there is one).
    pub(super) fn of(jail: &JailSettings) -> ReaderKey {
        match choose_source(&jail.source) {
            SourceSpec::Journal(matches) => ReaderKey::Journal {
                jail: jail.name.clone(),
                matches,
            },
            SourceSpec::Files(mut patterns)
            | SourceSpec::FilesOrJournal {
                files: mut patterns,
                ..
            } => {
                patterns.sort();
                patterns.dedup();
                ReaderKey::Files(patterns)
            }
        }
    }
}

/// Files if any of them is there now; otherwise the journal, if this
/// machine has one; otherwise wait for the files.
fn choose_source(spec: &SourceSpec) -> SourceSpec {
    match spec {
        SourceSpec::FilesOrJournal {
            files,
            journalmatch,
        } => {
            let any_file = files.iter().any(|p| {
                let path = Path::new(p);
                if p.contains(['*', '?', '[']) {
                    path.parent().is_some_and(Path::exists)
                } else {
                    path.exists()
                }
            });
            if !any_file && journal_available() {
                SourceSpec::Journal(journalmatch.clone())
            } else {
                SourceSpec::Files(files.clone())
            }
        }
        other => other.clone(),
    }
}

/// A jail reading a reader's lines.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) jail: String,
    /// Where the jail is ahead of the reader (module docs).
    pub(super) starts: Vec<StartAfter>,
}

impl Member {
    pub(super) fn new(jail: String) -> Member {
        Member {
            jail,
            starts: Vec::new(),
        }
    }

    /// The position to save for the jail: the reader's, or the jail's own
    /// start while the reader has not passed it.
    pub(super) fn position(&self, file: &crate::source::file::FollowedFile) -> FilePosition {
        let mut pos = file.position;
        for s in &self.starts {
            if let Some(until) = s.pending_for(&file.progress) {
                pos.offset = pos.offset.max(until);
            }
        }
        pos
    }
}

/// Where a jail joining a reader starts in one of its files (`file`: its
/// device and inode; `size`: that file's size when the jail joined, if it
/// is still the file at that path): the jail has had the lines up to the
/// returned offset.
///
/// - The jail saved a position in this very file: it had processed up to
///   there (unless the file is shorter now: it was truncated, and the
///   jail reads it again with the reader).
/// - Otherwise the file is new to it and it starts at the end, as an
///   unshared source would.
pub(super) fn start_in_file(
    saved: Option<&FilePosition>,
    file: (u64, u64),
    size: Option<u64>,
) -> Option<u64> {
    match saved {
        Some(p) if (p.dev, p.inode) == file => {
            (size.is_none_or(|s| p.offset <= s)).then_some(p.offset)
        }
        _ => size,
    }
}

/// Where a reader shared by jails resumes, from their saved rows: per
/// path, the earliest row of the file on disk now (`on_disk`: its device
/// and inode), so that no jail misses a line; the jails that had got
/// further skip up to their own rows. Rows of a file no longer there (it
/// was rotated while the agent was stopped) resume the rotation rules
/// from the earliest of them.
pub(super) fn shared_resume(
    saved: &[HashMap<PathBuf, FilePosition>],
    on_disk: impl Fn(&Path) -> Option<(u64, u64)>,
) -> HashMap<PathBuf, FilePosition> {
    let mut by_path: BTreeMap<&PathBuf, Vec<FilePosition>> = BTreeMap::new();
    for rows in saved {
        for (path, pos) in rows {
            by_path.entry(path).or_default().push(*pos);
        }
    }
    by_path
        .into_iter()
        .filter_map(|(path, rows)| {
            let now = on_disk(path);
            let current = rows
                .iter()
                .filter(|p| Some((p.dev, p.inode)) == now)
                .min_by_key(|p| p.offset);
            let chosen = current.or_else(|| rows.iter().min_by_key(|p| p.offset))?;
            Some((path.clone(), *chosen))
        })
        .collect()
}

/// Device, inode and size of the file at `path` now.
pub(super) fn stat(path: &Path) -> Option<(u64, u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size()))
}

/// Readers of a config's jails at start: one per key, its jails in config
/// order, readers in the order of their first jail.
pub(super) fn group(jails: &[(String, ReaderKey)]) -> Vec<(ReaderKey, Vec<String>)> {
    let mut groups: Vec<(ReaderKey, Vec<String>)> = Vec::new();
    for (name, key) in jails {
        match groups.iter_mut().find(|(k, _)| k == key) {
            Some((_, names)) => names.push(name.clone()),
            None => groups.push((key.clone(), vec![name.clone()])),
        }
    }
    groups
}

/// What a reload changes in the readers.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ReloadPlan {
    /// (reader, jail): jails that stop reading a running reader (removed,
    /// or their source changed).
    pub(super) leave: Vec<(ReaderId, String)>,
    /// (reader, jail): jails that start reading a running reader of their
    /// (new or changed) source.
    pub(super) join: Vec<(ReaderId, String)>,
    /// Readers to open, each with its jails.
    pub(super) open: Vec<(ReaderKey, Vec<String>)>,
    /// Running readers no jail reads any more.
    pub(super) stop: Vec<ReaderId>,
}

/// The readers a reload needs. `running`: each reader's id, key and jails;
/// `jails`: the new config's jails with their keys; `restart`: the jails
/// whose source is new or changed. A jail whose source changed but whose
/// key did not (patterns reordered) stays where it is; a running reader
/// keeps running as long as some jail reads it, old or joining.
pub(super) fn plan_reload(
    running: &[(ReaderId, ReaderKey, Vec<String>)],
    jails: &[(String, ReaderKey)],
    restart: &[String],
) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let reader_of = |name: &str| running.iter().find(|(_, _, m)| m.iter().any(|j| j == name));
    let mut kept: HashMap<ReaderId, usize> = HashMap::new();
    for (id, key, members) in running {
        let mut n = 0;
        for m in members {
            match jails.iter().find(|(j, _)| j == m) {
                Some((_, k)) if !restart.contains(m) || k == key => n += 1,
                _ => plan.leave.push((*id, m.clone())),
            }
        }
        kept.insert(*id, n);
    }
    let mut open: Vec<(ReaderKey, Vec<String>)> = Vec::new();
    for (name, key) in jails {
        if let Some((_, k, _)) = reader_of(name) {
            if !restart.contains(name) || k == key {
                continue;
            }
        }
        match running.iter().find(|(_, k, _)| k == key) {
            Some((id, _, _)) => {
                plan.join.push((*id, name.clone()));
                *kept.entry(*id).or_default() += 1;
            }
            None => match open.iter_mut().find(|(k, _)| k == key) {
                Some((_, names)) => names.push(name.clone()),
                None => open.push((key.clone(), vec![name.clone()])),
            },
        }
    }
    plan.open = open;
    plan.stop = running
        .iter()
        .filter(|(id, _, _)| kept.get(id) == Some(&0))
        .map(|(id, _, _)| *id)
        .collect();
    plan
}

/// Member positions `line` is not for (jails still before their start).
pub(super) fn except(members: &[Member], line: &SourceLine) -> Vec<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.starts.iter().any(|s| s.covers(line)))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(p: &[&str]) -> ReaderKey {
        ReaderKey::Files(p.iter().map(|s| s.to_string()).collect())
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn pos(inode: u64, offset: u64) -> FilePosition {
        FilePosition {
            dev: 1,
            inode,
            offset,
        }
    }

    #[test]
    fn jails_on_the_same_patterns_share_a_reader() {
        let mut settings = crate::config::Config::parse(
            "[jails.a]\nlogpath = [\"/l/b.log\", \"/l/a.log\"]\nfailregex = ['x <HOST>']\n\
             [jails.b]\nlogpath = [\"/l/a.log\", \"/l/b.log\", \"/l/a.log\"]\nfailregex = ['y <HOST>']\n\
             [jails.c]\nlogpath = [\"/l/a.log\"]\nfailregex = ['z <HOST>']\n",
        )
        .unwrap()
        .validate()
        .unwrap()
        .jails;
        // Journal jails never share, even with the same matches.
        let mut j = settings[2].clone();
        j.name = "j1".into();
        j.source = SourceSpec::Journal(vec!["_COMM=sshd".into()]);
        let mut j2 = j.clone();
        j2.name = "j2".into();
        settings.extend([j, j2]);
        let keyed: Vec<(String, ReaderKey)> = settings
            .iter()
            .map(|s| (s.name.clone(), ReaderKey::of(s)))
            .collect();
        assert_eq!(keyed[0].1, files(&["/l/a.log", "/l/b.log"]));
        let groups: Vec<Vec<String>> = group(&keyed).into_iter().map(|g| g.1).collect();
        assert_eq!(
            groups,
            [
                names(&["a", "b"]),
                names(&["c"]),
                names(&["j1"]),
                names(&["j2"])
            ]
        );
    }

    #[test]
    fn a_shared_reader_resumes_at_the_earliest_row_of_the_file_there_now() {
        let p = PathBuf::from("/l/auth.log");
        let q = PathBuf::from("/l/other.log");
        let a = HashMap::from([(p.clone(), pos(7, 500)), (q.clone(), pos(9, 40))]);
        let b = HashMap::from([(p.clone(), pos(7, 300))]);
        // A row of the previous file (rotated away): not the earliest of
        // the file there now.
        let c = HashMap::from([(p.clone(), pos(6, 100))]);
        let resume = shared_resume(&[a.clone(), b.clone(), c.clone()], |path| {
            (path == p).then_some((1, 7))
        });
        assert_eq!(resume[&p], pos(7, 300), "b's row: a is ahead of it");
        // No file there now: the earliest row (rotation rules).
        assert_eq!(resume[&q], pos(9, 40));
        let rotated = shared_resume(&[a, c], |_| Some((1, 8)));
        assert_eq!(rotated[&p], pos(6, 100));
        assert!(shared_resume(&[HashMap::new()], |_| None).is_empty());
    }

    #[test]
    fn a_jail_starts_at_its_own_row_or_at_the_end_of_a_file_new_to_it() {
        let row = pos(7, 500);
        assert_eq!(start_in_file(Some(&row), (1, 7), Some(900)), Some(500));
        // Its row is of another file: the end, as for a new jail.
        assert_eq!(start_in_file(Some(&row), (1, 8), Some(900)), Some(900));
        assert_eq!(start_in_file(None, (1, 7), Some(900)), Some(900));
        assert_eq!(start_in_file(None, (1, 7), None), None);
        // Its file is shorter than its row now (truncated): no start of
        // its own, it reads the file again with the reader.
        assert_eq!(start_in_file(Some(&row), (1, 7), Some(200)), None);
    }

    #[test]
    fn a_reload_moves_jails_between_readers_and_stops_empty_ones() {
        let auth = files(&["/l/auth.log"]);
        let web = files(&["/l/web.log"]);
        let mail = files(&["/l/mail.log"]);
        let running = vec![
            (1, auth.clone(), names(&["ssh", "ssh-ddos", "old"])),
            (2, web.clone(), names(&["web"])),
        ];
        let jails = vec![
            ("ssh".to_string(), auth.clone()),
            // Moved from auth.log to web.log, which web reads already.
            ("ssh-ddos".to_string(), web.clone()),
            // web moves to mail.log with a new jail: one new reader.
            ("web".to_string(), mail.clone()),
            ("postfix".to_string(), mail.clone()),
            // New on auth.log: joins the running reader.
            ("recidive".to_string(), auth.clone()),
        ];
        let restart = names(&["ssh-ddos", "web", "postfix", "recidive"]);
        let plan = plan_reload(&running, &jails, &restart);
        assert_eq!(
            plan,
            ReloadPlan {
                leave: vec![(1, "ssh-ddos".into()), (1, "old".into()), (2, "web".into())],
                join: vec![(2, "ssh-ddos".into()), (1, "recidive".into())],
                open: vec![(mail, names(&["web", "postfix"]))],
                stop: vec![],
            }
        );
        // Every jail of a reader gone, none joining: it stops.
        let plan = plan_reload(&running, &jails[..1], &[]);
        assert_eq!(plan.stop, vec![2]);
        assert_eq!(
            plan.leave,
            vec![(1, "ssh-ddos".into()), (1, "old".into()), (2, "web".into())]
        );
        // A changed source with the same key (patterns reordered) stays.
        let plan = plan_reload(&running, &jails[..1], &names(&["ssh"]));
        assert!(!plan.leave.contains(&(1, "ssh".into())));
        assert!(plan.join.is_empty() && plan.open.is_empty());
    }
}
