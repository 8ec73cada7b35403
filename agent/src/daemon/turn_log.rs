//! The log lines of one loop turn, written to stderr together: a burst
//! logs a line per ban, and one `write` per line cost more than the rest
//! of the ban. Lines are held only on the loop's thread, only while a
//! [`Hold`] lives (a turn), and are written when it ends, after the bans
//! they report are in the kernel. Every other thread, and the loop outside
//! a hold, writes straight through.

use std::cell::RefCell;
use std::io::Write;

thread_local! {
    static HELD: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Held lines past this size are written at once (a turn that logs a lot).
const HOLD_MAX: usize = 256 * 1024;

/// The agent's log writer (`tracing_subscriber::fmt().with_writer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnLog;

/// One event's line.
pub struct TurnLogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TurnLog {
    type Writer = TurnLogWriter;
    fn make_writer(&'a self) -> TurnLogWriter {
        TurnLogWriter
    }
}

impl Write for TurnLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let held = HELD.with(|h| match h.borrow_mut().as_mut() {
            Some(lines) => {
                lines.extend_from_slice(buf);
                if lines.len() >= HOLD_MAX {
                    flush_lines(lines);
                }
                true
            }
            None => false,
        });
        if held {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn flush_lines(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        // Nowhere to report a failed log write; the lines are dropped.
        let _ = std::io::stderr().write_all(lines);
        lines.clear();
    }
}

/// Hold this thread's log lines until dropped (a turn of the loop).
#[must_use = "the lines are held only while the guard lives"]
pub struct Hold {
    /// A hold inside a hold leaves the outer one to write.
    outer: bool,
}

pub fn hold() -> Hold {
    let outer = HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_none() {
            *h = Some(Vec::new());
            true
        } else {
            false
        }
    });
    Hold { outer }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.outer {
            if let Some(mut lines) = HELD.with(|h| h.borrow_mut().take()) {
                flush_lines(&mut lines);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_held_until_the_turn_ends_and_only_on_its_thread() {
        {
            let _turn = hold();
            TurnLogWriter.write_all(b"ban 203.0.113.1\n").unwrap();
            {
                let _inner = hold();
                TurnLogWriter.write_all(b"ban 203.0.113.2\n").unwrap();
            }
            let held = HELD.with(|h| h.borrow().clone()).unwrap();
            assert_eq!(
                held, b"ban 203.0.113.1\nban 203.0.113.2\n",
                "inner hold leaves them"
            );
            // Another thread holds nothing.
            std::thread::spawn(|| assert!(HELD.with(|h| h.borrow().is_none())))
                .join()
                .unwrap();
        }
        assert!(HELD.with(|h| h.borrow().is_none()), "written and released");
    }
}
