//! Chat and text completions: a generation stream opened on a backend (with
//! retries until its first event), then relayed as server-sent events
//! ([`Generation`], a value the gateway writes) or gathered into one answer.
//!
//! Until the first event nothing has been sent, so a failing backend is
//! retried on another; a non-streaming answer is still whole in hand when a
//! stream breaks later, so it is retried too. Once events are out, a failure
//! becomes a well-formed error event. Dropping a [`Generation`] drops the
//! gRPC stream, which cancels the generation on the backend.

use super::attempt::{Answered, Attempts};
use super::error::ApiError;
use super::schema::{Sampling, Usage};
use super::spans::{self, AttemptSpan, AttemptSpans, Trace};
use super::sse::{Answer, Shape};
use super::whole::Whole;
use super::Reply;
use super::{Api, Outcome};
use crate::metrics::Direction;
use crate::tenants::limiter::Reservation;
use crate::upstream::inference::{InferenceBackend, InferencePool, LoadGuard};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use gantry_proto::{self as pb, generate_response::Event};
use std::sync::Arc;
use std::time::Instant;
use tonic::Streaming;

/// Tokens assumed for a request without `max_tokens`, for the load estimate only.
const ASSUMED_MAX_TOKENS: u64 = 256;

/// One generation request, as the handler hands it over.
pub(super) struct GenerateCall<'a> {
    pub pool: &'a Arc<InferencePool>,
    pub request: pb::GenerateRequest,
    pub sampling: &'a Sampling,
    pub shape: Shape,
    pub request_id: &'a str,
    pub started: Instant,
    /// Bytes of the request body, for the load estimate.
    pub body_bytes: u64,
    /// The key's hold on its limits, told what is generated.
    pub reservation: Option<Arc<Reservation>>,
    /// The names of the prompt's reusable KV blocks (prefix routing).
    pub prefix: Vec<u64>,
    /// Its place in a trace, when traced.
    pub trace: Option<Trace<'a>>,
    /// The backend a route's plugin asked for, tried first.
    pub preferred_backend: Option<String>,
}

impl<'a> GenerateCall<'a> {
    /// The generation of an API call, to `pool`.
    pub fn new(
        call: &super::ApiCall<'a>,
        pool: &'a Arc<InferencePool>,
        request: pb::GenerateRequest,
        sampling: &'a Sampling,
        shape: Shape,
        prefix: Vec<u64>,
    ) -> Self {
        GenerateCall {
            pool,
            request,
            sampling,
            shape,
            request_id: call.request_id,
            started: call.started,
            body_bytes: call.body.len() as u64,
            reservation: call.reservation.cloned(),
            prefix,
            trace: call.trace,
            preferred_backend: call.preferred_backend.clone(),
        }
    }
}

/// What one event of the stream came to.
enum Step {
    /// New text (`first`: the answer's first).
    Text { text: String, first: bool },
    /// The answer is complete.
    Finished { reason: &'static str, usage: Usage },
    /// The stream failed; `retryable` when another backend could answer.
    Failed { error: ApiError, retryable: bool },
}

/// A generation stream whose first event has arrived, relayed event by event.
pub struct Generation<'a> {
    api: &'a Api,
    pool: Arc<InferencePool>,
    backend: Arc<InferenceBackend>,
    /// The backend's load estimate, released at the outcome.
    load: Option<LoadGuard>,
    stream: Streaming<pb::GenerateResponse>,
    /// The first event, read while opening.
    pending: Option<pb::GenerateResponse>,
    answer: Answer,
    prompt_param: &'static str,
    started: Instant,
    deadline: Instant,
    last_token: Instant,
    first_delta: bool,
    ttft: prometheus::Histogram,
    itl: prometheus::Histogram,
    /// Set once the outcome is counted: the end, or a failure, was sent.
    done: bool,
    /// The key's hold on its limits: tokens counted as they come, settled
    /// to the backend's usage at the end.
    reservation: Option<Arc<Reservation>>,
    /// The attempt's span, ended with the outcome.
    span: AttemptSpan,
    /// Tokens generated so far.
    generated: u64,
    /// The backend's usage, once finished: (prompt, completion) tokens.
    usage: Option<(u32, u32)>,
}

/// The OpenAI finish reason of a backend's `Finished`, or the failure it
/// reports with whether another backend could do better.
fn finish_reason(reason: i32) -> Result<&'static str, (ApiError, bool)> {
    match pb::FinishReason::try_from(reason) {
        Ok(pb::FinishReason::Length) => Ok("length"),
        Ok(pb::FinishReason::Stop | pb::FinishReason::Eos) => Ok("stop"),
        Ok(pb::FinishReason::Cancelled) => Err((ApiError::upstream(), true)),
        // This request's own sequence failed; the backend is fine and another
        // one would fail the same way.
        Ok(pb::FinishReason::Error) => Err((ApiError::generation_failed(), false)),
        _ => Err((ApiError::upstream(), true)),
    }
}

impl Api {
    /// Serve a generation: streamed, the [`Generation`] once its first event
    /// arrived; not streamed, the whole answer (retried on another backend if
    /// a stream breaks, within the pool's retries).
    pub(super) async fn generate<'a>(
        &'a self,
        mut call: GenerateCall<'_>,
        outcome: &mut Outcome,
    ) -> Result<Reply<'a>, ApiError> {
        let pool = call.pool;
        let deadline = call.started + pool.config.request_timeout;
        let prompt_param = match call.shape {
            Shape::Chat => "messages",
            Shape::Completion => "prompt",
        };
        let max_tokens = call.request.sampling.as_ref().map_or(0, |s| s.max_tokens);
        let estimate = call.body_bytes / 4
            + match max_tokens {
                0 => ASSUMED_MAX_TOKENS,
                n => u64::from(n),
            };
        let model = call.request.model.clone();
        let operation = match call.shape {
            Shape::Chat => "chat",
            Shape::Completion => "text_completion",
        };
        let spans = AttemptSpans::generation(call.trace, operation, &call.request);
        let mut attempts = Attempts::new(self, pool, &model, deadline)
            .with_prefix(std::mem::take(&mut call.prefix))
            .with_spans(spans)
            .with_preferred(call.preferred_backend.take());
        loop {
            let request = &call.request;
            let opened = attempts
                .call(
                    outcome,
                    estimate,
                    prompt_param,
                    call.request_id,
                    |mut client, left, span| {
                        let request = AttemptSpan::request(span.as_ref(), request.clone(), left);
                        async move {
                            let mut stream = client.generate(request).await?.into_inner();
                            Ok(stream.message().await?.map(|first| (stream, first)))
                        }
                    },
                )
                .await;
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    self.count(&model, outcome, &e.status.to_string());
                    return Err(e);
                }
            };
            let answer = Answer::new(
                call.shape,
                call.request_id,
                &model,
                call.sampling.include_usage(),
            );
            let mut generation =
                self.relay(opened, answer, pool, prompt_param, call.started, deadline);
            generation.reservation = call.reservation.clone();
            if call.sampling.stream {
                return Ok(Reply::Stream(Box::new(generation)));
            }
            // Gathered here: its outcome is counted here (or, if the client
            // leaves meanwhile, by the gateway), not when it is dropped.
            generation.done = true;
            match generation.gather().await {
                Ok(whole) => {
                    generation.span.end();
                    self.count(&model, outcome, "200");
                    return Ok(Reply::Whole(whole));
                }
                // Nothing has reached the client yet: another backend may
                // still answer it in full.
                Err((error, true)) if attempts.may_retry() => {
                    tracing::warn!(request_id = call.request_id, backend = %generation.backend.label, error = %error.message, "inference stream broke before the answer was sent; retrying on another backend");
                    generation.span.failed(error.status);
                    attempts.broke(&generation.backend, error);
                }
                Err((error, _)) => {
                    generation.span.failed(error.status);
                    self.count(&model, outcome, &error.status.to_string());
                    return Err(error);
                }
            }
        }
    }

    /// A [`Generation`] of an opened stream.
    fn relay<'a>(
        &'a self,
        opened: Answered<(Streaming<pb::GenerateResponse>, pb::GenerateResponse)>,
        answer: Answer,
        pool: &Arc<InferencePool>,
        prompt_param: &'static str,
        started: Instant,
        deadline: Instant,
    ) -> Generation<'a> {
        let Answered {
            backend,
            load,
            value: (stream, first),
            span,
        } = opened;
        let labels = [self.model_label(&answer.model), backend.label.as_str()];
        Generation {
            ttft: self.metrics.inference.ttft.with_label_values(&labels),
            itl: self
                .metrics
                .inference
                .inter_token
                .with_label_values(&labels),
            api: self,
            pool: pool.clone(),
            backend,
            load: Some(load),
            stream,
            pending: Some(first),
            answer,
            prompt_param,
            started,
            deadline,
            last_token: Instant::now(),
            first_delta: true,
            done: false,
            reservation: None,
            span,
            generated: 0,
            usage: None,
        }
    }
}

impl Generation<'_> {
    /// The request id the answer carries.
    pub fn request_id(&self) -> &str {
        &self.answer.request_id
    }

    /// Tokens generated so far (what was sent, and what waits in a batch
    /// [`Self::next`] returned).
    pub fn generated_tokens(&self) -> u64 {
        self.generated
    }

    /// The backend's (prompt, completion) token counts, once it finished.
    pub fn usage(&self) -> Option<(u32, u32)> {
        self.usage
    }

    /// The next bytes to send: every event already waiting, gathered into one
    /// write; at the end, the finish event (the usage event if asked for) and
    /// `[DONE]`; after a failure, what was gathered and an error event (which
    /// the openai clients raise as an APIError). `None` once all is sent.
    pub async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        loop {
            // Wait for the first event of this batch; gather the rest only
            // while they are ready.
            let step = if out.is_empty() {
                self.step().await
            } else {
                match self.ready_step() {
                    Some(step) => step,
                    None => return Some(out.freeze()),
                }
            };
            match step {
                None => continue,
                Some(Step::Text { text, first }) => self.answer.push_delta(&mut out, &text, first),
                Some(Step::Finished { reason, usage }) => {
                    out.extend_from_slice(&self.answer.chunk(None, self.first_delta, Some(reason)));
                    if self.answer.include_usage {
                        out.extend_from_slice(&self.answer.usage_chunk(usage));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    self.end("200");
                    return Some(out.freeze());
                }
                Some(Step::Failed { error, .. }) => {
                    tracing::warn!(request_id = %self.answer.request_id, backend = %self.backend.label, error = %error.message, "inference stream failed after the first token");
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&error.body());
                    out.extend_from_slice(b"\n\n");
                    self.end(&error.status.to_string());
                    return Some(out.freeze());
                }
            }
        }
    }

    /// The whole answer (no `stream`), or why the stream failed and whether
    /// another backend could answer.
    async fn gather(&mut self) -> Result<Whole, (ApiError, bool)> {
        let mut text = String::new();
        loop {
            match self.step().await {
                None => continue,
                Some(Step::Text { text: t, .. }) => text.push_str(&t),
                Some(Step::Finished { reason, usage }) => {
                    self.load = None;
                    let body = self.answer.full(std::mem::take(&mut text), reason, usage);
                    return Ok(Whole::json(body));
                }
                Some(Step::Failed { error, retryable }) => {
                    self.load = None;
                    return Err((error, retryable));
                }
            }
        }
    }

    /// The outcome is known: count it, and let go of the backend's load.
    fn end(&mut self, status: &str) {
        self.done = true;
        self.load = None;
        if status == "200" {
            self.span.end();
        } else {
            self.span.failed(status);
        }
        let model = self.api.model_label(&self.answer.model);
        self.api
            .metrics
            .inference
            .requests
            .with_label_values(&[model, &self.backend.label, status])
            .inc();
    }

    /// The next event, if one is ready now.
    fn ready_step(&mut self) -> Option<Option<Step>> {
        if let Some(ev) = self.pending.take() {
            return Some(self.event(Ok(Some(ev))));
        }
        let ev = self.stream.message().now_or_never()?;
        Some(self.event(ev))
    }

    /// The next event, waiting for it until the request's deadline.
    async fn step(&mut self) -> Option<Step> {
        if let Some(ev) = self.pending.take() {
            return self.event(Ok(Some(ev)));
        }
        let deadline = self.deadline;
        tokio::select! {
            ev = self.stream.message() => self.event(ev),
            _ = tokio::time::sleep_until(deadline.into()) => Some(Step::Failed {
                error: ApiError::timeout(&self.pool.config.name, self.pool.config.request_timeout),
                retryable: false,
            }),
        }
    }

    /// What one event (or the stream's end or failure) means; `None` for an
    /// event without content.
    fn event(&mut self, ev: Result<Option<pb::GenerateResponse>, tonic::Status>) -> Option<Step> {
        let event = match ev {
            Err(status) => {
                return Some(Step::Failed {
                    error: ApiError::from_status(
                        &status,
                        self.prompt_param,
                        &self.pool.config.name,
                        &self.answer.request_id,
                    ),
                    retryable: ApiError::retryable(status.code()),
                })
            }
            Ok(None) => {
                tracing::warn!(request_id = %self.answer.request_id, backend = %self.backend.label, "inference stream ended before finishing");
                return Some(Step::Failed {
                    error: ApiError::upstream(),
                    retryable: true,
                });
            }
            Ok(Some(pb::GenerateResponse { event })) => event?,
        };
        match event {
            Event::Delta(delta) => {
                let now = Instant::now();
                if self.first_delta {
                    self.ttft
                        .observe(now.duration_since(self.started).as_secs_f64());
                } else {
                    self.itl
                        .observe(now.duration_since(self.last_token).as_secs_f64());
                }
                self.last_token = now;
                self.generated += delta.token_ids.len() as u64;
                if let Some(load) = self.load.as_mut() {
                    load.token_done(delta.token_ids.len() as u64);
                }
                if let Some(r) = &self.reservation {
                    if self.first_delta {
                        r.prompt_processed();
                    }
                    r.generated(delta.token_ids.len() as u64);
                }
                let first = std::mem::replace(&mut self.first_delta, false);
                Some(Step::Text {
                    text: delta.text,
                    first,
                })
            }
            Event::Finished(f) => {
                let usage = f.usage.unwrap_or_default();
                let usage = Usage::new(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_tokens,
                );
                let labels = [
                    self.api.model_label(&self.answer.model),
                    self.backend.label.as_str(),
                ];
                let metrics = &self.api.metrics;
                metrics
                    .inference
                    .queue
                    .with_label_values(&labels)
                    .observe(f.queue_time_us as f64 / 1e6);
                let (model, backend) = (labels[0], labels[1]);
                if let Some(r) = &self.reservation {
                    r.settle(usage.prompt_tokens.into(), usage.completion_tokens.into());
                }
                metrics.tokens(model, backend, Direction::In, usage.prompt_tokens.into());
                metrics.tokens(
                    model,
                    backend,
                    Direction::Cached,
                    usage.prompt_tokens_details.cached_tokens.into(),
                );
                metrics.tokens(
                    model,
                    backend,
                    Direction::Out,
                    usage.completion_tokens.into(),
                );
                self.usage = Some((usage.prompt_tokens, usage.completion_tokens));
                let reason = finish_reason(f.reason);
                self.span.answered(spans::Answered {
                    model: &self.answer.model,
                    id: Some(self.answer.id()),
                    input_tokens: usage.prompt_tokens,
                    output_tokens: Some(usage.completion_tokens),
                    finish_reason: reason.as_ref().ok().copied(),
                });
                Some(match reason {
                    Ok(reason) => Step::Finished { reason, usage },
                    Err((error, retryable)) => Step::Failed { error, retryable },
                })
            }
        }
    }
}

impl Drop for Generation<'_> {
    /// Dropped before its end: the client left (499); the gRPC stream goes
    /// with it, which cancels the generation on the backend.
    fn drop(&mut self) {
        if !self.done {
            self.end("499");
        }
    }
}
