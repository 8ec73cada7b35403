//! The blocklist parser: every entry is a target that prints and parses
//! back to itself; every bad line names a line that exists.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xban::addr::Target;
use xban::blocklist::parse;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let (targets, bad) = parse(Path::new("/fuzz/blocklist.txt"), &text);
    assert!(targets.len() + bad.len() <= lines);
    for t in &targets {
        assert_eq!(t.to_string().parse::<Target>().ok().as_ref(), Some(t));
    }
    for b in &bad {
        assert!(b.line >= 1 && b.line <= lines, "{b:?}");
        assert!(!b.message.is_empty());
    }
});
