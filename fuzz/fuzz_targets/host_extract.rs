//! `<HOST>` extraction: the tag's regex, the boundary checks and the `std`
//! re-parse. Whatever is extracted must be a real address that occurs in
//! the input (or, for `<HOST>`, a name), never a panic.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use xban::filter::host::{parse_host, HostKind};
use xban::filter::{FilterSet, Host, LineMatch};

fn sets() -> &'static [FilterSet] {
    static S: OnceLock<Vec<FilterSet>> = OnceLock::new();
    S.get_or_init(|| {
        ["<HOST>", "from <ADDR> port", r"\[<IP6>\]", "rip=<IP4>,", "^<HOST>$"]
            .iter()
            .map(|p| FilterSet::compile(&[p.to_string()], &[], None).expect("seed regex"))
            .collect()
    })
}

// Compiled before fuzzing starts, so that libFuzzer's per-input timeout
// does not count the one-time set-up.
fuzz_target!(init: {
    sets();
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [HostKind::Host, HostKind::Addr, HostKind::Ip4, HostKind::Ip6] {
        match parse_host(text, kind) {
            Some(Host::Addr(a)) => {
                assert!(kind != HostKind::Ip4 || a.is_ipv4(), "{kind:?} gave {a}");
                // Displayed and parsed back, it is the same address.
                assert_eq!(a.to_string().parse::<IpAddr>().ok(), Some(a));
            }
            Some(Host::Name(n)) => {
                assert_eq!(kind, HostKind::Host, "only <HOST> yields names");
                assert!(!n.is_empty() && !n.contains(char::is_whitespace), "{n:?}");
            }
            None => {}
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_795_305_600);
    for set in sets() {
        if let LineMatch::Failure(f) = set.match_line(text, now) {
            if let Host::Addr(IpAddr::V4(a)) = f.host {
                // An IPv4 address is taken from the line's own text: a
                // dotted quad (its last octet is there), or an IPv4-mapped
                // IPv6 address (`::ffff:20:f` is 0.32.0.15).
                let last = a.octets()[3].to_string();
                let mapped = text.to_ascii_lowercase().contains("ffff:");
                assert!(text.contains(&last) || mapped, "{a} not in {text:?}");
            }
        }
    }
});
