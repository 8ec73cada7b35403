use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Issue 10 item 7: a flood of lines carrying hostnames (usedns =
/// "warn") logs a few warnings, not one per line, and the rest as a
/// count.
#[test]
fn hostname_warnings_are_rate_limited() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
            "[agent]\nfilters_dir = \"{}\"\n[jails.app]\nlogpath = [\"/l\"]\nusedns = \"warn\"\nfailregex = ['^bad <HOST>$']\n",
            dir.path().join("none").display()
        );
    let cfg = crate::config::Config::parse(&text)
        .unwrap()
        .validate()
        .unwrap();
    let mut jail = Jail::new(cfg.jails[0].clone(), &[]).unwrap();
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..10_000 {
            let v = jail.process(&format!("bad host{i}.example.net"), t(1000), None);
            assert_eq!(v, JailVerdict::Nothing);
        }
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let skipped = out.matches("to resolve it").count();
    assert_eq!(skipped, crate::ratelimit::BURST as usize, "{out}");
    assert!(out.contains("further ones are counted"), "{out}");
    assert_eq!(jail.counters.hostnames_skipped, 10_000);
    assert_eq!(
        jail.warnings_suppressed(),
        10_000 - crate::ratelimit::BURST as u64
    );
}
