//! A journald for the test run, when the machine runs none (containers and
//! CI machines often boot without systemd): the journal source is then
//! tested against a real journal instead of being skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/systemd/journal/socket";
const JOURNALD: &[&str] = &[
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];

/// Does a journald accept datagrams on its socket?
fn journald_answers() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(SOCKET))
        .is_ok()
}

/// Stops the journald it started when dropped; does nothing when one was
/// already running or none is installed.
pub(crate) struct JournalGuard(Option<Child>);

/// Set for the test run when a journald answers, so the journal test fails
/// rather than skips.
pub(crate) const REQUIRE_VAR: &str = "XBAN_REQUIRE_JOURNAL";

impl JournalGuard {
    /// Is a journald answering now (one we started, or the system's)?
    pub(crate) fn available(&self) -> bool {
        journald_answers()
    }

    pub(crate) fn ensure() -> JournalGuard {
        if journald_answers() {
            return JournalGuard(None);
        }
        // A socket left by a journald that died answers nothing: start afresh.
        let _ = std::fs::remove_file(SOCKET);
        let Some(bin) = JOURNALD.iter().find(|p| Path::new(p).exists()) else {
            eprintln!(
                "xtask: no systemd-journald installed; the journal test will say it is skipped"
            );
            return JournalGuard(None);
        };
        eprintln!("xtask: starting {bin} for the journal source's test (no journald is running)");
        let child = match Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "xtask: could not start {bin}: {e}; the journal test will say it is skipped"
                );
                return JournalGuard(None);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !journald_answers() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        JournalGuard(Some(child))
    }
}

impl Drop for JournalGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Leave no dead sockets behind: the next run must see "no journald".
            let _ = std::fs::remove_dir_all("/run/systemd/journal");
        }
    }
}
