//! A synthetic, deterministic auth.log: what a busy Debian host's syslog
//! looks like with sshd under a brute-force campaign, so that both matchers
//! see the realistic mix of cheap misses and expensive near-misses.
//!
//! About 13.5% of lines are failures both xban's and fail2ban's sshd filters
//! count (normal mode), 0.5% are a failure only xban's counts (OpenSSH's
//! `Disconnecting invalid user X ADDR port N: Too many authentication
//! failures`, which fail2ban 1.0.2 expects as `Disconnecting: Too many ...`),
//! 17.5% are attack noise that neither counts (PAM `rhost=` lines, pre-auth
//! closes and disconnects, negotiation errors: fail2ban matches several of
//! them as helper/"ignored" lines, which costs it the most), and the rest are
//! ordinary sshd, PAM, cron, logind, systemd, sudo and kernel lines.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// SplitMix64: tiny, fast, and identical everywhere, which is all a
/// reproducible data set needs.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The i-th attacker address: IPv4 from 100.64.0.0/10 (shared address
/// space, 4M addresses, never routed here), every 7th IPv6 from
/// 2001:db8::/32. Distinct for distinct `i` below 4M.
pub(crate) fn attacker_addr(i: u32) -> IpAddr {
    if i % 7 == 6 {
        let v6 = Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xbad,
            (i >> 16) as u16,
            0,
            0,
            0,
            i as u16 | 1,
        );
        IpAddr::V6(v6)
    } else {
        IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 | (i & 0x003f_ffff)))
    }
}

/// Legitimate clients: 198.18.0.0/15 (the benchmarking range).
fn client_addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc612_0000u32 | (i & 0xffff)))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const MONTH_DAYS: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// `Mar  3 04:05:06` for a second of a (non-leap) year.
pub(crate) fn syslog_stamp(second_of_year: u64) -> String {
    let mut day = (second_of_year / 86_400) as u32 % 365;
    let mut month = 0;
    while day >= MONTH_DAYS[month] {
        day -= MONTH_DAYS[month];
        month += 1;
    }
    let s = second_of_year % 86_400;
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[month],
        day + 1,
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// One failure line both filters count, for the agent benchmarks (which
/// timestamp it themselves).
pub(crate) fn sshd_failure(stamp: &str, addr: IpAddr, n: u64) -> String {
    xban_lab::sshd_failed_password(
        stamp,
        "bench",
        2000 + n % 60_000,
        ATTACK_USERS[(n % ATTACK_USERS.len() as u64) as usize],
        addr,
        1024 + n % 64_000,
    )
}

const ATTACK_USERS: &[&str] = &[
    "admin",
    "test",
    "user",
    "oracle",
    "postgres",
    "ubuntu",
    "guest",
    "ftpuser",
    "git",
    "deploy",
    "support",
    "pi",
    "hadoop",
    "minecraft",
    "nagios",
    "mysql",
    "tomcat",
    "www",
    "dev",
    "jenkins",
    "ansible",
    "steam",
    "teamspeak",
    "usuario",
    "administrator",
    "operator",
    "backup",
    "student",
    "demo",
    "web",
];
const USERS: &[&str] = &["alice", "bob", "carol", "deploy", "git", "backup"];
const CRON_CMDS: &[&str] = &[
    "command -v debian-sa1 > /dev/null && debian-sa1 1 1",
    "cd / && run-parts --report /etc/cron.hourly",
    "[ -x /usr/lib/php/sessionclean ] && if [ ! -d /run/systemd/system ]; then /usr/lib/php/sessionclean; fi",
    "/usr/local/bin/backup.sh >/dev/null 2>&1",
];
const UNITS: &[&str] = &[
    "Starting apt-daily.service - Daily apt download activities...",
    "Finished apt-daily.service - Daily apt download activities.",
    "Starting logrotate.service - Rotate log files...",
    "logrotate.service: Deactivated successfully.",
    "Started sysstat-collect.service - system activity accounting tool.",
    "Reloading requested from client PID 1 ('systemctl')...",
];
const SUDO_CMDS: &[&str] = &[
    "/usr/bin/apt update",
    "/usr/bin/systemctl restart nginx",
    "/usr/bin/journalctl -u sshd",
    "/usr/bin/tail -f /var/log/syslog",
];

/// Kinds of line, with their weight per 1000 lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    // Failures both filters count.
    FailedPasswordInvalid,
    FailedPasswordRoot,
    InvalidUser,
    KbdInteractive,
    MaxAuthTries,
    NotAllowed,
    JschAuthFail,
    PamAuthFailureFor,
    // A failure only xban's filter counts.
    TooManyAuthFailures,
    // Attack noise: neither counts it in normal mode.
    PamRhost,
    ClosedAuthenticatingPreauth,
    DisconnectedInvalidPreauth,
    ByeByePreauth,
    ClosedPreauth,
    KexIdentification,
    UnableToNegotiate,
    // Ordinary traffic.
    AcceptedPublickey,
    AcceptedPassword,
    SessionOpened,
    SessionClosed,
    DisconnectByUser,
    DisconnectedUser,
    ConnectionFrom,
    LogindNew,
    LogindLoggedOut,
    LogindRemoved,
    SystemdSession,
    SystemdUnit,
    CronOpened,
    CronClosed,
    CronCmd,
    KernelUfw,
    Sudo,
}

const KINDS: &[(Kind, u32)] = &[
    (Kind::FailedPasswordInvalid, 45),
    (Kind::FailedPasswordRoot, 35),
    (Kind::InvalidUser, 30),
    (Kind::KbdInteractive, 9),
    (Kind::MaxAuthTries, 6),
    (Kind::NotAllowed, 4),
    (Kind::JschAuthFail, 3),
    (Kind::PamAuthFailureFor, 3),
    (Kind::TooManyAuthFailures, 5),
    (Kind::PamRhost, 40),
    (Kind::ClosedAuthenticatingPreauth, 40),
    (Kind::DisconnectedInvalidPreauth, 30),
    (Kind::ByeByePreauth, 30),
    (Kind::ClosedPreauth, 25),
    (Kind::KexIdentification, 5),
    (Kind::UnableToNegotiate, 5),
    (Kind::AcceptedPublickey, 40),
    (Kind::AcceptedPassword, 10),
    (Kind::SessionOpened, 50),
    (Kind::SessionClosed, 50),
    (Kind::DisconnectByUser, 40),
    (Kind::DisconnectedUser, 40),
    (Kind::ConnectionFrom, 20),
    (Kind::LogindNew, 40),
    (Kind::LogindLoggedOut, 30),
    (Kind::LogindRemoved, 30),
    (Kind::SystemdSession, 40),
    (Kind::SystemdUnit, 25),
    (Kind::CronOpened, 65),
    (Kind::CronClosed, 65),
    (Kind::CronCmd, 50),
    (Kind::KernelUfw, 60),
    (Kind::Sudo, 30),
];

impl Kind {
    fn counted_by_both(self) -> bool {
        use Kind::*;
        matches!(
            self,
            FailedPasswordInvalid
                | FailedPasswordRoot
                | InvalidUser
                | KbdInteractive
                | MaxAuthTries
                | NotAllowed
                | JschAuthFail
                | PamAuthFailureFor
        )
    }
}

/// What was generated, to check both tools' counts against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogStats {
    pub lines: u64,
    pub bytes: u64,
    /// Failure lines both filters (normal mode) count.
    pub failures_both: u64,
    /// Failure lines only xban's filter counts.
    pub failures_xban_only: u64,
    /// Distinct attacker addresses that appear in failure lines.
    pub attackers: u64,
}

/// Linux's default pid_max on 64-bit machines.
const PID_MAX: u64 = 4_194_304;

/// Attacker pool size: "a few thousand" addresses, a few of them loud.
pub(crate) const ATTACKERS: u32 = 4000;

/// Writes `lines` lines to `out`; same `seed`, same bytes.
pub(crate) fn generate<W: Write>(out: W, lines: u64, seed: u64) -> io::Result<LogStats> {
    generate_mix(out, lines, seed, 1)
}

/// How much more often failure kinds are drawn in [`generate_attack`]:
/// about half of the lines are then failures (49%).
pub(crate) const ATTACK_FAILURE_FACTOR: u32 = 6;

/// The same host under a heavier campaign: the failure kinds are
/// [`ATTACK_FAILURE_FACTOR`] times as frequent, the rest as in
/// [`generate`], so about half of the lines are failures.
pub(crate) fn generate_attack<W: Write>(out: W, lines: u64, seed: u64) -> io::Result<LogStats> {
    generate_mix(out, lines, seed, ATTACK_FAILURE_FACTOR)
}

/// [`generate`] with the failure kinds' weights multiplied by `factor`.
fn generate_mix<W: Write>(out: W, lines: u64, seed: u64, factor: u32) -> io::Result<LogStats> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let mut rng = Rng::new(seed);
    let kinds: Vec<(Kind, u32)> = KINDS
        .iter()
        .map(|&(k, w)| {
            let failure = k.counted_by_both() || k == Kind::TooManyAuthFailures;
            (k, if failure { w * factor } else { w })
        })
        .collect();
    let total_weight: u32 = kinds.iter().map(|(_, w)| w).sum();
    let mut stats = LogStats::default();
    let mut seen = vec![false; ATTACKERS as usize];
    // Mar 3 00:00:00, then ~5 lines per second on average.
    let mut ms: u64 = 61 * 86_400 * 1000;
    let mut session: u64 = 4000;
    let mut uptime_us: u64 = 1_234_567_890;
    let mut pid: u64 = 1000;
    for _ in 0..lines {
        ms += rng.below(400);
        uptime_us += rng.below(400_000);
        let stamp = syslog_stamp(ms / 1000);
        let mut roll = rng.below(u64::from(total_weight)) as u32;
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .expect("roll below the total weight");
        // Skewed choice: a handful of attackers produce most failures.
        let atk_idx = (f64::from(ATTACKERS) * rng.unit().powi(3)) as u32;
        let atk = attacker_addr(atk_idx);
        let client = client_addr(rng.below(64) as u32);
        // Every line its own process, as every sshd connection is: a
        // repeated pid would make fail2ban merge unrelated lines into one
        // session (its multi-line `mlfid` logic) and count differently.
        pid += 1 + rng.below(3);
        if pid >= PID_MAX {
            pid = 1000;
        }
        let port = 1024 + rng.below(64_000);
        let auser = *rng.pick(ATTACK_USERS);
        let user = *rng.pick(USERS);
        if kind.counted_by_both() || kind == Kind::TooManyAuthFailures {
            seen[atk_idx as usize] = true;
        }
        let line = match kind {
            Kind::FailedPasswordInvalid => format!(
                "sshd[{pid}]: Failed password for invalid user {auser} from {atk} port {port} ssh2"
            ),
            Kind::FailedPasswordRoot => {
                format!("sshd[{pid}]: Failed password for root from {atk} port {port} ssh2")
            }
            Kind::InvalidUser => format!("sshd[{pid}]: Invalid user {auser} from {atk} port {port}"),
            Kind::KbdInteractive => format!(
                "sshd[{pid}]: Failed keyboard-interactive/pam for invalid user {auser} from {atk} port {port} ssh2"
            ),
            Kind::MaxAuthTries => format!(
                "sshd[{pid}]: error: maximum authentication attempts exceeded for root from {atk} port {port} ssh2 [preauth]"
            ),
            Kind::NotAllowed => format!(
                "sshd[{pid}]: User {user} from {atk} not allowed because not listed in AllowUsers"
            ),
            Kind::JschAuthFail => format!(
                "sshd[{pid}]: Received disconnect from {atk} port {port}:3: com.jcraft.jsch.JSchException: Auth fail [preauth]"
            ),
            Kind::PamAuthFailureFor => {
                format!("sshd[{pid}]: error: PAM: Authentication failure for root from {atk}")
            }
            Kind::TooManyAuthFailures => format!(
                "sshd[{pid}]: Disconnecting invalid user {auser} {atk} port {port}: Too many authentication failures [preauth]"
            ),
            Kind::PamRhost => format!(
                "sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={atk}  user=root"
            ),
            Kind::ClosedAuthenticatingPreauth => format!(
                "sshd[{pid}]: Connection closed by authenticating user root {atk} port {port} [preauth]"
            ),
            Kind::DisconnectedInvalidPreauth => format!(
                "sshd[{pid}]: Disconnected from invalid user {auser} {atk} port {port} [preauth]"
            ),
            Kind::ByeByePreauth => format!(
                "sshd[{pid}]: Received disconnect from {atk} port {port}:11: Bye Bye [preauth]"
            ),
            Kind::ClosedPreauth => {
                format!("sshd[{pid}]: Connection closed by {atk} port {port} [preauth]")
            }
            Kind::KexIdentification => format!(
                "sshd[{pid}]: error: kex_exchange_identification: Connection closed by remote host"
            ),
            Kind::UnableToNegotiate => format!(
                "sshd[{pid}]: Unable to negotiate with {atk} port {port}: no matching key exchange method found. Their offer: diffie-hellman-group14-sha1,diffie-hellman-group-exchange-sha1,diffie-hellman-group1-sha1 [preauth]"
            ),
            Kind::AcceptedPublickey => format!(
                "sshd[{pid}]: Accepted publickey for {user} from {client} port {port} ssh2: ED25519 SHA256:{:016x}{:016x}",
                rng.next_u64(),
                rng.next_u64()
            ),
            Kind::AcceptedPassword => format!(
                "sshd[{pid}]: Accepted password for {user} from {client} port {port} ssh2"
            ),
            Kind::SessionOpened => format!(
                "sshd[{pid}]: pam_unix(sshd:session): session opened for user {user}(uid=1000) by (uid=0)"
            ),
            Kind::SessionClosed => {
                format!("sshd[{pid}]: pam_unix(sshd:session): session closed for user {user}")
            }
            Kind::DisconnectByUser => format!(
                "sshd[{pid}]: Received disconnect from {client} port {port}:11: disconnected by user"
            ),
            Kind::DisconnectedUser => {
                format!("sshd[{pid}]: Disconnected from user {user} {client} port {port}")
            }
            Kind::ConnectionFrom => format!(
                "sshd[{pid}]: Connection from {client} port {port} on 198.51.100.1 port 22 rdomain \"\""
            ),
            Kind::LogindNew => {
                session += 1;
                format!("systemd-logind[512]: New session {session} of user {user}.")
            }
            Kind::LogindLoggedOut => format!(
                "systemd-logind[512]: Session {session} logged out. Waiting for processes to exit."
            ),
            Kind::LogindRemoved => format!("systemd-logind[512]: Removed session {session}."),
            Kind::SystemdSession => format!(
                "systemd[1]: Started session-{session}.scope - Session {session} of User {user}."
            ),
            Kind::SystemdUnit => format!("systemd[1]: {}", rng.pick(UNITS)),
            Kind::CronOpened => format!(
                "CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
            ),
            Kind::CronClosed => {
                format!("CRON[{pid}]: pam_unix(cron:session): session closed for user root")
            }
            Kind::CronCmd => format!("CRON[{pid}]: (root) CMD ({})", rng.pick(CRON_CMDS)),
            Kind::KernelUfw => match atk {
                IpAddr::V4(src) => format!(
                    "kernel: [{}.{:06}] [UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 SRC={src} DST=198.51.100.1 LEN=44 TOS=0x00 PREC=0x00 TTL=243 ID={} PROTO=TCP SPT={port} DPT={} WINDOW=1025 RES=0x00 SYN URGP=0",
                    uptime_us / 1_000_000,
                    uptime_us % 1_000_000,
                    rng.below(65_536),
                    rng.below(65_536)
                ),
                IpAddr::V6(src) => format!(
                    "kernel: [{}.{:06}] [UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:65:43:21:86:dd SRC={src} DST=2001:db8:100::1 LEN=60 TC=0 HOPLIMIT=243 FLOWLBL=0 PROTO=TCP SPT={port} DPT={} WINDOW=1025 RES=0x00 SYN URGP=0",
                    uptime_us / 1_000_000,
                    uptime_us % 1_000_000,
                    rng.below(65_536)
                ),
            },
            Kind::Sudo => format!(
                "sudo:    {user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND={}",
                rng.pick(SUDO_CMDS)
            ),
        };
        let full = format!("{stamp} bastion {line}\n");
        out.write_all(full.as_bytes())?;
        stats.lines += 1;
        stats.bytes += full.len() as u64;
        if kind.counted_by_both() {
            stats.failures_both += 1;
        } else if kind == Kind::TooManyAuthFailures {
            stats.failures_xban_only += 1;
        }
    }
    out.flush()?;
    stats.attackers = seen.iter().filter(|s| **s).count() as u64;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(lines: u64, seed: u64) -> (Vec<u8>, LogStats) {
        let mut buf = Vec::new();
        let stats = generate(&mut buf, lines, seed).unwrap();
        (buf, stats)
    }

    #[test]
    fn attack_log_is_half_failures() {
        let mut buf = Vec::new();
        let s = generate_attack(&mut buf, 20_000, 7).unwrap();
        let share = (s.failures_both + s.failures_xban_only) as f64 / s.lines as f64;
        assert!((0.45..0.53).contains(&share), "failure share {share}");
        // The ordinary mix is unchanged by the factor's plumbing.
        assert_eq!(gen(2_000, 7), gen(2_000, 7));
    }

    #[test]
    fn same_seed_same_bytes() {
        let (a, sa) = gen(5000, 42);
        let (b, sb) = gen(5000, 42);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let (c, _) = gen(5000, 43);
        assert_ne!(a, c);
    }

    #[test]
    fn mix_and_counts() {
        let (buf, s) = gen(100_000, 7);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count() as u64, s.lines);
        assert_eq!(text.len() as u64, s.bytes);
        let share = s.failures_both as f64 / s.lines as f64;
        assert!((0.12..0.15).contains(&share), "failure share {share}");
        assert!(s.failures_xban_only > 0);
        assert!(s.attackers > 1000, "{} attackers", s.attackers);
        // Both families of attackers appear, and every line is a syslog line.
        assert!(text.contains(" from 2001:db8:bad:"));
        assert!(text.contains(" from 100."));
        assert!(text
            .lines()
            .all(|l| l.len() > 16 && &l[15..24] == " bastion "));
    }

    #[test]
    fn stamps() {
        assert_eq!(syslog_stamp(61 * 86_400), "Mar  3 00:00:00");
        assert_eq!(syslog_stamp(364 * 86_400 + 86_399), "Dec 31 23:59:59");
        assert_eq!(syslog_stamp(31 * 86_400 + 3723), "Feb  1 01:02:03");
    }

    #[test]
    fn attacker_addresses_are_distinct_and_in_range() {
        let mut all: Vec<IpAddr> = (0..200_000).map(attacker_addr).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200_000);
        assert_eq!(attacker_addr(0).to_string(), "100.64.0.0");
        assert_eq!(attacker_addr(6).to_string(), "2001:db8:bad::7");
    }
}
