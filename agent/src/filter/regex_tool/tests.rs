use super::*;
use std::io::Write;

const SSHD_LOG: &str = "\
Nov 21 05:28:31 bastion sshd[100]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2
Nov 21 05:28:32 bastion sshd[100]: Failed password for invalid user admin from 203.0.113.7 port 50022 ssh2
Nov 21 05:28:33 bastion sshd[101]: Accepted publickey for alice from 198.51.100.2 port 40000 ssh2: ED25519 SHA256:abc
Nov 21 05:28:34 bastion sshd[102]: Invalid user oracle from 2001:db8::5 port 41000
sshd[103]: Failed password for root from 192.0.2.9 port 1 ssh2
Nov 21 05:28:35 bastion sshd[104]: Connection closed by 192.0.2.10 port 2 [preauth]
";

fn write_temp(content: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content).unwrap();
    f
}

#[test]
fn sample_file_with_builtin() {
    let f = write_temp(SSHD_LOG.as_bytes());
    let args = RegexToolArgs {
        input: f.path().display().to_string(),
        filter: "sshd".into(),
        print_missed: true,
        ..Default::default()
    };
    let r = run(&args).unwrap();
    assert_eq!(r.filter, "builtin sshd");
    assert!(r.input.starts_with("file "));
    assert_eq!(
        (
            r.lines_total,
            r.lines_matched,
            r.lines_ignored,
            r.lines_missed
        ),
        (6, 4, 0, 2)
    );
    assert_eq!(r.failregex[0].hits, 3, "the Failed-password pattern");
    assert_eq!(r.failregex.iter().map(|h| h.hits).sum::<u64>(), 4);
    assert_eq!(
        r.hosts,
        vec![
            HostCount {
                host: "203.0.113.7".into(),
                failures: 2
            },
            HostCount {
                host: "192.0.2.9".into(),
                failures: 1
            },
            HostCount {
                host: "2001:db8::5".into(),
                failures: 1
            },
        ]
    );
    assert_eq!(r.timestamps_found, 5);
    assert_eq!(
        r.no_timestamp,
        NoTimestamp {
            count: 1,
            first_lines: vec![5]
        }
    );
    assert_eq!(
        r.missed.iter().map(|m| m.line_no).collect::<Vec<_>>(),
        vec![3, 6]
    );
    let text = r.to_string();
    assert!(
        text.contains("6 total, 4 matched, 0 ignored, 2 missed"),
        "{text}"
    );
    assert!(text.contains("203.0.113.7"), "{text}");
    assert!(text.contains("first at line 5"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["lines_matched"], 4);
    assert_eq!(json["hosts"][0]["host"], "203.0.113.7");

    // With the ddos mode the pre-auth close counts too.
    let r = run(&RegexToolArgs {
        mode: Some("ddos".into()),
        ..args
    })
    .unwrap();
    assert_eq!(r.lines_matched, 5);
    assert_eq!(
        r.missed.iter().map(|m| m.line_no).collect::<Vec<_>>(),
        vec![3]
    );
}

#[test]
fn literal_line_and_literal_regex() {
    let args = RegexToolArgs {
        input: "Nov 21 05:28:31 h app[1]: login failed for bob from 192.0.2.77".into(),
        filter: r"login failed for <F-USER> from <ADDR>$".into(),
        ..Default::default()
    };
    let r = run(&args).unwrap();
    assert_eq!((r.input.as_str(), r.filter.as_str()), ("line", "regex"));
    assert_eq!((r.lines_total, r.lines_matched), (1, 1));
    assert_eq!(
        r.hosts,
        vec![HostCount {
            host: "192.0.2.77".into(),
            failures: 1
        }]
    );
    assert!(r.missed.is_empty(), "not requested");
    // Extra ignoreregex.
    let r = run(&RegexToolArgs {
        ignoreregex: vec!["for bob ".into()],
        ..args.clone()
    })
    .unwrap();
    assert_eq!((r.lines_matched, r.lines_ignored), (0, 1));
    assert_eq!(r.ignoreregex[0].hits, 1);
    // A literal regex without a host tag is an error that says so.
    let e = run(&RegexToolArgs {
        filter: "login failed".into(),
        ..args.clone()
    })
    .unwrap_err();
    assert!(e.to_string().contains("has no <HOST> or <ADDR> tag"));
    let e = run(&RegexToolArgs {
        mode: Some("ddos".into()),
        ..args
    })
    .unwrap_err();
    assert!(e.to_string().contains("--mode"));
}

#[test]
fn toml_path_and_user_dir_override() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("myapp.toml");
    std::fs::write(&toml_path, "failregex = ['^bad login from <HOST>$']\n").unwrap();
    let args = RegexToolArgs {
        input: "bad login from 192.0.2.5".into(),
        filter: toml_path.display().to_string(),
        ..Default::default()
    };
    let r = run(&args).unwrap();
    assert!(r.filter.starts_with("file "), "{}", r.filter);
    assert_eq!(r.lines_matched, 1);
    // The same file found by name in a filters dir.
    let r = run(&RegexToolArgs {
        filter: "myapp".into(),
        filters_dir: Some(dir.path().to_path_buf()),
        ..args.clone()
    })
    .unwrap();
    assert_eq!(
        (r.filter.as_str(), r.lines_matched),
        ("user filter myapp", 1)
    );
    // A user file named like a built-in replaces it.
    std::fs::write(
        dir.path().join("sshd.toml"),
        "failregex = ['^bad login from <HOST>$']\n",
    )
    .unwrap();
    let r = run(&RegexToolArgs {
        filter: "sshd".into(),
        filters_dir: Some(dir.path().to_path_buf()),
        ..args
    })
    .unwrap();
    assert_eq!(
        (r.filter.as_str(), r.lines_matched),
        ("user filter sshd", 1)
    );
}

#[test]
fn long_and_non_utf8_lines() {
    let mut content = Vec::new();
    content
        .extend_from_slice(b"sshd[1]: Failed password for r\xffoot from 192.0.2.1 port 1 ssh2\n");
    content.extend_from_slice(b"sshd[2]: Invalid user ");
    content.extend(std::iter::repeat_n(b'x', MAX_LINE * 2));
    content.extend_from_slice(b" from 192.0.2.2 port 2\n");
    content.extend_from_slice(b"sshd[3]: Invalid user y from 192.0.2.3 port 3"); // no final newline
    let f = write_temp(&content);
    let r = run(&RegexToolArgs {
        input: f.path().display().to_string(),
        filter: "sshd".into(),
        print_missed: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.lines_total, 3);
    assert_eq!(r.lines_truncated, 1);
    // The truncated line lost its address; the others match.
    assert_eq!(r.lines_matched, 2);
    assert_eq!(r.missed.len(), 1);
    assert_eq!(r.missed[0].text.len(), MAX_LINE);
    let hosts: Vec<&str> = r.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, vec!["192.0.2.1", "192.0.2.3"]);
}

#[test]
fn read_line_capped_handles_small_buffers() {
    let data = b"abc\n\nlong-line-here\nend";
    let mut r = BufReader::with_capacity(4, &data[..]);
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while let Some(tr) = read_line_capped(&mut r, &mut buf).unwrap() {
        lines.push((String::from_utf8(buf.clone()).unwrap(), tr));
    }
    assert_eq!(
        lines,
        vec![
            ("abc".to_string(), false),
            (String::new(), false),
            ("long-line-here".to_string(), false),
            ("end".to_string(), false)
        ]
    );
}

#[test]
fn missing_input_file_is_a_literal_line() {
    let r = run(&RegexToolArgs {
        input: "/nonexistent/dir/auth.log".into(),
        filter: "sshd".into(),
        print_missed: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.input, "line");
    assert_eq!((r.lines_total, r.lines_missed), (1, 1));
}
