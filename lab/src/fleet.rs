//! Fleet tests' harness: a hub namespace with a bridge that every lab's
//! server namespace joins through a veth pair (203.0.113.0/24, nothing on
//! the machine's own interfaces), and real `nats-server` processes started
//! inside the hub and removed with it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{next_id, run, Lab, NetNsGuard};

/// The NATS servers' address, on the hub's bridge.
pub const HUB_V4: &str = "203.0.113.1";

/// The hub namespace and its bridge.
pub struct Hub {
    pub ns: String,
    id: String,
    bridge: String,
    joined: std::cell::Cell<u32>,
    /// Deletes the hub (bridge, veth ends, NATS servers' sockets) on drop.
    _guard: NetNsGuard,
}

impl Hub {
    pub fn new() -> Result<Hub> {
        crate::require_root();
        assert!(
            std::path::Path::new("/usr/sbin/nats-server").exists()
                || Command::new("nats-server")
                    .arg("--version")
                    .output()
                    .is_ok(),
            "nats-server is missing: `cargo xtask test` installs it (apt-get install nats-server)"
        );
        let n = next_id();
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let ns = format!("xbt-{}-{n}-hub", std::process::id());
        let hub = Hub {
            _guard: NetNsGuard::new(&ns)?,
            ns,
            bridge: format!("xb{id}"),
            id,
            joined: std::cell::Cell::new(0),
        };
        {
            run(
                "ip",
                &["-n", &hub.ns, "link", "add", &hub.bridge, "type", "bridge"],
            )?;
            run("ip", &["-n", &hub.ns, "link", "set", &hub.bridge, "up"])?;
            run("ip", &["-n", &hub.ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &hub.ns,
                    "addr",
                    "add",
                    &format!("{HUB_V4}/24"),
                    "dev",
                    &hub.bridge,
                ],
            )?;
        }
        Ok(hub)
    }

    /// Join a lab's server namespace to the hub; returns its address there.
    pub fn join(&self, lab: &Lab) -> Result<String> {
        let i = self.joined.get() + 1;
        self.joined.set(i);
        let hub_if = format!("xh{}{i}", self.id);
        let srv_if = format!("xn{}{i}", self.id);
        let addr = format!("203.0.113.{}", 10 + i);
        run(
            "ip",
            &[
                "link",
                "add",
                &hub_if,
                "netns",
                &self.ns,
                "type",
                "veth",
                "peer",
                "name",
                &srv_if,
                "netns",
                &lab.srv_ns,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.ns,
                "link",
                "set",
                &hub_if,
                "master",
                &self.bridge,
            ],
        )?;
        run("ip", &["-n", &self.ns, "link", "set", &hub_if, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &lab.srv_ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &srv_if,
            ],
        )?;
        run("ip", &["-n", &lab.srv_ns, "link", "set", &srv_if, "up"])?;
        Ok(addr)
    }

    /// Publish raw bytes on a subject (plain NATS protocol, no JetStream
    /// acknowledgement), as a hostile or broken publisher would.
    pub fn publish_raw(&self, port: u16, subject: &str, payload: &[u8]) -> Result<()> {
        self.publish_raw_as(port, None, subject, payload)
    }

    /// As [`publish_raw`](Self::publish_raw), authenticated with a node's nkey seed.
    pub fn publish_raw_as(
        &self,
        port: u16,
        seed: Option<&str>,
        subject: &str,
        payload: &[u8],
    ) -> Result<()> {
        let ns = self.ns.clone();
        let (subject, payload) = (subject.to_string(), payload.to_vec());
        let key = seed.map(nkeys::KeyPair::from_seed).transpose()?;
        Lab::in_ns(&ns, move || -> Result<()> {
            let s = TcpStream::connect((HUB_V4, port)).context("connect to nats-server")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            r.read_line(&mut line)?;
            if !line.starts_with("INFO") {
                bail!("nats-server said {line:?}");
            }
            let mut w = s;
            let auth = match &key {
                None => String::new(),
                Some(kp) => {
                    let info: serde_json::Value = serde_json::from_str(line[4..].trim())?;
                    let nonce = info["nonce"].as_str().context("no nonce in INFO")?;
                    let sig = kp.sign(nonce.as_bytes())?;
                    format!(
                        ",\"nkey\":\"{}\",\"sig\":\"{}\"",
                        kp.public_key(),
                        data_encoding::BASE64URL_NOPAD.encode(&sig)
                    )
                }
            };
            let mut request = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false{auth}}}\r\nPUB {subject} {}\r\n",
                payload.len()
            )
            .into_bytes();
            request.extend_from_slice(&payload);
            request.extend_from_slice(b"\r\nPING\r\n");
            // The server may refuse and close before reading it all: its
            // -ERR line, read below, is the answer that counts.
            let write_error = w.write_all(&request).err();
            loop {
                line.clear();
                let read = r.read_line(&mut line).unwrap_or(0);
                if read == 0 {
                    bail!("nats-server closed the connection (write: {write_error:?})");
                }
                if line.starts_with("PONG") {
                    return Ok(());
                }
                if line.starts_with("-ERR") {
                    bail!("nats-server: {line}");
                }
            }
        })
    }
}

/// One `nats-server` with JetStream in the hub, restartable on the same
/// storage.
pub struct NatsServer {
    hub_ns: String,
    pub name: String,
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// A lone server on `port`.
    pub fn start(hub: &Hub, dir: &std::path::Path, port: u16) -> Result<NatsServer> {
        Self::start_clustered(hub, dir, "n1", port, None)
    }

    /// `cluster`: (this server's route port, every route port of the cluster).
    pub fn start_clustered(
        hub: &Hub,
        dir: &std::path::Path,
        name: &str,
        port: u16,
        cluster: Option<(u16, &[u16])>,
    ) -> Result<NatsServer> {
        let mut conf = Self::base_conf(dir, name, port)?;
        if let Some((route_port, all)) = cluster {
            let routes: Vec<String> = all
                .iter()
                .filter(|p| **p != route_port)
                .map(|p| format!("\"nats-route://{HUB_V4}:{p}\""))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: xbt\n  listen: \"{HUB_V4}:{route_port}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        Self::start_with_conf(hub, dir, name, port, &conf)
    }

    /// The lone server's config (name, HUB_V4:port, JetStream storage under
    /// `dir`), for a caller to add to.
    pub fn base_conf(dir: &std::path::Path, name: &str, port: u16) -> Result<String> {
        let store = dir.join(format!("nats-{name}"));
        std::fs::create_dir_all(&store)?;
        Ok(format!(
            "server_name: {name}\nlisten: \"{HUB_V4}:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            store.display()
        ))
    }

    /// A server on a config of the caller's (it must listen on HUB_V4:port).
    pub fn start_with_conf(
        hub: &Hub,
        dir: &std::path::Path,
        name: &str,
        port: u16,
        conf: &str,
    ) -> Result<NatsServer> {
        let conf_path = dir.join(format!("nats-{name}.conf"));
        std::fs::write(&conf_path, conf)?;
        let mut s = NatsServer {
            hub_ns: hub.ns.clone(),
            name: name.to_string(),
            port,
            conf: conf_path,
            log: dir.join(format!("nats-{name}.log")),
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// (Re)start on the same config and storage; waits for the port.
    pub fn restart(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "nats-server {} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hub_ns, "nats-server", "-c"])
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn nats-server")?;
        self.child = Some(child);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = Lab::in_ns(&self.hub_ns, || TcpStream::connect((HUB_V4, port)).is_ok());
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                bail!("nats-server exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen within 15 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://{HUB_V4}:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway certificate authority made with the `openssl` CLI in a test's
/// temporary directory (P-256 keys, valid for two days; nothing committed).
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    name: String,
    serial: std::cell::Cell<u32>,
}

/// `openssl ARGS` (xtask installs it with the test packages).
fn openssl(args: &[&str]) -> Result<()> {
    run("openssl", args).map(drop)
}

/// What a certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CertUse {
    /// A NATS server's: serverAuth, with the address clients dial as SAN.
    Server,
    /// A node's client certificate: clientAuth.
    Client,
}

impl Ca {
    /// A self-signed CA named `name`; files `name-ca.pem` and `name-ca.key`
    /// under `dir`.
    pub fn new(dir: &std::path::Path, name: &str) -> Result<Ca> {
        let cnf = dir.join(format!("{name}-ca.cnf"));
        std::fs::write(
            &cnf,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = xban test CA {name}\n\
                 [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier = hash\n"
            ),
        )?;
        let ca = Ca {
            cert: dir.join(format!("{name}-ca.pem")),
            key: dir.join(format!("{name}-ca.key")),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            serial: std::cell::Cell::new(1),
        };
        openssl(&[
            "req",
            "-x509",
            "-config",
            &cnf.display().to_string(),
            "-extensions",
            "v3_ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &ca.key.display().to_string(),
            "-out",
            &ca.cert.display().to_string(),
        ])?;
        Ok(ca)
    }

    /// A certificate for `cn` signed by this CA: (certificate, key) files.
    /// `san`: e.g. `IP:203.0.113.1` (a server's must name the address dialed).
    pub fn issue(&self, cn: &str, usage: CertUse, san: Option<&str>) -> Result<(PathBuf, PathBuf)> {
        let base = self.dir.join(format!("{}-{cn}", self.name));
        let (cert, key, csr, cnf, ext) = (
            base.with_extension("pem"),
            base.with_extension("key"),
            base.with_extension("csr"),
            base.with_extension("cnf"),
            base.with_extension("ext"),
        );
        std::fs::write(
            &cnf,
            format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"),
        )?;
        let mut extensions = format!(
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = {}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
            match usage {
                CertUse::Server => "serverAuth",
                CertUse::Client => "clientAuth",
            }
        );
        if let Some(san) = san {
            extensions.push_str(&format!("subjectAltName = {san}\n"));
        }
        std::fs::write(&ext, extensions)?;
        openssl(&[
            "req",
            "-new",
            "-config",
            &cnf.display().to_string(),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &csr.display().to_string(),
        ])?;
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.display().to_string(),
            "-CA",
            &self.cert.display().to_string(),
            "-CAkey",
            &self.key.display().to_string(),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ])?;
        Ok((cert, key))
    }
}

/// A NATS JWT (`ed25519-nkey`), as `nsc` writes them: `nats` is the
/// claim's own part (`type`, `version` and what the type needs).
pub fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> Result<String> {
    use data_encoding::BASE64URL_NOPAD as B64;
    let n = next_id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({
        "jti": data_encoding::BASE32_NOPAD.encode(
            format!("xbt-{}-{n}-{now}-{subject}", std::process::id()).as_bytes()
        ),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let header = B64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = B64.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let sig = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", B64.encode(&sig)))
}

/// A user's `.creds` file text: its JWT and its nkey seed.
pub fn creds_file(user_jwt: &str, user: &nkeys::KeyPair) -> Result<String> {
    Ok(format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed()?
    ))
}

/// An operator (decentralised, JWT) setup for `resolver: MEMORY`: the
/// operator, its system account, and one JetStream-enabled account whose
/// users the nodes are.
pub struct NatsOperator {
    pub operator_jwt: String,
    pub system: nkeys::KeyPair,
    pub system_jwt: String,
    pub account: nkeys::KeyPair,
    pub account_jwt: String,
}

/// Account limits: everything unlimited, JetStream on (non-zero storage).
fn account_claim(jetstream: bool) -> serde_json::Value {
    let mut limits = serde_json::json!({
        "subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
        "data": -1, "payload": -1, "wildcards": true,
    });
    if jetstream {
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[k] = serde_json::json!(-1);
        }
    }
    serde_json::json!({
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    })
}

impl NatsOperator {
    pub fn new() -> Result<NatsOperator> {
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "xbt-operator",
            serde_json::json!({"system_account": system.public_key(), "type": "operator", "version": 2}),
        )?;
        let system_jwt = nats_jwt(&operator, &system.public_key(), "SYS", account_claim(false))?;
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "XBAN",
            account_claim(true),
        )?;
        Ok(NatsOperator {
            operator_jwt,
            system,
            system_jwt,
            account,
            account_jwt,
        })
    }

    /// A new user of the account: its `.creds` file text.
    pub fn user_creds(&self, name: &str) -> Result<String> {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            &self.account,
            &user.public_key(),
            name,
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2}),
        )?;
        creds_file(&jwt, &user)
    }

    /// The server config lines: operator, system account, memory resolver
    /// with both accounts preloaded. The operator JWT goes to `dir`.
    pub fn server_conf(&self, dir: &std::path::Path) -> Result<String> {
        let op = dir.join("operator.jwt");
        std::fs::write(&op, &self.operator_jwt)?;
        Ok(format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            op.display(),
            self.system.public_key(),
            self.system.public_key(),
            self.system_jwt,
            self.account.public_key(),
            self.account_jwt,
        ))
    }
}
