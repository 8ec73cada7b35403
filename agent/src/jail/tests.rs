use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn bans_at_maxretry_within_findtime() {
    let mut w = JailWindow::new(Duration::from_secs(60), 3);
    let a: IpAddr = "203.0.113.1".parse().unwrap();
    assert!(w.record(a, t(1000), "one").is_none());
    assert!(w.record(a, t(1030), "two").is_none());
    let lines = w.record(a, t(1059), "three").unwrap();
    assert_eq!(lines, vec!["one", "two", "three"]);
    // Counting starts over after a ban.
    assert_eq!(w.failing_count(), 0);
}

#[test]
fn failures_outside_findtime_do_not_count() {
    let mut w = JailWindow::new(Duration::from_secs(60), 3);
    let a: IpAddr = "2001:db8::7".parse().unwrap();
    assert!(w.record(a, t(1000), "1").is_none());
    assert!(w.record(a, t(1050), "2").is_none());
    // 1000 is more than 60 s before 1061: only two failures in the window.
    assert!(w.record(a, t(1061), "3").is_none());
    assert_eq!(w.failing().next(), Some((a, 2)));
    assert!(w.record(a, t(1070), "4").is_some());
}

#[test]
fn addresses_are_counted_separately_and_pruned() {
    let mut w = JailWindow::new(Duration::from_secs(60), 2);
    let a: IpAddr = "203.0.113.1".parse().unwrap();
    let b: IpAddr = "203.0.113.2".parse().unwrap();
    assert!(w.record(a, t(1000), "a").is_none());
    assert!(w.record(b, t(1000), "b").is_none());
    assert_eq!(w.failing_count(), 2);
    w.prune(t(1061));
    assert_eq!(w.failing_count(), 0);
    assert!(w.record(a, t(1100), "a").is_none());
}

#[test]
fn the_cap_evicts_one_time_addresses_before_repeat_offenders() {
    let mut w = JailWindow::new(Duration::from_secs(3600), 3);
    w.set_max_tracked(100);
    let attacker: IpAddr = "203.0.113.66".parse().unwrap();
    let one_time =
        |i: u32| IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128));
    assert!(w.record(attacker, t(1000), "a1").is_none());
    for i in 0..50 {
        assert!(w.record(one_time(i), t(1001), "x").is_none());
    }
    assert!(w.record(attacker, t(1002), "a2").is_none());
    // A flood of 10,000 one-time addresses, a hundred times the cap.
    for i in 50..10_050 {
        assert!(w.record(one_time(i), t(1003), "x").is_none());
        assert!(w.failing_count() <= 100);
    }
    assert_eq!(w.take_evictions(), 10_050 + 1 - 100);
    let lines = w
        .record(attacker, t(1004), "a3")
        .expect("still counted: banned");
    assert_eq!(lines, ["a1", "a2", "a3"]);
    // Oldest first among one-time addresses: the newest 99 are left.
    assert!(w.failing().all(|(a, _)| a >= one_time(10_050 - 99)));
    // With no single left, the least recently failing goes.
    let mut w = JailWindow::new(Duration::from_secs(3600), 10);
    w.set_max_tracked(2);
    let (a, b, c) = (one_time(1), one_time(2), one_time(3));
    for x in [a, a, b, b, a] {
        w.record(x, t(1), "x");
    }
    w.record(c, t(2), "x");
    let mut left: Vec<IpAddr> = w.failing().map(|(a, _)| a).collect();
    left.sort();
    assert_eq!(left, vec![a, c], "b failed least recently");
    // Lowering the cap evicts at once.
    w.set_max_tracked(1);
    assert_eq!(w.failing_count(), 1);
}

#[test]
fn queue_bookkeeping_stays_bounded_under_churn() {
    let mut w = JailWindow::new(Duration::from_secs(3600), 1_000_000);
    w.set_max_tracked(10);
    let a: IpAddr = "203.0.113.1".parse().unwrap();
    for i in 0..100_000u64 {
        w.record(a, t(i), "x");
    }
    assert!(w.singles.len() + w.repeats.len() <= 2 * w.failing_count() + 65);
}

#[test]
fn kept_lines_are_bounded() {
    let mut w = JailWindow::new(Duration::from_secs(60), 1);
    let long = "é".repeat(10_000);
    let lines = w
        .record("203.0.113.1".parse().unwrap(), t(1), &long)
        .unwrap();
    assert_eq!(lines[0].chars().count(), MAX_KEPT_LINE);
    // More bytes than the bound but fewer characters: kept whole.
    let wide = "é".repeat(300);
    let lines = w
        .record("203.0.113.2".parse().unwrap(), t(1), &wide)
        .unwrap();
    assert_eq!(lines[0], wide);
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
