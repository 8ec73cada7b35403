//! Log lines as services write them, timestamped now: the agent takes a
//! failure's time from its line, and `findtime` counts from there, so the
//! lines must carry the real time.

use std::fmt::Display;

/// The current local time as syslog writes it (`Nov 21 05:28:31`), as the
/// agent reads it.
pub fn syslog_now() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r only writes the tm we own; a zeroed tm is valid.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// An OpenSSH "Failed password" line as rsyslog writes it to auth.log.
pub fn sshd_failed_password(
    stamp: &str,
    host: &str,
    pid: u64,
    user: &str,
    addr: impl Display,
    port: u64,
) -> String {
    format!(
        "{stamp} {host} sshd[{pid}]: Failed password for invalid user {user} from {addr} port {port} ssh2"
    )
}

/// An sshd-style failure line for `addr`, timestamped now (syslog format);
/// `n` varies the user, pid and port.
pub fn sshd_failure(addr: &str, n: usize) -> String {
    let n = n as u64;
    sshd_failed_password(
        &syslog_now(),
        "lab",
        4000 + n,
        &format!("admin{n}"),
        addr,
        40000 + n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_time_has_the_sshd_filter_shape() {
        let t = syslog_now();
        let (month, rest) = t.split_at(3);
        assert!(month.chars().all(|c| c.is_ascii_alphabetic()), "{t}");
        assert_eq!(rest.len(), " dd hh:mm:ss".len(), "{t}");
        assert_eq!(rest.matches(':').count(), 2, "{t}");
    }

    #[test]
    fn sshd_failure_names_the_address() {
        let l = sshd_failure("198.51.100.2", 7);
        assert!(
            l.ends_with(
                " lab sshd[4007]: Failed password for invalid user admin7 from 198.51.100.2 port 40007 ssh2"
            ),
            "{l}"
        );
    }
}
