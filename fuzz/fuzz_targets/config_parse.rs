//! Config parsing and validation: any text gives a config or an error that
//! names a place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xban::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse(text) else {
        return;
    };
    if let Err(e) = cfg.validate() {
        assert!(!e.to_string().is_empty());
    }
});
