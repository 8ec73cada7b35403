use super::*;
use async_nats::rustls::{AlertDescription, CertificateError, Error as Tls};
use async_nats::{ConnectError, ConnectErrorKind};

/// As the client reports a failed TLS handshake: an IO error around
/// the rustls one.
fn tls_failure(t: Tls) -> ConnectError {
    ConnectError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, t))
}

#[test]
fn connect_errors_name_the_side_that_refused() {
    let e = tls_failure(Tls::InvalidCertificate(CertificateError::UnknownIssuer));
    let text = describe_connect_error(&e, true);
    assert!(
        text.starts_with("TLS: the server's certificate is refused")
            && text.contains("UnknownIssuer")
            && text.contains("fleet.ca_file"),
        "{text}"
    );
    // No client certificate sent: whichever alert the server uses.
    for alert in [
        AlertDescription::BadCertificate,
        AlertDescription::CertificateRequired,
    ] {
        let text = describe_connect_error(&tls_failure(Tls::AlertReceived(alert)), false);
        assert!(
            text.contains("requires a client certificate")
                && text.contains("fleet.cert_file")
                && text.contains(&format!("{alert:?}")),
            "{text}"
        );
    }
    // One sent, and refused.
    for alert in [
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
    ] {
        let text = describe_connect_error(&tls_failure(Tls::AlertReceived(alert)), true);
        assert!(
            text.contains("refused this node's client certificate")
                && text.contains(&format!("{alert:?}")),
            "{text}"
        );
    }
    let text = describe_connect_error(&tls_failure(Tls::DecryptError), true);
    assert!(text.starts_with("TLS: "), "{text}");
    let text = describe_connect_error(
        &ConnectError::new(ConnectErrorKind::AuthorizationViolation),
        false,
    );
    assert!(
        text.starts_with("authorization violation") && text.contains("token, nkey or credentials"),
        "{text}"
    );
    let refused = ConnectError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(describe_connect_error(&refused, false), refused.to_string());
}

fn settings(url: &str, extra: &str) -> FleetSettings {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nfilters_dir = \"{}\"\n[fleet]\nservers = [\"{url}\"]\nnode = \"a\"\n{extra}",
        dir.path().join("none").display()
    );
    crate::config::Config::parse(&text)
        .unwrap()
        .validate()
        .unwrap()
        .fleet
        .unwrap()
}

/// A TLS file that is missing or holds nothing usable is named at
/// once; the client is not started.
#[tokio::test]
async fn unusable_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM at all\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            format!("ca_file = \"{}\"", missing.display()),
            "fleet.ca_file",
            "No such file",
        ),
        (
            format!("ca_file = \"{}\"", junk.display()),
            "fleet.ca_file",
            "no PEM certificate",
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                junk.display(),
                junk.display()
            ),
            "fleet.cert_file",
            "no PEM certificate",
        ),
    ];
    for (extra, key, why) in cases {
        let (tx, _rx) = mpsc::channel(8);
        let client = FleetClient::spawn(
            settings("nats://127.0.0.1:1", &format!("{extra}\n")),
            Vec::new(),
            tx,
        );
        let last = || client.shared.last_error.lock().unwrap().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while last().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{extra}: nothing reported"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = last();
        assert!(
            e.starts_with("cannot start: ") && e.contains(key) && e.contains(why),
            "{extra}: {e}"
        );
        assert!(
            e.contains(dir.path().to_str().unwrap()),
            "names the file: {e}"
        );
    }
}

/// A server that wants a token and refuses every CONNECT, as
/// nats-server does a wrong one.
async fn refusing_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let info = format!(
                        "INFO {{\"server_id\":\"fake\",\"version\":\"2.9.10\",\"host\":\"127.0.0.1\",\"port\":{},\"headers\":true,\"max_payload\":1048576,\"proto\":1,\"auth_required\":true}}\r\n",
                        addr.port()
                    );
                w.write_all(info.as_bytes()).await.ok();
                let mut line = String::new();
                BufReader::new(r).read_line(&mut line).await.ok();
                assert!(line.starts_with("CONNECT"), "{line}");
                assert!(line.contains("\"auth_token\":\"wrong\""), "{line}");
                w.write_all(b"-ERR 'Authorization Violation'\r\n")
                    .await
                    .ok();
            });
        }
    });
    addr
}

/// The refusal is what `status` shows, in full, for as long as it
/// lasts (not the kind alone, nor jetstream timeouts over it).
#[tokio::test]
async fn a_refused_node_reports_the_refusal() {
    let addr = refusing_server().await;
    let (tx, _rx) = mpsc::channel(8);
    let client = FleetClient::spawn(
        settings(&format!("nats://{addr}"), "token = \"wrong\"\n"),
        Vec::new(),
        tx,
    );
    let last = || client.shared.last_error.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !last().contains("authorization violation") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "last error: {:?}",
            last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Outbox messages queue meanwhile; the refusal stays the error.
    client
        .outgoing
        .send(Outgoing {
            id: "a-1".into(),
            subject: "xban.bans.a".into(),
            payload: b"{}".to_vec(),
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
            last(),
            "connect: authorization violation: the server refused this node's token, nkey or credentials"
        );
    assert!(!client.shared.connected.load(Relaxed));
    assert!(!client.shared.stream_ready.load(Relaxed));
    assert_eq!(client.shared.published.load(Relaxed), 0);
}
