//! The control protocol parser: any bytes give a request or an error
//! message; a parsed request survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xban::api::protocol::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            let text = serde_json::to_string(&req).expect("a request serializes");
            let again: Request = serde_json::from_str(&text).expect("its own JSON parses");
            assert_eq!(again, req);
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
