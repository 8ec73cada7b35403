//! Bounds on the agent's listening sockets (control socket, metrics): at
//! most so many connections at once, each given a short time to send its
//! request, the oldest idle one closed when a new one needs its place, and
//! accept errors (EMFILE) backed off instead of retried in a spin.
//!
//! File descriptors are shared with what bans: log files being reopened
//! after rotation, the database, journalctl. A client must not be able to
//! take them all by connecting and saying nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Connections that have not sent their request yet, oldest first, each
/// with the sender that closes it.
type IdleQueue = Arc<Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

/// One listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send its whole request.
    pub request_timeout: Duration,
}

/// Shared by a listener's accept loop and its connections.
#[derive(Clone)]
pub struct Limiter {
    limits: Limits,
    permits: Arc<Semaphore>,
    idle: IdleQueue,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// A connection's place; dropping it frees the place.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
    idle: IdleQueue,
    request_timeout: Duration,
}

/// Why a request was not read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no request within {0:?}")]
    Timeout(Duration),
    #[error("closed to make room for a new connection (too many idle ones)")]
    Evicted,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            idle: Default::default(),
            next_id: Default::default(),
        }
    }

    /// Wait for a place for one more connection, closing the oldest idle
    /// connection if every place is taken. Call before `accept`, so that
    /// connections beyond the limit wait in the kernel's backlog and hold
    /// none of the agent's descriptors.
    pub async fn slot(&self) -> Slot {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let oldest = self
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                if let Some((_, evict)) = oldest {
                    let _ = evict.send(());
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((id, tx));
        Slot {
            _permit: permit,
            id,
            evicted: Some(rx),
            idle: self.idle.clone(),
            request_timeout: self.limits.request_timeout,
        }
    }
}

impl Slot {
    /// Read the request with `read`, within the request timeout and unless
    /// evicted meanwhile. Afterwards the connection is busy, not idle: it is
    /// not evicted while its request is answered.
    pub async fn read_request<T>(
        &mut self,
        read: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, RequestError> {
        let evicted = self.evicted.take().expect("one request per connection");
        let result = tokio::select! {
            r = tokio::time::timeout(self.request_timeout, read) => match r {
                Ok(r) => r.map_err(RequestError::from),
                Err(_) => Err(RequestError::Timeout(self.request_timeout)),
            },
            Ok(()) = evicted => Err(RequestError::Evicted),
        };
        self.leave_idle();
        result
    }

    fn leave_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.leave_idle();
    }
}

/// Back-off after failed accepts (EMFILE, ENFILE, ENOBUFS...): the error
/// stays until something closes, so retrying at once only burns a core.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// An accept failed: log (the first of a run, then every 100th) and wait.
    pub async fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.failures += 1;
        if self.failures == 1 || self.failures.is_multiple_of(100) {
            tracing::warn!(
                failures = self.failures,
                "{what}: accept failed: {e} (backing off; if this is \"Too many open files\", raise LimitNOFILE)"
            );
        }
        self.delay = (self.delay * 2).clamp(Self::MIN, Self::MAX);
        tokio::time::sleep(self.delay).await;
    }

    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
        }
        self.delay = Duration::ZERO;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room_and_timeouts_apply() {
        let limiter = Limiter::new(Limits {
            max_connections: 2,
            request_timeout: Duration::from_millis(300),
        });
        let mut a = limiter.slot().await;
        let mut b = limiter.slot().await;
        // a and b say nothing; a third connection evicts a, the oldest.
        let never = || std::future::pending::<std::io::Result<()>>();
        let a_read = tokio::spawn(async move { a.read_request(never()).await });
        tokio::task::yield_now().await;
        let mut c = tokio::time::timeout(Duration::from_secs(1), limiter.slot())
            .await
            .expect("a place was made");
        assert!(matches!(a_read.await.unwrap(), Err(RequestError::Evicted)));
        // c sends its request at once; b times out.
        assert_eq!(c.read_request(async { Ok(7) }).await.unwrap(), 7);
        let started = std::time::Instant::now();
        assert!(matches!(
            b.read_request(never()).await,
            Err(RequestError::Timeout(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(250));
        // c is busy (request read): a new connection waits rather than evicting it.
        drop(b);
        let mut d = limiter.slot().await;
        d.read_request(async { Ok(()) }).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), limiter.slot())
                .await
                .is_err(),
            "busy connections are not evicted"
        );
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), limiter.slot())
            .await
            .expect("free again");
    }
}
