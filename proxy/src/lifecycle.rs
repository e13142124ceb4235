//! The process's life as the request path sees it: whether it is draining, and
//! how many requests are in flight (shutdown waits for none). The admin
//! endpoints and the shutdown logic read it; the gateway's phases count
//! requests in it. It knows nothing of Pingora's phases.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Process-wide state the phases and the shutdown logic share.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    handing_over: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    /// Stop taking new work: `/readyz` fails and responses close their connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A binary upgrade has begun: a new process shares the listening
    /// sockets, so new connections are still taken (the kernel gives each to
    /// one of the two), but `/readyz` fails and every response closes its
    /// connection, so clients reconnect, to either process, before this one
    /// stops accepting.
    pub fn start_handing_over(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
    }

    /// Whether responses close their connection: draining or handing over.
    pub fn closes_connections(&self) -> bool {
        self.is_draining() || self.handing_over.load(Ordering::Relaxed)
    }

    /// Requests in progress.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Resolves once no request is in progress.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("draining", &self.is_draining())
            .field("inflight", &self.inflight())
            .finish()
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct RequestInFlight(Arc<Lifecycle>);

impl Lifecycle {
    /// Count a request as in flight until the returned guard is dropped.
    pub fn track(self: &Arc<Self>) -> RequestInFlight {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        RequestInFlight(self.clone())
    }
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
