//! One key's rate limits in this process: requests and generated tokens per
//! minute, and requests in flight.
//!
//! A minute is a fixed window that starts with the first request after the
//! last one ended (as a Redis key with a one-minute expiry would). Tokens are
//! reserved before any work starts and settled when it ends: a generation
//! reserves its `max_tokens`; when it ends, however it ends (finished, failed,
//! client gone), the reservation shrinks to what was generated. A minute's
//! tokens therefore never exceed the limit, whatever the streams do, and
//! what a request did not use is free again at once.

use gantry_config::KeyLimits;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The length of a rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Seconds a client is told to wait when it has too many requests in flight.
const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A key's limits and what it has used of them.
pub struct Limiter {
    limits: KeyLimits,
    state: Mutex<State>,
    gauges: Outstanding,
}

/// What a key holds now, as gauges: `gantry_key_inflight_requests` and
/// `gantry_key_reserved_tokens` (reserved, not yet settled).
pub struct Outstanding {
    /// Requests in flight.
    pub requests: IntGauge,
    /// Output tokens reserved and not yet settled.
    pub tokens: IntGauge,
}

struct State {
    window: Window,
    in_flight: u64,
}

struct Window {
    /// Counts windows, so a reservation settles only into its own.
    id: u64,
    started: Instant,
    requests: u64,
    /// Generated tokens plus those reserved and not yet settled.
    output: u64,
}

/// What a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `requests_per_minute`.
    Requests { limit: u64, retry_after: Duration },
    /// `output_tokens_per_minute`: `asked` does not fit in what is left.
    OutputTokens {
        limit: u64,
        asked: u64,
        retry_after: Duration,
    },
    /// `max_concurrent`.
    Concurrent { limit: u64, retry_after: Duration },
}

impl Exceeded {
    /// The `limit` label of `gantry_key_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Exceeded::Requests { .. } => "requests",
            Exceeded::OutputTokens { .. } => "output_tokens",
            Exceeded::Concurrent { .. } => "concurrent",
        }
    }

    /// Why, in words that name the limit.
    pub fn message(&self) -> String {
        let wait = self.retry_after().as_secs_f64().ceil();
        match *self {
            Exceeded::Requests { limit, .. } => format!(
                "Rate limit reached for this API key: requests_per_minute = {limit}; retry in {wait}s"
            ),
            Exceeded::OutputTokens { limit, asked, .. } => format!(
                "Rate limit reached for this API key: output_tokens_per_minute = {limit}, and this request reserves {asked} (its max_tokens, or the model's most when it sets none); retry in {wait}s or ask for fewer"
            ),
            Exceeded::Concurrent { limit, .. } => format!(
                "Rate limit reached for this API key: max_concurrent = {limit} requests in flight"
            ),
        }
    }

    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_seconds(&self) -> u32 {
        (self.retry_after().as_secs_f64().ceil() as u32).max(1)
    }

    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match *self {
            Exceeded::Requests { retry_after, .. }
            | Exceeded::OutputTokens { retry_after, .. }
            | Exceeded::Concurrent { retry_after, .. } => retry_after,
        }
    }
}

/// One limit's state, as the `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// The limit.
    pub limit: u64,
    /// What is left of it.
    pub remaining: u64,
    /// When it is whole again.
    pub reset: Duration,
}

/// A request's hold on its key's limits: one request of the minute, one in
/// flight, and the tokens it reserved. Shared by whoever serves the request;
/// when the last holder drops it, the tokens settle to what was generated
/// and the request leaves the in-flight count.
pub struct Reservation {
    limiter: Arc<Limiter>,
    window: AtomicU64,
    reserved: AtomicU64,
    generated: AtomicU64,
}

impl Limiter {
    /// A limiter for `limits`, nothing used, reporting to `gauges`.
    pub fn new(limits: KeyLimits, gauges: Outstanding) -> Arc<Limiter> {
        Arc::new(Limiter {
            limits,
            gauges,
            state: Mutex::new(State {
                window: Window {
                    id: 0,
                    started: Instant::now(),
                    requests: 0,
                    output: 0,
                },
                in_flight: 0,
            }),
        })
    }

    /// The key's output token limit, if it has one.
    pub fn output_limit(&self) -> Option<u64> {
        self.limits.output_tokens_per_minute
    }

    /// Let a request in: one of the minute's requests and one in flight.
    pub fn admit(self: &Arc<Self>) -> Result<Arc<Reservation>, Exceeded> {
        let mut state = self.state.lock().expect("limiter lock");
        let now = Instant::now();
        let window = state.current(now);
        if let Some(limit) = self.limits.requests_per_minute {
            if window.requests >= limit {
                return Err(Exceeded::Requests {
                    limit,
                    retry_after: window.reset(now),
                });
            }
        }
        if let Some(limit) = self.limits.max_concurrent {
            if state.in_flight >= limit {
                return Err(Exceeded::Concurrent {
                    limit,
                    retry_after: CONCURRENCY_RETRY_AFTER,
                });
            }
        }
        let window = state.current(now);
        window.requests += 1;
        let id = window.id;
        state.in_flight += 1;
        self.gauges.requests.inc();
        Ok(Arc::new(Reservation {
            limiter: self.clone(),
            window: AtomicU64::new(id),
            reserved: AtomicU64::new(0),
            generated: AtomicU64::new(0),
        }))
    }

    /// The requests and output-token limits as they stand (those configured).
    pub fn remaining(&self) -> (Option<Remaining>, Option<Remaining>) {
        let mut state = self.state.lock().expect("limiter lock");
        let now = Instant::now();
        let window = state.current(now);
        let reset = window.reset(now);
        let of = |limit: Option<u64>, used: u64| {
            limit.map(|limit| Remaining {
                limit,
                remaining: limit.saturating_sub(used),
                reset,
            })
        };
        (
            of(self.limits.requests_per_minute, window.requests),
            of(self.limits.output_tokens_per_minute, window.output),
        )
    }
}

impl State {
    /// The window `now` falls in, a new one if the last has ended.
    fn current(&mut self, now: Instant) -> &mut Window {
        if now.duration_since(self.window.started) >= WINDOW {
            self.window = Window {
                id: self.window.id + 1,
                started: now,
                requests: 0,
                output: 0,
            };
        }
        &mut self.window
    }
}

impl Window {
    fn reset(&self, now: Instant) -> Duration {
        WINDOW.saturating_sub(now.duration_since(self.started))
    }
}

impl Reservation {
    /// Whether its key limits generated tokens.
    pub fn limits_output(&self) -> bool {
        self.limiter.limits.output_tokens_per_minute.is_some()
    }

    /// Reserve `tokens` more generated tokens of the minute (`Ok` at once
    /// without an output limit).
    pub fn reserve_output(&self, tokens: u64) -> Result<(), Exceeded> {
        let Some(limit) = self.limiter.limits.output_tokens_per_minute else {
            return Ok(());
        };
        let mut state = self.limiter.state.lock().expect("limiter lock");
        let now = Instant::now();
        let window = state.current(now);
        if window.output + tokens > limit {
            return Err(Exceeded::OutputTokens {
                limit,
                asked: tokens,
                retry_after: window.reset(now),
            });
        }
        window.output += tokens;
        self.limiter.gauges.tokens.add(tokens as i64);
        // Reserved tokens settle into the window that holds them.
        self.window.store(window.id, Ordering::Relaxed);
        self.reserved.fetch_add(tokens, Ordering::Relaxed);
        Ok(())
    }

    /// Count tokens generated so far (as they stream).
    pub fn generated(&self, tokens: u64) {
        self.generated.fetch_add(tokens, Ordering::Relaxed);
    }

    /// The backend's final count of generated tokens.
    pub fn settle(&self, generated: u64) {
        self.generated.store(generated, Ordering::Relaxed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.limiter.state.lock().expect("limiter lock");
        state.in_flight -= 1;
        let (reserved, generated) = (*self.reserved.get_mut(), *self.generated.get_mut());
        self.limiter.gauges.requests.dec();
        self.limiter.gauges.tokens.sub(reserved as i64);
        if state.window.id == *self.window.get_mut() && reserved > 0 {
            let window = &mut state.window;
            // Give back what was not generated; more than reserved cannot
            // happen (max_tokens), but would be charged, not hidden.
            window.output = (window.output + generated).saturating_sub(reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Outstanding {
        let gauge = || IntGauge::new("g", "g").unwrap();
        Outstanding {
            requests: gauge(),
            tokens: gauge(),
        }
    }

    fn limits(rpm: Option<u64>, tokens: Option<u64>, concurrent: Option<u64>) -> KeyLimits {
        KeyLimits {
            requests_per_minute: rpm,
            output_tokens_per_minute: tokens,
            max_concurrent: concurrent,
        }
    }

    #[test]
    fn tokens_are_reserved_up_front_and_what_was_not_generated_comes_back() {
        let l = Limiter::new(limits(None, Some(100), None), gauges());
        let a = l.admit().unwrap();
        a.reserve_output(70).unwrap();
        let b = l.admit().unwrap();
        match b.reserve_output(40) {
            Err(Exceeded::OutputTokens {
                limit: 100,
                asked: 40,
                retry_after,
            }) => {
                assert!(retry_after <= WINDOW && retry_after > WINDOW / 2)
            }
            other => panic!("{other:?}"),
        }
        a.generated(5);
        a.generated(5);
        drop(a); // the client left after 10 tokens: 10 are charged, not 70
        assert_eq!(l.remaining().1.unwrap().remaining, 90);
        b.reserve_output(90).unwrap();
        b.settle(90);
        drop(b);
        assert_eq!(l.remaining().1.unwrap().remaining, 0);
    }

    #[test]
    fn requests_per_minute_and_in_flight_are_counted_apart() {
        let l = Limiter::new(limits(Some(3), None, Some(2)), gauges());
        let (a, b) = (l.admit().unwrap(), l.admit().unwrap());
        assert!(matches!(
            l.admit(),
            Err(Exceeded::Concurrent { limit: 2, .. })
        ));
        drop(a);
        let c = l.admit().unwrap();
        drop((b, c));
        assert!(matches!(
            l.admit(),
            Err(Exceeded::Requests { limit: 3, .. })
        ));
        assert_eq!(l.remaining().0.unwrap().remaining, 0);
    }
}
