//! The `gantry.inference.v1.Inference` gRPC service: each request checked
//! (a refusal names its field, see [`gantry_proto::violation`]), generation
//! streamed from the scheduler, embeddings, the model list, load reports, and
//! the KV blocks each model holds.

use crate::chat::Message;
use crate::kv_events::KvUpdate;
use crate::metrics::Metrics;
use crate::models::{resident_bytes, Served, State};
use crate::prompt::{PromptEncoder, PromptError, PromptText};
use crate::scheduler::{Event, Finish, Job, Load, SubmitError};
use crate::sequence::Sampler;
use crate::server::{
    LOAD_REPORT_INTERVAL, MAX_REQUEST_ID_BYTES, MAX_STOP_BYTES, MAX_STOP_SEQUENCES,
    RETRY_AFTER_SECONDS,
};
use gantry_config::backend::{ModelKind, ModelLimits, SamplingDefaults};
use gantry_config::traces::AcceptIncoming;
use gantry_proto::limits;
use gantry_proto::v1 as pb;
use gantry_proto::v1::inference_server::Inference;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt, StreamMap};
use tonic::{Request, Response, Status};

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    pub(crate) state: Arc<State>,
    pub(crate) metrics: Metrics,
    /// Where spans go; `None`: not traced.
    pub(crate) traces: Option<Arc<gantry_telemetry::traces::Traces>>,
}

/// One model's KV block update on the wire.
fn kv_blocks_update(model: &str, update: KvUpdate) -> pb::KvBlocksUpdate {
    let block_tokens = gantry_proto::prefix::KV_BLOCK_TOKENS as u32;
    match update {
        KvUpdate::Snapshot(s) => pb::KvBlocksUpdate {
            model: model.to_string(),
            sequence: s.sequence,
            snapshot: true,
            block_tokens,
            stored: s.blocks,
            removed: Vec::new(),
        },
        KvUpdate::Change(c) => pb::KvBlocksUpdate {
            model: model.to_string(),
            sequence: c.sequence,
            snapshot: false,
            block_tokens,
            stored: c.stored.clone(),
            removed: c.removed.clone(),
        },
    }
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
    /// The request's sampling, checked, with the model's defaults
    /// (`[models.sampling]`) for the values it leaves unset.
    fn validate_sampling(
        &self,
        name: &str,
        limits: &ModelLimits,
        defaults: &SamplingDefaults,
        prompt_len: usize,
        s: Option<pb::SamplingParams>,
    ) -> Result<Sampler, Status> {
        let mut s = s.unwrap_or_default();
        s.temperature = s.temperature.or(defaults.temperature);
        s.top_p = s.top_p.or(defaults.top_p);
        if s.top_k == 0 {
            s.top_k = defaults.top_k.unwrap_or(0);
        }
        s.repetition_penalty = s.repetition_penalty.or(defaults.repetition_penalty);
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
                let messages = c.messages.into_iter().map(Message::from).collect();
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
                cached_tokens,
                completion_tokens,
                queue_time,
                time_to_first_token,
            } => E::Finished(pb::Finished {
                reason: finish_reason(reason) as i32,
                usage: Some(pb::Usage {
                    prompt_tokens: prompt_tokens as u32,
                    completion_tokens: completion_tokens as u32,
                    cached_tokens: cached_tokens as u32,
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
        let traced = self.traces.clone().map(|traces| {
            let parent = match traces.accept_incoming() {
                AcceptIncoming::Never => None,
                _ => gantry_telemetry::traces::extract_grpc(request.metadata()),
            };
            (traces, parent, SystemTime::now())
        });
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
        let sampler = self.validate_sampling(
            name,
            &model.limits,
            &model.config.sampling,
            prompt.len(),
            req.sampling,
        )?;
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
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                    time_to_first_token,
                    queue_time,
                    ..
                } => {
                    if let Some((traces, parent, arrived)) = &traced {
                        let phases = crate::spans::Phases {
                            model: &model_name,
                            request_id: &request_id,
                            arrived: *arrived,
                            queue_time: *queue_time,
                            time_to_first_token: *time_to_first_token,
                            prompt_tokens: *prompt_tokens,
                            cached_tokens: *cached_tokens,
                            completion_tokens: *completion_tokens,
                        };
                        phases.record(traces, parent.as_ref());
                    }
                    metrics.prompt(&model_name, *prompt_tokens, *cached_tokens);
                    metrics.generated(
                        &model_name,
                        *completion_tokens,
                        (*completion_tokens > 0).then_some(*time_to_first_token),
                    );
                }
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
    type WatchKvBlocksStream = BoxStream<pb::KvBlocksUpdate>;

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
                    prompt_format_fingerprint: match &m.served {
                        Served::Generate { prompts, .. } => {
                            prompts.format().map_or(0, |f| f.fingerprint())
                        }
                        Served::Embed { .. } => 0,
                    },
                    default_sampling: (m.config.kind == ModelKind::Generate).then(|| {
                        let d = &m.config.sampling;
                        pb::SamplingParams {
                            temperature: d.temperature,
                            top_p: d.top_p,
                            top_k: d.top_k.unwrap_or(0),
                            repetition_penalty: d.repetition_penalty,
                            ..Default::default()
                        }
                    }),
                })
                .collect(),
        }))
    }

    async fn get_prompt_format(
        &self,
        request: Request<pb::GetPromptFormatRequest>,
    ) -> Result<Response<pb::PromptFormat>, Status> {
        let name = request.into_inner().model;
        let models = self.state.models()?;
        let Some(Served::Generate { prompts, .. }) = models.get(&name).map(|m| &m.served) else {
            return Err(Status::not_found(format!(
                "no generation model `{name}` here; see ListModels"
            )));
        };
        let format = prompts
            .format()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(format.to_proto(name)))
    }

    async fn watch_kv_blocks(
        &self,
        _request: Request<pb::WatchKvBlocksRequest>,
    ) -> Result<Response<Self::WatchKvBlocksStream>, Status> {
        let models = self.state.models()?;
        let (tx, rx) = mpsc::channel(16);
        // Every generation model's updates as one stream, each model's in order.
        for m in models.values() {
            let Served::Generate { engine, .. } = &m.served else {
                continue;
            };
            let mut watch = engine.kv_log().watch();
            let (name, tx) = (m.config.name.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    let update = tokio::select! {
                        update = watch.next() => update,
                        _ = tx.closed() => return,
                    };
                    let Some(update) = update else { return };
                    if tx.send(Ok(kv_blocks_update(&name, update))).await.is_err() {
                        return;
                    }
                }
            });
        }
        // Open until the caller leaves, even with no generation model.
        tokio::spawn(async move { tx.closed().await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
