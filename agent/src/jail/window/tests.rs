use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// One failure; the lines of the ban it completes, if it does.
fn rec(w: &mut JailWindow, addr: IpAddr, at: SystemTime, line: &str) -> Option<Vec<String>> {
    w.record(addr, at, &MatchedLine::new(line))
        .map(|c| c.lines.iter().map(|l| l.to_string()).collect())
}

#[test]
fn bans_at_maxretry_within_findtime() {
    let mut w = JailWindow::new(Duration::from_secs(60), 3);
    let a: IpAddr = "203.0.113.1".parse().unwrap();
    assert!(rec(&mut w, a, t(1000), "one").is_none());
    assert!(rec(&mut w, a, t(1030), "two").is_none());
    let lines = rec(&mut w, a, t(1059), "three").unwrap();
    assert_eq!(lines, vec!["one", "two", "three"]);
    // Counting starts over after a ban.
    assert_eq!(w.failing_count(), 0);
}

#[test]
fn failures_outside_findtime_do_not_count() {
    let mut w = JailWindow::new(Duration::from_secs(60), 3);
    let a: IpAddr = "2001:db8::7".parse().unwrap();
    assert!(rec(&mut w, a, t(1000), "1").is_none());
    assert!(rec(&mut w, a, t(1050), "2").is_none());
    // 1000 is more than 60 s before 1061: only two failures in the window.
    assert!(rec(&mut w, a, t(1061), "3").is_none());
    assert_eq!(w.failing().next(), Some((a, 2)));
    assert!(rec(&mut w, a, t(1070), "4").is_some());
}

#[test]
fn addresses_are_counted_separately_and_pruned() {
    let mut w = JailWindow::new(Duration::from_secs(60), 2);
    let a: IpAddr = "203.0.113.1".parse().unwrap();
    let b: IpAddr = "203.0.113.2".parse().unwrap();
    assert!(rec(&mut w, a, t(1000), "a").is_none());
    assert!(rec(&mut w, b, t(1000), "b").is_none());
    assert_eq!(w.failing_count(), 2);
    w.prune(t(1061));
    assert_eq!(w.failing_count(), 0);
    assert!(rec(&mut w, a, t(1100), "a").is_none());
}

#[test]
fn the_cap_evicts_one_time_addresses_before_repeat_offenders() {
    let mut w = JailWindow::new(Duration::from_secs(3600), 3);
    w.set_max_tracked(100);
    let attacker: IpAddr = "203.0.113.66".parse().unwrap();
    let one_time =
        |i: u32| IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128));
    assert!(rec(&mut w, attacker, t(1000), "a1").is_none());
    for i in 0..50 {
        assert!(rec(&mut w, one_time(i), t(1001), "x").is_none());
    }
    assert!(rec(&mut w, attacker, t(1002), "a2").is_none());
    // A flood of 10,000 one-time addresses, a hundred times the cap.
    for i in 50..10_050 {
        assert!(rec(&mut w, one_time(i), t(1003), "x").is_none());
        assert!(w.failing_count() <= 100);
    }
    assert_eq!(w.take_evictions(), 10_050 + 1 - 100);
    let lines = rec(&mut w, attacker, t(1004), "a3").expect("still counted: banned");
    assert_eq!(lines, ["a1", "a2", "a3"]);
    // Oldest first among one-time addresses: the newest 99 are left.
    assert!(w.failing().all(|(a, _)| a >= one_time(10_050 - 99)));
    // With no single left, the least recently failing goes.
    let mut w = JailWindow::new(Duration::from_secs(3600), 10);
    w.set_max_tracked(2);
    let (a, b, c) = (one_time(1), one_time(2), one_time(3));
    for x in [a, a, b, b, a] {
        rec(&mut w, x, t(1), "x");
    }
    rec(&mut w, c, t(2), "x");
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
        rec(&mut w, a, t(i), "x");
    }
    assert!(w.singles.len() + w.repeats.len() <= 2 * w.failing_count() + 65);
}

#[test]
fn kept_lines_are_bounded() {
    let mut w = JailWindow::new(Duration::from_secs(60), 1);
    let long = "é".repeat(10_000);
    let lines = rec(&mut w, "203.0.113.1".parse().unwrap(), t(1), &long).unwrap();
    assert_eq!(lines[0].chars().count(), MAX_KEPT_LINE);
    // More bytes than the bound but fewer characters: kept whole.
    let wide = "é".repeat(300);
    let lines = rec(&mut w, "203.0.113.2".parse().unwrap(), t(1), &wide).unwrap();
    assert_eq!(lines[0], wide);
}

#[test]
fn counts_stay_exact_when_failures_arrive_out_of_order() {
    let mut w = JailWindow::new(Duration::from_secs(60), 100);
    let a: IpAddr = "203.0.113.9".parse().unwrap();
    // Two files, interleaved: times go back and forth.
    for s in [1000, 1010, 1005, 1070, 1002, 1065] {
        assert!(rec(&mut w, a, t(s), &format!("at {s}")).is_none());
    }
    // The newest is 1070: 1000, 1002 and 1005 are more than 60 s before it.
    // 1002 came after 1070 and is already out when it arrives.
    assert_eq!(w.failing().collect::<Vec<_>>(), [(a, 3)]);
    let mut w = JailWindow::new(Duration::from_secs(60), 4);
    for s in [1010, 1000, 1030] {
        assert!(rec(&mut w, a, t(s), &format!("at {s}")).is_none());
    }
    // The ban's lines come in log-time order.
    assert_eq!(
        rec(&mut w, a, t(1020), "at 1020").unwrap(),
        ["at 1000", "at 1010", "at 1020", "at 1030"]
    );
}

#[test]
fn the_ban_carries_the_failure_count_and_the_newest_lines() {
    let mut w = JailWindow::new(Duration::from_secs(3600), 100);
    let a: IpAddr = "2001:db8::66".parse().unwrap();
    for i in 0..99u64 {
        assert!(rec(&mut w, a, t(1000 + i), &format!("line {i}")).is_none());
    }
    // One late line from another file, older than all: counted, no line kept.
    let caught = w
        .record(a, t(999), &MatchedLine::new("late"))
        .expect("the 100th failure bans");
    assert_eq!(caught.failures, 100);
    let lines: Vec<String> = caught.lines.iter().map(|l| l.to_string()).collect();
    let newest: Vec<String> = (99 - KEPT_LINES as u64..99)
        .map(|i| format!("line {i}"))
        .collect();
    assert_eq!(lines, newest);
    // An out-of-order line among the newest keeps its line, and the
    // oldest kept one gives its up.
    let k = KEPT_LINES as u64;
    let mut w = JailWindow::new(Duration::from_secs(3600), KEPT_LINES as u32 + 2);
    for i in 0..k {
        assert!(rec(&mut w, a, t(1000 + 2 * i), &format!("line {}", 2 * i)).is_none());
    }
    assert!(rec(&mut w, a, t(1000 + 2 * k - 3), "odd").is_none());
    let lines = rec(&mut w, a, t(1000 + 2 * k + 10), "last").expect("banned");
    assert_eq!(lines.len(), KEPT_LINES);
    assert_eq!(lines[0], "line 4", "lines 0 and 2 are the oldest two");
    let odd = lines.iter().position(|l| l == "odd").unwrap();
    assert_eq!(lines[odd - 1], format!("line {}", 2 * k - 4));
    assert_eq!(lines[odd + 1], format!("line {}", 2 * k - 2));
    assert_eq!(lines.last().unwrap(), "last");
}

#[test]
fn jails_counting_the_same_line_share_one_copy() {
    let mut w1 = JailWindow::new(Duration::from_secs(60), 1);
    let mut w2 = JailWindow::new(Duration::from_secs(60), 1);
    let line = MatchedLine::new("sshd[1]: Failed password for root from 203.0.113.5");
    let a: IpAddr = "203.0.113.5".parse().unwrap();
    let c1 = w1.record(a, t(1), &line).unwrap();
    let c2 = w2.record(a, t(1), &line).unwrap();
    assert!(Arc::ptr_eq(&c1.lines[0], &c2.lines[0]));
    assert_eq!(c1.failures, 1);
    assert_eq!(w1.failing_count(), 0, "maxretry 1: banned, not tracked");
}

#[test]
fn addresses_are_fixed_size_keys_that_map_back() {
    let mut w = JailWindow::new(Duration::from_secs(60), 3);
    let v4: IpAddr = "203.0.113.5".parse().unwrap();
    let mapped: IpAddr = "::ffff:203.0.113.5".parse().unwrap();
    let v6: IpAddr = "2001:db8::5".parse().unwrap();
    rec(&mut w, v4, t(1), "a");
    rec(&mut w, mapped, t(2), "b");
    rec(&mut w, v6, t(3), "c");
    let mut failing: Vec<(IpAddr, usize)> = w.failing().collect();
    failing.sort();
    assert_eq!(failing, [(v4, 2), (v6, 1)]);
    w.forget(&mapped);
    assert_eq!(w.failing().collect::<Vec<_>>(), [(v6, 1)]);
    // A repeat offender's window is pruned on its newest failure.
    rec(&mut w, v6, t(50), "d");
    w.prune(t(100));
    assert_eq!(w.failing().collect::<Vec<_>>(), [(v6, 2)]);
    w.prune(t(111));
    assert_eq!(w.failing_count(), 0);
}
