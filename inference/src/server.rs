//! The `gantry.inference.v1.Inference` gRPC service and the backend's lifecycle.
//!
//! Start-up: the port is bound and `grpc.health.v1` answers NOT_SERVING at once;
//! models load and warm up in the background; then SERVING. SIGTERM (or
//! [`ShutdownHandle::drain`]): NOT_SERVING, new requests get UNAVAILABLE,
//! running streams finish within the grace period, the rest end `cancelled`.

use crate::chat::Message;
use crate::embed::Embedder;
use crate::engine::{Event, Finish, GenerateEngine, Job, Load, SubmitError};
use crate::llama::Llama;
use crate::metrics::Metrics;
use crate::prompt::{PromptEncoder, PromptError, PromptText};
use crate::sequence::Sampler;
use candle_core::Device;
use gantry_config::backend::{BackendConfig, DeviceSpec, ModelConfig, ModelKind, ModelLimits};
use gantry_proto::limits;
use gantry_proto::v1 as pb;
use gantry_proto::v1::inference_server::{Inference, InferenceServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Request, Response, Status};

pub use gantry_proto::limits::{MAX_REQUEST_ID_BYTES, MAX_STOP_BYTES, MAX_STOP_SEQUENCES};
/// Retry hint, in seconds, sent with RESOURCE_EXHAUSTED.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// Load reports go out at least this often while a model is busy.
pub const LOAD_REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// The gRPC service name, as health checks know it.
pub const SERVICE_NAME: &str = "gantry.inference.v1.Inference";

/// A served model.
enum Served {
    Generate {
        engine: GenerateEngine,
        prompts: Arc<PromptEncoder>,
        vocab: usize,
    },
    Embed {
        embedder: Arc<Mutex<Embedder>>,
        slots: Arc<Semaphore>,
    },
}

struct Model {
    config: ModelConfig,
    /// Effective limits (max_context capped by the model's own).
    limits: ModelLimits,
    served: Served,
}

struct State {
    models: OnceLock<BTreeMap<String, Model>>,
    draining: AtomicBool,
    load_changed: Notify,
}

impl State {
    fn models(&self) -> Result<&BTreeMap<String, Model>, Status> {
        self.models
            .get()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))
    }

    /// The model a new request names, unless the backend is draining.
    fn model(&self, name: &str) -> Result<&Model, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "backend is draining; send to another backend",
            ));
        }
        let models = self.models()?;
        if name.is_empty() {
            return Err(invalid("model", "model must be set"));
        }
        models.get(name).ok_or_else(|| {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            Status::not_found(format!(
                "model `{name}` is not served here; known models: {}",
                known.join(", ")
            ))
        })
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
    metrics: Metrics,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

use gantry_proto::violation::invalid_field as invalid;

fn queue_full(model: &str, max_queued: usize) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "model `{model}` has {max_queued} requests waiting (max_queued); retry after {RETRY_AFTER_SECONDS}s"
    ));
    status.metadata_mut().insert(
        "retry-after",
        RETRY_AFTER_SECONDS.to_string().parse().expect("ascii"),
    );
    status
}

/// Parse a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value).map(|d| Instant::now() + d)
}

impl Service {
    fn validate_sampling(
        &self,
        name: &str,
        limits: &ModelLimits,
        prompt_len: usize,
        s: Option<pb::SamplingParams>,
    ) -> Result<Sampler, Status> {
        let s = s.unwrap_or_default();
        let room = limits.max_context.saturating_sub(prompt_len);
        let max_tokens = if s.max_tokens == 0 {
            limits.max_tokens.min(room)
        } else {
            s.max_tokens as usize
        };
        if s.max_tokens as usize > limits.max_tokens {
            return Err(invalid(
                "sampling.max_tokens",
                format!(
                    "sampling.max_tokens must be between 1 and {} for model {name}",
                    limits.max_tokens
                ),
            ));
        }
        if max_tokens > room || max_tokens == 0 {
            return Err(invalid("sampling.max_tokens", format!(
                "sampling.max_tokens ({max_tokens}) plus the prompt ({prompt_len} tokens) must fit max_context {} for model {name}",
                limits.max_context
            )));
        }
        if let Err((field, message)) =
            limits::check_sampling(s.temperature, s.top_p, s.repetition_penalty)
        {
            debug_assert!(message.starts_with(field));
            return Err(invalid(
                format!("sampling.{field}"),
                format!("sampling.{message}"),
            ));
        }
        let temperature = limits::effective_temperature(s.temperature.unwrap_or(0.0));
        let top_p = s.top_p.unwrap_or(1.0);
        let repetition_penalty = s.repetition_penalty.unwrap_or(1.0);
        if s.stop.len() > MAX_STOP_SEQUENCES {
            return Err(invalid(
                "sampling.stop",
                format!(
                    "sampling.stop has {} entries; at most {MAX_STOP_SEQUENCES}",
                    s.stop.len()
                ),
            ));
        }
        for (i, stop) in s.stop.iter().enumerate() {
            if stop.is_empty() || stop.len() > MAX_STOP_BYTES {
                return Err(invalid(
                    format!("sampling.stop[{i}]"),
                    format!(
                        "sampling.stop[{i}] must be 1 to {MAX_STOP_BYTES} bytes (got {})",
                        stop.len()
                    ),
                ));
            }
        }
        Ok(Sampler {
            max_tokens,
            temperature: temperature as f64,
            top_p: top_p as f64,
            top_k: s.top_k as usize,
            seed: s.seed.unwrap_or_else(rand::random),
            stop: s.stop,
            repetition_penalty,
        })
    }

    async fn prompt_ids(
        &self,
        name: &str,
        prompts: &Arc<PromptEncoder>,
        vocab: usize,
        max_context: usize,
        input: Option<pb::generate_request::Input>,
    ) -> Result<Vec<u32>, Status> {
        use pb::generate_request::Input;
        let (text, field) = match input {
            None => {
                return Err(invalid(
                    "input",
                    "one of prompt, chat or token_ids must be set".to_string(),
                ))
            }
            Some(Input::TokenIds(t)) => {
                if t.ids.is_empty() {
                    return Err(invalid(
                        "token_ids.ids",
                        "token_ids.ids must not be empty".to_string(),
                    ));
                }
                if let Some((i, id)) = t
                    .ids
                    .iter()
                    .enumerate()
                    .find(|(_, &id)| id as usize >= vocab)
                {
                    return Err(invalid(format!("token_ids.ids[{i}]"), format!(
                        "token_ids.ids[{i}] = {id} is not below the vocabulary size {vocab} of model {name}"
                    )));
                }
                return Ok(t.ids);
            }
            Some(Input::Prompt(p)) => {
                if p.is_empty() {
                    return Err(invalid("prompt", "prompt must not be empty".to_string()));
                }
                (PromptText::Text(p), "prompt")
            }
            Some(Input::Chat(c)) => {
                if c.messages.is_empty() {
                    return Err(invalid(
                        "chat.messages",
                        "chat.messages must not be empty".to_string(),
                    ));
                }
                for (i, m) in c.messages.iter().enumerate() {
                    if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                        return Err(invalid(format!("chat.messages[{i}].role"), format!(
                            "chat.messages[{i}].role must be one of system, user, assistant (got `{}`)",
                            m.role.chars().take(32).collect::<String>()
                        )));
                    }
                }
                if !prompts.has_chat_template() {
                    return Err(invalid(
                        "chat",
                        format!("model {name} has no chat template; send a prompt instead"),
                    ));
                }
                let messages = c
                    .messages
                    .into_iter()
                    .map(|m| Message {
                        role: m.role,
                        content: m.content,
                    })
                    .collect();
                (PromptText::Chat(messages), "chat.messages")
            }
        };
        prompts
            .encode(text, field, max_context)
            .await
            .map_err(|e| match e {
                PromptError::Invalid { field, message } => invalid(field, message),
                PromptError::Internal(detail) => {
                    tracing::error!(target: "gantry::backend", model = %name, error = %detail, "tokenizing a prompt failed");
                    Status::internal("tokenizing the prompt failed")
                }
            })
    }
}

fn finish_reason(f: Finish) -> pb::FinishReason {
    match f {
        Finish::Length => pb::FinishReason::Length,
        Finish::Stop => pb::FinishReason::Stop,
        Finish::Eos => pb::FinishReason::Eos,
        Finish::Cancelled => pb::FinishReason::Cancelled,
        Finish::Failed => pb::FinishReason::Error,
    }
}

fn to_response(request_id: &str, event: Event) -> Result<pb::GenerateResponse, Status> {
    use pb::generate_response::Event as E;
    Ok(pb::GenerateResponse {
        event: Some(match event {
            Event::Delta { text, ids } => E::Delta(pb::TextDelta {
                text,
                token_ids: ids,
            }),
            Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                queue_time,
                time_to_first_token,
            } => E::Finished(pb::Finished {
                reason: finish_reason(reason) as i32,
                usage: Some(pb::Usage {
                    prompt_tokens: prompt_tokens as u32,
                    completion_tokens: completion_tokens as u32,
                }),
                queue_time_us: queue_time.as_micros() as u64,
                time_to_first_token_us: time_to_first_token.as_micros() as u64,
                request_id: request_id.to_string(),
            }),
            Event::DeadlineExceeded { completion_tokens } => {
                return Err(Status::deadline_exceeded(format!(
                    "request {request_id}: grpc-timeout passed after {completion_tokens} generated tokens"
                )))
            }
        }),
    })
}

impl Service {
    async fn start_generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<BoxStream<pb::GenerateResponse>>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let model = self.state.model(&req.model)?;
        let name = &model.config.name;
        let Served::Generate {
            engine,
            prompts,
            vocab,
        } = &model.served
        else {
            return Err(invalid(
                "model",
                format!("model {name} is an embedding model; call Embed"),
            ));
        };
        if req.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(invalid(
                "request_id",
                format!(
                    "request_id is {} bytes; at most {MAX_REQUEST_ID_BYTES}",
                    req.request_id.len()
                ),
            ));
        }
        let prompt = self
            .prompt_ids(name, prompts, *vocab, model.limits.max_context, req.input)
            .await?;
        if prompt.len() >= model.limits.max_context {
            return Err(invalid(
                "prompt",
                format!(
                    "prompt is {} tokens; at most {} for model {name} (max_context {})",
                    prompt.len(),
                    model.limits.max_context - 1,
                    model.limits.max_context
                ),
            ));
        }
        let sampler = self.validate_sampling(name, &model.limits, prompt.len(), req.sampling)?;
        let request_id = if req.request_id.is_empty() {
            format!("gen-{:016x}", rand::random::<u64>())
        } else {
            req.request_id
        };
        let (events, rx) = mpsc::unbounded_channel();
        engine
            .submit(Job {
                request_id: request_id.clone(),
                prompt,
                sampler,
                arrived: Instant::now(),
                deadline,
                events,
            })
            .map_err(|e| match e {
                SubmitError::QueueFull { max_queued } => {
                    self.metrics.queue_rejection(name);
                    queue_full(name, max_queued)
                }
                SubmitError::Stopped => Status::unavailable(e.to_string()),
            })?;
        self.metrics.request(name, "Generate", tonic::Code::Ok);
        self.state.load_changed.notify_waiters();
        let (metrics, model_name) = (self.metrics.clone(), name.clone());
        let stream = UnboundedReceiverStream::new(rx).map(move |e| {
            match &e {
                Event::Finished {
                    completion_tokens,
                    time_to_first_token,
                    ..
                } => metrics.generated(
                    &model_name,
                    *completion_tokens,
                    (*completion_tokens > 0).then_some(*time_to_first_token),
                ),
                Event::DeadlineExceeded { completion_tokens } => {
                    metrics.generated(&model_name, *completion_tokens, None);
                    metrics.request(&model_name, "Generate", tonic::Code::DeadlineExceeded);
                }
                Event::Delta { .. } => {}
            }
            to_response(&request_id, e)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn run_embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let req = request.into_inner();
        let model = self.state.model(&req.model)?;
        let name = model.config.name.clone();
        let Served::Embed { embedder, slots } = &model.served else {
            return Err(invalid(
                "model",
                format!("model {name} is a generation model; call Generate"),
            ));
        };
        let limits = model.limits;
        if req.inputs.is_empty() || req.inputs.len() > limits.max_batch {
            return Err(invalid(
                "inputs",
                format!(
                    "inputs must hold 1 to {} texts for model {name} (got {})",
                    limits.max_batch,
                    req.inputs.len()
                ),
            ));
        }
        let permit = slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.queue_rejection(&name);
            queue_full(&name, limits.max_queued)
        })?;
        let embedder = embedder.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let embedder = embedder.lock().unwrap_or_else(|p| p.into_inner());
            let counts = embedder
                .token_counts(&req.inputs)
                .map_err(|e| Status::internal(e.to_string()))?;
            if let Some((i, n)) = counts
                .iter()
                .enumerate()
                .find(|(_, &n)| n > limits.max_context)
            {
                return Err(invalid(
                    format!("inputs[{i}]"),
                    format!(
                        "inputs[{i}] is {n} tokens; at most {} for model {name}",
                        limits.max_context
                    ),
                ));
            }
            let vectors = embedder
                .embed(&req.inputs)
                .map_err(|e| Status::internal(format!("embedding failed: {e}")))?;
            Ok(pb::EmbedResponse {
                embeddings: vectors
                    .into_iter()
                    .map(|values| pb::Embedding { values })
                    .collect(),
                prompt_tokens: counts.iter().sum::<usize>() as u32,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("embedding task failed: {e}")))??;
        Ok(Response::new(result))
    }
}

#[tonic::async_trait]
impl Inference for Service {
    type GenerateStream = BoxStream<pb::GenerateResponse>;
    type WatchLoadStream = BoxStream<pb::LoadReport>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let model = request.get_ref().model.clone();
        let result = self.start_generate(request).await;
        if let Err(status) = &result {
            self.metrics.request(&model, "Generate", status.code());
        }
        result
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let model = request.get_ref().model.clone();
        let result = self.run_embed(request).await;
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.request(&model, "Embed", code);
        result
    }
    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.state.models()?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models
                .values()
                .map(|m| pb::ModelInfo {
                    name: m.config.name.clone(),
                    kind: match m.config.kind {
                        ModelKind::Generate => pb::ModelKind::Generate,
                        ModelKind::Embed => pb::ModelKind::Embed,
                    } as i32,
                    context_length: m.limits.max_context as u32,
                    max_tokens: match m.config.kind {
                        ModelKind::Generate => m.limits.max_tokens as u32,
                        ModelKind::Embed => 0,
                    },
                    max_running: m.limits.max_running as u32,
                    max_queued: m.limits.max_queued as u32,
                    device: m.config.device.to_string(),
                })
                .collect(),
        }))
    }

    async fn watch_load(
        &self,
        _request: Request<pb::WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let state = self.state.clone();
        let models = state.models()?;
        let watched: Vec<(String, ModelLimits, watch::Receiver<Load>)> = models
            .values()
            .filter_map(|m| match &m.served {
                Served::Generate { engine, .. } => {
                    Some((m.config.name.clone(), m.limits, engine.load()))
                }
                Served::Embed { .. } => None,
            })
            .collect();
        // Every model's load changes as one stream.
        let mut changes: StreamMap<usize, WatchStream<Load>> = watched
            .iter()
            .enumerate()
            .map(|(i, (_, _, rx))| (i, WatchStream::from_changes(rx.clone())))
            .collect();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let report = load_report(&state, &watched);
                let busy = report.models.iter().any(|m| m.running > 0 || m.queued > 0);
                if tx.send(Ok(report)).await.is_err() {
                    return;
                }
                tokio::select! {
                    Some(_) = changes.next() => {}
                    _ = state.load_changed.notified() => {}
                    _ = tokio::time::sleep(LOAD_REPORT_INTERVAL), if busy => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn load_report(
    state: &State,
    watched: &[(String, ModelLimits, watch::Receiver<Load>)],
) -> pb::LoadReport {
    pb::LoadReport {
        models: watched
            .iter()
            .map(|(name, limits, rx)| {
                let l = rx.borrow().clone();
                pb::ModelLoad {
                    model: name.clone(),
                    queued: l.queued as u32,
                    running: l.running as u32,
                    tokens_in_flight: l.tokens_in_flight as u64,
                    kv_cache_bytes: l.kv_cache_bytes as u64,
                    tokens_per_second: l.tokens_per_second,
                    max_running: limits.max_running as u32,
                    max_queued: limits.max_queued as u32,
                }
            })
            .collect(),
        draining: state.draining.load(Ordering::Acquire),
        memory_bytes: resident_bytes(),
        timestamp_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

/// Resident set size of this process (Linux), in bytes.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Prompts one model tokenizes at once (on blocking threads): the machine's
/// cores, so tokenizing never takes more than the CPUs it could use anyway.
fn tokenizer_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The candle device for a configured one.
pub fn device(spec: DeviceSpec) -> anyhow::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda:{n} needs a gantry built with the `cuda` feature (cargo build --features cuda)"
                );
            }
            Ok(Device::new_cuda(n)?)
        }
    }
}

fn load_model(config: &ModelConfig) -> anyhow::Result<Model> {
    let dev = device(config.device)?;
    let mut limits = config.limits;
    let started = Instant::now();
    let served = match config.kind {
        ModelKind::Generate => {
            let loaded = Llama::load(&config.path, &dev, config.quantization)?;
            limits.max_context = limits.max_context.min(loaded.model.shape().context_length);
            limits.max_tokens = limits.max_tokens.min(limits.max_context - 1);
            let vocab = loaded.model.shape().vocab;
            // Warm-up: one real forward, so the first request does not pay for
            // lazy initialisation (thread pools, kernel compilation on CUDA).
            let mut cache = loaded.model.new_cache();
            let warm = loaded
                .tokenizer
                .encode("Hello", false)
                .map_err(anyhow::Error::msg)?;
            loaded.model.forward(&mut [(warm.get_ids(), &mut cache)])?;
            let tokenizer = Arc::new(loaded.tokenizer);
            Served::Generate {
                engine: GenerateEngine::start(
                    &config.name,
                    loaded.model,
                    tokenizer.clone(),
                    loaded.eos,
                    limits,
                ),
                prompts: Arc::new(PromptEncoder::new(
                    tokenizer,
                    loaded.chat_template,
                    tokenizer_parallelism(),
                )),
                vocab,
            }
        }
        ModelKind::Embed => {
            let embedder = Embedder::load(&config.path, &dev)?;
            limits.max_context = limits.max_context.min(embedder.max_position);
            embedder.embed(&["Hello".to_string()])?;
            Served::Embed {
                embedder: Arc::new(Mutex::new(embedder)),
                slots: Arc::new(Semaphore::new(limits.max_queued + 1)),
            }
        }
    };
    tracing::info!(
        target: "gantry::backend",
        model = %config.name,
        device = %config.device,
        seconds = started.elapsed().as_secs_f32(),
        "model loaded and warmed up"
    );
    Ok(Model {
        config: config.clone(),
        limits,
        served,
    })
}

/// Set the health of the whole server (`""`) and of the Inference service.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// A running backend.
pub struct Backend {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound `/metrics` address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    state: Arc<State>,
    shutdown: Arc<Notify>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    grace: Duration,
    loaded: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("addr", &self.addr).finish()
    }
}

impl Backend {
    /// Bind, start serving health (NOT_SERVING), and load the models in the
    /// background; health turns SERVING once every model is warm.
    pub async fn start(config: BackendConfig) -> anyhow::Result<Backend> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("backend.listen {}: cannot bind: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            models: OnceLock::new(),
            draining: AtomicBool::new(false),
            load_changed: Notify::new(),
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        let shutdown = Arc::new(Notify::new());
        let metrics = Metrics::new();
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let listener = crate::metrics::bind(addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(metrics.clone().serve(listener));
                Some(bound)
            }
            None => None,
        };
        let service = Service {
            state: state.clone(),
            metrics: metrics.clone(),
        };
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                // Adaptive HTTP/2 flow control: a large prompt arrives at link
                // speed instead of one 64 KiB window per round trip.
                .http2_adaptive_window(Some(true))
                .add_service(health_service)
                .add_service(InferenceServer::new(service))
                .serve_with_incoming_shutdown(
                    // TCP_NODELAY: every token is a small write; with Nagle's
                    // algorithm each one after the first waits for the client's
                    // delayed ACK (~40 ms on Linux).
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move { stop.notified().await },
                )
                .await
                .map_err(anyhow::Error::from)
        });
        let loading = state.clone();
        let models = config.models.clone();
        let loaded = tokio::spawn(async move {
            let built = tokio::task::spawn_blocking(move || {
                models
                    .iter()
                    .map(|m| {
                        load_model(m)
                            .map(|model| (m.name.clone(), model))
                            .map_err(|e| {
                                anyhow::anyhow!("model {} ({}): {e:#}", m.name, m.path.display())
                            })
                    })
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            })
            .await??;
            for (name, model) in &built {
                if let Served::Generate { engine, .. } = &model.served {
                    metrics.watch(name, engine.clone());
                }
            }
            let _ = loading.models.set(built);
            if !loading.draining.load(Ordering::Acquire) {
                set_health(&health, tonic_health::ServingStatus::Serving).await;
            }
            // Hold the reporter to flip to NOT_SERVING on drain.
            loading.load_changed.notified().await;
            loop {
                if loading.draining.load(Ordering::Acquire) {
                    set_health(&health, tonic_health::ServingStatus::NotServing).await;
                    return Ok(());
                }
                loading.load_changed.notified().await;
            }
        });
        Ok(Backend {
            addr,
            metrics_addr,
            state,
            shutdown,
            server,
            grace: config.grace_period,
            loaded,
        })
    }

    /// Wait until every model is loaded and warm (or loading failed).
    pub async fn ready(&self) -> anyhow::Result<()> {
        loop {
            if self.state.models.get().is_some() {
                return Ok(());
            }
            if self.loaded.is_finished() {
                anyhow::bail!("model loading failed; see the log");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drain and stop: NOT_SERVING, refuse new requests, let running streams
    /// finish within the grace period, cancel what is left, stop the server.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.draining.store(true, Ordering::Release);
        self.state.load_changed.notify_waiters();
        let deadline = Instant::now() + self.grace;
        if let Some(models) = self.state.models.get() {
            let engines: Vec<&GenerateEngine> = models
                .values()
                .filter_map(|m| match &m.served {
                    Served::Generate { engine, .. } => Some(engine),
                    Served::Embed { .. } => None,
                })
                .collect();
            let idle = |e: &&GenerateEngine| e.is_idle();
            while Instant::now() < deadline && !engines.iter().all(idle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for e in &engines {
                e.abort_all();
            }
            // Give the streams a moment to deliver their final message.
            let flush = Instant::now() + Duration::from_millis(500);
            while Instant::now() < flush && !engines.iter().all(idle) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.shutdown.notify_one();
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!(target: "gantry::backend", "server did not stop within 5 s"),
        }
        self.loaded.abort();
        Ok(())
    }
}
