//! The NATS side: one task that connects (and reconnects, for ever), makes
//! sure the stream exists, publishes the outbox in order until each message
//! is acknowledged, and reads the node's durable consumer. It owns no ban
//! state: acknowledgements and deliveries go to the main loop, which stores
//! and applies them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::state::Outgoing;
use super::FleetAuth;
use super::FleetSettings;

/// Messages published at once before their acknowledgements are awaited.
const PUBLISH_WINDOW: usize = 512;
/// Deliveries the server may have outstanding to this node.
const MAX_ACK_PENDING: i64 = 20_000;
/// The stream refuses anything larger (receivers drop more than
/// [`super::message::MAX_MESSAGE_BYTES`] anyway).
const STREAM_MAX_MESSAGE: i32 = 64 * 1024;

/// What the task tells the main loop.
#[derive(Debug)]
pub enum Incoming {
    /// The server stored these outbox messages: remove them.
    Acked(Vec<String>),
    /// A message from the stream, to apply then acknowledge.
    Remote(Box<Delivery>),
}

/// One message read from the consumer.
#[derive(Debug)]
pub struct Delivery {
    pub subject: String,
    pub payload: Vec<u8>,
    pub stream_seq: u64,
    /// `None` in unit tests.
    pub message: Option<jetstream::Message>,
}

impl Delivery {
    /// Tell the server this node is done with it (applied or dropped).
    pub fn ack(self) {
        if let Some(m) = self.message {
            tokio::spawn(async move {
                if let Err(e) = m.ack().await {
                    tracing::debug!("fleet: ack failed (the message comes again): {e}");
                }
            });
        }
    }
}

/// Counters and positions the task keeps for `status` and metrics.
#[derive(Debug, Default)]
pub struct Shared {
    pub connected: AtomicBool,
    pub stream_ready: AtomicBool,
    pub consumer_ready: AtomicBool,
    pub stream_messages: AtomicU64,
    pub stream_last_seq: AtomicU64,
    pub consumer_delivered_seq: AtomicU64,
    pub consumer_ack_floor: AtomicU64,
    /// Messages the server still has to deliver to this node.
    pub consumer_pending: AtomicU64,
    pub consumer_ack_pending: AtomicU64,
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub last_error: Mutex<String>,
}

impl Shared {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let text = format!("{what}: {e}");
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if *last != text {
            tracing::warn!("fleet: {text}");
            *last = text;
        }
    }
}

/// The running client: send it outbox messages; it reports on `incoming`.
pub struct FleetClient {
    pub outgoing: mpsc::UnboundedSender<Outgoing>,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FleetClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FleetClient {
    /// Start the task. `pending`: the outbox as stored, sent first, in order.
    pub fn spawn(
        settings: FleetSettings,
        pending: Vec<Outgoing>,
        incoming: mpsc::Sender<Incoming>,
    ) -> FleetClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(settings, pending, rx, incoming, shared.clone()));
        FleetClient {
            outgoing: tx,
            shared,
            task,
        }
    }
}

/// The client's options, everything read from local files once: an
/// unreadable seed or credentials file is an error (nothing to retry).
async fn options(
    s: &FleetSettings,
    shared: &Arc<Shared>,
) -> anyhow::Result<async_nats::ConnectOptions> {
    use anyhow::Context;
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("xban-{}", s.node))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .ping_interval(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay);
    let sh = shared.clone();
    opts = opts.event_callback(move |ev| {
        let sh = sh.clone();
        async move {
            match ev {
                async_nats::Event::Connected => {
                    sh.connected.store(true, Relaxed);
                    tracing::info!("fleet: connected to the NATS server");
                }
                async_nats::Event::Disconnected => {
                    sh.connected.store(false, Relaxed);
                    sh.reconnects.fetch_add(1, Relaxed);
                    tracing::warn!("fleet: disconnected from the NATS server; reconnecting");
                }
                // A failed reconnection (the client names only the kind,
                // e.g. "authorization violation") or the server's -ERR.
                async_nats::Event::ClientError(e) => sh.error("reconnect", e),
                async_nats::Event::ServerError(e) => sh.error("server", e),
                other => tracing::debug!("fleet: {other}"),
            }
        }
    });
    opts = match &s.auth {
        FleetAuth::None => opts,
        FleetAuth::Token(t) => opts.token(t.clone()),
        FleetAuth::NkeySeedFile(p) => {
            let seed = std::fs::read_to_string(p)
                .with_context(|| format!("fleet.nkey_seed_file {}", p.display()))?;
            opts.nkey(seed.trim().to_string())
        }
        FleetAuth::CredentialsFile(p) => opts
            .credentials_file(p)
            .await
            .with_context(|| format!("fleet.credentials_file {}", p.display()))?,
    };
    check_tls_files(s)?;
    if let Some(ca) = &s.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &s.client_cert {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}

/// The TLS files, read once here so that a missing or wrong one is named:
/// the client reads them at each attempt and says only "TLS error: No such
/// file or directory", or, for a CA file without a certificate, that the
/// server's certificate is refused.
fn check_tls_files(s: &FleetSettings) -> anyhow::Result<()> {
    use anyhow::{anyhow, Context};
    use async_nats::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let read = |key: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("fleet.{key} {}", p.display()))
    };
    let certs = |key: &str, p: &std::path::Path| -> anyhow::Result<()> {
        let n = CertificateDer::pem_slice_iter(&read(key, p)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("fleet.{key} {}: {e}", p.display()))?
            .len();
        if n == 0 {
            return Err(anyhow!(
                "fleet.{key} {}: no PEM certificate in it",
                p.display()
            ));
        }
        Ok(())
    };
    if let Some(ca) = &s.ca_file {
        certs("ca_file", ca)?;
    }
    if let Some((cert, key)) = &s.client_cert {
        certs("cert_file", cert)?;
        PrivateKeyDer::from_pem_slice(&read("key_file", key)?).map_err(|e| {
            anyhow!(
                "fleet.key_file {}: no PEM private key in it ({e})",
                key.display()
            )
        })?;
    }
    Ok(())
}

/// Between connection attempts: 100 ms more each time, up to 2 s.
fn reconnect_delay(attempt: usize) -> Duration {
    Duration::from_millis((100 * attempt as u64).min(2000))
}

/// A failed connection in words an operator can act on. The client folds
/// TLS failures into "IO error: ..."; the rustls error inside says which
/// side refused. `client_cert`: whether this node sends one (a server that
/// wants one and gets none answers `BadCertificate` or
/// `CertificateRequired`, depending on its Go version).
pub fn describe_connect_error(e: &async_nats::ConnectError, client_cert: bool) -> String {
    use async_nats::rustls::{AlertDescription, Error as Tls};
    use async_nats::ConnectErrorKind as K;
    let tls = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<Tls>());
    match (e.kind(), tls) {
        (_, Some(t @ Tls::InvalidCertificate(_))) => format!(
            "TLS: the server's certificate is refused ({t}): is it signed by fleet.ca_file's CA, for the address in fleet.servers?"
        ),
        (
            _,
            Some(
                t @ Tls::AlertReceived(
                    AlertDescription::CertificateRequired | AlertDescription::BadCertificate,
                ),
            ),
        ) if !client_cert => format!(
            "TLS: the server requires a client certificate ({t}): set fleet.cert_file and fleet.key_file"
        ),
        (
            _,
            Some(
                t @ Tls::AlertReceived(
                    AlertDescription::BadCertificate
                    | AlertDescription::UnknownCA
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired,
                ),
            ),
        ) => format!("TLS: the server refused this node's client certificate ({t})"),
        (_, Some(t)) => format!("TLS: {t}"),
        // Its source only says "nats: authorization violation" again.
        (K::AuthorizationViolation, _) => {
            "authorization violation: the server refused this node's token, nkey or credentials"
                .into()
        }
        _ => e.to_string(),
    }
}

/// Connects, retrying until a server takes this node; each refusal is
/// `last_error`, in full. (The client's own retry of the first connection
/// would report only the kind of error, and jetstream timeouts over it.)
/// Once connected, the client reconnects on its own.
async fn connect(s: &FleetSettings, shared: &Arc<Shared>) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context;
    let opts = options(s, shared).await?;
    let servers: Vec<async_nats::ServerAddr> = s
        .servers
        .iter()
        .map(|u| {
            u.parse()
                .with_context(|| format!("fleet.servers: `{u}` is not a NATS URL"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut attempt = 0;
    loop {
        match opts.clone().connect(servers.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                attempt += 1;
                shared.error(
                    "connect",
                    describe_connect_error(&e, s.client_cert.is_some()),
                );
                tokio::time::sleep(reconnect_delay(attempt)).await;
            }
        }
    }
}

async fn run(
    settings: FleetSettings,
    pending: Vec<Outgoing>,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
) {
    let client = match connect(&settings, &shared).await {
        Ok(c) => c,
        Err(e) => {
            // Only a local problem (a seed or credentials file) gets
            // here: refusals and unreachable servers are retried.
            shared.error("cannot start", format!("{e:#}"));
            tracing::error!("fleet: {e:#}; bans are not shared until the agent restarts");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client);
    let publisher = tokio::spawn(publish_loop(
        js.clone(),
        settings.clone(),
        pending,
        outgoing,
        incoming.clone(),
        shared.clone(),
    ));
    let consumer = settings.apply.then(|| {
        tokio::spawn(consume_loop(
            js.clone(),
            settings.clone(),
            incoming,
            shared.clone(),
        ))
    });
    let stats = tokio::spawn(stats_loop(js, settings, shared));
    let _ = publisher.await;
    if let Some(c) = consumer {
        c.abort();
    }
    stats.abort();
}

fn stream_config(s: &FleetSettings) -> stream::Config {
    stream::Config {
        name: s.stream.clone(),
        subjects: vec![format!("{}.>", s.subject)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.max_age.unwrap_or(Duration::ZERO),
        num_replicas: s.replicas,
        duplicate_window: s.duplicate_window,
        max_message_size: STREAM_MAX_MESSAGE,
        description: Some("xban: bans shared across the fleet".into()),
        ..Default::default()
    }
}

/// The stream, created if missing. Retries until it is there.
async fn ensure_stream(
    js: &jetstream::Context,
    s: &FleetSettings,
    shared: &Shared,
) -> stream::Stream {
    loop {
        match js.get_or_create_stream(stream_config(s)).await {
            Ok(mut st) => {
                shared.stream_ready.store(true, Relaxed);
                if let Ok(info) = st.info().await {
                    let have = info.config.max_age;
                    let want = s.max_age.unwrap_or(Duration::ZERO);
                    let shorter = have != Duration::ZERO && (want == Duration::ZERO || have < want);
                    if shorter {
                        tracing::warn!(
                            "fleet: stream {} keeps messages {}, less than this node's longest bantime ({}): a node that was down longer misses bans (raise its max_age)",
                            s.stream,
                            crate::units::format_duration(have),
                            s.max_age.map(crate::units::format_duration).unwrap_or_else(|| "permanent".into())
                        );
                    }
                }
                return st;
            }
            Err(e) => {
                shared.stream_ready.store(false, Relaxed);
                shared.error(&format!("stream {}", s.stream), e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn publish_loop(
    js: jetstream::Context,
    settings: FleetSettings,
    pending: Vec<Outgoing>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
) {
    let mut queue: VecDeque<Outgoing> = pending.into();
    let mut stream_known = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Ok(m) = outgoing.try_recv() {
            queue.push_back(m);
        }
        if queue.is_empty() {
            match outgoing.recv().await {
                Some(m) => queue.push_back(m),
                None => return,
            }
            continue;
        }
        if !stream_known {
            // Publishing to a missing stream would be lost: no stream
            // answers, so nothing is acknowledged and all is retried.
            ensure_stream(&js, &settings, &shared).await;
            stream_known = true;
        }
        let batch: Vec<&Outgoing> = queue.iter().take(PUBLISH_WINDOW).collect();
        let mut futures = Vec::with_capacity(batch.len());
        let mut failed = false;
        for m in &batch {
            let publish = jetstream::message::PublishMessage::build()
                .payload(m.payload.clone().into())
                .message_id(&m.id);
            match js.send_publish(m.subject.clone(), publish).await {
                Ok(f) => futures.push(f),
                Err(e) => {
                    shared.error("publish", e);
                    failed = true;
                    break;
                }
            }
        }
        // Acknowledged in order: the first failure ends the prefix, the
        // rest is sent again (the server drops the duplicates).
        let mut acked = Vec::new();
        for (m, f) in batch.iter().zip(futures) {
            match f.await {
                Ok(_) => acked.push(m.id.clone()),
                Err(e) => {
                    shared.error("publish acknowledgement", e);
                    failed = true;
                    break;
                }
            }
        }
        drop(batch);
        if !acked.is_empty() {
            queue.drain(..acked.len());
            shared.published.fetch_add(acked.len() as u64, Relaxed);
            if incoming.send(Incoming::Acked(acked)).await.is_err() {
                return;
            }
        }
        if failed {
            shared.publish_errors.fetch_add(1, Relaxed);
            // The stream may have gone with a lost server: check again.
            stream_known = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

fn consumer_config(s: &FleetSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(s.consumer_name()),
        description: Some(format!("xban node {}", s.node)),
        // First start: everything the stream still holds (expired bans
        // are skipped when applied).
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: format!("{}.>", s.subject),
        num_replicas: 0,
        ..Default::default()
    }
}

async fn consume_loop(
    js: jetstream::Context,
    settings: FleetSettings,
    incoming: mpsc::Sender<Incoming>,
    shared: Arc<Shared>,
) {
    loop {
        let stream = ensure_stream(&js, &settings, &shared).await;
        let consumer: consumer::PullConsumer = match stream
            .get_or_create_consumer(&settings.consumer_name(), consumer_config(&settings))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                shared.consumer_ready.store(false, Relaxed);
                shared.error("consumer", e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                shared.error("consumer messages", e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        shared.consumer_ready.store(true, Relaxed);
        while let Some(next) = messages.next().await {
            match next {
                Ok(m) => {
                    let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let d = Delivery {
                        subject: m.subject.to_string(),
                        payload: m.payload.to_vec(),
                        stream_seq,
                        message: Some(m),
                    };
                    if incoming.send(Incoming::Remote(Box::new(d))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Heartbeats missed (a server gone), the consumer
                    // deleted: start over from the stream.
                    shared.error("consumer stream", e);
                    break;
                }
            }
        }
        shared.consumer_ready.store(false, Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Positions for `status`: the stream's last sequence, the consumer's
/// floor and what is left to deliver (lag).
async fn stats_loop(js: jetstream::Context, s: FleetSettings, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !shared.connected.load(Relaxed) {
            continue;
        }
        let Ok(stream) = js.get_stream_no_info(&s.stream).await else {
            continue;
        };
        if let Ok(info) = stream.get_info().await {
            shared.stream_messages.store(info.state.messages, Relaxed);
            shared
                .stream_last_seq
                .store(info.state.last_sequence, Relaxed);
        }
        if s.apply {
            if let Ok(info) = stream.consumer_info(s.consumer_name()).await {
                shared
                    .consumer_delivered_seq
                    .store(info.delivered.stream_sequence, Relaxed);
                shared
                    .consumer_ack_floor
                    .store(info.ack_floor.stream_sequence, Relaxed);
                shared.consumer_pending.store(info.num_pending, Relaxed);
                shared
                    .consumer_ack_pending
                    .store(info.num_ack_pending as u64, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
