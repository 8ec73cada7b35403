//! The `<HOST>` group of a split plan, matched by hand.
//!
//! On a log under attack nearly every matched line has an address, and the
//! lazy DFA of `<HOST>`'s body (an IPv4 address, a bracketed IPv6 address
//! or a host name) is in a match state after almost every byte, which sends
//! each byte through its slow path: that search cost more than the rest of
//! the walk. The body is simple enough to follow directly.
//!
//! Used only for a group whose body is exactly [`HOST_BODY`] as the filter
//! compiler parses it (compared as a `Hir`): if `<HOST>` is ever written
//! otherwise, the comparison fails and the plan keeps the DFA. The answer
//! is the DFA's, the end of the body's leftmost-first match: the body is
//! searched alone, with nothing after it, so every repetition's first path
//! is its greedy one (the tests check it against the DFA on generated
//! text).

use std::sync::OnceLock;

use regex_syntax::hir::Hir;

/// `<HOST>`'s body as `filter::host` writes it (IPv4 after `[` with an
/// optional `]`, IPv4, IPv6 with optional brackets and zone, host name),
/// in that priority.
const HOST_BODY: &str = concat!(
    r"\[[0-9]{1,3}(?:\.[0-9]{1,3}){3}\]?",
    r"|[0-9]{1,3}(?:\.[0-9]{1,3}){3}",
    r"|\[?(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?(?:%[0-9A-Za-z_.-]+)?\]?",
    r"|[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
);

/// Whether `hir` is [`HOST_BODY`], parsed as the filter compiler parses a
/// failregex.
pub(super) fn is_host_body(hir: &Hir) -> bool {
    static BODY: OnceLock<Option<Hir>> = OnceLock::new();
    BODY.get_or_init(|| regex_automata::util::syntax::parse(HOST_BODY).ok())
        .as_ref()
        .is_some_and(|body| body == hir)
}

/// `<SSHD_PID>`'s connection group as `filter::host` writes it.
const SSHD_PID_BODY: &str = r"(?:[\w.@:-]+ )?sshd(?:-session|-auth)?\[[0-9]+\]:? ";

/// Whether `hir` is [`SSHD_PID_BODY`], parsed as a failregex is (after the
/// ASCII rewrite of `\w`).
pub(super) fn is_sshd_pid_body(hir: &Hir) -> bool {
    static BODY: OnceLock<Option<Hir>> = OnceLock::new();
    BODY.get_or_init(|| {
        regex_automata::util::syntax::parse(&crate::filter::host::asciify(SSHD_PID_BODY)).ok()
    })
    .as_ref()
    .is_some_and(|body| body == hir)
}

/// Where [`SSHD_PID_BODY`]'s leftmost-first match anchored at `at` ends:
/// with the host field when one is there and the daemon follows it, else
/// the daemon right at `at`.
pub(super) fn sshd_pid_end(text: &[u8], at: usize) -> Option<usize> {
    let n = run(text, at, usize::MAX, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'@' | b':' | b'-')
    });
    if n > 0 && text.get(at + n) == Some(&b' ') {
        if let Some(e) = sshd_daemon_end(text, at + n + 1) {
            return Some(e);
        }
    }
    sshd_daemon_end(text, at)
}

/// `sshd(?:-session|-auth)?\[[0-9]+\]:? ` at `at`.
fn sshd_daemon_end(text: &[u8], at: usize) -> Option<usize> {
    let rest = text.get(at..)?;
    let mut pos = at + 4;
    if !rest.starts_with(b"sshd") {
        return None;
    }
    for suffix in [&b"-session"[..], b"-auth"] {
        if text[pos..].starts_with(suffix) {
            pos += suffix.len();
            break;
        }
    }
    if text.get(pos) != Some(&b'[') {
        return None;
    }
    let digits = run(text, pos + 1, usize::MAX, digit);
    if digits == 0 || text.get(pos + 1 + digits) != Some(&b']') {
        return None;
    }
    pos += digits + 2;
    if text.get(pos) == Some(&b':') && text.get(pos + 1) == Some(&b' ') {
        return Some(pos + 2);
    }
    (text.get(pos) == Some(&b' ')).then_some(pos + 1)
}

/// Where [`HOST_BODY`]'s leftmost-first match anchored at `at` ends.
pub(super) fn host_end(text: &[u8], at: usize) -> Option<usize> {
    bracketed_ip4_end(text, at)
        .or_else(|| ip4_end(text, at))
        .or_else(|| bracketed_ip6_end(text, at))
        .or_else(|| hostname_end(text, at))
}

/// The length of the run of `class` bytes at `at`, counted up to `max`.
#[inline]
fn run(text: &[u8], at: usize, max: usize, class: impl Fn(u8) -> bool) -> usize {
    let rest = text.get(at..).unwrap_or_default();
    let mut n = 0;
    while n < max && n < rest.len() && class(rest[n]) {
        n += 1;
    }
    n
}

fn digit(c: u8) -> bool {
    c.is_ascii_digit()
}

fn hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// `[0-9]{1,3}(?:\.[0-9]{1,3}){3}`. A group followed by `.` must be its
/// whole digit run (fewer digits leave a digit where the `.` must be); the
/// last takes up to three.
fn ip4_end(text: &[u8], at: usize) -> Option<usize> {
    let mut pos = at;
    for group in 0..4 {
        if group > 0 {
            if text.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
        let n = run(text, pos, 3, digit);
        if n == 0 {
            return None;
        }
        pos += n;
    }
    Some(pos)
}

/// `\[IP4\]?`: the `]` taken when it is there.
fn bracketed_ip4_end(text: &[u8], at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'[') {
        return None;
    }
    let pos = ip4_end(text, at + 1)?;
    Some(pos + usize::from(text.get(pos) == Some(&b']')))
}

/// `\[?IP6\]?`. With a `[` that IP6 does not follow, the path without it
/// fails too (IP6 cannot start with `[`).
fn bracketed_ip6_end(text: &[u8], at: usize) -> Option<usize> {
    let start = at + usize::from(text.get(at) == Some(&b'['));
    let mut pos = ip6_end(text, start)?;
    if text.get(pos) == Some(&b']') {
        pos += 1;
    }
    Some(pos)
}

/// `(?:[0-9A-Fa-f]{0,4}:){2,7}(?:IP4|[0-9A-Fa-f]{1,4})?(?:%[0-9A-Za-z_.-]+)?`.
/// An iteration's hex run must be whole (fewer leave a hex digit where the
/// `:` must be), so the greedy path takes as many iterations as there are;
/// everything after them is optional, so that path completes.
fn ip6_end(text: &[u8], at: usize) -> Option<usize> {
    let mut pos = at;
    let mut iterations = 0;
    while iterations < 7 {
        let n = run(text, pos, 5, hex);
        if n > 4 || text.get(pos + n) != Some(&b':') {
            break;
        }
        pos += n + 1;
        iterations += 1;
    }
    if iterations < 2 {
        return None;
    }
    if let Some(end) = ip4_end(text, pos) {
        pos = end;
    } else {
        pos += run(text, pos, 4, hex);
    }
    if text.get(pos) == Some(&b'%') {
        let n = run(text, pos + 1, usize::MAX, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
        });
        if n > 0 {
            pos += 1 + n;
        }
    }
    Some(pos)
}

/// `[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?`: after the first
/// character, up to the last alphanumeric one of the run that follows.
fn hostname_end(text: &[u8], at: usize) -> Option<usize> {
    if !text.get(at)?.is_ascii_alphanumeric() {
        return None;
    }
    let n = run(text, at + 1, usize::MAX, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
    });
    let tail = &text[at + 1..at + 1 + n];
    Some(match tail.iter().rposition(u8::is_ascii_alphanumeric) {
        Some(last) => at + 1 + last + 1,
        None => at + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::dfa::ForwardDfa;

    /// The hand matcher `end` and the DFA end at every start in `text`.
    fn same_ends(end: fn(&[u8], usize) -> Option<usize>, dfa: &ForwardDfa, text: &str) {
        for at in (0..=text.len()).filter(|&at| text.is_char_boundary(at)) {
            assert_eq!(
                end(text.as_bytes(), at),
                dfa.anchored_end(text, at),
                "{text:?} at {at}"
            );
        }
    }

    fn dfa() -> ForwardDfa {
        let hir = regex_automata::util::syntax::parse(HOST_BODY).unwrap();
        ForwardDfa::anchored(&hir).unwrap()
    }

    /// The body is what `filter::host` expands `<HOST>` to: the built-in
    /// sshd filter's plans follow it by hand (see `split_tests`).
    #[test]
    fn the_body_is_hosts_expansion() {
        let e = crate::filter::host::expand(r"^x <HOST> y$", "failregex[0]").unwrap();
        let hir = regex_automata::util::syntax::parse(&e.pattern).unwrap();
        let regex_syntax::hir::HirKind::Concat(items) = hir.kind() else {
            panic!("{hir:?}")
        };
        let found = items.iter().any(|h| match h.kind() {
            regex_syntax::hir::HirKind::Capture(c) => is_host_body(&c.sub),
            _ => false,
        });
        assert!(found, "{}", e.pattern);
        assert!(!is_host_body(
            &regex_automata::util::syntax::parse(r"[0-9]+").unwrap()
        ));
    }

    #[test]
    fn ends_are_the_dfas_on_chosen_text() {
        let dfa = dfa();
        let cases = [
            "1.2.3.4",
            "[1.2.3.4]",
            "[1.2.3.4]:22",
            "[1.2.3.4 x",
            "[1.2.3",
            "[1.2.3.4::1]",
            "1.2.3.4567 x",
            "1234.5.6.7",
            "100.64.6.116 port 22",
            "1.2.3",
            "1.2.3.",
            "::ffff:1.2.3.4",
            "::ffff:1.2.3",
            "2001:db8:bad::51d port 1",
            "[2001:db8::1]:22",
            "[2001:db8::1",
            "2001:db8::1]",
            "fe80::1%eth0 x",
            "fe80::1% x",
            "fe80::12345",
            "1:2:3:4:5:6:7:8:9:0",
            "12345:6::",
            "a:b",
            "a::",
            "[::]",
            "[x",
            "host-name.",
            "host-name.example.org. x",
            "a..b",
            "a-_",
            "-a",
            "_a",
            ".",
            "",
            "é",
            "aé",
        ];
        for text in cases {
            same_ends(host_end, &dfa, text);
        }
    }

    /// `<SSHD_PID>`'s group is found in the built-in sshd filter's plans,
    /// and ends where its DFA does.
    #[test]
    fn the_sshd_connection_head_is_followed_by_hand() {
        let e = crate::filter::host::expand(r"^<SSHD_PID>x <HOST>$", "failregex[0]").unwrap();
        let hir = regex_automata::util::syntax::parse(&e.pattern).unwrap();
        let regex_syntax::hir::HirKind::Concat(items) = hir.kind() else {
            panic!("{hir:?}")
        };
        let body = items
            .iter()
            .find_map(|h| match h.kind() {
                regex_syntax::hir::HirKind::Capture(c) if is_sshd_pid_body(&c.sub) => {
                    Some(c.sub.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no connection group in {}", e.pattern));
        let dfa = ForwardDfa::anchored(&body).unwrap();
        let parts = [
            "sshd",
            "sshd-session",
            "sshd-auth",
            "-sess",
            "[",
            "]",
            "12",
            ":",
            " ",
            "host",
            "a.b",
            "@",
            "x",
            "[1]",
            "sshd[7]: ",
            "h ",
            "-",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut text = String::new();
        for _ in 0..40_000 {
            text.clear();
            for _ in 0..rng.usize(0..8) {
                text.push_str(parts[rng.usize(..parts.len())]);
            }
            same_ends(sshd_pid_end, &dfa, &text);
        }
        for text in [
            "bastion sshd[12]: x",
            "sshd[12]: x",
            "bastion sshd-session[1] x",
            "a b sshd[1]: ",
            "sshd-auth[2]:x",
            "host sshd: x",
        ] {
            same_ends(sshd_pid_end, &dfa, text);
        }
    }

    #[test]
    fn ends_are_the_dfas_on_generated_text() {
        let dfa = dfa();
        let parts = [
            "1", "12", "123", "1234", "0", ".", ":", "::", "[", "]", "%", "eth0", "ab", "ABCD",
            "abcde", "f", "-", "_", " ", "g", "Z", "255.", "a:", "1:",
        ];
        let mut rng = fastrand::Rng::with_seed(12);
        let mut text = String::new();
        for _ in 0..40_000 {
            text.clear();
            for _ in 0..rng.usize(0..12) {
                text.push_str(parts[rng.usize(..parts.len())]);
            }
            same_ends(host_end, &dfa, &text);
        }
    }
}
