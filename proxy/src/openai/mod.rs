//! The OpenAI-compatible API at the edge, translated to `gantry.inference.v1` gRPC
//! and sent to load-aware inference pools. See `docs/INFERENCE-GATEWAY.md`.
//!
//! A route with `inference_pools` is served here, inside `request_filter`: the
//! handler reads and validates the body, picks a backend ([`pool`]), opens the
//! gRPC stream and writes the answer itself, so every token is written and flushed
//! as it arrives (no response body filters in between). Until the first token
//! nothing has been sent to the client, so a failing backend is retried on
//! another; after it, a failure becomes a well-formed error event. A client that
//! goes away drops the gRPC stream, which cancels generation on the backend.

pub mod api;
pub mod downstream;
pub mod error;
pub mod openapi;

pub mod request;

use crate::metrics::Metrics;
use crate::upstream::inference::{
    remaining, InferenceBackend, InferencePool as Pool, LoadGuard, NoPick, PoolSlot,
};
use api::*;
use bytes::{Bytes, BytesMut};
use downstream::{Captured, Downstream};
use error::{ApiError, DEFAULT_RETRY_AFTER_SECONDS};
use futures_util::FutureExt;
use gantry_config::Config;
use gantry_proto::{self as pb, generate_response::Event};
use pingora::http::ResponseHeader;
pub use request::{check_body, check_body_property, Endpoint};
use request::{is_json, read_body};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tonic::Streaming;

/// Tokens assumed for a request without `max_tokens`, for the load estimate only.
const ASSUMED_MAX_TOKENS: u64 = 256;

/// Every inference pool and the documents built from the API types.
pub struct Api {
    pools: Vec<Arc<Pool>>,
    /// Longest wait for one request body chunk (`limits.client_read_timeout_ms`).
    body_stall: std::time::Duration,
    /// Every model some pool serves: the closed set of `model` label values.
    models: std::collections::HashSet<String>,
    metrics: Arc<Metrics>,
    openapi_json: Bytes,
    docs_html: Bytes,
}

/// The `model` label of requests naming a model no pool serves.
pub const UNKNOWN_MODEL_LABEL: &str = "unknown";

/// What the access log should know about an inference request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The backend that answered, if one was reached.
    pub backend: Option<String>,
    /// Backends tried.
    pub attempts: usize,
    /// The request's model, once parsed.
    model: String,
    /// Whether `gantry_inference_requests_total` has counted it.
    counted: bool,
}

/// What kind of generation answer to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Completion,
}

/// The answer being written: ids and options shared by all its chunks.
struct Answer {
    shape: Shape,
    request_id: String,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// `data: {...` up to the new text of a plain delta chunk; built once per
    /// answer so each token only costs escaping its text.
    delta_prefix: Vec<u8>,
}

impl Answer {
    fn new(shape: Shape, request_id: &str, model: &str, include_usage: bool) -> Self {
        let kind = if shape == Shape::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        let mut answer = Answer {
            shape,
            request_id: request_id.to_string(),
            id: format!("{kind}-{request_id}"),
            created: unix_now(),
            model: model.to_string(),
            include_usage,
            delta_prefix: Vec::new(),
        };
        let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let (object, field) = match shape {
            Shape::Chat => ("chat.completion.chunk", r#""delta":{"content":"#),
            Shape::Completion => ("text_completion", r#""text":"#),
        };
        answer.delta_prefix = format!(
            r#"data: {{"id":{},"object":"{object}","created":{},"model":{},"choices":[{{"index":0,{field}"#,
            json(&answer.id),
            answer.created,
            json(&answer.model),
        )
        .into_bytes();
        answer
    }

    /// Append the event for new text (not the first: that one carries the role).
    fn push_delta(&self, out: &mut BytesMut, text: &str) {
        out.extend_from_slice(&self.delta_prefix);
        let mut escaped = Vec::with_capacity(text.len() + 2);
        serde_json::to_writer(&mut escaped, text).expect("strings serialize");
        out.extend_from_slice(&escaped);
        out.extend_from_slice(match self.shape {
            Shape::Chat => br#"},"finish_reason":null}]}"#,
            Shape::Completion => br#","logprobs":null,"finish_reason":null}]}"#,
        });
        out.extend_from_slice(b"\n\n");
    }

    fn sse(value: &impl serde::Serialize) -> Bytes {
        let mut out = b"data: ".to_vec();
        serde_json::to_writer(&mut out, value).expect("chunks serialize");
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// One streamed event with new text and/or the finish reason.
    fn chunk(&self, text: Option<String>, first: bool, finish: Option<&'static str>) -> Bytes {
        match self.shape {
            Shape::Chat => Self::sse(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: first.then_some("assistant"),
                        content: text,
                    },
                    finish_reason: finish,
                }],
                usage: None,
            }),
            Shape::Completion => Self::sse(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: None,
            }),
        }
    }

    /// The usage event (`stream_options.include_usage`): no choices.
    fn usage_chunk(&self, usage: Usage) -> Bytes {
        match self.shape {
            Shape::Chat => Self::sse(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(usage),
            }),
            Shape::Completion => Self::sse(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(usage),
            }),
        }
    }

    /// The whole answer (no `stream`).
    fn full(&self, text: String, finish: &'static str, usage: Usage) -> Vec<u8> {
        match self.shape {
            Shape::Chat => serde_json::to_vec(&ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                    },
                    finish_reason: finish,
                }],
                usage,
            }),
            Shape::Completion => serde_json::to_vec(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: Some(finish),
                }],
                usage: Some(usage),
            }),
        }
        .expect("answers serialize")
    }
}

/// A generation stream whose first event has arrived.
struct Opened {
    backend: Arc<InferenceBackend>,
    guard: LoadGuard,
    stream: Streaming<pb::GenerateResponse>,
    first: pb::GenerateResponse,
}

/// How relaying one stream ended.
enum Consumed {
    /// The whole answer was written.
    Done,
    /// The client went away (the stream was dropped, cancelling it).
    ClientGone,
    /// The backend failed; `retryable` when another backend could answer.
    Failed { error: ApiError, retryable: bool },
}

/// What happened while waiting for the next event.
enum Next {
    Event(Result<Option<pb::GenerateResponse>, tonic::Status>),
    ClientGone,
    Deadline,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The OpenAI finish reason of a backend's `Finished`, or the failure it reports
/// with whether another backend could do better.
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

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return ApiError::invalid_body(
            None,
            format!("We could not parse the JSON body of your request: {inner}"),
        );
    }
    let text = inner.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text).to_string();
    let param = if path == "." || path == "?" {
        message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string)
    } else {
        Some(path.clone())
    };
    let message = match &param {
        Some(p) if !message.starts_with("missing field") => format!("{p}: {message}"),
        _ => message,
    };
    ApiError::invalid_body(param, message)
}

fn parse_exact<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(json_error)
}

/// Parse a request. Its sampling fields are `#[serde(flatten)]`ed, which hides the
/// path of a wrong-typed one; parsing the same body as [`Sampling`] alone (unknown
/// fields are ignored) names it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_exact(body).map_err(|e| match e.param {
        Some(_) => e,
        None => match parse_exact::<Sampling>(body) {
            Err(precise) if precise.param.is_some() => precise,
            _ => e,
        },
    })
}

impl Api {
    /// Start every inference pool's watchers on `runtime` and build the OpenAPI
    /// document for the routes that serve the API.
    pub fn start(config: &Config, metrics: Arc<Metrics>, runtime: tokio::runtime::Handle) -> Self {
        let pools = config
            .inference_pools
            .iter()
            .map(|p| Pool::start(p.clone(), metrics.clone(), runtime.clone()))
            .collect();
        let prefixes: Vec<String> = config
            .routes
            .iter()
            .filter(|r| matches!(r.target, gantry_config::Target::Inference(_)))
            .map(|r| r.path_prefix.clone())
            .collect();
        let doc = openapi::document(&prefixes);
        let openapi_json =
            Bytes::from(serde_json::to_vec_pretty(&doc).expect("document serializes"));
        let docs_html = Bytes::from(openapi::docs_html(&doc));
        let models = config
            .inference_pools
            .iter()
            .flat_map(|p| p.models.iter().cloned())
            .collect();
        Api {
            pools,
            body_stall: config.limits.client_read_timeout,
            models,
            metrics,
            openapi_json,
            docs_html,
        }
    }

    /// The pools, by config index.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Serve `/openapi.json` or `/docs`.
    pub async fn serve_builtin(
        &self,
        session: &mut dyn Downstream,
        which: gantry_config::Builtin,
        request_id: &str,
    ) -> pingora::Result<()> {
        let (body, kind) = match which {
            gantry_config::Builtin::Openapi => (self.openapi_json.clone(), "application/json"),
            gantry_config::Builtin::Docs => (self.docs_html.clone(), "text/html; charset=utf-8"),
        };
        write_whole(session, 200, kind, body, request_id, None).await
    }

    /// Serve one request of the OpenAI-compatible API on a route whose prefix is
    /// `prefix` and whose pools are `pools` (indexes).
    #[allow(clippy::too_many_arguments)]
    pub async fn handle(
        &self,
        session: &mut dyn Downstream,
        prefix: &str,
        pools: &[usize],
        max_body: u64,
        request_id: &str,
        started: Instant,
    ) -> pingora::Result<Outcome> {
        let mut outcome = Outcome::default();
        let result = self
            .dispatch(
                session,
                prefix,
                pools,
                max_body,
                request_id,
                started,
                &mut outcome,
            )
            .await;
        match result {
            Ok(()) => Ok(outcome),
            Err(err) => {
                if err.status == 413 {
                    self.metrics
                        .limit_rejections
                        .with_label_values(&["body_bytes"])
                        .inc();
                    session.close_after();
                }
                if !outcome.counted {
                    let model = outcome.model.clone();
                    self.count(&model, &mut outcome, &err.status.to_string());
                }
                write_error(session, &err, request_id).await?;
                Ok(outcome)
            }
        }
    }

    /// The index of the inference pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.config.name == name)
    }

    /// Serve one request of the API in process, for a plugin's
    /// `proxy_http_call` to inference pool `pool`: the same paths as on a route
    /// with prefix `/v1` (or none), the same validation and errors, the whole
    /// answer returned as (status, headers, body).
    pub async fn call(
        &self,
        pool: usize,
        method: http::Method,
        path: &str,
        content_type: Option<String>,
        body: Bytes,
        request_id: &str,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let prefix = if path.starts_with("/v1/") { "/v1" } else { "/" };
        let max_body = body.len() as u64;
        let mut exchange = Captured::new(method, path.to_string(), content_type, body);
        let handled = self
            .handle(
                &mut exchange,
                prefix,
                &[pool],
                max_body,
                request_id,
                Instant::now(),
            )
            .await;
        match (handled, exchange.header) {
            (Ok(_), Some(header)) => {
                let headers = header
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                    })
                    .collect();
                (
                    header.status.as_u16(),
                    headers,
                    Vec::from(exchange.response),
                )
            }
            _ => (500, Vec::new(), Vec::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        session: &mut dyn Downstream,
        prefix: &str,
        route_pools: &[usize],
        max_body: u64,
        request_id: &str,
        started: Instant,
        outcome: &mut Outcome,
    ) -> Result<(), ApiError> {
        let method = session.method();
        let full = session.path();
        let rest = if prefix == "/" {
            full.as_str()
        } else {
            full.strip_prefix(prefix).unwrap_or("")
        };
        let rest = rest.trim_end_matches('/');
        // POSTs carry JSON, declared as such: a web page cannot send that
        // without a CORS preflight, so it cannot drive a gateway on localhost.
        let content_type = session.content_type();
        let post = |allowed: &str| {
            if method != http::Method::POST {
                return Err(ApiError::method_not_allowed(
                    method.as_str(),
                    &full,
                    allowed,
                ));
            }
            if !is_json(content_type.as_deref()) {
                return Err(ApiError::unsupported_media_type(content_type.as_deref()));
            }
            Ok(())
        };
        let pools: Vec<&Arc<Pool>> = route_pools.iter().map(|&i| &self.pools[i]).collect();
        match rest {
            "/models" => {
                if method != http::Method::GET {
                    return Err(ApiError::method_not_allowed(method.as_str(), &full, "GET"));
                }
                let list = ModelList {
                    object: "list",
                    data: models(&pools),
                };
                let body = serde_json::to_vec(&list).expect("model list serializes");
                write_json(session, body, request_id).await
            }
            m if m.starts_with("/models/") => {
                let id = &m["/models/".len()..];
                match models(&pools).into_iter().find(|x| x.id == id) {
                    Some(model) => {
                        let body = serde_json::to_vec(&model).expect("model serializes");
                        write_json(session, body, request_id).await
                    }
                    None => Err(ApiError::model_not_found(id, &model_names(&pools))),
                }
            }
            "/chat/completions" => {
                post("POST")?;
                let body = read_body(session, max_body, self.body_stall).await?;
                let req: ChatCompletionRequest = parse(&body)?;
                outcome.model = req.model.clone();
                req.validate()?;
                let (pool, _slot) =
                    find_pool(&pools, &req.model, &self.metrics, |l| req.check_input(l))?;
                let messages = req
                    .messages
                    .iter()
                    .map(|m| pb::ChatMessage {
                        role: m.template_role().to_string(),
                        content: m.text(),
                    })
                    .collect();
                let bytes = body.len() as u64;
                let input = pb::generate_request::Input::Chat(pb::ChatInput { messages });
                let generate = generate_request(
                    &req.model,
                    request_id,
                    input,
                    &req.sampling,
                    req.max_tokens(),
                );
                self.generate(
                    session,
                    pool,
                    generate,
                    &req.sampling,
                    Shape::Chat,
                    request_id,
                    started,
                    bytes,
                    outcome,
                )
                .await
            }
            "/completions" => {
                post("POST")?;
                let body = read_body(session, max_body, self.body_stall).await?;
                let req: CompletionRequest = parse(&body)?;
                outcome.model = req.model.clone();
                req.validate()?;
                let (pool, _slot) =
                    find_pool(&pools, &req.model, &self.metrics, |l| req.check_input(l))?;
                let input = match req.prompt.clone() {
                    Prompt::Text(t) => pb::generate_request::Input::Prompt(t),
                    Prompt::Texts(mut v) => pb::generate_request::Input::Prompt(v.remove(0)),
                    Prompt::Tokens(ids) => {
                        pb::generate_request::Input::TokenIds(pb::TokenIdsInput { ids })
                    }
                    Prompt::TokenLists(mut v) => {
                        pb::generate_request::Input::TokenIds(pb::TokenIdsInput {
                            ids: v.remove(0),
                        })
                    }
                };
                let bytes = body.len() as u64;
                let generate = generate_request(
                    &req.model,
                    request_id,
                    input,
                    &req.sampling,
                    req.sampling.max_tokens,
                );
                self.generate(
                    session,
                    pool,
                    generate,
                    &req.sampling,
                    Shape::Completion,
                    request_id,
                    started,
                    bytes,
                    outcome,
                )
                .await
            }
            "/embeddings" => {
                post("POST")?;
                let body = read_body(session, max_body, self.body_stall).await?;
                let req: EmbeddingRequest = parse(&body)?;
                outcome.model = req.model.clone();
                req.validate()?;
                let (pool, _slot) =
                    find_pool(&pools, &req.model, &self.metrics, |l| req.check_input(l))?;
                self.embed(session, pool, req, request_id, outcome).await
            }
            _ => Err(ApiError::unknown_url(method.as_str(), &full)),
        }
    }

    /// The next backend to try for `model` (not one in `tried`), counted as a
    /// retry when it is not the first; or the answer when none is left: the last
    /// failure if there was one, else 429 (all saturated) or 503 (none healthy).
    fn next_backend(
        &self,
        pool: &Pool,
        model: &str,
        tried: &mut Vec<std::net::SocketAddr>,
        last: &mut Option<ApiError>,
        outcome: &mut Outcome,
    ) -> Result<Arc<InferenceBackend>, ApiError> {
        let name = &pool.config.name;
        let backend = pool.pick(model, tried).map_err(|why| {
            last.take().unwrap_or_else(|| match why {
                NoPick::Saturated => {
                    ApiError::saturated(name, "every queue is full", DEFAULT_RETRY_AFTER_SECONDS)
                }
                NoPick::NoneHealthy => ApiError::no_backend(name),
            })
        })?;
        if !tried.is_empty() {
            self.metrics
                .inference_retries
                .with_label_values(&[name])
                .inc();
        }
        tried.push(backend.addr);
        outcome.attempts = tried.len();
        outcome.backend = Some(backend.label.clone());
        Ok(backend)
    }

    /// Pick a backend not in `tried` and open the stream, moving on to another
    /// backend when one fails before its first event, while `retries` allow.
    #[allow(clippy::too_many_arguments)]
    async fn open(
        &self,
        pool: &Pool,
        req: &pb::GenerateRequest,
        deadline: Instant,
        prompt_param: &str,
        estimate: u64,
        tried: &mut Vec<std::net::SocketAddr>,
        mut last: Option<ApiError>,
        outcome: &mut Outcome,
    ) -> Result<Opened, ApiError> {
        let name = &pool.config.name;
        while tried.len() <= pool.config.retries as usize {
            let backend = self.next_backend(pool, &req.model, tried, &mut last, outcome)?;
            let guard = backend.begin(estimate);
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(remaining(deadline));
            let mut client = backend.client();
            let call = async move {
                let mut stream = client.generate(request).await?.into_inner();
                let first = stream.message().await?;
                Ok::<_, tonic::Status>((stream, first))
            };
            match tokio::time::timeout_at(deadline.into(), call).await {
                Err(_) => return Err(ApiError::timeout(name, pool.config.request_timeout)),
                Ok(Ok((stream, Some(first)))) => {
                    return Ok(Opened {
                        backend,
                        guard,
                        stream,
                        first,
                    })
                }
                Ok(Ok((_, None))) => {
                    backend.eject("stream ended before any event");
                    tracing::warn!(pool = %name, backend = %backend.label, "inference stream ended before any event");
                    last = Some(ApiError::upstream());
                }
                Ok(Err(status)) => {
                    let err = ApiError::from_status(&status, prompt_param, name, &req.request_id);
                    if !ApiError::retryable(status.code()) {
                        return Err(err);
                    }
                    if status.code() == tonic::Code::ResourceExhausted {
                        backend.mark_saturated(&req.model);
                    } else {
                        backend.eject(status.message());
                    }
                    tracing::warn!(pool = %name, backend = %backend.label, code = ?status.code(), error = %status.message(), "inference call failed before the first token");
                    last = Some(err);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn generate(
        &self,
        session: &mut dyn Downstream,
        pool: &Pool,
        req: pb::GenerateRequest,
        sampling: &Sampling,
        shape: Shape,
        request_id: &str,
        started: Instant,
        body_bytes: u64,
        outcome: &mut Outcome,
    ) -> Result<(), ApiError> {
        let deadline = started + pool.config.request_timeout;
        let prompt_param = if shape == Shape::Chat {
            "messages"
        } else {
            "prompt"
        };
        let max_tokens = req.sampling.as_ref().map_or(0, |s| s.max_tokens);
        let estimate = body_bytes / 4
            + if max_tokens == 0 {
                ASSUMED_MAX_TOKENS
            } else {
                u64::from(max_tokens)
            };
        let model = req.model.clone();
        let answer = Answer::new(shape, request_id, &model, sampling.include_usage());
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let opened = {
                let open = self.open(
                    pool,
                    &req,
                    deadline,
                    prompt_param,
                    estimate,
                    &mut tried,
                    last.take(),
                    outcome,
                );
                let idle = session.gone();
                tokio::select! {
                    r = open => Some(r),
                    _ = idle => None,
                }
            };
            let Some(opened) = opened else {
                // The client left while we waited for the first token: dropping the
                // stream cancels it on the backend.
                self.count(&model, outcome, "499");
                return Ok(());
            };
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    self.count(&model, outcome, &e.status.to_string());
                    return Err(e);
                }
            };
            let backend = opened.backend.clone();
            match self
                .consume(
                    session,
                    opened,
                    &answer,
                    sampling.stream,
                    started,
                    deadline,
                    pool,
                    prompt_param,
                )
                .await
            {
                Consumed::ClientGone => {
                    self.count(&model, outcome, "499");
                    return Ok(());
                }
                Consumed::Done => {
                    self.count(&model, outcome, "200");
                    return Ok(());
                }
                Consumed::Failed { error, retryable } => {
                    // Nothing has reached a non-streaming client yet: another
                    // backend may still answer it in full.
                    if retryable && !sampling.stream && tried.len() <= pool.config.retries as usize
                    {
                        backend.eject(&error.message);
                        tracing::warn!(request_id, backend = %backend.label, error = %error.message, "inference stream broke before the answer was sent; retrying on another backend");
                        last = Some(error);
                        continue;
                    }
                    self.count(&model, outcome, &error.status.to_string());
                    if !sampling.stream {
                        return Err(error);
                    }
                    // Headers are out: the error travels as an event, which the
                    // openai clients raise as an APIError.
                    tracing::warn!(request_id, backend = %backend.label, error = %error.message, "inference stream failed after the first token");
                    let mut tail = b"data: ".to_vec();
                    tail.extend_from_slice(&error.body());
                    tail.extend_from_slice(b"\n\n");
                    let _ = session.write_body(Some(Bytes::from(tail)), true).await;
                    return Ok(());
                }
            }
        }
    }

    /// Relay one opened stream to the client (as events, or gathered into one
    /// answer), until it finishes, fails, or the client leaves.
    #[allow(clippy::too_many_arguments)]
    async fn consume(
        &self,
        session: &mut dyn Downstream,
        opened: Opened,
        answer: &Answer,
        streaming: bool,
        started: Instant,
        deadline: Instant,
        pool: &Pool,
        prompt_param: &str,
    ) -> Consumed {
        let Opened {
            backend,
            mut guard,
            mut stream,
            first,
        } = opened;
        let labels = [self.model_label(&answer.model), backend.label.as_str()];
        let ttft = self.metrics.inference_ttft.with_label_values(&labels);
        let itl = self
            .metrics
            .inference_inter_token
            .with_label_values(&labels);
        let fail = |error: ApiError, retryable: bool| Consumed::Failed { error, retryable };
        if streaming && !session.header_written() {
            let mut resp = ResponseHeader::build(200, Some(5)).expect("valid status");
            let headers = [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("x-request-id", answer.request_id.as_str()),
            ];
            for (k, v) in headers {
                resp.insert_header(k, v).expect("valid header");
            }
            if session.write_header(Box::new(resp)).await.is_err() {
                return Consumed::ClientGone;
            }
        }
        let mut text = String::new();
        let mut first_delta = true;
        let mut last_token = Instant::now();
        let mut pending = Some(first);
        // Events already waiting are gathered into one write; the buffer goes out
        // as soon as the next event is not ready yet.
        let mut out = BytesMut::new();
        // A failure: what was gathered goes out first, then the caller reports it.
        macro_rules! bail {
            ($error:expr, $retryable:expr $(,)?) => {{
                if !out.is_empty() {
                    let _ = session.write_body(Some(out.split().freeze()), false).await;
                }
                return fail($error, $retryable);
            }};
        }
        let (finish, usage) = loop {
            let ready = match pending.take() {
                Some(ev) => Some(Next::Event(Ok(Some(ev)))),
                None if !out.is_empty() => match stream.message().now_or_never() {
                    Some(ev) => Some(Next::Event(ev)),
                    None => {
                        if session
                            .write_body(Some(out.split().freeze()), false)
                            .await
                            .is_err()
                        {
                            return Consumed::ClientGone;
                        }
                        None
                    }
                },
                None => None,
            };
            let next = match ready {
                Some(next) => next,
                None => {
                    let idle = session.gone();
                    tokio::select! {
                        ev = stream.message() => Next::Event(ev),
                        _ = idle => Next::ClientGone,
                        _ = tokio::time::sleep_until(deadline.into()) => Next::Deadline,
                    }
                }
            };
            let event = match next {
                Next::ClientGone => return Consumed::ClientGone,
                Next::Deadline => {
                    bail!(
                        ApiError::timeout(&pool.config.name, pool.config.request_timeout),
                        false,
                    )
                }
                Next::Event(Err(status)) => {
                    let retryable = ApiError::retryable(status.code());
                    bail!(
                        ApiError::from_status(
                            &status,
                            prompt_param,
                            &pool.config.name,
                            &answer.request_id,
                        ),
                        retryable,
                    );
                }
                Next::Event(Ok(None)) => {
                    tracing::warn!(request_id = %answer.request_id, backend = %backend.label, "inference stream ended before finishing");
                    bail!(ApiError::upstream(), true);
                }
                Next::Event(Ok(Some(pb::GenerateResponse { event }))) => event,
            };
            match event {
                None => continue,
                Some(Event::Delta(delta)) => {
                    let now = Instant::now();
                    if first_delta {
                        ttft.observe(now.duration_since(started).as_secs_f64());
                    } else {
                        itl.observe(now.duration_since(last_token).as_secs_f64());
                    }
                    last_token = now;
                    guard.token_done(delta.token_ids.len() as u64);
                    if streaming && first_delta {
                        out.extend_from_slice(&answer.chunk(Some(delta.text), true, None));
                    } else if streaming {
                        answer.push_delta(&mut out, &delta.text);
                    } else {
                        text.push_str(&delta.text);
                    }
                    first_delta = false;
                }
                Some(Event::Finished(f)) => {
                    let usage = f.usage.unwrap_or_default();
                    let usage = Usage::new(usage.prompt_tokens, usage.completion_tokens);
                    self.metrics
                        .inference_queue
                        .with_label_values(&labels)
                        .observe(f.queue_time_us as f64 / 1e6);
                    let tokens = &self.metrics.inference_tokens;
                    tokens
                        .with_label_values(&[labels[0], labels[1], "in"])
                        .inc_by(u64::from(usage.prompt_tokens));
                    tokens
                        .with_label_values(&[labels[0], labels[1], "out"])
                        .inc_by(u64::from(usage.completion_tokens));
                    match finish_reason(f.reason) {
                        Ok(r) => break (r, usage),
                        Err((e, retryable)) => bail!(e, retryable),
                    }
                }
            }
        };
        drop(guard);
        drop(stream);
        if streaming {
            let mut tail = out;
            tail.extend_from_slice(&answer.chunk(None, first_delta, Some(finish)));
            if answer.include_usage {
                tail.extend_from_slice(&answer.usage_chunk(usage));
            }
            tail.extend_from_slice(b"data: [DONE]\n\n");
            let _ = session.write_body(Some(tail.freeze()), true).await;
        } else {
            let body = answer.full(text, finish, usage);
            let _ = write_json(session, body, &answer.request_id).await;
        }
        Consumed::Done
    }

    async fn embed(
        &self,
        session: &mut dyn Downstream,
        pool: &Pool,
        req: EmbeddingRequest,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<(), ApiError> {
        let name = &pool.config.name;
        let deadline = Instant::now() + pool.config.request_timeout;
        let inputs = req.inputs();
        let mut tried = Vec::new();
        let mut last = None;
        let mut answer = None;
        while tried.len() <= pool.config.retries as usize {
            let backend = match self.next_backend(pool, &req.model, &mut tried, &mut last, outcome)
            {
                Ok(b) => b,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            };
            let _guard = backend.begin(inputs.iter().map(|s| s.len() as u64 / 4).sum());
            let mut request = tonic::Request::new(pb::EmbedRequest {
                model: req.model.clone(),
                inputs: inputs.clone(),
            });
            request.set_timeout(remaining(deadline));
            match tokio::time::timeout_at(deadline.into(), backend.client().embed(request)).await {
                Err(_) => {
                    last = Some(ApiError::timeout(name, pool.config.request_timeout));
                    break;
                }
                Ok(Ok(r)) => {
                    answer = Some(r.into_inner());
                    break;
                }
                Ok(Err(status)) => {
                    let err = ApiError::from_status(&status, "input", name, request_id);
                    if !ApiError::retryable(status.code()) {
                        last = Some(err);
                        break;
                    }
                    backend.eject(status.message());
                    last = Some(err);
                }
            }
        }
        let backend = outcome.backend.clone().unwrap_or_else(|| "none".into());
        let Some(r) = answer else {
            let err = last.expect("an attempt or a reason");
            self.count(&req.model, outcome, &err.status.to_string());
            return Err(err);
        };
        self.metrics
            .inference_tokens
            .with_label_values(&[self.model_label(&req.model), &backend, "in"])
            .inc_by(u64::from(r.prompt_tokens));
        self.count(&req.model, outcome, "200");
        let data = r
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| Embedding {
                object: "embedding",
                index: i as u32,
                embedding: match req.encoding_format {
                    EncodingFormat::Float => EmbeddingVector::Float(e.values),
                    EncodingFormat::Base64 => {
                        use base64::Engine;
                        let bytes: Vec<u8> =
                            e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                        EmbeddingVector::Base64(
                            base64::engine::general_purpose::STANDARD.encode(bytes),
                        )
                    }
                },
            })
            .collect();
        let list = EmbeddingList {
            object: "list",
            data,
            model: req.model.clone(),
            usage: EmbeddingUsage {
                prompt_tokens: r.prompt_tokens,
                total_tokens: r.prompt_tokens,
            },
        };
        write_json(
            session,
            serde_json::to_vec(&list).expect("serializes"),
            request_id,
        )
        .await
    }

    fn count(&self, model: &str, outcome: &mut Outcome, status: &str) {
        outcome.counted = true;
        let backend = outcome.backend.as_deref().unwrap_or("none");
        self.metrics
            .inference_requests
            .with_label_values(&[self.model_label(model), backend, status])
            .inc();
    }

    /// `model` as a metric label: a configured model's name, else
    /// [`UNKNOWN_MODEL_LABEL`] (the client's string never becomes a series).
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if self.models.contains(model) {
            model
        } else {
            UNKNOWN_MODEL_LABEL
        }
    }
}

impl ChatMessage {
    fn template_role(&self) -> &'static str {
        self.role.template_name()
    }
}

fn generate_request(
    model: &str,
    request_id: &str,
    input: pb::generate_request::Input,
    s: &Sampling,
    max_tokens: Option<u32>,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.to_string(),
        request_id: request_id.to_string(),
        input: Some(input),
        sampling: Some(pb::SamplingParams {
            max_tokens: max_tokens.unwrap_or(0),
            temperature: Some(s.temperature.unwrap_or(DEFAULT_TEMPERATURE)),
            top_p: s.top_p,
            top_k: s.top_k.unwrap_or(0),
            seed: s.seed.map(|v| v as u64),
            stop: s.stop_list(),
            repetition_penalty: s.repetition_penalty,
        }),
    }
}

fn models(pools: &[&Arc<Pool>]) -> Vec<Model> {
    pools
        .iter()
        .flat_map(|p| {
            p.config.models.iter().map(|m| Model {
                id: m.clone(),
                object: "model",
                created: 0,
                owned_by: p.config.name.clone(),
            })
        })
        .collect()
}

fn model_names(pools: &[&Arc<Pool>]) -> Vec<String> {
    pools
        .iter()
        .flat_map(|p| p.config.models.iter().cloned())
        .collect()
}

/// The pool serving `model`, with a slot counted against its `max_inflight`.
/// The pool serving `model`, once the request passed its input limits
/// (`check`), with a slot of its `max_inflight`.
fn find_pool<'a>(
    pools: &[&'a Arc<Pool>],
    model: &str,
    metrics: &Metrics,
    check: impl FnOnce(&gantry_config::InputLimits) -> Result<(), TooLarge>,
) -> Result<(&'a Arc<Pool>, PoolSlot), ApiError> {
    let pool = pools
        .iter()
        .find(|p| p.config.models.iter().any(|m| m == model))
        .copied()
        .ok_or_else(|| ApiError::model_not_found(model, &model_names(pools)))?;
    if let Err(too_large) = check(&pool.config.input) {
        metrics
            .limit_rejections
            .with_label_values(&[too_large.limit])
            .inc();
        return Err(too_large.error);
    }
    match pool.admit() {
        Some(slot) => Ok((pool, slot)),
        None => {
            metrics
                .limit_rejections
                .with_label_values(&["inference_inflight"])
                .inc();
            Err(ApiError::saturated(
                &pool.config.name,
                &format!(
                    "max_inflight = {} requests in flight from this gateway",
                    pool.config.max_inflight
                ),
                DEFAULT_RETRY_AFTER_SECONDS,
            ))
        }
    }
}

async fn write_whole(
    session: &mut dyn Downstream,
    status: u16,
    content_type: &str,
    body: Bytes,
    request_id: &str,
    retry_after: Option<u32>,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header("x-request-id", request_id)?;
    if let Some(s) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    session.write_header(Box::new(resp)).await?;
    session.write_body(Some(body), true).await
}

async fn write_json(
    session: &mut dyn Downstream,
    body: Vec<u8>,
    request_id: &str,
) -> Result<(), ApiError> {
    // A client gone before its answer is written has nobody to tell.
    let _ = write_whole(
        session,
        200,
        "application/json",
        Bytes::from(body),
        request_id,
        None,
    )
    .await;
    Ok(())
}

async fn write_error(
    session: &mut dyn Downstream,
    err: &ApiError,
    request_id: &str,
) -> pingora::Result<()> {
    write_whole(
        session,
        err.status,
        "application/json",
        Bytes::from(err.body()),
        request_id,
        err.retry_after,
    )
    .await
}
