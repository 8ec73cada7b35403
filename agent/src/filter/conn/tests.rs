use std::time::{Duration, SystemTime};

use super::*;
use crate::filter::FilterSet;

/// A small sshd-like filter: the connection is the `sshd[pid]: ` prefix.
fn filter() -> FilterSet {
    let fail = [
        r"^Failed \S+ for <F-USER>\S+</F-USER> from <HOST> port \d+",
        r"^Disconnecting: Too many authentication failures",
        r"^<F-NOFAIL>Connection from</F-NOFAIL> <HOST>",
        r"^<F-MLFFORGET><F-MLFGAINED>Accepted \w+</F-MLFGAINED></F-MLFFORGET> for <F-USER>\S+</F-USER> from <HOST>",
        r"^<F-NOFAIL><F-MLFFORGET>Connection closed</F-MLFFORGET></F-NOFAIL> by <HOST>",
        r"^<F-MLFFORGET>Connection reset</F-MLFFORGET> by peer",
    ]
    .map(String::from);
    FilterSet::compile_prefixed(
        Some(r"^<F-MLFID>sshd\[\d+\]: </F-MLFID><F-CONTENT>.+</F-CONTENT>$"),
        &fail,
        &[],
        None,
    )
    .unwrap()
}

struct Run {
    set: FilterSet,
    conns: Connections,
    now: SystemTime,
}

impl Run {
    fn new() -> Run {
        Run {
            set: filter(),
            conns: Connections::with_names(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    /// The host the line is a failure of, if it is one.
    fn line(&mut self, text: &str) -> Option<String> {
        self.viewed(text).0
    }

    fn viewed(&mut self, text: &str) -> (Option<String>, ConnView) {
        let m = self.set.match_line(text, self.now);
        match self.conns.resolve_viewed(m, self.now) {
            (LineMatch::Failure(f), v) => (Some(f.host.to_string()), v),
            (LineMatch::NoMatch { .. } | LineMatch::Ignored { .. }, v) => (None, v),
            (LineMatch::Connection(c), _) => panic!("unresolved {c:?}"),
        }
    }
}

#[test]
fn a_filter_with_mlfid_reports_connection_lines() {
    let set = filter();
    assert!(set.tracks_connections());
    let now = SystemTime::now();
    match set.match_line(
        "sshd[7]: Disconnecting: Too many authentication failures",
        now,
    ) {
        LineMatch::Connection(c) => {
            assert_eq!(c.id.as_bytes(), b"sshd[7]: ");
            assert_eq!(c.host, None);
            assert_eq!(c.regex, 1);
        }
        other => panic!("{other:?}"),
    }
    match set.match_line("sshd[7]: Connection closed by 198.51.100.7", now) {
        LineMatch::Connection(c) => {
            assert_eq!(c.host.unwrap().to_string(), "198.51.100.7");
            assert_eq!(
                c.marks,
                Marks {
                    nofail: true,
                    forget: true,
                    gained: false
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // Lines no failregex matches are no connection's business.
    assert!(matches!(
        set.match_line("sshd[7]: Server listening on 0.0.0.0", now),
        LineMatch::NoMatch { .. }
    ));
    // A filter without <F-MLFID> may not leave out the host; nor may a
    // failregex without one of its own when only another has it.
    let err = FilterSet::compile(&[r"^Disconnecting".to_string()], &[], None).unwrap_err();
    assert!(matches!(err, crate::filter::FilterError::NoHostTag { .. }));
    let err = FilterSet::compile(
        &[
            r"^<F-MLFID>sshd\[\d+\]: </F-MLFID>Disconnecting".to_string(),
            r"^no host tag here".to_string(),
        ],
        &[],
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, crate::filter::FilterError::NoHostTag { place } if place == "failregex[1]"),
        "{err}"
    );
}

#[test]
fn a_line_without_host_takes_its_connections() {
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[10]: Connection from 198.51.100.7 port 4"),
        None
    );
    assert_eq!(
        r.line("sshd[11]: Connection from 203.0.113.9 port 5"),
        None,
        "another connection"
    );
    assert_eq!(
        r.line("sshd[10]: Disconnecting: Too many authentication failures")
            .as_deref(),
        Some("198.51.100.7")
    );
    assert_eq!(
        r.line("sshd[11]: Disconnecting: Too many authentication failures")
            .as_deref(),
        Some("203.0.113.9")
    );
    // A connection nobody introduced: nothing to ban.
    assert_eq!(
        r.line("sshd[12]: Disconnecting: Too many authentication failures"),
        None
    );
}

#[test]
fn a_failure_before_its_host_is_pending_until_the_host_shows() {
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[20]: Disconnecting: Too many authentication failures"),
        None
    );
    // The no-failure line that names the host carries the failure.
    let (host, view) = r.viewed("sshd[20]: Connection from 198.51.100.20 port 1");
    assert_eq!(host.as_deref(), Some("198.51.100.20"));
    assert_eq!(view.lines, 2, "both lines count towards it");
    // Paid out: the next no-failure line is none.
    assert_eq!(
        r.line("sshd[20]: Connection from 198.51.100.20 port 1"),
        None
    );
}

#[test]
fn a_login_ends_the_connection_unless_several_users_were_tried() {
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[30]: Failed password for ann from 198.51.100.30 port 1 ssh2")
            .as_deref(),
        Some("198.51.100.30")
    );
    assert_eq!(
        r.line("sshd[30]: Accepted password for ann from 198.51.100.30 port 1 ssh2"),
        None
    );
    // Forgotten: a hostless line of the same id is no failure of it.
    assert_eq!(
        r.line("sshd[30]: Disconnecting: Too many authentication failures"),
        None
    );

    let mut r = Run::new();
    for user in ["ann", "bob"] {
        let line = format!("sshd[31]: Failed password for {user} from 198.51.100.31 port 1 ssh2");
        assert_eq!(r.line(&line).as_deref(), Some("198.51.100.31"));
    }
    let (host, view) =
        r.viewed("sshd[31]: Accepted password for bob from 198.51.100.31 port 1 ssh2");
    assert_eq!(
        host.as_deref(),
        Some("198.51.100.31"),
        "guessed a user name"
    );
    assert_eq!(view.users, ["ann", "bob"]);
    assert!(r.conns.is_empty(), "the login ended it all the same");
}

#[test]
fn a_disconnect_forgets_and_an_unknown_disconnect_leaves_nothing() {
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[40]: Connection from 198.51.100.40 port 1"),
        None
    );
    assert_eq!(r.conns.len(), 1);
    assert_eq!(r.line("sshd[40]: Connection closed by 198.51.100.40"), None);
    assert!(r.conns.is_empty());
    // Hostless, unknown, ending: no entry, no failure.
    assert_eq!(r.line("sshd[41]: Connection reset by peer"), None);
    assert!(r.conns.is_empty());
}

#[test]
fn lines_outside_a_connection_follow_the_plain_rules() {
    // <F-NOFAIL> with no connection id on the line is no failure.
    let set = FilterSet::compile(
        &[
            r"^<F-NOFAIL>hello</F-NOFAIL> <HOST>$".to_string(),
            r"^bad <HOST>$".to_string(),
        ],
        &[],
        None,
    )
    .unwrap();
    assert!(!set.tracks_connections());
    let now = SystemTime::now();
    assert!(matches!(
        set.match_line("hello 198.51.100.1", now),
        LineMatch::NoMatch { .. }
    ));
    assert!(matches!(
        set.match_line("bad 198.51.100.1", now),
        LineMatch::Failure(_)
    ));
}

#[test]
fn a_connection_is_forgotten_after_its_time() {
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[50]: Connection from 198.51.100.50 port 1"),
        None
    );
    r.now += TTL;
    assert_eq!(
        r.line("sshd[50]: Disconnecting: Too many authentication failures"),
        None,
        "expired: the host is no longer known"
    );
}

#[test]
fn a_full_table_pushes_out_the_oldest_and_counts_it() {
    let mut r = Run::new();
    for pid in 0..CAPACITY + 5 {
        let line = format!("sshd[{pid}]: Connection from 198.51.100.60 port 1");
        assert_eq!(r.line(&line), None);
    }
    assert_eq!(r.conns.len(), CAPACITY);
    assert_eq!(r.conns.take_evictions(), 5);
    assert_eq!(r.conns.take_evictions(), 0);
    // The oldest went; the newest is still known.
    assert_eq!(
        r.line("sshd[0]: Disconnecting: Too many authentication failures"),
        None
    );
    let newest = format!(
        "sshd[{}]: Disconnecting: Too many authentication failures",
        CAPACITY + 4
    );
    assert_eq!(r.line(&newest).as_deref(), Some("198.51.100.60"));
}

#[test]
fn connections_that_end_leave_no_queue_behind() {
    // A long-lived connection at the queue's front, then many that come
    // and go: the eviction queue stays bounded.
    let mut r = Run::new();
    assert_eq!(
        r.line("sshd[1]: Connection from 198.51.100.70 port 1"),
        None
    );
    for pid in 2..50_000 {
        r.line(&format!(
            "sshd[{pid}]: Connection from 198.51.100.71 port 1"
        ));
        r.line(&format!("sshd[{pid}]: Connection closed by 198.51.100.71"));
    }
    assert_eq!(r.conns.len(), 1);
    assert!(
        r.conns.order.len() <= 2 * r.conns.len() + 65,
        "{}",
        r.conns.order.len()
    );
    assert_eq!(
        r.line("sshd[1]: Disconnecting: Too many authentication failures")
            .as_deref(),
        Some("198.51.100.70")
    );
}
