//! One key's rate limits in this process: requests, prompt tokens and
//! generated tokens per minute, and requests in flight.
//!
//! A minute is a fixed window that starts with the first request after the
//! last one ended (as a Redis key with a one-minute expiry would). Tokens are
//! reserved before any work starts and settled when it ends: a request
//! reserves its prompt's tokens (counted as the backend counts them, or a
//! bound that is never below that count) and its `max_tokens`; when it ends,
//! however it ends (finished, failed, client gone), the reservation shrinks to
//! what was used. A minute's tokens therefore never exceed the limit, whatever
//! the streams do, and what a request did not use is free again at once.
//! Budgets (tokens per day and per month, see [`super::budget`]) are reserved
//! and settled with them, for prompt and generated tokens together.

use super::budget::{Budget, Period};
use super::shared::{Admitted, Settlement, SharedKey, SharedStore, StoreRefusal, WindowView};
use gantry_config::KeyLimits;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The length of a rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Seconds a client is told to wait when it has too many requests in flight.
pub(super) const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which tokens: a prompt's, or generated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    /// Prompt tokens (`input_tokens_per_minute`).
    Input = 0,
    /// Generated tokens (`output_tokens_per_minute`).
    Output = 1,
}

impl Tokens {
    /// The limit's name in configuration and messages.
    pub fn field(self) -> &'static str {
        match self {
            Tokens::Input => "input_tokens_per_minute",
            Tokens::Output => "output_tokens_per_minute",
        }
    }

    fn limit(self, limits: &KeyLimits) -> Option<u64> {
        match self {
            Tokens::Input => limits.input_tokens_per_minute,
            Tokens::Output => limits.output_tokens_per_minute,
        }
    }
}

/// A key's limits and what it has used of them.
pub struct Limiter {
    limits: KeyLimits,
    state: Mutex<State>,
    gauges: Outstanding,
    /// A budget settled since [`Limiter::budgets_to_keep`] last looked.
    budgets_changed: AtomicBool,
    /// The key's minute as the shared store last answered, with the key's
    /// own limits (this limiter's may be divided among replicas), for the
    /// `x-ratelimit-*` headers.
    shared_view: Mutex<Option<(KeyLimits, WindowView, Instant)>>,
}

/// Why a request was not let in or its tokens not reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A limit or budget.
    Limit(Exceeded),
    /// The shared key store did not answer (`on_unreachable = "closed"`).
    StoreUnreachable,
}

impl From<StoreRefusal> for Denied {
    fn from(r: StoreRefusal) -> Denied {
        match r {
            StoreRefusal::Exceeded(e) => Denied::Limit(e),
            StoreRefusal::Unreachable => Denied::StoreUnreachable,
        }
    }
}

/// What a key holds now, as gauges: `gantry_key_inflight_requests` and
/// `gantry_key_reserved_tokens` (reserved, not yet settled).
pub struct Outstanding {
    /// Requests in flight.
    pub requests: IntGauge,
    /// Tokens (prompt and generated) reserved and not yet settled.
    pub tokens: IntGauge,
    /// By [`Tokens`]: tokens used, counted as requests settle
    /// (`gantry_key_tokens_total{key,direction}`).
    pub used: [IntCounter; 2],
}

struct State {
    window: Window,
    in_flight: u64,
    /// By [`Period`], those the key has.
    budgets: [Option<Budget>; 2],
}

struct Window {
    /// Counts windows, so a reservation settles only into its own.
    id: u64,
    started: Instant,
    requests: u64,
    /// By [`Tokens`]: tokens used plus those reserved and not yet settled.
    tokens: [u64; 2],
}

/// What a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `requests_per_minute`.
    Requests { limit: u64, retry_after: Duration },
    /// A token limit: `asked` does not fit in what is left.
    Tokens {
        kind: Tokens,
        limit: u64,
        asked: u64,
        retry_after: Duration,
    },
    /// `max_concurrent`.
    Concurrent { limit: u64, retry_after: Duration },
    /// A budget: `asked` tokens (prompt and generated) do not fit in what is
    /// left of the day or month.
    Budget {
        period: Period,
        limit: u64,
        asked: u64,
        retry_after: Duration,
    },
}

impl Exceeded {
    /// The `limit` label of `gantry_key_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Exceeded::Requests { .. } => "requests",
            Exceeded::Tokens {
                kind: Tokens::Input,
                ..
            } => "input_tokens",
            Exceeded::Tokens {
                kind: Tokens::Output,
                ..
            } => "output_tokens",
            Exceeded::Concurrent { .. } => "concurrent",
            Exceeded::Budget { period, .. } => period.field(),
        }
    }

    /// Whether a budget ran out (OpenAI's `insufficient_quota`), not a rate.
    pub fn is_quota(&self) -> bool {
        matches!(self, Exceeded::Budget { .. })
    }

    /// Why, in words that name the limit.
    pub fn message(&self) -> String {
        let wait = self.retry_after().as_secs_f64().ceil();
        match *self {
            Exceeded::Requests { limit, .. } => format!(
                "Rate limit reached for this API key: requests_per_minute = {limit}; retry in {wait}s"
            ),
            Exceeded::Tokens {
                kind: Tokens::Output,
                limit,
                asked,
                ..
            } => format!(
                "Rate limit reached for this API key: output_tokens_per_minute = {limit}, and this request reserves {asked} (its max_tokens, or the model's most when it sets none); retry in {wait}s or ask for fewer"
            ),
            Exceeded::Tokens {
                kind: Tokens::Input,
                limit,
                asked,
                ..
            } => format!(
                "Rate limit reached for this API key: input_tokens_per_minute = {limit}, and this request's input is {asked} tokens; retry in {wait}s"
            ),
            Exceeded::Concurrent { limit, .. } => format!(
                "Rate limit reached for this API key: max_concurrent = {limit} requests in flight"
            ),
            Exceeded::Budget {
                period,
                limit,
                asked,
                ..
            } => format!(
                "This API key's budget is spent: {} = {limit}, and this request reserves {asked} tokens (its prompt and its max_tokens); it renews in {wait}s (00:00 UTC)",
                period.field()
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
            | Exceeded::Tokens { retry_after, .. }
            | Exceeded::Concurrent { retry_after, .. }
            | Exceeded::Budget { retry_after, .. } => retry_after,
        }
    }
}

/// A reservation's place in the shared store.
struct SharedHold {
    store: Arc<SharedStore>,
    key: Arc<SharedKey>,
    /// Its concurrency lease.
    member: Option<String>,
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
/// when the last holder drops it, the tokens settle to what was used and the
/// request leaves the in-flight count.
pub struct Reservation {
    limiter: Arc<Limiter>,
    /// Counted in the shared store rather than in `limiter`.
    shared: Option<SharedHold>,
    /// Counted in the shared store and settled there already.
    settled_elsewhere: bool,
    /// The window its tokens were reserved in (an id here, a start in ms in
    /// the shared store).
    window: AtomicU64,
    /// By [`Period`]: the period its tokens were reserved in.
    periods: [AtomicU64; 2],
    /// By [`Tokens`].
    reserved: [AtomicU64; 2],
    /// By [`Tokens`]: used so far, or the backend's final count.
    used: [AtomicU64; 2],
}

impl Limiter {
    /// A limiter for `limits`, nothing used, reporting to `gauges`.
    pub fn new(limits: KeyLimits, gauges: Outstanding) -> Arc<Limiter> {
        let budget = |period: Period, limit: Option<u64>| limit.map(|l| Budget::new(period, l));
        Arc::new(Limiter {
            limits,
            gauges,
            state: Mutex::new(State {
                window: Window::new(0, Instant::now()),
                in_flight: 0,
                budgets: [
                    budget(Period::Day, limits.tokens_per_day),
                    budget(Period::Month, limits.tokens_per_month),
                ],
            }),
            budgets_changed: AtomicBool::new(false),
            shared_view: Mutex::new(None),
        })
    }

    /// A request `store` let in for `key`, held here for the gauges.
    pub(super) fn admitted_shared(
        self: &Arc<Self>,
        store: &Arc<SharedStore>,
        key: &Arc<SharedKey>,
        admitted: Admitted,
    ) -> Arc<Reservation> {
        self.gauges.requests.inc();
        self.see(key, admitted.view);
        Arc::new(Reservation {
            limiter: self.clone(),
            shared: Some(SharedHold {
                store: store.clone(),
                key: key.clone(),
                member: admitted.member,
            }),
            settled_elsewhere: false,
            window: AtomicU64::new(0),
            periods: Default::default(),
            reserved: Default::default(),
            used: Default::default(),
        })
    }

    /// Remember the shared store's answer for the headers; `None` forgets it
    /// (counting here again).
    pub(super) fn see(&self, key: &SharedKey, view: WindowView) {
        *self.shared_view.lock().expect("view lock") = Some((*key.limits(), view, Instant::now()));
    }

    /// The shared store's count of the minute's generated tokens, after a
    /// reservation.
    fn see_tokens(&self, output_tokens: u64, reset: Duration) {
        if let Some((_, view, seen)) = &mut *self.shared_view.lock().expect("view lock") {
            view.output_tokens = output_tokens;
            view.reset = reset;
            *seen = Instant::now();
        }
    }

    /// Count a settled request's tokens, by [`Tokens`].
    fn count_used(&self, used: [u64; 2]) {
        for (counter, n) in self.gauges.used.iter().zip(used) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Count here again (the shared store is unreachable).
    pub(super) fn unsee(&self) {
        *self.shared_view.lock().expect("view lock") = None;
    }

    /// The key's limits.
    pub fn limits(&self) -> &KeyLimits {
        &self.limits
    }

    /// Count `tokens` already settled in `period`'s `id` (read back from the
    /// store), unless that period is over.
    pub fn restore(&self, period: Period, id: u64, tokens: u64, now: SystemTime) {
        let mut state = self.state.lock().expect("limiter lock");
        if let Some(b) = &mut state.budgets[period as usize] {
            b.roll(now);
            if b.id == id {
                b.counted += tokens;
            }
        }
    }

    /// The budgets, when one settled since the last call (to be kept).
    pub(super) fn budgets_to_keep(&self) -> Option<Vec<Budget>> {
        if !self.budgets_changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        let state = self.state.lock().expect("limiter lock");
        Some(state.budgets.iter().flatten().copied().collect())
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
            shared: None,
            settled_elsewhere: false,
            window: AtomicU64::new(id),
            periods: Default::default(),
            reserved: Default::default(),
            used: Default::default(),
        }))
    }

    /// The requests and generated-token limits as they stand (those configured).
    pub fn remaining(&self) -> (Option<Remaining>, Option<Remaining>) {
        let now = Instant::now();
        let of = |limit: Option<u64>, used: u64, reset: Duration| {
            limit.map(|limit| Remaining {
                limit,
                remaining: limit.saturating_sub(used),
                reset,
            })
        };
        if let Some((limits, view, seen)) = *self.shared_view.lock().expect("view lock") {
            let reset = view.reset.saturating_sub(now.duration_since(seen));
            return (
                of(limits.requests_per_minute, view.requests, reset),
                of(limits.output_tokens_per_minute, view.output_tokens, reset),
            );
        }
        let mut state = self.state.lock().expect("limiter lock");
        let window = state.current(now);
        let reset = window.reset(now);
        (
            of(self.limits.requests_per_minute, window.requests, reset),
            of(
                self.limits.output_tokens_per_minute,
                window.tokens[Tokens::Output as usize],
                reset,
            ),
        )
    }
}

impl State {
    /// The window `now` falls in, a new one if the last has ended.
    fn current(&mut self, now: Instant) -> &mut Window {
        if now.duration_since(self.window.started) >= WINDOW {
            self.window = Window::new(self.window.id + 1, now);
        }
        &mut self.window
    }
}

impl Window {
    fn new(id: u64, started: Instant) -> Window {
        Window {
            id,
            started,
            requests: 0,
            tokens: [0; 2],
        }
    }

    fn reset(&self, now: Instant) -> Duration {
        WINDOW.saturating_sub(now.duration_since(self.started))
    }
}

impl Reservation {
    /// Whether its key counts `kind` tokens: a per-minute limit of that
    /// kind, or a budget (which counts both).
    pub fn limits(&self, kind: Tokens) -> bool {
        kind.limit(&self.limiter.limits).is_some() || self.limiter.limits.has_budget()
    }

    /// Reserve `input` prompt tokens and `output` generated tokens of the
    /// minute and of the budgets, all or none (a kind the key does not limit
    /// always fits), where the request was let in: here or in the shared
    /// store.
    pub async fn reserve(&self, input: u64, output: u64) -> Result<(), Denied> {
        let Some(shared) = &self.shared else {
            return self.reserve_here(input, output).map_err(Denied::Limit);
        };
        let r = shared.store.reserve(&shared.key, input, output).await?;
        self.window.store(r.window_start, Ordering::Relaxed);
        for (p, id) in r.periods.into_iter().enumerate() {
            self.periods[p].store(id, Ordering::Relaxed);
        }
        for (kind, n) in [(Tokens::Input, input), (Tokens::Output, output)] {
            if self.limits(kind) {
                self.reserved[kind as usize].fetch_add(n, Ordering::Relaxed);
                self.limiter.gauges.tokens.add(n as i64);
            }
        }
        self.limiter.see_tokens(r.view.output_tokens, r.view.reset);
        Ok(())
    }

    /// [`Self::reserve`] in this process's limiter.
    pub fn reserve_here(&self, input: u64, output: u64) -> Result<(), Exceeded> {
        let mut state = self.limiter.state.lock().expect("limiter lock");
        let (now, wall) = (Instant::now(), SystemTime::now());
        let window = state.current(now);
        let asked = [(Tokens::Input, input), (Tokens::Output, output)];
        for (kind, n) in asked {
            if let Some(limit) = kind.limit(&self.limiter.limits) {
                if window.tokens[kind as usize] + n > limit {
                    return Err(Exceeded::Tokens {
                        kind,
                        limit,
                        asked: n,
                        retry_after: window.reset(now),
                    });
                }
            }
        }
        let window_id = window.id;
        let total = input + output;
        for budget in state.budgets.iter_mut().flatten() {
            let left = budget.roll(wall);
            if budget.counted + total > budget.limit {
                return Err(Exceeded::Budget {
                    period: budget.period,
                    limit: budget.limit,
                    asked: total,
                    retry_after: left,
                });
            }
        }
        for budget in state.budgets.iter_mut().flatten() {
            budget.counted += total;
            budget.outstanding += total;
            self.periods[budget.period as usize].store(budget.id, Ordering::Relaxed);
        }
        let window = &mut state.window;
        for (kind, n) in asked {
            if kind.limit(&self.limiter.limits).is_some() {
                window.tokens[kind as usize] += n;
            }
            if self.limits(kind) {
                self.reserved[kind as usize].fetch_add(n, Ordering::Relaxed);
                self.limiter.gauges.tokens.add(n as i64);
            }
        }
        // Reserved tokens settle into the window that holds them.
        self.window.store(window_id, Ordering::Relaxed);
        Ok(())
    }

    /// Count generated tokens as they stream.
    pub fn generated(&self, tokens: u64) {
        self.used[Tokens::Output as usize].fetch_add(tokens, Ordering::Relaxed);
    }

    /// The prompt has been processed: its reserved tokens are used, whatever
    /// happens next.
    pub fn prompt_processed(&self) {
        let reserved = self.reserved[Tokens::Input as usize].load(Ordering::Relaxed);
        self.used[Tokens::Input as usize].store(reserved, Ordering::Relaxed);
    }

    /// The backend's final counts.
    pub fn settle(&self, input: u64, output: u64) {
        self.used[Tokens::Input as usize].store(input, Ordering::Relaxed);
        self.used[Tokens::Output as usize].store(output, Ordering::Relaxed);
    }
}

impl Reservation {
    /// Give the hold back now if `this` is its last holder, waiting until
    /// the shared store has it (a destructor can only send it on its way):
    /// a request's slot is free on every replica before its answer ends.
    pub async fn release(this: Arc<Reservation>) {
        if let Ok(mut r) = Arc::try_unwrap(this) {
            if let Some((store, key, settlement)) = r.shared_settlement() {
                store.settle_now(&key, settlement).await;
            }
        }
    }

    /// What a reservation counted in the shared store settles, once (the
    /// gauges counted down).
    fn shared_settlement(&mut self) -> Option<(Arc<SharedStore>, Arc<SharedKey>, Settlement)> {
        let shared = self.shared.take()?;
        self.limiter.gauges.requests.dec();
        let reserved = self.reserved.each_ref().map(|r| r.load(Ordering::Relaxed));
        self.limiter
            .gauges
            .tokens
            .sub(reserved.iter().sum::<u64>() as i64);
        let used = self.used.each_ref().map(|u| u.load(Ordering::Relaxed));
        self.limiter.count_used(used);
        // Settled: nothing is left for the destructor to give back.
        self.reserved = Default::default();
        self.settled_elsewhere = true;
        let settlement = Settlement {
            window_start: *self.window.get_mut(),
            periods: self.periods.each_ref().map(|p| p.load(Ordering::Relaxed)),
            reserved,
            used,
            member: shared.member,
        };
        Some((shared.store, shared.key, settlement))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((store, key, settlement)) = self.shared_settlement() {
            store.settle(&key, settlement);
            return;
        }
        if self.settled_elsewhere {
            return;
        }
        let mut state = self.limiter.state.lock().expect("limiter lock");
        state.in_flight -= 1;
        self.limiter.gauges.requests.dec();
        let same_window = state.window.id == *self.window.get_mut();
        self.limiter
            .count_used(self.used.each_ref().map(|u| u.load(Ordering::Relaxed)));
        let (mut reserved_total, mut used_total) = (0, 0);
        for kind in [Tokens::Input, Tokens::Output] {
            let reserved = *self.reserved[kind as usize].get_mut();
            let used = *self.used[kind as usize].get_mut();
            reserved_total += reserved;
            used_total += used;
            if reserved == 0 {
                continue;
            }
            self.limiter.gauges.tokens.sub(reserved as i64);
            if kind.limit(&self.limiter.limits).is_none() {
                continue;
            }
            if same_window {
                // Give back what was not used; more than reserved cannot
                // happen (max_tokens, a bound on the prompt), but would be
                // charged, not hidden.
                let counted = &mut state.window.tokens[kind as usize];
                *counted = (*counted + used).saturating_sub(reserved);
            }
        }
        if reserved_total == 0 {
            return;
        }
        for budget in state.budgets.iter_mut().flatten() {
            // Settled in the period it was reserved in; a period that has
            // ended keeps the reservation.
            if budget.id == *self.periods[budget.period as usize].get_mut() {
                budget.counted = (budget.counted + used_total).saturating_sub(reserved_total);
                budget.outstanding -= reserved_total;
                self.limiter.budgets_changed.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Outstanding {
        let gauge = || IntGauge::new("g", "g").unwrap();
        let counter = || IntCounter::new("c", "c").unwrap();
        Outstanding {
            requests: gauge(),
            tokens: gauge(),
            used: [counter(), counter()],
        }
    }

    fn limits(rpm: Option<u64>, tokens: Option<u64>, concurrent: Option<u64>) -> KeyLimits {
        KeyLimits {
            requests_per_minute: rpm,
            input_tokens_per_minute: tokens,
            output_tokens_per_minute: tokens,
            max_concurrent: concurrent,
            ..KeyLimits::default()
        }
    }

    #[test]
    fn tokens_are_reserved_up_front_and_what_was_not_used_comes_back() {
        let l = Limiter::new(limits(None, Some(100), None), gauges());
        let a = l.admit().unwrap();
        a.reserve_here(10, 70).unwrap();
        let b = l.admit().unwrap();
        match b.reserve_here(5, 40) {
            Err(Exceeded::Tokens {
                kind: Tokens::Output,
                limit: 100,
                asked: 40,
                retry_after,
            }) => assert!(retry_after <= WINDOW && retry_after > WINDOW / 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            l.state.lock().unwrap().window.tokens,
            [10, 70],
            "neither kind"
        );
        a.prompt_processed();
        a.generated(5);
        a.generated(5);
        drop(a); // the client left after 10 tokens: 10 are charged, not 70
        assert_eq!(l.remaining().1.unwrap().remaining, 90);
        assert_eq!(
            l.state.lock().unwrap().window.tokens[0],
            10,
            "its prompt was read"
        );
        b.reserve_here(90, 90).unwrap();
        b.settle(80, 90);
        drop(b);
        assert_eq!(l.state.lock().unwrap().window.tokens, [90, 100]);
    }

    #[test]
    fn budgets_count_both_kinds_and_keep_only_what_settled() {
        let budget = KeyLimits {
            tokens_per_day: Some(100),
            ..KeyLimits::default()
        };
        let l = Limiter::new(budget, gauges());
        let now = SystemTime::now();
        let (day, _) = Period::Day.at(now);
        l.restore(Period::Day, day - 1, 99, now); // yesterday's: gone
        l.restore(Period::Day, day, 20, now);
        let a = l.admit().unwrap();
        assert!(a.limits(Tokens::Input) && a.limits(Tokens::Output));
        a.reserve_here(30, 40).unwrap();
        let b = l.admit().unwrap();
        match b.reserve_here(5, 6) {
            Err(
                e @ Exceeded::Budget {
                    period: Period::Day,
                    limit: 100,
                    asked: 11,
                    ..
                },
            ) => assert!(e.is_quota() && e.label() == "tokens_per_day"),
            other => panic!("{other:?}"),
        }
        assert!(l.budgets_to_keep().is_none(), "nothing settled yet");
        a.settle(30, 10);
        drop(a);
        let kept = l.budgets_to_keep().expect("settled");
        assert_eq!((kept[0].id, kept[0].settled()), (day, 60));
        assert!(l.budgets_to_keep().is_none(), "kept once");
        b.reserve_here(5, 35).unwrap();
        let b_kept = l.state.lock().unwrap().budgets[0].unwrap();
        assert_eq!(
            (b_kept.counted, b_kept.settled()),
            (100, 60),
            "a reservation in flight is counted, not kept"
        );
    }

    #[test]
    fn a_request_that_never_reached_a_backend_gives_its_prompt_back() {
        let l = Limiter::new(limits(None, Some(100), None), gauges());
        let a = l.admit().unwrap();
        a.reserve_here(60, 0).unwrap();
        drop(a);
        assert_eq!(l.state.lock().unwrap().window.tokens, [0, 0]);
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
