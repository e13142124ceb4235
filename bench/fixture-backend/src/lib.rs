//! **A test and benchmark fixture, not a backend.** It speaks `gantry.inference.v1`
//! (Generate, Embed, ListModels, WatchLoad, WatchKvBlocks) and `grpc.health.v1` exactly as
//! `gantry backend` does, but "generates" `tok0 tok1 ...` on a timer instead of
//! running a model. The gateway's tests use it to make one backend slow, full or
//! dead on purpose; the gateway benchmark uses it so the gateway's own overhead is
//! what gets measured.
//!
//! [`ratelimit`] is a second fixture: a rate-limit service in Envoy's shape,
//! for the plugins that ask one over gRPC.
//!
//! Each fixture runs on its own Tokio runtime, so [`Fixture::kill`] can drop every
//! socket at once, as a crashed process would.

mod prefix;
pub mod ratelimit;

use gantry_proto::inference_server::{Inference, InferenceServer};
use gantry_proto::{self as pb, generate_response::Event};
use prefix::PrefixCache;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// A prompt (or chat message) containing this makes its own sequence fail after
/// one token (`Finished` with `FINISH_REASON_ERROR`), as a request whose
/// sampling cannot be computed does on a real backend; other requests go on.
pub const FAIL_SEQUENCE_MARKER: &str = "fixture:fail-sequence";

/// How a fixture behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Tokens per answer, unless the request's `max_tokens` asks for fewer.
    pub tokens: u32,
    /// Wait before the first token.
    pub first_token_delay: Duration,
    /// Wait between two tokens.
    pub inter_token_delay: Duration,
    /// Requests generating at once; more wait in the queue.
    pub max_running: u32,
    /// Requests that may wait; more are refused with RESOURCE_EXHAUSTED.
    pub max_queued: u32,
    /// Generation model names.
    pub models: Vec<String>,
    /// Embedding model names.
    pub embed_models: Vec<String>,
    /// How often WatchLoad pushes a report.
    pub report_interval: Duration,
    /// KV blocks each generation model remembers for prefix reuse (0: none).
    pub prefix_cache_blocks: usize,
    /// Answer `GetPromptFormat` (false: UNIMPLEMENTED, as an older backend).
    pub prompt_format: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            tokens: 8,
            first_token_delay: Duration::ZERO,
            inter_token_delay: Duration::ZERO,
            max_running: 256,
            max_queued: 1024,
            models: vec!["fixture".into()],
            embed_models: vec!["fixture-embed".into()],
            report_interval: Duration::from_millis(20),
            prefix_cache_blocks: 4096,
            prompt_format: true,
        }
    }
}

/// Counters the tests read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Generate calls accepted (queued or running).
    pub accepted: AtomicU64,
    /// Generate calls running now.
    pub running: AtomicU32,
    /// Generate calls waiting now.
    pub queued: AtomicU32,
    /// Streams whose client went away before the last token.
    pub cancelled: AtomicU64,
    /// Streams that ended with `Finished`.
    pub completed: AtomicU64,
    /// Calls refused because the queue was full.
    pub refused: AtomicU64,
}

struct Service {
    behaviour: Behaviour,
    stats: Arc<Stats>,
    slots: Arc<Semaphore>,
    /// Per generation model.
    prefixes: Arc<HashMap<String, PrefixCache>>,
    /// The prompt format of every generation model, and its encoder.
    format: gantry_prompt::PromptFormat,
    encoder: Arc<gantry_prompt::PromptEncoder>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for Service {
    type GenerateStream = BoxStream<pb::GenerateResponse>;
    type WatchLoadStream = BoxStream<pb::LoadReport>;
    type WatchKvBlocksStream = BoxStream<pb::KvBlocksUpdate>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        if !self.behaviour.models.contains(&req.model) {
            return Err(Status::not_found(format!(
                "model `{}` is not served",
                req.model
            )));
        }
        let b = &self.behaviour;
        let (running, queued) = (
            self.stats.running.load(Ordering::SeqCst),
            self.stats.queued.load(Ordering::SeqCst),
        );
        if running >= b.max_running && queued >= b.max_queued {
            self.stats.refused.fetch_add(1, Ordering::SeqCst);
            let mut s = Status::resource_exhausted("fixture queue is full");
            s.metadata_mut().insert("retry-after", "2".parse().unwrap());
            return Err(s);
        }
        self.stats.accepted.fetch_add(1, Ordering::SeqCst);
        let max = req.sampling.as_ref().map_or(0, |s| s.max_tokens);
        let n = if max == 0 {
            b.tokens
        } else {
            max.min(b.tokens)
        };
        let fails = read_input(&req.input)?;
        let ids = prefix::token_ids(&self.encoder, &req.input);
        let prompt_tokens = ids.len() as u32;
        let cached_tokens = self.prefixes[&req.model].admit(&ids);
        let n = if fails { n.min(1) } else { n };
        let (tx, rx) = mpsc::channel(4);
        let script = Script {
            tokens: n,
            fails,
            prompt_tokens,
            cached_tokens,
            first: b.first_token_delay,
            gap: b.inter_token_delay,
            request_id: req.request_id,
        };
        tokio::spawn(play(script, self.stats.clone(), self.slots.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let req = request.into_inner();
        if !self.behaviour.embed_models.contains(&req.model) {
            return Err(Status::not_found(format!(
                "model `{}` is not served",
                req.model
            )));
        }
        let embeddings = req
            .inputs
            .iter()
            .map(|text| pb::Embedding {
                values: fake_embedding(text),
            })
            .collect();
        let prompt_tokens = req
            .inputs
            .iter()
            .map(|t| t.split_whitespace().count() as u32)
            .sum();
        Ok(Response::new(pb::EmbedResponse {
            embeddings,
            prompt_tokens,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let b = &self.behaviour;
        let info = |name: &String, kind: pb::ModelKind| pb::ModelInfo {
            name: name.clone(),
            kind: kind as i32,
            context_length: 2048,
            max_tokens: b.tokens,
            max_running: b.max_running,
            max_queued: b.max_queued,
            device: "fixture".into(),
            prompt_format_fingerprint: self.format.fingerprint(),
            default_sampling: None,
        };
        let models = b
            .models
            .iter()
            .map(|m| info(m, pb::ModelKind::Generate))
            .chain(b.embed_models.iter().map(|m| info(m, pb::ModelKind::Embed)))
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn watch_load(
        &self,
        _request: Request<pb::WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let (tx, rx) = mpsc::channel(1);
        let stats = self.stats.clone();
        let b = self.behaviour.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(b.report_interval);
            loop {
                tick.tick().await;
                let running = stats.running.load(Ordering::SeqCst);
                let queued = stats.queued.load(Ordering::SeqCst);
                let models = b
                    .models
                    .iter()
                    .map(|m| pb::ModelLoad {
                        model: m.clone(),
                        queued,
                        running,
                        tokens_in_flight: u64::from(running) * u64::from(b.tokens),
                        kv_cache_bytes: 0,
                        tokens_per_second: 0.0,
                        max_running: b.max_running,
                        max_queued: b.max_queued,
                    })
                    .collect();
                let report = pb::LoadReport {
                    models,
                    draining: false,
                    memory_bytes: 0,
                    timestamp_ms: 0,
                };
                if tx.send(Ok(report)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// The fixture's byte-level prompt format, for every generation model.
    async fn get_prompt_format(
        &self,
        request: Request<pb::GetPromptFormatRequest>,
    ) -> Result<Response<pb::PromptFormat>, Status> {
        let model = request.into_inner().model;
        if !self.behaviour.prompt_format {
            return Err(Status::unimplemented("no GetPromptFormat here"));
        }
        if !self.behaviour.models.contains(&model) {
            return Err(Status::not_found(format!("model `{model}` is not served")));
        }
        Ok(Response::new(self.format.to_proto(model)))
    }

    /// Each model's remembered blocks: a snapshot, then every change (a fresh
    /// snapshot for a watcher that fell behind), open until the caller leaves.
    async fn watch_kv_blocks(
        &self,
        _request: Request<pb::WatchKvBlocksRequest>,
    ) -> Result<Response<Self::WatchKvBlocksStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        for model in &self.behaviour.models {
            let (prefixes, model, tx) = (self.prefixes.clone(), model.clone(), tx.clone());
            tokio::spawn(async move {
                let (mut update, mut changes) = prefixes[&model].subscribe();
                loop {
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                    update = tokio::select! {
                        change = changes.recv() => match change {
                            Ok(change) => change,
                            Err(_) => {
                                let (snapshot, fresh) = prefixes[&model].subscribe();
                                changes = fresh;
                                snapshot
                            }
                        },
                        _ = tx.closed() => return,
                    };
                }
            });
        }
        tokio::spawn(async move { tx.closed().await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Decrement<'a>(&'a AtomicU32);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A deterministic unit vector of 8 numbers from the text's bytes.
pub fn fake_embedding(text: &str) -> Vec<f32> {
    let mut v = [1.0f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += f32::from(b) / 255.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// A runtime of its own with `threads` workers, for one fixture, and the
/// connections to `addr` (port 0: an ephemeral one) as a gRPC server takes
/// them, without Nagle's delay (as the real backend). Bound without
/// `block_on`, so tests may start fixtures from async code.
pub(crate) fn own_runtime(
    addr: SocketAddr,
    threads: usize,
    name: &str,
) -> (
    tokio::runtime::Runtime,
    tonic::transport::server::TcpIncoming,
    SocketAddr,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name(name)
        .build()
        .expect("fixture runtime");
    let listener = std::net::TcpListener::bind(addr).expect("fixture binds");
    listener.set_nonblocking(true).expect("non-blocking socket");
    let addr = listener.local_addr().unwrap();
    let _enter = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener).expect("fixture listener");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    drop(_enter);
    (runtime, incoming, addr)
}

/// A running fixture.
pub struct Fixture {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Fixture {
    /// Start on an ephemeral loopback port.
    pub fn start(behaviour: Behaviour) -> Fixture {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour)
    }

    /// Start on `addr`, on a runtime of its own with one worker thread.
    pub fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Fixture {
        Self::start_with_threads(addr, behaviour, 1)
    }

    /// Start on `addr` with `threads` runtime worker threads.
    pub fn start_with_threads(addr: SocketAddr, behaviour: Behaviour, threads: usize) -> Fixture {
        let (runtime, incoming, addr) = own_runtime(addr, threads, "fixture-backend");
        let stats = Arc::new(Stats::default());
        let prefixes = behaviour
            .models
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    PrefixCache::new(m, behaviour.prefix_cache_blocks),
                )
            })
            .collect();
        let format = prefix::format();
        let encoder =
            gantry_prompt::PromptEncoder::from_format(&format, 1).expect("fixture format");
        let service = Service {
            encoder: Arc::new(encoder),
            format,
            prefixes: Arc::new(prefixes),
            slots: Arc::new(Semaphore::new(behaviour.max_running as usize)),
            behaviour,
            stats: stats.clone(),
        };
        runtime.spawn(async move {
            let (health, health_service) = tonic_health::server::health_reporter();
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(InferenceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Fixture {
            addr,
            stats,
            runtime: Some(runtime),
        }
    }

    /// Drop every connection and task at once, as a crashed process would.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one generate call will send.
struct Script {
    tokens: u32,
    fails: bool,
    prompt_tokens: u32,
    cached_tokens: u32,
    first: Duration,
    gap: Duration,
    request_id: String,
}

/// Plays one generate call: waits for a slot, then sends the deltas and the end
/// on `tx`, noticing a dropped stream between tokens as a real backend does.
async fn play(
    script: Script,
    stats: Arc<Stats>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Result<pb::GenerateResponse, Status>>,
) {
    stats.queued.fetch_add(1, Ordering::SeqCst);
    let permit = slots.acquire_owned().await.expect("semaphore open");
    stats.queued.fetch_sub(1, Ordering::SeqCst);
    stats.running.fetch_add(1, Ordering::SeqCst);
    let _running = Decrement(&stats.running);
    // A real backend notices a dropped stream between steps; so does this.
    let wait = |d: Duration| {
        let tx = tx.clone();
        async move {
            if d.is_zero() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = tx.closed() => false,
            }
        }
    };
    if !wait(script.first).await {
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
        return;
    }
    for i in 0..script.tokens {
        if i > 0 && !wait(script.gap).await {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let delta = Event::Delta(pb::TextDelta {
            text: format!("tok{i} "),
            token_ids: vec![i],
        });
        if tx
            .send(Ok(pb::GenerateResponse { event: Some(delta) }))
            .await
            .is_err()
        {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    let reason = if script.fails {
        pb::FinishReason::Error
    } else {
        pb::FinishReason::Length
    };
    let done = Event::Finished(pb::Finished {
        reason: reason as i32,
        usage: Some(pb::Usage {
            prompt_tokens: script.prompt_tokens,
            completion_tokens: script.tokens,
            cached_tokens: script.cached_tokens,
        }),
        queue_time_us: 0,
        time_to_first_token_us: script.first.as_micros() as u64,
        request_id: script.request_id,
    });
    if tx
        .send(Ok(pb::GenerateResponse { event: Some(done) }))
        .await
        .is_ok()
    {
        stats.completed.fetch_add(1, Ordering::SeqCst);
    } else {
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
    }
    drop(permit);
}

/// Whether the prompt asks to fail (contains [`FAIL_SEQUENCE_MARKER`]);
/// refused when it has no input at all.
fn read_input(input: &Option<pb::generate_request::Input>) -> Result<bool, Status> {
    if input.is_none() {
        return Err(Status::invalid_argument(
            "one of prompt, chat or token_ids must be set",
        ));
    }
    let fails = match input {
        Some(pb::generate_request::Input::Prompt(p)) => p.contains(FAIL_SEQUENCE_MARKER),
        Some(pb::generate_request::Input::Chat(c)) => c
            .messages
            .iter()
            .any(|m| m.content.contains(FAIL_SEQUENCE_MARKER)),
        _ => false,
    };
    Ok(fails)
}
