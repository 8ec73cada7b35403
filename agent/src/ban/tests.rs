use super::*;

fn rec(target: &str, jail: &str, class: BanClass, expires: Option<i64>) -> BanRecord {
    BanRecord {
        target: target.parse().unwrap(),
        jail: jail.into(),
        class,
        banned_at: 0,
        expires_at: expires,
        failures: 1,
        matches: vec![],
    }
}

#[test]
fn short_jail_unban_never_lifts_longer_ban() {
    let mut b = BanBook::default();
    let t: Target = "203.0.113.5".parse().unwrap();
    assert_eq!(
        b.add(rec("203.0.113.5", "long", BanClass::Tarpit, Some(1000))),
        MapChange::Set(BanClass::Tarpit)
    );
    // A shorter drop ban from another jail does not change the class.
    assert_eq!(
        b.add(rec("203.0.113.5", "short", BanClass::Drop, Some(100))),
        MapChange::Unchanged
    );
    let expired = b.expire(100);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0.jail, "short");
    assert_eq!(expired[0].1, MapChange::Unchanged);
    assert_eq!(b.effective(&t).unwrap().jail, "long");
    let expired = b.expire(1000);
    assert_eq!(expired[0].1, MapChange::Remove);
    assert!(b.effective(&t).is_none());
}

#[test]
fn longer_ban_takes_over_class() {
    let mut b = BanBook::default();
    b.add(rec("203.0.113.5", "a", BanClass::Drop, Some(100)));
    assert_eq!(
        b.add(rec("203.0.113.5", "b", BanClass::Tarpit, None)),
        MapChange::Set(BanClass::Tarpit)
    );
    // Unbanning jail b leaves jail a's drop ban.
    let t: Target = "203.0.113.5".parse().unwrap();
    let (removed, change) = b.remove(&t, Some("b"));
    assert_eq!(removed.len(), 1);
    assert_eq!(change, MapChange::Set(BanClass::Drop));
    let (removed, change) = b.remove(&t, None);
    assert_eq!(removed.len(), 1);
    assert_eq!(change, MapChange::Remove);
    assert_eq!(b.next_expiry(), None);
}

#[test]
fn rebanning_replaces_the_jails_record_and_its_expiry() {
    let mut b = BanBook::default();
    b.add(rec("2001:db8::1", "a", BanClass::Drop, Some(100)));
    assert_eq!(
        b.add(rec("2001:db8::1", "a", BanClass::Drop, Some(500))),
        MapChange::Unchanged
    );
    assert!(b.expire(100).is_empty(), "old expiry must not fire");
    assert_eq!(b.next_expiry(), Some(500));
    assert_eq!(b.expire(500).len(), 1);
    assert_eq!(b.len_targets(), 0);
}

/// The running counts equal a recount after any sequence of adds,
/// replacements, removals and expiries, labels included.
#[test]
fn running_counts_equal_a_recount() {
    let mut b = BanBook::default();
    let label: Labeller =
        std::sync::Arc::new(|t: &Target| Some(if t.is_ipv4() { "v4" } else { "v6" }.to_string()));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let targets = [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.0/24",
        "198.51.100.7",
        "2001:db8::1",
        "2001:db8::/64",
    ];
    let jails = ["ssh", "web", "manual"];
    for step in 0..5000 {
        if step == 1000 {
            // A labeller set late counts what is already held.
            b.set_labeller(Some(label.clone()));
            assert_eq!(b.tally(), &b.recount());
        }
        let t = targets[next(targets.len() as u64) as usize];
        let j = jails[next(jails.len() as u64) as usize];
        let class = if next(2) == 0 {
            BanClass::Drop
        } else {
            BanClass::Tarpit
        };
        let expires = match next(3) {
            0 => None,
            n => Some(step + n as i64 * 7),
        };
        match next(5) {
            0 | 1 => {
                b.add(rec(t, j, class, expires));
            }
            2 => {
                b.remove(&t.parse().unwrap(), Some(j));
            }
            3 => {
                b.remove(&t.parse().unwrap(), None);
            }
            _ => {
                b.expire(step);
            }
        }
        assert_eq!(b.tally(), &b.recount(), "after step {step}");
        assert_eq!(b.tally().drop + b.tally().tarpit, b.len_targets());
    }
    b.set_labeller(None);
    assert!(b.tally().by_label.is_empty());
    assert_eq!(b.tally(), &b.recount());
}

/// Loaded in bulk or added one by one: the same book (records, counts,
/// listing order, expiries), the last record of a target and jail
/// winning; a book that holds bans takes a load one by one.
#[test]
fn a_bulk_load_equals_adds_one_by_one() {
    let mut recs = Vec::new();
    for i in 0..300u32 {
        let target = if i % 7 == 0 {
            format!("2001:db8::{i:x}")
        } else {
            format!("198.51.100.{}", i % 250)
        };
        let jail = ["ssh", "web", "fleet@b"][(i % 3) as usize];
        let class = if i % 5 == 0 {
            BanClass::Tarpit
        } else {
            BanClass::Drop
        };
        let expires = (i % 4 != 0).then_some(1000 + i64::from(i % 40));
        recs.push(rec(&target, jail, class, expires));
    }
    let mut one_by_one = BanBook::default();
    for r in recs.clone() {
        one_by_one.add(r);
    }
    let mut bulk = BanBook::default();
    bulk.add_all(recs.clone());
    let all = |b: &BanBook| b.iter().collect::<Vec<_>>();
    assert_eq!(all(&bulk), all(&one_by_one));
    assert_eq!(bulk.tally(), one_by_one.tally());
    assert_eq!(bulk.tally(), &bulk.recount());
    assert_eq!(bulk.next_expiry(), one_by_one.next_expiry());
    let listing = |b: &BanBook| b.targets_after(None).collect::<Vec<_>>();
    assert_eq!(listing(&bulk), listing(&one_by_one));
    assert_eq!(bulk.expire(1020), one_by_one.expire(1020));
    assert_eq!(all(&bulk), all(&one_by_one));
    // Into a book that holds bans: added one by one, same result.
    let mut partly = BanBook::default();
    partly.add(recs[0].clone());
    partly.add_all(recs[1..].iter().cloned());
    partly.expire(1020);
    assert_eq!(all(&partly), all(&bulk));
    assert_eq!(partly.tally(), bulk.tally());
}

#[test]
fn covering_prefixes_are_found_by_lookup() {
    let mut b = BanBook::default();
    b.add(rec("203.0.113.0/24", "a", BanClass::Drop, None));
    b.add(rec("203.0.0.0/16", "a", BanClass::Drop, None));
    b.add(rec("203.0.113.5", "a", BanClass::Drop, None));
    b.add(rec("2001:db8::/32", "a", BanClass::Drop, None));
    let host: Target = "203.0.113.5".parse().unwrap();
    let mut cover: Vec<String> = b.covering(&host).iter().map(|t| t.to_string()).collect();
    cover.sort();
    assert_eq!(cover, ["203.0.0.0/16", "203.0.113.0/24"]);
    let v6: Target = "2001:db8:1::9".parse().unwrap();
    assert_eq!(b.covering(&v6).len(), 1);
    let other: Target = "198.51.100.1".parse().unwrap();
    assert!(b.covering(&other).is_empty());
}

#[test]
fn a_listing_resumes_after_the_last_target_read() {
    let mut b = BanBook::default();
    for i in 0..10 {
        b.add(rec(&format!("198.51.100.{i}"), "a", BanClass::Drop, None));
    }
    let first: Vec<Target> = b.targets_after(None).take(4).map(|(t, _)| t).collect();
    // A ban removed and one added between slices: the rest still comes
    // once each, in order.
    b.remove(&"198.51.100.5".parse().unwrap(), None);
    b.add(rec("198.51.100.200", "a", BanClass::Drop, None));
    let rest: Vec<Target> = b.targets_after(first.last()).map(|(t, _)| t).collect();
    let all: Vec<Target> = first.iter().chain(&rest).copied().collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 10);
}
