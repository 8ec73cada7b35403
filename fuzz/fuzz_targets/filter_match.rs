//! A whole filter match: every built-in filter in every mode on the input
//! line. The first input byte picks a prefix (none, syslog, journal-like)
//! so that the fuzzer reaches the patterns' bodies sooner.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use xban::filter::builtin::{builtin, builtin_names};
use xban::filter::{FilterSet, LineMatch};

fn sets() -> &'static [FilterSet] {
    static S: OnceLock<Vec<FilterSet>> = OnceLock::new();
    S.get_or_init(|| {
        let mut v = Vec::new();
        for name in builtin_names() {
            let def = builtin(name).expect("built-in");
            if def.modes.is_empty() {
                v.push(FilterSet::from_def(&def, None).expect("built-in compiles"));
            }
            for mode in def.modes.keys() {
                v.push(FilterSet::from_def(&def, Some(mode)).expect("built-in compiles"));
            }
        }
        v
    })
}

// Compiled before fuzzing starts, so that libFuzzer's per-input timeout
// does not count the one-time set-up.
fuzz_target!(init: {
    sets();
}, |data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(rest);
    let line = match pick % 3 {
        0 => body.into_owned(),
        1 => format!("Nov 21 05:28:31 host {body}"),
        _ => format!("2026-11-21T05:28:31Z host {body}"),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_795_305_600);
    for set in sets() {
        if let LineMatch::Failure(f) = set.match_line(&line, now) {
            assert!(f.regex < set.failregex_count());
        }
    }
});
