//! The timestamp scanner: every line, with guessing and with each named
//! format and a few %-patterns. The range it reports must lie inside the
//! line on character boundaries, and the leading-stamp cut inside the line.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use xban::filter::time::{leading_stamp_end, parse_time, DatePattern};

fn patterns() -> &'static [Option<DatePattern>] {
    static P: OnceLock<Vec<Option<DatePattern>>> = OnceLock::new();
    P.get_or_init(|| {
        let mut v = vec![None];
        for s in [
            "syslog",
            "^iso8601",
            "apache",
            "nginx",
            "epoch",
            "tai64n",
            "%d.%m.%Y %H:%M:%S%z",
            "^[%s]",
            "%a %b %e %H:%M:%S.%f %Y",
            "%y%m%d %H:%M:%S",
        ] {
            v.push(Some(DatePattern::parse(s).expect("seed datepattern parses")));
        }
        v
    })
}

// Compiled before fuzzing starts, so that libFuzzer's per-input timeout
// does not count the one-time set-up.
fuzz_target!(init: {
    patterns();
}, |data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        // A datepattern from arbitrary bytes: must not panic either.
        let _ = DatePattern::parse(&String::from_utf8_lossy(data));
        return;
    };
    let _ = DatePattern::parse(line);
    let now = UNIX_EPOCH + Duration::from_secs(1_795_305_600);
    for dp in patterns() {
        if let Some((_, range)) = parse_time(line, now, dp.as_ref()) {
            assert!(range.start < range.end && range.end <= line.len(), "{range:?}");
            assert!(line.is_char_boundary(range.start) && line.is_char_boundary(range.end));
            if let Some(end) = leading_stamp_end(line, &range) {
                assert!(end >= range.end && end <= line.len() && line.is_char_boundary(end));
            }
        }
    }
});
