//! Inference pools: backends found by resolving each endpoint (one backend per
//! address), watched over two server-streaming calls each, and picked by load.
//!
//! Per backend, one task holds `grpc.health.v1.Health/Watch` (SERVING or not) and
//! `gantry.inference.v1.Inference/WatchLoad` (queued, running, tokens in flight per
//! model, pushed on change) open. A backend takes traffic while both streams are up,
//! health says SERVING and the load report does not say draining. When the process
//! dies or the connection breaks, both streams end at once: the backend is out
//! immediately, not after a polling interval. A failed call ejects it for
//! [`EJECT_AFTER_FAILURE`]; it is back once that passes and its watch says healthy.
//!
//! A third stream, `WatchKvBlocks`, keeps an index of the KV blocks the backend
//! holds per model ([`super::prefix_index`]); it is emptied whenever that stream
//! ends, and a backend without it (an older one) simply has none indexed.
//!
//! The picker is power of two choices: two random eligible backends, the less
//! loaded wins. Load is the larger of what the backend reported and what this
//! gateway itself has in flight there (the report is up to one push old; our own
//! count is exact for our traffic), divided by the backend's `max_running`, so a
//! bigger GPU takes proportionally more.

mod watch;

use super::prefix_index::BackendBlocks;
use super::prompts::PoolPrompts;
use crate::metrics::Metrics;
use gantry_config::InferencePool as PoolConfig;
use gantry_config::InferenceRouting;
use gantry_proto::generate_request::Input;
use gantry_proto::inference_client::InferenceClient;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tonic::transport::{Channel, Endpoint};

/// How long a backend whose call failed (connection refused or reset, not a
/// request error) is left out before its watch may bring it back.
pub const EJECT_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive pings on backend connections, so a vanished peer (no FIN)
/// is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest answer message accepted from a backend (an embedding batch).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// What one backend last reported for one model.
#[derive(Debug, Clone, Copy, Default)]
struct ModelLoad {
    queued: u32,
    running: u32,
    tokens_in_flight: u64,
    max_running: u32,
    max_queued: u32,
    kv_cache_bytes: u64,
    tokens_per_second: f32,
}

/// One backend as the admin listener shows it.
#[derive(Debug, serde::Serialize)]
pub struct BackendStatus {
    pub address: String,
    /// Takes traffic (serving, not draining, not ejected).
    pub serving: bool,
    /// This gateway's requests on it now.
    pub in_flight: u32,
    /// Each model's last load report.
    pub models: Vec<ModelStatus>,
}

/// A model's load on one backend, as last reported.
#[derive(Debug, serde::Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub running: u32,
    pub max_running: u32,
    pub queued: u32,
    pub tokens_per_second: f32,
    pub kv_cache_bytes: u64,
    pub tokens_in_flight: u64,
}

/// One backend: an address with its own connection and watch task.
pub struct InferenceBackend {
    /// The resolved address.
    pub addr: SocketAddr,
    /// `ip:port`, for logs and metric labels.
    pub label: String,
    /// The pool it belongs to.
    pub pool: String,
    /// Where calls connect.
    endpoint: Endpoint,
    /// The channel calls go through: made by the first call, on that call's
    /// runtime (the gateway's workers), so each token's frames are read and
    /// handed to its request on one runtime. Health and load are watched on a
    /// channel of their own on the background runtime.
    calls: std::sync::OnceLock<InferenceClient<Channel>>,
    /// Both watch streams are open and health says SERVING.
    serving: AtomicBool,
    /// The last load report said draining.
    draining: AtomicBool,
    /// Unix-epoch milliseconds until which a failed call keeps it out.
    ejected_until_ms: AtomicU64,
    load: RwLock<HashMap<String, ModelLoad>>,
    /// Requests this gateway has in flight here.
    own_requests: AtomicU32,
    /// Tokens this gateway expects to still flow here (prompt estimate plus the
    /// tokens not yet generated, summed over requests).
    own_tokens: AtomicU64,
    /// `gantry_inference_backend_ejections_total` for this backend.
    ejections: prometheus::IntCounter,
    /// The KV blocks it holds, per model, from its `WatchKvBlocks` stream.
    blocks: RwLock<BackendBlocks>,
    /// Each model's largest `max_tokens` (its `ListModels` answer, read each
    /// time the watch streams open): the most one request can generate here.
    max_tokens: RwLock<HashMap<String, u32>>,
    /// Its watch tasks, stopped when it is dropped.
    watchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl InferenceBackend {
    /// A client for one call. Must be called on a Tokio runtime: the first
    /// call opens the channel there.
    pub fn client(&self) -> InferenceClient<Channel> {
        self.calls
            .get_or_init(|| {
                InferenceClient::new(self.endpoint.connect_lazy())
                    .max_decoding_message_size(MAX_ANSWER_BYTES)
            })
            .clone()
    }

    /// Whether the picker may choose it now.
    pub fn eligible(&self) -> bool {
        self.serving.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= crate::clock::unix_millis()
    }

    /// Leave it out for [`EJECT_AFTER_FAILURE`] after a failed call (the
    /// backend's failure, never a request's own fault).
    pub fn eject(&self, why: &str) {
        let until = crate::clock::unix_millis() + EJECT_AFTER_FAILURE.as_millis() as u64;
        if self.ejected_until_ms.swap(until, Ordering::Relaxed) <= crate::clock::unix_millis() {
            self.ejections.inc();
            tracing::warn!(pool = %self.pool, backend = %self.label, reason = why, "inference backend ejected");
        }
    }

    fn model_load(&self, model: &str) -> ModelLoad {
        self.load
            .read()
            .expect("load lock")
            .get(model)
            .copied()
            .unwrap_or_default()
    }

    /// Load relative to capacity, for the picker.
    fn score(&self, model: &str) -> (f64, u64) {
        let l = self.model_load(model);
        let own = self.own_requests.load(Ordering::Relaxed);
        let busy = own.max(l.running + l.queued) as f64;
        let tokens = self
            .own_tokens
            .load(Ordering::Relaxed)
            .max(l.tokens_in_flight);
        (busy / f64::from(l.max_running.max(1)), tokens)
    }

    /// Whether it is running and queueing all it can for `model`, as last
    /// reported (or as our own count shows, when that is higher).
    fn saturated(&self, model: &str) -> bool {
        let l = self.model_load(model);
        let capacity = l.max_running + l.max_queued;
        if capacity == 0 {
            // No report yet: let the backend decide.
            return false;
        }
        let own = self.own_requests.load(Ordering::Relaxed);
        own.max(l.running + l.queued) >= capacity
    }

    /// Mark it saturated for `model` until its next report (it just refused a
    /// request with RESOURCE_EXHAUSTED).
    pub fn mark_saturated(&self, model: &str) {
        if let Some(l) = self.load.write().expect("load lock").get_mut(model) {
            l.running = l.running.max(l.max_running);
            l.queued = l.queued.max(l.max_queued);
        }
    }

    /// Count a request as in flight here until the guard drops.
    pub fn begin(self: &Arc<Self>, tokens: u64) -> LoadGuard {
        self.own_requests.fetch_add(1, Ordering::Relaxed);
        self.own_tokens.fetch_add(tokens, Ordering::Relaxed);
        LoadGuard {
            backend: self.clone(),
            tokens,
        }
    }

    /// Requests this gateway has in flight here.
    pub fn own_requests(&self) -> u32 {
        self.own_requests.load(Ordering::Relaxed)
    }

    /// How many of a prompt's block names (first first) it holds for `model`.
    fn matched_blocks(&self, model: &str, prefix: &[u64]) -> usize {
        self.blocks
            .read()
            .expect("blocks lock")
            .matched_blocks(model, prefix)
    }
}

impl Drop for InferenceBackend {
    fn drop(&mut self) {
        for w in self.watchers.lock().expect("watchers lock").drain(..) {
            w.abort();
        }
    }
}

/// A request in flight at a backend.
pub struct LoadGuard {
    backend: Arc<InferenceBackend>,
    tokens: u64,
}

impl LoadGuard {
    /// One more token arrived: one fewer expected.
    pub fn token_done(&mut self, n: u64) {
        let n = n.min(self.tokens);
        self.tokens -= n;
        self.backend.own_tokens.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.backend.own_requests.fetch_sub(1, Ordering::Relaxed);
        self.backend
            .own_tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// A request counted against its pool's `max_inflight`.
pub struct PoolSlot(Arc<InferencePool>);

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pool's `gantry_inference_picks_total` by reason and
/// `gantry_inference_prefix_blocks_total` by result: no label look-up per pick.
struct PickCounters {
    by_load: prometheus::IntCounter,
    by_prefix: prometheus::IntCounter,
    by_imbalance: prometheus::IntCounter,
    by_plugin: prometheus::IntCounter,
    blocks_matched: prometheus::IntCounter,
    blocks_missed: prometheus::IntCounter,
}

impl PickCounters {
    fn new(metrics: &Metrics, pool: &str) -> Self {
        let pick = |reason| metrics.backends.picks.with_label_values(&[pool, reason]);
        let blocks = |result| {
            metrics
                .backends
                .prefix_blocks_total
                .with_label_values(&[pool, result])
        };
        PickCounters {
            by_load: pick("load"),
            by_prefix: pick("prefix"),
            by_imbalance: pick("imbalance"),
            by_plugin: pick("plugin"),
            blocks_matched: blocks("matched"),
            blocks_missed: blocks("missed"),
        }
    }
}

/// Why no backend was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPick {
    /// None is healthy (or all healthy ones were tried).
    NoneHealthy,
    /// Every healthy one is saturated for the model.
    Saturated,
}

/// One inference pool.
pub struct InferencePool {
    /// Its configuration.
    pub config: PoolConfig,
    /// Requests in flight to it from this gateway.
    inflight: std::sync::atomic::AtomicUsize,
    backends: RwLock<Arc<Vec<Arc<InferenceBackend>>>>,
    /// With prefix routing: each model's prompt encoder.
    prompts: Arc<PoolPrompts>,
    /// Its pick and prefix-block counters, resolved once.
    counters: PickCounters,
    metrics: Arc<Metrics>,
    runtime: Handle,
}

impl InferencePool {
    /// Resolve the endpoints (`hosts_file` first), start watching every
    /// backend, and keep resolving every `resolve_interval` (a name that does
    /// not resolve yet, such as a headless Service with no ready pod, is
    /// looked for again then). Runs its tasks on `runtime`.
    pub fn start(
        config: PoolConfig,
        hosts_file: Option<std::path::PathBuf>,
        metrics: Arc<Metrics>,
        runtime: Handle,
    ) -> Arc<InferencePool> {
        let counters = PickCounters::new(&metrics, &config.name);
        let pool = Arc::new(InferencePool {
            config,
            inflight: std::sync::atomic::AtomicUsize::new(0),
            backends: RwLock::new(Arc::new(Vec::new())),
            prompts: Arc::default(),
            counters,
            metrics,
            runtime: runtime.clone(),
        });
        let resolver = super::resolve::EndpointResolver::new(&pool.config.endpoints, hosts_file);
        let (addrs, failed) = resolver.resolve_now();
        for (endpoint, error) in failed {
            tracing::warn!(pool = %pool.config.name, endpoint = %endpoint, error = %error, "cannot resolve inference endpoint yet");
        }
        pool.update(addrs);
        let weak = Arc::downgrade(&pool);
        let interval = pool.config.resolve_interval;
        if resolver.has_names() {
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let addrs = resolver.resolve().await;
                    match weak.upgrade() {
                        Some(pool) => pool.update(addrs),
                        None => return,
                    }
                }
            });
        }
        pool
    }

    /// Whether the pool serves `model` (its configured `models`).
    pub fn serves(&self, model: &str) -> bool {
        self.config.models.iter().any(|m| m == model)
    }

    /// `input`'s prompt token ids for `model`, as the backends encode them,
    /// when they are wanted: to be `counted` (the model's prompt format is
    /// then waited for, see [`super::prompts::FORMAT_WAIT`]), or for prefix
    /// routing (only if the format is here already; it is fetched in the
    /// background). Encoded once per request, used for both.
    pub async fn prompt_ids(
        &self,
        model: &str,
        input: Option<&Input>,
        counted: bool,
    ) -> Option<Vec<u32>> {
        if !counted && self.config.routing != InferenceRouting::Prefix {
            return None;
        }
        let input = input?;
        let Some(text) = gantry_prompt::PromptText::from_input(input) else {
            return match input {
                Input::TokenIds(t) => Some(t.ids.clone()),
                _ => None,
            };
        };
        let endpoint = || {
            self.backends()
                .iter()
                .find(|b| b.eligible())
                .map(|b| b.endpoint.clone())
        };
        let encoder = match counted {
            true => {
                self.prompts
                    .encoder_waiting(model, endpoint, &self.runtime)
                    .await
            }
            false => self.prompts.encoder(model, endpoint, &self.runtime),
        }?;
        super::prompts::encode(&encoder, text).await
    }

    /// The names of the prompt's reusable KV blocks, for [`Self::pick`]: empty
    /// unless the pool routes by prefix and the prompt was encoded.
    pub fn prompt_blocks(&self, ids: Option<&[u32]>) -> Vec<u64> {
        match ids {
            Some(ids) if self.config.routing == InferenceRouting::Prefix => {
                super::prompts::reusable_blocks(ids)
            }
            _ => Vec::new(),
        }
    }

    /// The most tokens one request for `model` may generate on any of the
    /// pool's backends (their `ListModels` answers); `None` before any answered.
    pub fn max_tokens(&self, model: &str) -> Option<u32> {
        self.backends()
            .iter()
            .filter_map(|b| {
                b.max_tokens
                    .read()
                    .expect("max_tokens lock")
                    .get(model)
                    .copied()
            })
            .max()
    }

    /// Count a request against `max_inflight`; `None` when the pool is full.
    pub fn admit(self: &Arc<Self>) -> Option<PoolSlot> {
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = PoolSlot(self.clone());
        (before < self.config.max_inflight).then_some(slot)
    }

    /// The current backends.
    pub fn backends(&self) -> Arc<Vec<Arc<InferenceBackend>>> {
        self.backends.read().expect("backends lock").clone()
    }

    /// Replace the backend set by `addrs`, keeping the ones still there.
    fn update(&self, addrs: Vec<SocketAddr>) {
        if addrs.is_empty() {
            // A failed lookup keeps what we have rather than emptying the pool.
            tracing::warn!(pool = %self.config.name, "no endpoint address resolved; keeping the current backends");
            return;
        }
        let current = self.backends();
        if current.len() == addrs.len() && current.iter().all(|b| addrs.contains(&b.addr)) {
            return;
        }
        let mut next = Vec::new();
        for addr in addrs {
            match current.iter().find(|b| b.addr == addr) {
                Some(b) => next.push(b.clone()),
                None => {
                    tracing::info!(pool = %self.config.name, backend = %addr, "inference backend added");
                    next.push(self.spawn_backend(addr));
                }
            }
        }
        for gone in current
            .iter()
            .filter(|b| !next.iter().any(|n| n.addr == b.addr))
        {
            tracing::info!(pool = %self.config.name, backend = %gone.label, "inference backend removed (no longer resolved)");
        }
        *self.backends.write().expect("backends lock") = Arc::new(next);
    }

    fn spawn_backend(&self, addr: SocketAddr) -> Arc<InferenceBackend> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("an ip:port is a valid URI")
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true);
        let watched = {
            let _enter = self.runtime.enter();
            endpoint.connect_lazy()
        };
        let backend = Arc::new(InferenceBackend {
            addr,
            label: addr.to_string(),
            pool: self.config.name.clone(),
            endpoint,
            calls: Default::default(),
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            load: RwLock::new(HashMap::new()),
            own_requests: AtomicU32::new(0),
            own_tokens: AtomicU64::new(0),
            ejections: self
                .metrics
                .backends
                .ejections
                .with_label_values(&[&self.config.name, &addr.to_string()]),
            blocks: RwLock::default(),
            max_tokens: RwLock::default(),
            watchers: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            self.runtime.spawn(watch::watch(
                Arc::downgrade(&backend),
                watched.clone(),
                self.metrics.clone(),
            )),
            self.runtime.spawn(watch::watch_kv_blocks(
                Arc::downgrade(&backend),
                watched,
                self.config.models.clone(),
                self.config.prefix_index_max_blocks,
                self.metrics.clone(),
            )),
        ];
        *backend.watchers.lock().expect("watchers lock") = tasks;
        backend
    }

    /// Pick a backend for `model`, leaving out `tried` (addresses already
    /// tried): the one holding the longest run of `prefix` (the prompt's block
    /// names) unless it is busier than the least loaded by more than
    /// `prefix_max_extra_load`; otherwise the less loaded of two at random.
    pub fn pick(
        &self,
        model: &str,
        prefix: &[u64],
        tried: &[SocketAddr],
    ) -> Result<Arc<InferenceBackend>, NoPick> {
        let all = self.backends();
        // One pass, one allocation: the healthy, unsaturated candidates.
        let mut any_healthy = false;
        let open: Vec<&Arc<InferenceBackend>> = all
            .iter()
            .filter(|b| b.eligible() && !tried.contains(&b.addr))
            .inspect(|_| any_healthy = true)
            .filter(|b| !b.saturated(model))
            .collect();
        if !any_healthy {
            return Err(NoPick::NoneHealthy);
        }
        if open.is_empty() {
            return Err(NoPick::Saturated);
        }
        if let Some(holder) = self.by_prefix(model, prefix, &open) {
            return Ok(holder.clone());
        }
        let (a, b) = match open.len() {
            1 => return Ok(open[0].clone()),
            n => {
                let mut rng = rand::rng();
                let i = rng.random_range(0..n);
                let j = (i + rng.random_range(1..n)) % n;
                (open[i], open[j])
            }
        };
        let (sa, sb) = (a.score(model), b.score(model));
        let first = sa.0 < sb.0 || (sa.0 == sb.0 && sa.1 <= sb.1);
        Ok(if first { a.clone() } else { b.clone() })
    }

    /// The backend a plugin asked for (`inference.backend`, by its `ip:port`),
    /// while it takes traffic, is not in `tried` and is not saturated for
    /// `model`; else `None` and the pick goes on as usual.
    pub fn preferred(
        &self,
        label: &str,
        model: &str,
        tried: &[SocketAddr],
    ) -> Option<Arc<InferenceBackend>> {
        let chosen = self
            .backends()
            .iter()
            .find(|b| b.label == label && b.eligible() && !tried.contains(&b.addr))
            .filter(|b| !b.saturated(model))
            .cloned()?;
        self.counters.by_plugin.inc();
        Some(chosen)
    }

    /// The backend of `open` holding the longest run of `prefix`, if it is not
    /// too busy; `None` (counted as a pick by `load` or `imbalance`) otherwise.
    fn by_prefix<'b>(
        &self,
        model: &str,
        prefix: &[u64],
        open: &[&'b Arc<InferenceBackend>],
    ) -> Option<&'b Arc<InferenceBackend>> {
        let c = &self.counters;
        if prefix.is_empty() {
            c.by_load.inc();
            return None;
        }
        // One pass, no allocation: the longest match (among equals, the
        // least loaded), and the least load of all.
        let (mut best, mut best_matched, mut best_load) = (0, 0, f64::INFINITY);
        let mut least = f64::INFINITY;
        for (i, b) in open.iter().enumerate() {
            let (load, matched) = (b.score(model).0, b.matched_blocks(model, prefix));
            least = least.min(load);
            if matched > best_matched || (matched == best_matched && load < best_load) {
                (best, best_matched, best_load) = (i, matched, load);
            }
        }
        let (pick, hit) = if best_matched == 0 {
            (&c.by_load, 0)
        } else if best_load - least > self.config.prefix_max_extra_load {
            (&c.by_imbalance, 0)
        } else {
            (&c.by_prefix, best_matched)
        };
        pick.inc();
        c.blocks_matched.inc_by(hit as u64);
        c.blocks_missed.inc_by((prefix.len() - hit) as u64);
        (hit > 0).then_some(open[best])
    }

    /// Each backend and its models' last load, for the admin listener.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends()
            .iter()
            .map(|b| {
                let mut models: Vec<ModelStatus> = b
                    .load
                    .read()
                    .expect("load lock")
                    .iter()
                    .filter(|(model, _)| self.serves(model))
                    .map(|(model, l)| ModelStatus {
                        model: model.clone(),
                        running: l.running,
                        max_running: l.max_running,
                        queued: l.queued,
                        tokens_per_second: l.tokens_per_second,
                        kv_cache_bytes: l.kv_cache_bytes,
                        tokens_in_flight: l.tokens_in_flight,
                    })
                    .collect();
                models.sort_by(|a, b| a.model.cmp(&b.model));
                BackendStatus {
                    address: b.label.clone(),
                    serving: b.eligible(),
                    in_flight: b.own_requests(),
                    models,
                }
            })
            .collect()
    }

    /// Whether any backend takes traffic.
    pub fn any_healthy(&self) -> bool {
        self.backends().iter().any(|b| b.eligible())
    }

    /// Refresh the per-backend gauges (at scrape time).
    pub fn refresh_metrics(&self) {
        for b in self.backends().iter() {
            let labels = [self.config.name.as_str(), b.label.as_str()];
            self.metrics
                .backends
                .healthy
                .with_label_values(&labels)
                .set(i64::from(b.eligible()));
            self.metrics
                .backends
                .inflight
                .with_label_values(&labels)
                .set(i64::from(b.own_requests()));
            for (model, l) in b.load.read().expect("load lock").iter() {
                // Only models the pool is configured with: a backend's report
                // does not add label values.
                if !self.config.models.contains(model) {
                    continue;
                }
                let l3 = [self.config.name.as_str(), b.label.as_str(), model.as_str()];
                let g = &self.metrics.backends.load;
                g.with_label_values(&[l3[0], l3[1], l3[2], "queued"])
                    .set(i64::from(l.queued));
                g.with_label_values(&[l3[0], l3[1], l3[2], "running"])
                    .set(i64::from(l.running));
                g.with_label_values(&[l3[0], l3[1], l3[2], "tokens_in_flight"])
                    .set(l.tokens_in_flight as i64);
            }
            let blocks = b.blocks.read().expect("blocks lock");
            for model in &self.config.models {
                self.metrics
                    .backends
                    .prefix_blocks
                    .with_label_values(&[self.config.name.as_str(), b.label.as_str(), model])
                    .set(blocks.len(model) as i64);
            }
        }
    }
}

/// Resolve at start-up, blocking: IP endpoints as they are, names by lookup.
/// How long until `deadline`, for a gRPC timeout.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
