//! Rate limiting of repeated warnings. A warning caused by log content (a
//! hostname in every line of a flood) or by a persistent condition (an
//! unreadable file, retried on every event) would otherwise be logged once
//! per line and flood the journal. Each kind of warning (its key) is logged
//! for its first [`BURST`] occurrences per [`WINDOW`]; the rest are counted
//! and reported as one summary line when the window is over (at the next
//! occurrence, or at [`WarnLimiter::flush`], which callers run
//! periodically).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Occurrences logged per key and window.
pub(crate) const BURST: u32 = 5;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most; a flood of distinct keys (each line naming
/// another host) is limited as one key beyond this.
const MAX_KEYS: usize = 1024;
const OVERFLOW_KEY: &str = "(other warnings)";

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Log it.
    Log,
    /// Log it and say that further ones are counted (the burst is used up).
    LogLast,
    /// Count it only.
    Suppress,
}

/// Suppressed occurrences of one key in a window that is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub key: String,
    pub suppressed: u64,
    pub over: Duration,
}

#[derive(Debug)]
struct KeyState {
    since: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug)]
pub(crate) struct WarnLimiter {
    burst: u32,
    window: Duration,
    keys: HashMap<String, KeyState>,
    /// Suppressed in total, for metrics and tests.
    pub suppressed_total: u64,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new(BURST, WINDOW)
    }
}

impl WarnLimiter {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst: burst.max(1),
            window,
            keys: HashMap::new(),
            suppressed_total: 0,
        }
    }

    /// Records one occurrence of `key` at `now`. A summary of the key's
    /// previous window comes back with the decision when that window is over.
    pub(crate) fn admit(&mut self, key: &str, now: Instant) -> (Admit, Option<Summary>) {
        let key = if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(key) {
            OVERFLOW_KEY
        } else {
            key
        };
        let window = self.window;
        let burst = self.burst;
        let st = self.keys.entry(key.to_string()).or_insert(KeyState {
            since: now,
            logged: 0,
            suppressed: 0,
        });
        let mut summary = None;
        if now.saturating_duration_since(st.since) >= window {
            if st.suppressed > 0 {
                summary = Some(Summary {
                    key: key.to_string(),
                    suppressed: st.suppressed,
                    over: now.saturating_duration_since(st.since),
                });
            }
            *st = KeyState {
                since: now,
                logged: 0,
                suppressed: 0,
            };
        }
        let admit = if st.logged < burst {
            st.logged += 1;
            if st.logged == burst {
                Admit::LogLast
            } else {
                Admit::Log
            }
        } else {
            st.suppressed += 1;
            self.suppressed_total += 1;
            Admit::Suppress
        };
        (admit, summary)
    }

    /// Summaries of every window that is over, and forgets quiet keys.
    pub(crate) fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let mut out = Vec::new();
        self.keys.retain(|key, st| {
            let age = now.saturating_duration_since(st.since);
            if age < window {
                return true;
            }
            if st.suppressed > 0 {
                out.push(Summary {
                    key: key.clone(),
                    suppressed: st.suppressed,
                    over: age,
                });
            }
            false
        });
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// Logs a summary line for suppressed warnings.
pub(crate) fn log_summary(s: &Summary) {
    tracing::warn!(
        warning = %s.key,
        suppressed = s.suppressed,
        "{} more warnings like this were not logged in the last {} s",
        s.suppressed,
        s.over.as_secs()
    );
}

/// `tracing::warn!` through a [`WarnLimiter`]: `warn_limited!(limiter, key, ...)`.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $key:expr, $($arg:tt)+) => {{
        let (admit, summary) = $limiter.admit($key, ::std::time::Instant::now());
        if let Some(s) = summary {
            $crate::ratelimit::log_summary(&s);
        }
        match admit {
            $crate::ratelimit::Admit::Log => ::tracing::warn!($($arg)+),
            $crate::ratelimit::Admit::LogLast => {
                ::tracing::warn!($($arg)+);
                ::tracing::warn!(warning = %$key,
                    "this warning repeats: further ones are counted and summarised once a minute");
            }
            $crate::ratelimit::Admit::Suppress => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_then_one_summary_per_window() {
        let mut l = WarnLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut logged = 0;
        let mut last = 0;
        for i in 0..10_000u64 {
            let (a, s) = l.admit("hostname jail=sshd", t0 + Duration::from_millis(i));
            assert!(s.is_none(), "no summary inside the window");
            match a {
                Admit::Log => logged += 1,
                Admit::LogLast => last += 1,
                Admit::Suppress => {}
            }
        }
        assert_eq!((logged, last), (4, 1));
        assert_eq!(l.suppressed_total, 9_995);
        // The next occurrence after the window reports the count, and is logged.
        let (a, s) = l.admit("hostname jail=sshd", t0 + Duration::from_secs(61));
        assert_eq!(a, Admit::Log);
        let s = s.unwrap();
        assert_eq!(
            (s.key.as_str(), s.suppressed),
            ("hostname jail=sshd", 9_995)
        );
    }

    #[test]
    fn keys_are_limited_separately_and_flush_reports_ended_windows() {
        let mut l = WarnLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..7 {
            l.admit("a", t0);
        }
        assert_eq!(l.admit("b", t0).0, Admit::Log, "b has its own burst");
        assert!(
            l.flush(t0 + Duration::from_secs(30)).is_empty(),
            "window not over"
        );
        let s = l.flush(t0 + Duration::from_secs(60));
        assert_eq!(s.len(), 1, "only a had suppressed warnings: {s:?}");
        assert_eq!((s[0].key.as_str(), s[0].suppressed), ("a", 5));
        // Flushed keys start over.
        assert_eq!(l.admit("a", t0 + Duration::from_secs(61)).0, Admit::Log);
    }

    #[test]
    fn distinct_keys_beyond_the_cap_share_one_limit() {
        let mut l = WarnLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..(MAX_KEYS + 500) {
            if l.admit(&format!("host{i}"), t0).0 != Admit::Suppress {
                logged += 1;
            }
        }
        // One line per remembered key, then one for all the others.
        assert_eq!(logged, MAX_KEYS + 1);
        assert!(l.keys.len() <= MAX_KEYS + 1);
    }
}
