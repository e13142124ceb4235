//! How a gateway stops, and how a new binary takes over from it without
//! losing a request.
//!
//! - **Shutdown** (SIGTERM, SIGINT, or a [`ShutdownHandle`]): refuse new
//!   connections, close kept-alive ones after their current response, wait
//!   for requests in flight (up to `limits.shutdown_grace_period_ms`), stop.
//! - **Binary upgrade** (Pingora's hand-over, `docs/OPERATIONS.md`): a new
//!   `gantry … --upgrade` builds its configuration, then waits on
//!   `server.upgrade_socket`; SIGQUIT to the running one sends it the
//!   listening sockets (client and admin listeners). Both then accept on the
//!   same sockets for [`HAND_OVER_OVERLAP`], the old one closing each
//!   connection after its current response; then the old one stops accepting,
//!   lets its requests in flight finish (up to the grace period) and exits.
//!
//! In a process of its own ([`Process::Own`]) the gateway leaves through
//! [`Finisher`]: as soon as nothing is in flight once Pingora has stopped
//! accepting, it writes what must outlive it and exits, instead of waiting
//! out Pingora's fixed grace period.

use crate::lifecycle::Lifecycle;
use crate::reload::Reloader;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long Pingora lets both processes accept on the handed-over sockets
/// before the old one stops (its `CLOSE_TIMEOUT`, not configurable).
pub const HAND_OVER_OVERLAP: Duration = Duration::from_secs(5);
/// How long a gateway started with `--upgrade` waits, once built, for the
/// running one to hand its sockets over (for SIGQUIT to reach it).
pub const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// How the gateway's process is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Inside another program (tests, embedding): stopped by a
    /// [`ShutdownHandle`]; it returns when stopped.
    Embedded,
    /// A process of its own, run by signals, that exits when it is done.
    Own {
        /// Take the listening sockets over from the running gateway instead
        /// of binding them (`--upgrade`).
        take_over: bool,
        /// Hand them to a new one on SIGQUIT (not when the process also runs
        /// a backend, whose gRPC port cannot be handed over: SIGQUIT is
        /// ignored then).
        hand_over: bool,
    },
}

/// Triggers shutdown from inside the process (tests, embedding).
#[derive(Clone, Default)]
pub struct ShutdownHandle(Arc<Notify>);

impl ShutdownHandle {
    /// Begin a graceful shutdown, as SIGTERM would.
    pub fn shutdown(&self) {
        self.0.notify_one();
    }
}

/// Where the shutdown request comes from.
pub enum ShutdownTrigger {
    /// SIGTERM or SIGINT (drain and stop), SIGQUIT (hand the listening
    /// sockets to a new process, then drain and stop).
    Signals,
    /// An in-process handle.
    Handle(ShutdownHandle),
}

/// Pingora's shutdown signal, with our drain: on SIGTERM (or the handle),
/// refuse new connections, close kept-alive ones after their current
/// response, wait for in-flight requests (up to the grace period), then let
/// Pingora stop; on SIGQUIT, start handing over and let Pingora send the
/// sockets at once.
pub(crate) struct Drain {
    pub trigger: ShutdownTrigger,
    /// SIGQUIT hands the listening sockets over (else it is ignored).
    pub hand_over: bool,
    pub lifecycle: Arc<Lifecycle>,
    /// The live configuration's grace period applies.
    pub reloader: Arc<Reloader>,
    /// When requests in flight are given up on, set when shutdown begins.
    pub deadline: Arc<Mutex<Option<Instant>>>,
}

impl Drain {
    fn grace(&self) -> Duration {
        self.reloader.live().config.limits.shutdown_grace_period
    }

    fn set_deadline(&self) -> Instant {
        let deadline = Instant::now() + self.grace();
        *self.deadline.lock().expect("deadline lock") = Some(deadline);
        deadline
    }
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        match &self.trigger {
            ShutdownTrigger::Handle(h) => h.0.notified().await,
            ShutdownTrigger::Signals => {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
                loop {
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                        _ = quit.recv() => {
                            if !self.hand_over {
                                tracing::warn!("SIGQUIT: this process also runs a backend, whose port cannot be handed over; a binary upgrade needs `gantry gateway` or `gantry serve --no-backend`; ignored");
                                continue;
                            }
                            tracing::info!(
                                inflight = self.lifecycle.inflight(),
                                overlap_ms = HAND_OVER_OVERLAP.as_millis() as u64,
                                "SIGQUIT: handing the listening sockets to the new process, then draining"
                            );
                            self.lifecycle.start_handing_over();
                            // The grace period starts once this process stops accepting.
                            return ShutdownSignal::GracefulUpgrade;
                        }
                    }
                }
            }
        }
        let inflight = self.lifecycle.inflight();
        let grace = self.grace();
        tracing::info!(
            inflight,
            grace_ms = grace.as_millis() as u64,
            "shutdown requested: draining"
        );
        self.lifecycle.start_draining();
        let deadline = self.set_deadline();
        if tokio::time::timeout_at(deadline.into(), self.lifecycle.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                abandoned = self.lifecycle.inflight(),
                "grace period over with requests still in flight"
            );
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Ends a process of its own ([`Process::Own`]): once Pingora has stopped
/// accepting (its grace period began), it waits for requests in flight (up
/// to the deadline the drain set, or a grace period from now after a
/// hand-over), runs `finish`, and exits the process.
pub(crate) struct Finisher {
    pub phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    pub lifecycle: Arc<Lifecycle>,
    pub reloader: Arc<Reloader>,
    pub deadline: Arc<Mutex<Option<Instant>>>,
}

impl Finisher {
    /// Watch on a thread of its own.
    pub fn start(mut self, finish: Box<dyn FnOnce() + Send>) {
        let spawned = std::thread::Builder::new()
            .name("gantry-finisher".into())
            .spawn(move || {
                loop {
                    match self.phases.blocking_recv() {
                        Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        // Pingora stopped on its own: it returns, and so does `run`.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
                self.lifecycle.start_draining();
                let grace = self.reloader.live().config.limits.shutdown_grace_period;
                let deadline = self
                    .deadline
                    .lock()
                    .expect("deadline lock")
                    .unwrap_or_else(|| Instant::now() + grace);
                while self.lifecycle.inflight() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                match self.lifecycle.inflight() {
                    0 => tracing::info!("every request finished"),
                    abandoned => {
                        tracing::warn!(abandoned, "grace period over with requests still in flight")
                    }
                }
                finish();
                std::process::exit(0);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot watch the shutdown: the process exits after Pingora's grace period");
        }
    }
}
