//! Issue 16: DNS names in ignoreip kept current (a dnsmasq in the lab
//! whose record the test changes), and country/ASN rules from MaxMind DB
//! files the test writes itself with Debian's libmaxmind-db-writer-perl.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xban_tests::*;

const DNS_ADDR: &str = ATK3_V4;

/// dnsmasq in the attacker's namespace, answering from a hosts directory
/// it watches (a changed file is re-read at once), TTL 1 s.
struct Dnsmasq {
    child: Option<Child>,
    hosts_dir: std::path::PathBuf,
    ns: String,
}

impl Dnsmasq {
    fn start(lab: &Lab, dir: &AgentDir) -> Dnsmasq {
        let hosts_dir = dir.path("dns-hosts");
        std::fs::create_dir_all(&hosts_dir).unwrap();
        let mut d = Dnsmasq {
            child: None,
            hosts_dir,
            ns: lab.atk_ns.clone(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/lab.test/",
            ])
            .arg("--bind-interfaces")
            .arg(format!("--listen-address={DNS_ADDR}"))
            .arg("--except-interface=lo")
            .arg(format!("--hostsdir={}", self.hosts_dir.display()))
            .args([
                "--local-ttl=1",
                "--user=root",
                "--group=root",
                "--pid-file=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (cargo xtask test installs it)");
        self.child = Some(child);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("dnsmasq exited at once: {status}");
        }
    }

    fn set(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(addr, name)| format!("{addr} {name}\n"))
            .collect();
        let tmp = self.hosts_dir.join(".tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.hosts_dir.join("records")).unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn status(dir: &AgentDir) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["status", "--json"]).unwrap()).unwrap()
}

fn name_addresses(dir: &AgentDir, name: &str) -> Vec<String> {
    status(dir)["dns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| {
            n["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ignoreip_names_follow_dns_lift_bans_and_survive_an_outage() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let mut dns = Dnsmasq::start(&lab, &dir);
    dns.set(&[(ATK_V4, "admin.lab.test")]);
    dir.write_config_with_agent(
        &lab,
        &format!(
            "resolvers = [\"{DNS_ADDR}\"]\ndns_refresh_min = \"1s\"\ndns_refresh_max = \"2s\"\n"
        ),
        "[defaults]\nmaxretry = 2\nignoreip = [\"admin.lab.test\", \"never.lab.test\"]\n\
         [jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{LOG}\"]\n",
    )
    .unwrap();
    let check = dir.xban_ok(&["check"]).unwrap();
    assert!(
        check.contains(&format!("ignoreip admin.lab.test: {ATK_V4}"))
            && check.contains("warning: ignoreip never.lab.test does not resolve"),
        "{check}"
    );
    let agent = AgentProcess::start(&lab, &dir).unwrap();
    // Resolved before the agent reports ready.
    assert_eq!(
        name_addresses(&dir, "admin.lab.test"),
        [ATK_V4],
        "{}",
        agent.log()
    );
    let st = status(&dir);
    assert_eq!(st["dns_unresolved"], serde_json::json!(["never.lab.test"]));
    let text = dir.xban_ok(&["status"]).unwrap();
    assert!(
        text.contains("ignoreip never.lab.test: unresolved"),
        "{text}"
    );

    // The allowlisted name's address is never banned, and passes at XDP.
    dir.append_log(&[sshd_failure(ATK_V4, 1), sshd_failure(ATK_V4, 2)])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(dir.banned().unwrap().is_empty());
    let before = dir.stats().unwrap()["passed_allowlisted"].as_u64().unwrap();
    assert!(lab.udp_reaches(ATK_V4, SRV_V4));
    assert!(dir.stats().unwrap()["passed_allowlisted"].as_u64().unwrap() > before);

    // Another address is banned; then the record moves to it.
    dir.xban_ok(&["ban", ATK2_V4]).unwrap();
    assert!(!lab.udp_reaches(ATK2_V4, SRV_V4));
    let moved_at = Instant::now();
    dns.set(&[(ATK2_V4, "admin.lab.test")]);
    assert!(
        wait_for(Duration::from_secs(6), || name_addresses(
            &dir,
            "admin.lab.test"
        ) == [ATK2_V4]),
        "the allowlist follows the record within its TTL (refresh 1-2 s):\n{}",
        agent.log()
    );
    assert!(moved_at.elapsed() < Duration::from_secs(6));
    assert!(dir.banned_addresses().unwrap().is_empty(), "ban lifted");
    assert!(
        agent.log().contains(&format!(
            "unban {ATK2_V4} jail=manual class=drop reason=allowlisted"
        )),
        "{}",
        agent.log()
    );
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4));
    // The old address is an ordinary one again.
    dir.append_log(&[sshd_failure(ATK_V4, 3), sshd_failure(ATK_V4, 4)])
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || dir
        .banned_addresses()
        .unwrap()
        == [ATK_V4]));

    // DNS goes away: the last addresses stay, with the error.
    dns.stop();
    assert!(wait_for(Duration::from_secs(10), || {
        status(&dir)["dns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "admin.lab.test" && !n["last_error"].is_null())
    }));
    assert_eq!(name_addresses(&dir, "admin.lab.test"), [ATK2_V4]);
    assert!(lab.udp_reaches(ATK2_V4, SRV_V4));
    assert!(
        agent.log().contains("keeping its last addresses"),
        "{}",
        agent.log()
    );

    // DNS back with the record gone to NXDOMAIN: still kept.
    dns.set(&[]);
    dns.spawn();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(name_addresses(&dir, "admin.lab.test"), [ATK2_V4]);
    agent.stop().unwrap();
}

/// Write a MaxMind DB: `country` records (`NET CODE`) or `asn` records
/// (`NET NUMBER`), with the reserved networks kept (documentation prefixes).
fn write_mmdb(path: &Path, kind: &str, records: &[(&str, &str)]) {
    let script = r#"
use strict; use warnings;
use MaxMind::DB::Writer::Tree;
my ($kind, $out) = @ARGV;
my %types = (country => 'map', iso_code => 'utf8_string', names => 'map', en => 'utf8_string',
             autonomous_system_number => 'uint32', autonomous_system_organization => 'utf8_string');
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version => 6, record_size => 24, languages => ['en'],
    database_type => $kind eq 'asn' ? 'xban-test-ASN' : 'xban-test-Country',
    description => { en => 'xban test database' },
    map_key_type_callback => sub { $types{ $_[0] } },
    remove_reserved_networks => 0, alias_ipv6_to_ipv4 => 0,
);
while (my $line = <STDIN>) {
    chomp $line; next unless $line;
    my ($net, $v) = split ' ', $line;
    my $data = $kind eq 'asn'
        ? { autonomous_system_number => $v + 0, autonomous_system_organization => "Test AS $v" }
        : { country => { iso_code => $v, names => { en => "Testland $v" } } };
    $tree->insert_network($net, $data);
}
open my $fh, '>:raw', "$out.tmp" or die "open: $!";
$tree->write_tree($fh); close $fh or die;
rename "$out.tmp", $out or die "rename: $!";
"#;
    let mut child = Command::new("perl")
        .args(["-e", script, kind, path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for (net, v) in records {
            writeln!(stdin, "{net} {v}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "perl MaxMind::DB::Writer (libmaxmind-db-writer-perl; cargo xtask test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn geo_config(dir: &AgentDir) -> String {
    format!(
        "[defaults]\nmaxretry = 2\nbantime = \"10m\"\nignoreip = [\"{ATK2_V4}\"]\n\
         [jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{{LOG}}\"]\nbantime_by_country = {{ XB = \"1w\" }}\n\
         [geo]\ndatabase = \"{}\"\nasn_database = \"{}\"\n\
         [[geo.rules]]\ncountries = [\"XA\"]\naction = \"ban\"\nclass = \"drop\"\n\
         [[geo.rules]]\nasns = [64500]\n",
        dir.path("country.mmdb").display(),
        dir.path("asn.mmdb").display()
    )
}

fn geo_of(dir: &AgentDir, addr: &str) -> serde_json::Value {
    serde_json::from_str(&dir.xban_ok(&["geo", addr, "--json"]).unwrap()).unwrap()
}

#[test]
fn geo_rules_drop_countries_and_asns_and_follow_the_database() {
    let lab = Lab::new().unwrap();
    let dir = AgentDir::new().unwrap();
    let country = dir.path("country.mmdb");
    let asn = dir.path("asn.mmdb");
    // XA: the attacker's .2 and .3 (and the server's .1, cut out); XB: a
    // far-away offender's; AS64500: the third attacker address.
    write_mmdb(
        &country,
        "country",
        &[
            ("198.51.100.0/30", "XA"),
            ("2001:db8:100::/64", "XA"),
            ("203.0.113.0/25", "XB"),
        ],
    );
    write_mmdb(&asn, "asn", &[("198.51.100.4/32", "64500")]);
    dir.write_config(&lab, &geo_config(&dir)).unwrap();
    let check = dir.xban_ok(&["check"]).unwrap();
    assert!(check.contains("geo: 2 rule(s)"), "{check}");

    let agent = AgentProcess::start(&lab, &dir).unwrap();
    // Dropped: the country (v4 and v6) and the AS. Passed: the ignoreip
    // address inside the country's prefix.
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "{}", agent.log());
    assert!(!lab.udp_reaches(ATK_V6, SRV_V6));
    assert!(!lab.udp_reaches(ATK3_V4, SRV_V4), "ASN rule");
    assert!(
        lab.udp_reaches(ATK2_V4, SRV_V4),
        "ignoreip wins over a geo ban"
    );

    let g = geo_of(&dir, ATK_V4);
    assert_eq!(g["country"], "XA");
    assert_eq!(g["country_name"], "Testland XA");
    assert!(g["rule"].as_str().unwrap().contains("geo.rules[0]"), "{g}");
    let g = geo_of(&dir, ATK3_V4);
    assert_eq!(g["asn"], 64500);
    assert!(g["rule"].as_str().unwrap().contains("AS64500"), "{g}");
    let g = geo_of(&dir, ATK2_V4);
    assert_eq!(g["allowlisted_by"], ATK2_V4);
    let text = dir.xban_ok(&["geo", ATK_V4]).unwrap();
    assert!(text.contains("country  XA (Testland XA)"), "{text}");

    let banned = dir.banned().unwrap();
    let geo: Vec<&serde_json::Value> = banned.iter().filter(|b| b["jail"] == "geo").collect();
    assert!(
        geo.iter()
            .any(|b| b["address"] == "198.51.100.2/31" && b["country"] == "XA"),
        "{banned:?}"
    );
    assert!(geo.iter().all(|b| b["expires_at"].is_null()));
    assert!(
        !geo.iter().any(|b| b["address"] == "198.51.100.0/30"),
        "own address cut out"
    );

    // Per-country drop counts.
    let st = status(&dir);
    let xa = st["geo"]["dropped_packets"]["XA"].as_u64().unwrap();
    assert!(xa >= 3, "{st}");
    assert!(st["geo"]["dropped_packets"]["AS64500"].as_u64().unwrap() >= 1);
    assert!(st["bans_by_country"]["XA"].as_u64().unwrap() >= 1, "{st}");

    // bantime_by_country: an XB offender gets the week, another the jail's 10m.
    dir.append_log(&[
        sshd_failure("203.0.113.50", 1),
        sshd_failure("203.0.113.50", 2),
        sshd_failure("203.0.113.200", 3),
        sshd_failure("203.0.113.200", 4),
    ])
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || dir
        .banned()
        .unwrap()
        .iter()
        .filter(|b| b["jail"] == "sshd")
        .count()
        == 2));
    for b in dir.banned().unwrap().iter().filter(|b| b["jail"] == "sshd") {
        let len = b["expires_at"].as_i64().unwrap() - b["banned_at"].as_i64().unwrap();
        match b["address"].as_str().unwrap() {
            "203.0.113.50" => assert_eq!((len, b["country"].as_str()), (604_800, Some("XB"))),
            "203.0.113.200" => assert_eq!(len, 600),
            other => panic!("unexpected ban {other}"),
        }
    }

    // A new database version: XA shrinks to .2 alone, in a different
    // prefix shape. A flood from .2 across the swap never gets through.
    let flood = {
        let srv_ns = lab.srv_ns.clone();
        let atk_ns = lab.atk_ns.clone();
        std::thread::spawn(move || udp_flood_received(&srv_ns, &atk_ns, Duration::from_secs(4)))
    };
    std::thread::sleep(Duration::from_millis(500));
    write_mmdb(
        &country,
        "country",
        &[
            ("198.51.100.2/32", "XA"),
            ("2001:db8:100::/64", "XA"),
            ("203.0.113.0/25", "XB"),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(5), || dir
            .banned_addresses()
            .unwrap()
            .contains(&"198.51.100.2".to_string())),
        "{}",
        agent.log()
    );
    let (sent, received) = flood.join().unwrap();
    assert!(sent > 100, "flood sent {sent}");
    assert_eq!(
        received, 0,
        "no datagram of the {sent} got through during the swap"
    );
    assert!(!dir
        .banned_addresses()
        .unwrap()
        .contains(&"198.51.100.2/31".to_string()));
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));

    // A truncated database: refused with a clear error, rules kept.
    let good = std::fs::read(&country).unwrap();
    let tmp = dir.path("country.tmp");
    std::fs::write(&tmp, &good[..good.len() / 2]).unwrap();
    std::fs::rename(&tmp, &country).unwrap();
    assert!(wait_for(Duration::from_secs(5), || agent
        .log()
        .contains("not a readable MaxMind DB")));
    assert!(agent.log().contains("the rules in force are kept"));
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4), "old rules still drop");
    let out = dir.xban(&["check"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("geo.database") && err.contains("not a readable MaxMind DB"),
        "{err}"
    );
    let out = dir.xban(&["reload"]).unwrap();
    assert!(!out.status.success(), "reload refused");
    assert!(!lab.udp_reaches(ATK_V4, SRV_V4));
    agent.stop().unwrap();

    // ... and at start.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.srv_ns))
        .arg(xban_bin())
        .arg("-c")
        .arg(dir.config_path())
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("geo.database") && err.contains("truncated or corrupt"),
        "{err}"
    );
    std::fs::remove_file(&country).unwrap();
    let out = dir.xban(&["check"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot read"),
        "{err}"
    );
}

/// Send datagrams from the attacker's .2 for `dur`; how many were sent and
/// how many the server received.
fn udp_flood_received(srv_ns: &str, atk_ns: &str, dur: Duration) -> (u64, u64) {
    use std::net::UdpSocket;
    let server = Lab::in_ns(srv_ns, || UdpSocket::bind((SRV_V4, 0)).unwrap());
    server.set_nonblocking(true).unwrap();
    let to = server.local_addr().unwrap();
    let client = Lab::in_ns(atk_ns, || UdpSocket::bind((ATK_V4, 0)).unwrap());
    let (mut sent, mut received) = (0u64, 0u64);
    let end = Instant::now() + dur;
    let mut buf = [0u8; 16];
    while Instant::now() < end {
        if client.send_to(b"flood", to).is_ok() {
            sent += 1;
        }
        while server.recv_from(&mut buf).is_ok() {
            received += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(200));
    while server.recv_from(&mut buf).is_ok() {
        received += 1;
    }
    (sent, received)
}
