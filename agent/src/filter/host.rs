//! Tag expansion (`<HOST>`, `<ADDR>`, `<F-USER>`, the built-in macros) and
//! validation of the address a failregex captured.
//!
//! The regex crate has no look-around, so address boundaries are checked on
//! the captured span's neighbours after the match, and every
//! captured address is re-parsed with `std` before it is believed
//! ([`parse_host`]).

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::{FilterError, Host};

/// What a host tag accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// `<HOST>`: an address or a hostname.
    Host,
    /// `<ADDR>`: an IPv4 or IPv6 address, never a name.
    Addr,
    /// `<IP4>`: IPv4 only.
    Ip4,
    /// `<IP6>`: IPv6 only (IPv4-mapped forms are returned as IPv4).
    Ip6,
}

const IP4: &str = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}";
// The embedded-IPv4 tail is listed before the hex tail: leftmost-first
// alternation would otherwise stop `::ffff:1.2.3.4` at `::ffff:1`.
const IP6: &str = concat!(
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}",
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?",
    r"(?:%[0-9A-Za-z_.-]+)?"
);
const HOSTNAME: &str = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?";

fn host_body(kind: HostKind) -> String {
    // An IPv4 address may stand in brackets (`TCP:[1.2.3.4]:5060`,
    // `client [1.2.3.4]`), the closing one optional as in fail2ban
    // (`- <ADDR>\b` on `- [1.2.3.4] x` ends before the `]`); parse_host
    // strips them. A bare address takes no `]`: `unknown\[<HOST>\]`
    // stays one path, which the split walk follows.
    let ip4 = format!(r"\[{IP4}\]?|{IP4}");
    match kind {
        HostKind::Ip4 => ip4,
        // Brackets are optional on each side to keep the automaton small;
        // parse_host only strips a matched pair, so `[::1` is rejected.
        HostKind::Ip6 => format!(r"\[?{IP6}\]?"),
        HostKind::Addr => format!(r"{ip4}|\[?{IP6}\]?"),
        HostKind::Host => format!(r"{ip4}|\[?{IP6}\]?|{HOSTNAME}"),
    }
}

/// Built-in macros, expanded before the host/user tags (they may contain
/// them). Documented in the module docs of `filter`.
const MACROS: &[(&str, &str)] = &[
    // Optional syslog host field left after the leading timestamp was cut.
    // Journal lines (`ident[pid]: msg`) simply have none.
    ("<PREFIX>", r"(?:[\w.@:-]+ )?"),
    // sshd / sshd-session / sshd-auth (OpenSSH >= 9.8 split the daemon),
    // the Solaris message-id tag and the `error:`/`fatal:` level word.
    (
        "<SSHD>",
        r"(?:[\w.@:-]+ )?(?:sshd(?:-session|-auth)?(?:\[[0-9]+\])?:?|\[sshd\]:?) (?:\[ID [0-9]+ [\w.]+\] )?(?:(?:error|fatal): )?",
    ),
    // <SSHD> with the connection (`host sshd[pid]: `) as <F-MLFID>, one
    // group at the top level (so the split walk still plans the line), the
    // pid required: without one, every line of the host would be one
    // connection.
    (
        "<SSHD_PID>",
        r"<F-MLFID>(?:[\w.@:-]+ )?sshd(?:-session|-auth)?\[[0-9]+\]:? </F-MLFID>(?:\[ID [0-9]+ [\w.]+\] )?(?:(?:error|fatal): )?",
    ),
    // Apache error-log head up to and including `[client ADDR(:port)] ` and
    // an optional `AHnnnnn: ` message id. Works for the file (timestamp cut)
    // and for `ErrorLog syslog`.
    (
        "<APACHE_CLIENT>",
        r"(?:[\w.@:-]+ )?(?:(?:apache2?|httpd)(?:/[\w.-]+)?(?:\[[0-9]+\])?: )?\[(?:[\w-]*:)?[a-z]+[0-9]?\] (?:\[pid [0-9]+(?::tid [0-9]+)?\] )?\[client <HOST>(?::[0-9]{1,5})?\] (?:AH[0-9]{5}: )?",
    ),
    // nginx error-log head after the timestamp: `[level] pid#tid: *conn `.
    (
        "<NGINX_ERROR>",
        r"(?:[\w.@:-]+ )?(?:nginx(?:\[[0-9]+\])?: )?\[[a-z]+\] [0-9]+#[0-9]+: (?:\*[0-9]+ )?",
    ),
];

/// Names of the macros, for documentation and error messages.
pub const MACRO_NAMES: &[&str] = &[
    "<PREFIX>",
    "<SSHD>",
    "<SSHD_PID>",
    "<APACHE_CLIENT>",
    "<NGINX_ERROR>",
];

/// Prefix of the groups `<SKIPLINES>` expands to, numbered from 0.
pub(crate) const SKIPLINES_GROUP: &str = "xban_skiplines";

/// A failregex after tag expansion.
#[derive(Debug, Clone)]
pub(crate) struct Expanded {
    pub pattern: String,
    /// Capture-group names of host tags, in order of appearance.
    pub hosts: Vec<(String, HostKind)>,
    /// Capture-group names of user tags.
    pub users: Vec<String>,
    /// The group of `<F-CONTENT>...</F-CONTENT>` (a prefregex only).
    pub content: Option<String>,
    /// Capture-group names of `<F-ALT_USER>`: the user when no `<F-USER>`
    /// captured one.
    pub alt_users: Vec<String>,
    /// Capture-group names of the connection tags ([`Mark`]).
    pub marks: Vec<(String, Mark)>,
}

/// fail2ban's per-connection field tags, each a paired group
/// (`<F-MLFID>...</F-MLFID>`): what they captured, or whether they took
/// part, drives the connection state ([`super::conn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `<F-MLFID>`: the connection's identity (e.g. `host sshd[pid]: `).
    Id,
    /// `<F-NOFAIL>`: the line belongs to a connection but is no failure.
    NoFail,
    /// `<F-MLFFORGET>`: the connection ended; forget it.
    Forget,
    /// `<F-MLFGAINED>`: the connection logged in.
    Gained,
}

impl Mark {
    fn of(tag: &str) -> Option<(Mark, &'static str)> {
        Some(match tag {
            "F-MLFID" => (Mark::Id, "mlfid"),
            "F-NOFAIL" => (Mark::NoFail, "nofail"),
            "F-MLFFORGET" => (Mark::Forget, "forget"),
            "F-MLFGAINED" => (Mark::Gained, "gained"),
            _ => return None,
        })
    }
}

/// The group name `<F-CONTENT>` expands to.
const CONTENT_GROUP: &str = "xban_content";

/// Expands macros, host tags and `<F-USER>` in `regex`. `place` names the
/// regex in errors (e.g. `failregex[2]`).
pub(crate) fn expand(regex: &str, place: &str) -> Result<Expanded, FilterError> {
    expand_tags(regex, place, false)
}

/// [`expand`] for a `prefregex`, which may also hold one
/// `<F-CONTENT>...</F-CONTENT>`: the part of the line its failregexes see.
pub(crate) fn expand_prefix(regex: &str, place: &str) -> Result<Expanded, FilterError> {
    expand_tags(regex, place, true)
}

fn expand_tags(regex: &str, place: &str, prefix: bool) -> Result<Expanded, FilterError> {
    // fail2ban's `%(name)s` interpolation would otherwise be literal text
    // that never matches.
    if let Some(p) = regex.find("%(") {
        if let Some(q) = regex[p..].find(")s") {
            return Err(FilterError::BadTag {
                place: place.to_string(),
                tag: regex[p..p + q + 2].to_string(),
                fix: "fail2ban interpolation is not supported; write the text out or use <PREFIX>"
                    .to_string(),
            });
        }
    }
    // Macros may contain <HOST>, so they go first. They do not contain
    // other macros, so one pass is enough.
    let mut src = regex.to_string();
    for (name, body) in MACROS {
        if src.contains(name) {
            src = src.replace(name, body);
        }
    }

    let mut out = String::with_capacity(src.len() * 2);
    let mut hosts = Vec::new();
    let mut users = Vec::new();
    let mut open_user = false;
    let mut alt_users = Vec::new();
    let mut marks: Vec<(String, Mark)> = Vec::new();
    // Paired field tags (connection marks, <F-ALT_USER>) open now.
    let mut open_fields: Vec<String> = Vec::new();
    // None: no <F-CONTENT> yet; Some(true): open; Some(false): closed.
    let mut content: Option<bool> = None;
    let mut rest = src.as_str();
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let tail = &rest[lt..];
        // An escaped `\<` is a literal.
        if out.ends_with('\\') && !out.ends_with("\\\\") {
            out.push('<');
            rest = &tail[1..];
            continue;
        }
        let Some(gt) = tail.find('>') else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let tag = &tail[..=gt];
        let after = &tail[gt + 1..];
        let host_kind = match tag {
            "<HOST>" => Some(HostKind::Host),
            "<ADDR>" => Some(HostKind::Addr),
            "<IP4>" => Some(HostKind::Ip4),
            "<IP6>" => Some(HostKind::Ip6),
            _ => None,
        };
        if let Some(kind) = host_kind {
            let name = format!("xban_host{}", hosts.len());
            out.push_str(&format!("(?P<{name}>{})", host_body(kind)));
            hosts.push((name, kind));
        } else if tag == "<F-USER>" {
            if open_user {
                return Err(FilterError::BadTag {
                    place: place.to_string(),
                    tag: tag.to_string(),
                    fix: "close the previous <F-USER> with </F-USER> first".to_string(),
                });
            }
            let name = format!("xban_user{}", users.len());
            // The paired form wraps a sub-pattern; a lone <F-USER> (no
            // closing tag before the next <F-USER>) stands for one token.
            let next_open = after.find("<F-USER>").unwrap_or(after.len());
            if after[..next_open].contains("</F-USER>") {
                out.push_str(&format!("(?P<{name}>"));
                open_user = true;
            } else {
                out.push_str(&format!(r"(?P<{name}>\S+)"));
            }
            users.push(name);
        } else if tag == "</F-USER>" {
            if !open_user {
                return Err(FilterError::BadTag {
                    place: place.to_string(),
                    tag: tag.to_string(),
                    fix: "add the opening <F-USER> before it or remove it".to_string(),
                });
            }
            out.push(')');
            open_user = false;
        } else if prefix && tag == "<F-CONTENT>" {
            if content.is_some() {
                return Err(FilterError::BadTag {
                    place: place.to_string(),
                    tag: tag.to_string(),
                    fix: "a prefregex has one <F-CONTENT>...</F-CONTENT>; remove the second"
                        .to_string(),
                });
            }
            out.push_str(&format!("(?P<{CONTENT_GROUP}>"));
            content = Some(true);
        } else if prefix && tag == "</F-CONTENT>" {
            if content != Some(true) {
                return Err(FilterError::BadTag {
                    place: place.to_string(),
                    tag: tag.to_string(),
                    fix: "add the opening <F-CONTENT> before it or remove it".to_string(),
                });
            }
            out.push(')');
            content = Some(false);
        } else if let Some(field) = paired_field(tag) {
            let (closing, name) = field;
            if closing {
                if open_fields.last().map(String::as_str) != Some(name) {
                    return Err(FilterError::BadTag {
                        place: place.to_string(),
                        tag: tag.to_string(),
                        fix: format!("it closes no open <{name}>: add <{name}> before it, or close the inner field tags first"),
                    });
                }
                open_fields.pop();
                out.push(')');
            } else {
                let group = match Mark::of(name) {
                    Some((mark, short)) => {
                        let g = format!("xban_{short}{}", marks.len());
                        marks.push((g.clone(), mark));
                        g
                    }
                    None => {
                        let g = format!("xban_altuser{}", alt_users.len());
                        alt_users.push(g.clone());
                        g
                    }
                };
                out.push_str(&format!("(?P<{group}>"));
                open_fields.push(name.to_string());
            }
        } else if tag.starts_with("<F-") || tag.starts_with("</F-") {
            let fix = if tag.contains("F-CONTENT") {
                "<F-CONTENT> belongs in a prefregex; in a failregex, remove it"
            } else if prefix {
                "a prefregex supports <F-CONTENT>, <F-USER>, <F-ALT_USER>, <F-MLFID>, <F-NOFAIL>, <F-MLFFORGET> and <F-MLFGAINED> among fail2ban's field tags; remove it"
            } else {
                "xban supports <F-USER>, <F-ALT_USER>, <F-MLFID>, <F-NOFAIL>, <F-MLFFORGET> and <F-MLFGAINED> among fail2ban's field tags; remove it"
            };
            return Err(FilterError::BadTag {
                place: place.to_string(),
                tag: tag.to_string(),
                fix: fix.to_string(),
            });
        } else if tag == "<SKIPLINES>" {
            // fail2ban's meaning: the rest of this line, then any whole lines
            // (of a multi-line buffer, [`super::lines`]) before the next
            // part; the lines it skips stay in the buffer.
            let n = out.matches(SKIPLINES_GROUP).count();
            out.push_str(&format!(r"\n(?P<{SKIPLINES_GROUP}{n}>(?:.*\n)*?)"));
        } else if matches!(tag, "<CIDR>" | "<SUBNET>" | "<DNS>") {
            return Err(FilterError::BadTag {
                place: place.to_string(),
                tag: tag.to_string(),
                fix: "this fail2ban tag is not supported; use <HOST> or <ADDR>".to_string(),
            });
        } else {
            // Anything else in angle brackets is literal text (`from=<>`).
            out.push('<');
            rest = &tail[1..];
            continue;
        }
        rest = after;
    }
    out.push_str(rest);
    // fail2ban names the <F-USER> group `user`; a back-reference to it
    // means the first one here.
    if !users.is_empty() {
        out = out
            .replace("(?P=user)", &format!("(?P={})", users[0]))
            .replace("\\k<user>", &format!("\\k<{}>", users[0]));
    }
    let out = asciify(&out);
    if open_user {
        return Err(FilterError::BadTag {
            place: place.to_string(),
            tag: "<F-USER>".to_string(),
            fix: "close it with </F-USER>".to_string(),
        });
    }
    if let Some(name) = open_fields.pop() {
        return Err(FilterError::BadTag {
            place: place.to_string(),
            tag: format!("<{name}>"),
            fix: format!("close it with </{name}>"),
        });
    }
    if content == Some(true) {
        return Err(FilterError::BadTag {
            place: place.to_string(),
            tag: "<F-CONTENT>".to_string(),
            fix: "close it with </F-CONTENT>".to_string(),
        });
    }
    Ok(Expanded {
        pattern: out,
        hosts,
        users,
        content: content.map(|_| CONTENT_GROUP.to_string()),
        alt_users,
        marks,
    })
}

/// A paired field tag other than `<F-USER>`/`<F-CONTENT>`: (closing, name).
fn paired_field(tag: &str) -> Option<(bool, &str)> {
    let inner = tag.strip_prefix('<')?.strip_suffix('>')?;
    let (closing, name) = match inner.strip_prefix('/') {
        Some(n) => (true, n),
        None => (false, inner),
    };
    (Mark::of(name).is_some() || name == "F-ALT_USER").then_some((closing, name))
}

/// Rewrites the Perl classes `\d \w \s` (and their negations) to their
/// ASCII sets and `\b \B` to ASCII word boundaries. The Unicode versions
/// compile to automata many times larger (Unicode `\w` alone is hundreds of
/// NFA states per use) and a Unicode `\b` stops the lazy DFA altogether;
/// log formats are ASCII, and `\pN`, `\p{L}` remain for anyone who needs
/// Unicode.
pub(crate) fn asciify(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 16);
    let mut chars = p.chars().peekable();
    let mut in_class = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    out.push('\\');
                    break;
                };
                // Nested classes (`[[0-9].]`) are valid inside a class too.
                let rep = match n {
                    'd' => Some("[0-9]"),
                    'D' => Some("[^0-9]"),
                    'w' => Some("[0-9A-Za-z_]"),
                    'W' => Some("[^0-9A-Za-z_]"),
                    's' => Some("[\\t\\n\\x0B\\x0C\\r ]"),
                    'S' => Some("[^\\t\\n\\x0B\\x0C\\r ]"),
                    'b' if in_class == 0 => Some("(?-u:\\b)"),
                    'B' if in_class == 0 => Some("(?-u:\\B)"),
                    _ => None,
                };
                match rep {
                    Some(r) => out.push_str(r),
                    None => {
                        out.push('\\');
                        out.push(n);
                    }
                }
            }
            '[' => {
                in_class += 1;
                out.push('[');
                // `[]...]` and `[^]...]` start with a literal `]`.
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap());
                }
                if chars.peek() == Some(&']') {
                    out.push(chars.next().unwrap());
                }
            }
            ']' if in_class > 0 => {
                in_class -= 1;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Checks that the captured span `start..end` of `hay` is not a piece of a
/// longer token: `1.2.3.4.5`, `11.2.3.4` or `1.2.3.4x` must not yield
/// `1.2.3.4`.
pub(crate) fn boundary_ok(hay: &str, start: usize, end: usize) -> bool {
    let before = &hay[..start];
    let after = &hay[end..];
    let captured = &hay[start..end];
    let mut back = before.chars().rev();
    match back.next() {
        Some(c) if is_word(c) || c == '.' => return false,
        // `dead:1.2.3.4`: a colon glued to hex digits means we cut an IPv6;
        // a word that merely ends in one (`IPv6:2001:db8::1`) is a label.
        // `::ffff:1.2.3.4` is the IPv4 address 1.2.3.4: a pattern that
        // matched the mapped prefix itself captured all of the address.
        Some(':')
            if !captured.contains(':')
                && before
                    .as_bytes()
                    .rsplit(|&b| b == b' ')
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"::ffff:")) => {}
        Some(':') => {
            let starts_hex = captured
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_hexdigit());
            let mut run = 0;
            let mut colon_before = false;
            let mut label = false;
            for c in back {
                if c.is_ascii_hexdigit() && run < 5 {
                    run += 1;
                    continue;
                }
                colon_before = c == ':' && run == 0;
                label = is_word(c) || c == '.' || run > 4;
                break;
            }
            if starts_hex && (colon_before || (run > 0 && !label)) {
                return false;
            }
        }
        _ => {}
    }
    let mut fwd = after.chars();
    match fwd.next() {
        Some(c) if is_word(c) => false,
        // A trailing dot ends a sentence; a dot followed by more token
        // characters continues the address.
        Some('.') => !fwd.next().is_some_and(is_word),
        _ => true,
    }
}

/// Parses what a host tag captured: strips `[...]` and an IPv6 `%zone`,
/// maps `::ffff:a.b.c.d` to IPv4, and accepts a hostname only for
/// [`HostKind::Host`]. `None` means "not a real address": the line is then
/// not a failure.
pub fn parse_host(text: &str, kind: HostKind) -> Option<Host> {
    let inner = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(pair) => pair,
        // One bracket of a pair the pattern cut: only around IPv4.
        None => {
            let t = text.strip_prefix('[').unwrap_or(text);
            let t = t.strip_suffix(']').unwrap_or(t);
            if t.len() != text.len() && memchr::memchr(b':', t.as_bytes()).is_some() {
                return None;
            }
            t
        }
    };
    // Byte searches: `%` and `:` are ASCII, and this runs on every failure.
    let has_colon = memchr::memchr(b':', inner.as_bytes()).is_some();
    let addr_text = match memchr::memchr(b'%', inner.as_bytes()) {
        Some(p) if has_colon => &inner[..p],
        _ => inner,
    };
    if let Ok(ip) = IpAddr::from_str(addr_text) {
        let ip = match ip {
            IpAddr::V6(v6) => canonical_v6(v6),
            v4 => v4,
        };
        return match (kind, ip) {
            (HostKind::Ip4, IpAddr::V6(_)) => None,
            (HostKind::Ip6, IpAddr::V4(_))
                if memchr::memchr(b':', addr_text.as_bytes()).is_none() =>
            {
                None
            }
            _ => Some(Host::Addr(ip)),
        };
    }
    if kind == HostKind::Host && valid_hostname(inner) {
        return Some(Host::Name(inner.to_ascii_lowercase()));
    }
    None
}

fn canonical_v6(v6: Ipv6Addr) -> IpAddr {
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A hostname worth resolving: letters somewhere, no address-looking
/// remains (`1.2.3.4x`, `1.2.3.4.5`), sane label lengths.
fn valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 || !name.bytes().any(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    if labels.iter().any(|l| {
        l.is_empty()
            || l.len() > 63
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return false;
    }
    // A numeric final label is never a TLD; three numeric labels and a
    // fourth starting with a digit are an IPv4 address with junk attached.
    let numeric = |l: &&str| l.bytes().all(|b| b.is_ascii_digit());
    if labels.last().is_some_and(numeric) {
        return false;
    }
    !(labels.len() >= 4
        && labels[..3].iter().all(numeric)
        && labels[3].starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<Host> {
        Some(Host::Addr(IpAddr::V4(Ipv4Addr::new(a, b, c, d))))
    }
    fn v6(s: &str) -> Option<Host> {
        Some(Host::Addr(IpAddr::V6(s.parse().unwrap())))
    }

    /// From the host_extract fuzz target: an IPv4-mapped address written
    /// in hex is the IPv4 address too (the target's own check was wrong).
    #[test]
    fn mapped_ipv4_in_hex_form_is_the_ipv4_address() {
        assert_eq!(parse_host("::ffff:20:f", HostKind::Addr), v4(0, 32, 0, 15));
        assert_eq!(
            parse_host("::FFFF:cb00:7107", HostKind::Host),
            v4(203, 0, 113, 7)
        );
    }

    #[test]
    fn parse_host_forms() {
        assert_eq!(parse_host("192.0.2.1", HostKind::Host), v4(192, 0, 2, 1));
        assert_eq!(parse_host("2001:db8::1", HostKind::Addr), v6("2001:db8::1"));
        assert_eq!(
            parse_host("[2001:db8::1]", HostKind::Addr),
            v6("2001:db8::1")
        );
        assert_eq!(parse_host("fe80::1%eth0", HostKind::Addr), v6("fe80::1"));
        assert_eq!(
            parse_host("[fe80::1%eth0.100]", HostKind::Addr),
            v6("fe80::1")
        );
        assert_eq!(
            parse_host("2001:db8:0:0:0:0:0:1", HostKind::Addr),
            v6("2001:db8::1")
        );
        assert_eq!(
            parse_host("::ffff:198.51.100.4", HostKind::Addr),
            v4(198, 51, 100, 4)
        );
        assert_eq!(
            parse_host("64:ff9b::192.0.2.33", HostKind::Addr),
            v6("64:ff9b::c000:221")
        );
        assert_eq!(parse_host("::1", HostKind::Addr), v6("::1"));
        assert_eq!(
            parse_host("Mail.Example.COM", HostKind::Host),
            Some(Host::Name("mail.example.com".into()))
        );
        assert_eq!(parse_host("mail.example.com", HostKind::Addr), None);
        assert_eq!(parse_host("1.2.3.4x", HostKind::Host), None);
        assert_eq!(parse_host("1.2.3.4.5", HostKind::Host), None);
        assert_eq!(parse_host("256.1.1.1", HostKind::Addr), None);
        assert_eq!(parse_host("05:28:31", HostKind::Addr), None);
        assert_eq!(parse_host("2001:db8::1", HostKind::Ip4), None);
        assert_eq!(parse_host("192.0.2.1", HostKind::Ip6), None);
        assert_eq!(
            parse_host("::ffff:192.0.2.1", HostKind::Ip6),
            v4(192, 0, 2, 1)
        );
        assert_eq!(
            parse_host("unknown", HostKind::Host),
            Some(Host::Name("unknown".into()))
        );
        assert_eq!(parse_host("12345", HostKind::Host), None);
        assert_eq!(parse_host("[2001:db8::1", HostKind::Addr), None);
        assert_eq!(parse_host("2001:db8::1]", HostKind::Addr), None);
    }

    #[test]
    fn boundaries() {
        let s = "x 1.2.3.4.5 y";
        assert!(!boundary_ok(s, 2, 9)); // followed by ".5"
        let s = "from 1.2.3.4x";
        assert!(!boundary_ok(s, 5, 12));
        let s = "from 11.2.3.4";
        assert!(!boundary_ok(s, 6, 13)); // preceded by a digit
        let s = "from 1.2.3.4.";
        assert!(boundary_ok(s, 5, 12)); // sentence end
        let s = "[client 1.2.3.4:5678]";
        assert!(boundary_ok(s, 8, 15));
        let s = "rip=1.2.3.4, lip";
        assert!(boundary_ok(s, 4, 11));
        let s = "dead:1.2.3.4 ";
        assert!(!boundary_ok(s, 5, 12));
        let s = "host:1.2.3.4 ";
        assert!(boundary_ok(s, 5, 12));
        // A label ending in a hex digit is no address part (sendmail).
        let s = "[IPv6:2001:db8::1]";
        assert!(boundary_ok(s, 6, 17));
        let s = "x beef:2001:db8::1";
        assert!(!boundary_ok(s, 7, 18), "a cut IPv6");
        let s = "x ::2001:db8::1";
        assert!(!boundary_ok(s, 4, 15));
        let s = "x abcdef:2001:db8::1";
        assert!(boundary_ok(s, 9, 20), "six hex digits are no IPv6 group");
    }

    #[test]
    fn expand_tags() {
        let e = expand(r"^from <HOST> user <F-USER>$", "failregex[0]").unwrap();
        assert_eq!(e.hosts.len(), 1);
        assert_eq!(e.users, vec!["xban_user0".to_string()]);
        assert!(
            e.pattern.contains(r"(?P<xban_user0>[^\t\n\x0B\x0C\r ]+)"),
            "{}",
            e.pattern
        );
        let e = expand(
            r"for <F-USER>.*</F-USER> from <ADDR> or <IP4>",
            "failregex[1]",
        )
        .unwrap();
        assert_eq!(
            e.hosts.iter().map(|h| h.1).collect::<Vec<_>>(),
            vec![HostKind::Addr, HostKind::Ip4]
        );
        assert!(e.pattern.contains("(?P<xban_user0>.*)"));
        // Non-tags stay literal.
        let e = expand(r"from=<> to=<x@y> <HOST>", "failregex[0]").unwrap();
        assert!(e.pattern.starts_with("from=<> to=<x@y> (?P<xban_host0>"));
        // Macros may carry a host tag.
        let e = expand(r"^<APACHE_CLIENT>user \S+ not found", "failregex[0]").unwrap();
        assert_eq!(e.hosts.len(), 1);
    }

    #[test]
    fn asciify_classes() {
        assert_eq!(
            asciify(r"\d+ \w \s\S \D\W"),
            r"[0-9]+ [0-9A-Za-z_] [\t\n\x0B\x0C\r ][^\t\n\x0B\x0C\r ] [^0-9][^0-9A-Za-z_]"
        );
        assert_eq!(asciify(r"\bx\B"), r"(?-u:\b)x(?-u:\B)");
        // Escaped backslashes, classes with a leading ], other escapes.
        assert_eq!(
            asciify(r"\\d [\d.] []\d] [^]\w] \p{L} \[\d\]"),
            r"\\d [[0-9].] [][0-9]] [^][0-9A-Za-z_]] \p{L} \[[0-9]\]"
        );
        for p in [r"[\d.]+", r"[^\s\]]+", r"\bfoo\b", r"[\w-]+"] {
            regex::Regex::new(&asciify(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let re = regex::Regex::new(&asciify(r"^\d+$")).unwrap();
        assert!(
            re.is_match("123") && !re.is_match("١٢٣"),
            "ASCII digits only"
        );
    }

    #[test]
    fn expand_rejects_unknown_field_tags() {
        let err = expand(r"<F-ID>x</F-ID> <HOST>", "failregex[3]").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("failregex[3]") && msg.contains("<F-ID>"),
            "{msg}"
        );
        // Connection tags pair up and nest like the groups they become.
        let ok = expand(
            r"^<F-NOFAIL>Received <F-MLFFORGET>disconnect</F-MLFFORGET></F-NOFAIL> from <HOST>",
            "failregex[0]",
        )
        .unwrap();
        let marks: Vec<Mark> = ok.marks.iter().map(|m| m.1).collect();
        assert_eq!(marks, [Mark::NoFail, Mark::Forget]);
        assert!(regex::Regex::new(&ok.pattern).is_ok(), "{}", ok.pattern);
        for (bad, names) in [
            (r"<F-NOFAIL>x <HOST>", "<F-NOFAIL>"),
            (r"x</F-MLFID> <HOST>", "</F-MLFID>"),
            (
                r"<F-NOFAIL><F-MLFFORGET>x</F-NOFAIL></F-MLFFORGET> <HOST>",
                "</F-NOFAIL>",
            ),
            (r"<F-ALT_USER>\S+ <HOST>", "<F-ALT_USER>"),
        ] {
            let msg = expand(bad, "failregex[1]").unwrap_err().to_string();
            assert!(
                msg.contains("failregex[1]") && msg.contains(names),
                "{bad}: {msg}"
            );
        }
        let err = expand(r"<F-USER>.* <HOST> <F-USER>.*</F-USER>", "failregex[0]");
        assert!(err.is_ok(), "lone <F-USER> then a paired one is allowed");
        let err = expand(r"^%(__prefix_line)sFailed from <HOST>", "failregex[4]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "failregex[4]: bad tag %(__prefix_line)s: fail2ban interpolation is not supported; write the text out or use <PREFIX>"
        );
        let err = expand(r"from <SUBNET>", "failregex[0]").unwrap_err();
        assert!(err.to_string().contains("<SUBNET>"));
        let err = expand(r"</F-USER> <HOST>", "failregex[0]").unwrap_err();
        assert!(err.to_string().contains("</F-USER>"));
    }
}
