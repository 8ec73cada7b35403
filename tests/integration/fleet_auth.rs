//! `[fleet]` authentication and TLS against real `nats-server`s: a token,
//! mutual TLS with certificates made at test time, and a `.creds` file
//! against a server in operator (JWT) mode. Nodes with the right secrets
//! share bans; a refused node says why in `status` and keeps banning on
//! its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xban_tests::fleet::{Ca, CertUse, Hub, NatsOperator, NatsServer, HUB_V4};
use xban_tests::*;

use crate::fleet::{node, wait, Node};

/// A ban made on `a` reaches `b`, kept there under jail `fleet` and
/// dropped at XDP.
fn ban_is_shared(a: &Node, b: &Node) {
    a.fail(ATK_V4, 3);
    wait("A bans the attacker", 10, &[a], || a.has(ATK_V4));
    wait("B has A's ban", 10, &[a, b], || b.has(ATK_V4));
    assert_eq!(
        b.bans(),
        vec![(ATK_V4.to_string(), "fleet".to_string(), "a".to_string())],
        "kept under jail fleet with its origin"
    );
    assert!(b.dropped(ATK_V4), "A's attacker is dropped on B");
    assert!(!b.dropped(ATK3_V4), "a bystander is not");
}

/// `n` is refused by the server: `status` says so (`why`, any of them,
/// in `last_error`), and the agent goes on banning locally, its ban
/// waiting in the outbox; `others` never see it.
fn refused_but_bans_locally(n: &Node, why: &[&str], others: &[&Node]) {
    let named = |f: &serde_json::Value| {
        let e = f["last_error"].as_str().unwrap_or("").to_lowercase();
        why.iter().any(|w| e.contains(&w.to_lowercase()))
    };
    if !wait_for(Duration::from_secs(20), || {
        let f = n.fleet();
        f["connected"] == false && named(&f)
    }) {
        panic!(
            "the refusal is not reported as any of {why:?}: {}\n{}",
            n.fleet(),
            n.log()
        );
    }
    let f = n.fleet();
    assert_eq!(f["stream"]["ready"], false, "{f}");
    assert_eq!(f["consumer"]["ready"], false, "{f}");
    let human = n.dir.xban_ok(&["status"]).unwrap();
    assert!(human.contains("NOT connected"), "{human}");
    assert!(
        human.contains("last error: ") && why.iter().any(|w| human.contains(w)),
        "{human}"
    );

    // Still banning on its own: XDP drops the attacker, the ban waits.
    n.fail(ATK2_V4, 3);
    wait("the refused node bans locally", 10, &[n], || n.has(ATK2_V4));
    assert_eq!(
        n.bans()
            .iter()
            .find(|b| b.0 == ATK2_V4)
            .map(|b| b.1.as_str()),
        Some("sshd")
    );
    assert!(n.dropped(ATK2_V4), "dropped at XDP while refused");
    wait("the ban waits in the outbox", 10, &[n], || {
        n.fleet()["outbox"] == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    for o in others {
        assert!(!o.has(ATK2_V4), "nothing reached the fleet");
    }
    let f = n.fleet();
    assert_eq!(
        (f["connected"].clone(), f["sent"].clone()),
        (false.into(), 0.into()),
        "{f}"
    );
}

/// The server's log says it refused a handshake this way.
fn server_logged(server: &NatsServer, what: &str) {
    assert!(
        wait_for(Duration::from_secs(5), || server.log().contains(what)),
        "the server's log lacks {what:?}:\n{}",
        server.log()
    );
}

/// A client with no secret at all is turned away by the server.
fn raw_client_is_refused(hub: &Hub, server: &NatsServer) {
    let e = hub
        .publish_raw(server.port, "xban.bans.a", b"{}")
        .unwrap_err();
    assert!(
        format!("{e:#}")
            .to_lowercase()
            .contains("authorization violation"),
        "{e:#}"
    );
}

fn agent_exits_cleanly(mut n: Node) {
    n.stop();
}

#[test]
fn fleet_token_shares_bans_and_a_wrong_token_is_refused() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let token = "xbt-fleet-token-7f3a";
    let conf = NatsServer::base_conf(tmp.path(), "n1", 4222).unwrap()
        + &format!("authorization {{\n  token: \"{token}\"\n}}\n");
    let server = NatsServer::start_with_conf(&hub, tmp.path(), "n1", 4222, &conf).unwrap();
    let urls = [server.url()];
    let line = |t: &str| format!("token = \"{t}\"");
    let a = node(&hub, "a", &urls, "", &line(token));
    let b = node(&hub, "b", &urls, "", &line(token));
    let c = node(&hub, "c", &urls, "", &line("xbt-not-the-token"));
    a.wait_ready();
    b.wait_ready();
    ban_is_shared(&a, &b);
    refused_but_bans_locally(&c, &["authorization violation"], &[&a, &b]);
    // The server asks for the token of everyone.
    raw_client_is_refused(&hub, &server);
    for n in [a, b, c] {
        agent_exits_cleanly(n);
    }
    drop(server);
}

fn tls_lines(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> String {
    let mut s = format!("ca_file = \"{}\"\n", ca.display());
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    s
}

#[test]
fn fleet_mutual_tls_shares_bans_and_refuses_foreign_ca_and_missing_client_cert() {
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca = Ca::new(&pki, "fleet").unwrap();
    let other = Ca::new(&pki, "other").unwrap();
    let (srv_cert, srv_key) = ca
        .issue("nats1", CertUse::Server, Some(&format!("IP:{HUB_V4}")))
        .unwrap();
    let conf = NatsServer::base_conf(tmp.path(), "n1", 4222).unwrap()
        + &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 3\n}}\n",
            srv_cert.display(),
            srv_key.display(),
            ca.cert.display()
        );
    let server = NatsServer::start_with_conf(&hub, tmp.path(), "n1", 4222, &conf).unwrap();
    let urls = [format!("tls://{HUB_V4}:{}", server.port)];
    let client = |ca: &Ca, n: &str| ca.issue(n, CertUse::Client, None).unwrap();
    let a = node(
        &hub,
        "a",
        &urls,
        "",
        &tls_lines(&ca.cert, Some(&client(&ca, "a"))),
    );
    // B names the server as nats:// (TLS is required by its ca_file).
    let b = node(
        &hub,
        "b",
        &[server.url()],
        "",
        &tls_lines(&ca.cert, Some(&client(&ca, "b"))),
    );
    a.wait_ready();
    b.wait_ready();
    ban_is_shared(&a, &b);

    // C trusts another CA: it refuses the server's certificate.
    let c = node(
        &hub,
        "c",
        &urls,
        "",
        &tls_lines(&other.cert, Some(&client(&ca, "c"))),
    );
    refused_but_bans_locally(&c, &["UnknownIssuer"], &[&a, &b]);
    server_logged(&server, "remote error: tls: unknown certificate authority");
    // D has no client certificate: `verify: true` refuses it.
    let d = node(&hub, "d", &urls, "", &tls_lines(&ca.cert, None));
    refused_but_bans_locally(&d, &["requires a client certificate"], &[&a, &b]);
    server_logged(&server, "tls: client didn't provide a certificate");
    // E's client certificate is from another CA: refused too.
    let e = node(
        &hub,
        "e",
        &urls,
        "",
        &tls_lines(&ca.cert, Some(&client(&other, "e"))),
    );
    refused_but_bans_locally(&e, &["refused this node's client certificate"], &[&a, &b]);
    server_logged(
        &server,
        "failed to verify client certificate: x509: certificate signed by unknown authority",
    );
    // And a client without TLS at all is turned away.
    hub.publish_raw(server.port, "xban.bans.a", b"{}")
        .unwrap_err();
    server_logged(&server, "first record does not look like a TLS handshake");
    for n in [&a, &b] {
        assert!(!n.has(ATK2_V4), "none of the refused nodes' bans got in");
    }
    for n in [a, b, c, d, e] {
        agent_exits_cleanly(n);
    }
    drop(server);
}

#[test]
fn fleet_credentials_file_against_an_operator_mode_server_shares_bans() {
    use std::os::unix::fs::PermissionsExt;
    let hub = Hub::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let op = NatsOperator::new().unwrap();
    let conf = NatsServer::base_conf(tmp.path(), "n1", 4222).unwrap()
        + &op.server_conf(tmp.path()).unwrap();
    let server = NatsServer::start_with_conf(&hub, tmp.path(), "n1", 4222, &conf).unwrap();
    let urls = [server.url()];
    let creds = |name: &str, text: String| {
        let p = tmp.path().join(format!("{name}.creds"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!("credentials_file = \"{}\"", p.display())
    };
    let a = node(
        &hub,
        "a",
        &urls,
        "",
        &creds("a", op.user_creds("a").unwrap()),
    );
    let b = node(
        &hub,
        "b",
        &urls,
        "",
        &creds("b", op.user_creds("b").unwrap()),
    );
    a.wait_ready();
    b.wait_ready();
    ban_is_shared(&a, &b);
    // The stream lives in the JWT account, with JetStream from its limits.
    let f = b.fleet();
    assert_eq!(f["stream"]["ready"], true, "{f}");
    wait("B sees the stream's message", 10, &[&b], || {
        b.fleet()["stream"]["messages"] == 1
    });

    // A user of an account this server does not know is refused.
    let stranger = NatsOperator::new().unwrap();
    let c = node(
        &hub,
        "c",
        &urls,
        "",
        &creds("c", stranger.user_creds("c").unwrap()),
    );
    refused_but_bans_locally(&c, &["authorization violation"], &[&a, &b]);
    raw_client_is_refused(&hub, &server);
    for n in [a, b, c] {
        agent_exits_cleanly(n);
    }
    drop(server);
}
