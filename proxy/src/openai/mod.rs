//! The OpenAI-compatible API at the edge, translated to `gantry.inference.v1`
//! gRPC and sent to load-aware inference pools. See `docs/INFERENCE-GATEWAY.md`.
//!
//! A route with `inference_pools` is served by the gateway's `request_filter`
//! (gateway/dispatch.rs): the endpoint table ([`Endpoint`]) names the endpoint
//! or the error, the gateway's one body reader reads the body, and
//! [`Api::handle`] returns the answer as a value ([`Reply`]): a whole body, or
//! a [`Generation`] of server-sent events the gateway writes as they arrive.
//! A plugin's in-process call ([`Api::call`]) collects the same value.
//!
//! | file          | concern                                                     |
//! |---------------|-------------------------------------------------------------|
//! | `endpoint.rs` | method, path and content type to an endpoint                |
//! | `request.rs`  | parsing and checking a body (the fuzz target's entry point) |
//! | `schema.rs`   | the API's types, validation, OpenAPI schemas                |
//! | `generate.rs` | chat and text completions: open, relay, gather              |
//! | `embed.rs`    | embeddings                                                  |
//! | `attempt.rs`  | attempts on a pool's backends, shared by both               |
//! | `sse.rs`      | the answer's encoding, whole or as events                   |
//! | `spans.rs`    | attempt spans (OpenTelemetry GenAI conventions)             |
//! | `whole.rs`    | a whole answer; a streamed one's headers                    |
//! | `error.rs`    | errors, OpenAI-shaped, and the gRPC status table            |
//! | `openapi.rs`  | the OpenAPI document and the docs page                      |

mod attempt;
mod embed;
pub mod endpoint;
pub mod error;
mod generate;
pub mod openapi;
pub mod request;
pub mod schema;
mod spans;
mod sse;
pub mod whole;

pub use endpoint::Endpoint;
pub use generate::Generation;
pub use request::{check_body, check_body_property};
pub use spans::Trace;
pub use whole::Whole;

use crate::metrics::{Denial, Metrics, Refusal};
use crate::tenants::limiter::{Denied, Reservation, Tokens};
use crate::tenants::Tenant;
use crate::upstream::inference::{InferencePool, PoolSlot};
use bytes::Bytes;
use error::{ApiError, DEFAULT_RETRY_AFTER_SECONDS};
use gantry_config::Config;
use gantry_proto as pb;
use generate::GenerateCall;
use request::parse;
use schema::*;
use sse::Shape;
use std::sync::Arc;
use std::time::Instant;

/// Every inference pool and the documents built from the API types.
pub struct Api {
    pools: Vec<Arc<InferencePool>>,
    /// Every model some pool serves: the closed set of `model` label values.
    models: std::collections::HashSet<String>,
    pub(crate) metrics: Arc<Metrics>,
    openapi_json: Bytes,
    docs: openapi::DocsPages,
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

/// What the API answers, as a value: a whole body, or a stream of
/// server-sent events. The gateway writes it to the client's session (and
/// drops it when the client leaves, which cancels the backend's work); a
/// plugin's in-process call collects it.
pub enum Reply<'a> {
    /// A whole body.
    Whole(Whole),
    /// `200 text/event-stream`: events as the backend generates them.
    Stream(Box<Generation<'a>>),
}

/// One API request, routed and its body read.
pub struct ApiCall<'a> {
    /// What it asks for.
    pub endpoint: Endpoint,
    /// Its body (empty for `GET`s).
    pub body: Bytes,
    /// The route's inference pools (indexes).
    pub pools: &'a [usize],
    /// The route's name (a metric label); empty for a plugin's call.
    pub route: &'a str,
    /// The tenant whose key let the request in, on a route with `auth = "keys"`:
    /// only its models exist for it.
    pub tenant: Option<&'a Tenant>,
    /// That key's hold on its limits: a generation reserves its output
    /// tokens in it before anything is sent to a backend.
    pub reservation: Option<&'a Arc<Reservation>>,
    /// The request id, carried to the backend and into the answer.
    pub request_id: &'a str,
    /// When the gateway received it (time to first token counts from here).
    pub started: Instant,
    /// Its place in a trace, when traced: each backend attempt is a span there.
    pub trace: Option<Trace<'a>>,
    /// The backend a route's plugin asked for (`inference.backend`), tried first.
    pub preferred_backend: Option<String>,
}

impl Api {
    /// Start every inference pool's watchers on `runtime` and build the OpenAPI
    /// document for the routes that serve the API. A pool configured exactly
    /// as one of `previous`'s (a reload) is that pool, with its backends,
    /// their load and its prefix index.
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        previous: Option<&Api>,
    ) -> Self {
        let kept = |p: &gantry_config::InferencePool| {
            previous?.pools.iter().find(|old| old.config == *p).cloned()
        };
        let pools = config
            .inference_pools
            .iter()
            .map(|p| {
                kept(p).unwrap_or_else(|| {
                    let hosts = config.hosts_file.clone();
                    InferencePool::start(p.clone(), hosts, metrics.clone(), runtime.clone())
                })
            })
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
        let models = config
            .inference_pools
            .iter()
            .flat_map(|p| p.models.iter().cloned())
            .collect();
        Api {
            pools,
            models,
            metrics,
            openapi_json,
            docs: Default::default(),
        }
    }

    /// The pools, by config index.
    pub fn pools(&self) -> &[Arc<InferencePool>] {
        &self.pools
    }

    /// `/openapi.json` or `/docs`.
    pub fn builtin(&self, which: gantry_config::Builtin, prefix: &str, path: &str) -> Whole {
        let whole = |status, content_type, body| Whole {
            status,
            content_type,
            body,
            retry_after: None,
        };
        let tail = path
            .strip_prefix(prefix.trim_end_matches('/'))
            .unwrap_or("")
            .trim_start_matches('/');
        match which {
            gantry_config::Builtin::Openapi => {
                whole(200, "application/json", self.openapi_json.clone())
            }
            gantry_config::Builtin::Docs if tail == openapi::DOCS_DOCUMENT => {
                whole(200, "application/json", self.openapi_json.clone())
            }
            gantry_config::Builtin::Docs => match self.docs.page(prefix, tail) {
                Some(page) => whole(200, page.content_type, page.body),
                None => whole(
                    404,
                    "application/json",
                    Bytes::from_static(br#"{"error": {"message": "no such page of the API reference", "type": "invalid_request_error", "param": null, "code": "not_found"}}"#),
                ),
            },
        }
    }

    /// Serve one API request. Every answer, error or not, is a [`Reply`];
    /// the outcome (model, backend, attempts) is recorded in `outcome` and
    /// counted in `gantry_inference_requests_total` (a stream counts itself
    /// when it ends).
    pub async fn handle<'a>(&'a self, call: ApiCall<'_>, outcome: &mut Outcome) -> Reply<'a> {
        match self.serve(call, outcome).await {
            Ok(reply) => reply,
            Err(err) => Reply::Whole(self.refuse(&err, outcome)),
        }
    }

    /// The answer to a request refused before or while it was served,
    /// counted unless it was already.
    pub fn refuse(&self, err: &ApiError, outcome: &mut Outcome) -> Whole {
        if err.status == 413 {
            self.metrics.refused(Refusal::BodyBytes);
        }
        if !outcome.counted {
            let model = outcome.model.clone();
            self.count(&model, outcome, &err.status.to_string());
        }
        Whole::error(err)
    }

    /// The client left before the answer started: counted as 499 (dropping
    /// the handler's future dropped any backend stream, cancelling it).
    pub fn client_left(&self, outcome: &mut Outcome) {
        if !outcome.counted {
            let model = outcome.model.clone();
            self.count(&model, outcome, "499");
        }
    }

    /// The index of the inference pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.config.name == name)
    }

    /// Serve one request of the API in process, for a plugin's
    /// `proxy_http_call` to inference pool `pool`: the same paths as on a route
    /// with prefix `/v1` (or none), the same validation and errors, the whole
    /// answer returned as (status, headers, body); a stream is gathered.
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
        let mut outcome = Outcome::default();
        let reply = match Endpoint::find(&method, path, prefix, content_type.as_deref()) {
            Err(err) => Reply::Whole(self.refuse(&err, &mut outcome)),
            Ok(endpoint) => {
                let call = ApiCall {
                    endpoint,
                    body,
                    pools: &[pool],
                    route: "",
                    tenant: None,
                    reservation: None,
                    request_id,
                    started: Instant::now(),
                    trace: None,
                    preferred_backend: None,
                };
                self.handle(call, &mut outcome).await
            }
        };
        let header = |k: &str, v: &str| (k.to_string(), v.to_string());
        match reply {
            Reply::Whole(whole) => {
                let mut headers = vec![
                    header("content-type", whole.content_type),
                    header("content-length", &whole.body.len().to_string()),
                    header("x-request-id", request_id),
                ];
                if let Some(s) = whole.retry_after {
                    headers.push(header("retry-after", &s.to_string()));
                }
                (whole.status, headers, Vec::from(whole.body))
            }
            Reply::Stream(mut events) => {
                let mut headers: Vec<_> = whole::STREAM_HEADERS
                    .iter()
                    .map(|(k, v)| header(k, v))
                    .collect();
                headers.push(header("x-request-id", request_id));
                let mut body = Vec::new();
                while let Some(chunk) = events.next().await {
                    body.extend_from_slice(&chunk);
                }
                (200, headers, body)
            }
        }
    }

    /// The endpoint's answer, or the error to answer.
    async fn serve<'a>(
        &'a self,
        call: ApiCall<'_>,
        outcome: &mut Outcome,
    ) -> Result<Reply<'a>, ApiError> {
        let pools: Vec<&Arc<InferencePool>> = call.pools.iter().map(|&i| &self.pools[i]).collect();
        let scope = Scope {
            pools: &pools,
            tenant: call.tenant,
        };
        let body = &call.body[..];
        match &call.endpoint {
            Endpoint::ListModels => {
                let list = ModelList {
                    object: "list",
                    data: scope.models(),
                };
                let body = serde_json::to_vec(&list).expect("model list serializes");
                Ok(Reply::Whole(Whole::json(body)))
            }
            Endpoint::GetModel(id) => match scope.models().into_iter().find(|x| &x.id == id) {
                Some(model) => {
                    let body = serde_json::to_vec(&model).expect("model serializes");
                    Ok(Reply::Whole(Whole::json(body)))
                }
                None => Err(self.not_found(&scope, id, call.route)),
            },
            Endpoint::ChatCompletions => {
                let (req, pool, _slot) =
                    self.admit::<ChatCompletionRequest>(body, &scope, call.route, outcome)?;
                let request = req.generate_request(call.request_id);
                self.generation(&call, pool, request, &req.sampling, Shape::Chat, outcome)
                    .await
            }
            Endpoint::Completions => {
                let (req, pool, _slot) =
                    self.admit::<CompletionRequest>(body, &scope, call.route, outcome)?;
                let request = req.generate_request(call.request_id);
                self.generation(
                    &call,
                    pool,
                    request,
                    &req.sampling,
                    Shape::Completion,
                    outcome,
                )
                .await
            }
            Endpoint::Embeddings => {
                let (req, pool, _slot) =
                    self.admit::<EmbeddingRequest>(body, &scope, call.route, outcome)?;
                if let Some(r) = call.reservation.filter(|r| r.limits(Tokens::Input)) {
                    // At most one token per byte (each piece covers at least
                    // one), plus the two each input is framed with.
                    let bound = req.inputs().iter().map(|t| t.len() as u64 + 2).sum();
                    self.reserve(&call, r, bound, 0).await?;
                }
                Ok(Reply::Whole(self.embed(pool, req, &call, outcome).await?))
            }
        }
    }

    /// A request body parsed and checked, the pool serving its model, and a
    /// slot of that pool's `max_inflight`; the model is noted for the outcome
    /// as soon as it is known.
    fn admit<'p, R: request::ApiBody>(
        &self,
        body: &[u8],
        scope: &Scope<'_, 'p>,
        route: &str,
        outcome: &mut Outcome,
    ) -> Result<(R, &'p Arc<InferencePool>, PoolSlot), ApiError> {
        let req: R = parse(body)?;
        outcome.model = req.model().to_string();
        req.validate()?;
        let pool = scope
            .pool_for(req.model())
            .ok_or_else(|| self.not_found(scope, req.model(), route))?;
        let slot = admit_to(pool, &self.metrics, |l| req.check_input(l))?;
        Ok((req, pool, slot))
    }

    /// Reserve, in its key's limits, the tokens `request` may use: its prompt,
    /// counted as the backends count it (the model's prompt format, fetched
    /// from a backend), and its `max_tokens` (else the most its model
    /// generates on any of the pool's backends; before any backend told, the
    /// backends' default cap, set as the request's `max_tokens` so that no
    /// backend can generate more).
    async fn reserve_tokens(
        &self,
        call: &ApiCall<'_>,
        pool: &InferencePool,
        request: &mut pb::GenerateRequest,
        prompt_ids: Option<&[u32]>,
    ) -> Result<(), ApiError> {
        let Some(reservation) = call.reservation else {
            return Ok(());
        };
        let mut output = 0;
        if reservation.limits(Tokens::Output) {
            let sampling = request.sampling.get_or_insert_with(Default::default);
            output = match (sampling.max_tokens, pool.max_tokens(&request.model)) {
                (0, Some(most)) => most,
                (0, None) => {
                    sampling.max_tokens = gantry_config::backend::DEFAULT_MAX_TOKENS;
                    sampling.max_tokens
                }
                (asked, _) => asked,
            };
        }
        let mut input = 0;
        if reservation.limits(Tokens::Input) {
            input = prompt_ids
                .map(|ids| ids.len() as u64)
                .ok_or_else(|| ApiError::uncountable(&pool.config.name))?;
        }
        self.reserve(call, reservation, input, output.into()).await
    }

    /// A generation on `pool`: its prompt encoded once if the key counts it
    /// or the pool routes by prefix, its tokens reserved, then generated.
    async fn generation<'a>(
        &'a self,
        call: &ApiCall<'_>,
        pool: &'a Arc<InferencePool>,
        mut request: pb::GenerateRequest,
        sampling: &Sampling,
        shape: Shape,
        outcome: &mut Outcome,
    ) -> Result<Reply<'a>, ApiError> {
        let counted = call.reservation.is_some_and(|r| r.limits(Tokens::Input));
        let prompt_ids = pool
            .prompt_ids(&request.model, request.input.as_ref(), counted)
            .await;
        self.reserve_tokens(call, pool, &mut request, prompt_ids.as_deref())
            .await?;
        let prefix = pool.prompt_blocks(prompt_ids.as_deref());
        let call = GenerateCall::new(call, pool, request, sampling, shape, prefix);
        self.generate(call, outcome).await
    }

    /// Reserve `input` and `output` tokens in `call`'s key, counting a refusal.
    async fn reserve(
        &self,
        call: &ApiCall<'_>,
        reservation: &Reservation,
        input: u64,
        output: u64,
    ) -> Result<(), ApiError> {
        reservation
            .reserve(input, output)
            .await
            .map_err(|denied| match denied {
                Denied::Limit(exceeded) => {
                    if let Some(t) = call.tenant {
                        self.metrics.key_rejected(&t.name, exceeded.label());
                    }
                    ApiError::rate_limited(exceeded)
                }
                Denied::StoreUnreachable => ApiError::key_store_unreachable(),
            })
    }

    /// 404 for a model the caller cannot see: absent, or (counted) not one
    /// of its key's models. The two answers are the same, as OpenAI's are.
    fn not_found(&self, scope: &Scope<'_, '_>, model: &str, route: &str) -> ApiError {
        if scope.tenant.is_some() && scope.pools.iter().any(|p| p.serves(model)) {
            self.metrics.auth_rejected(route, Denial::Model);
        }
        ApiError::model_not_found(model, &scope.model_names())
    }

    fn count(&self, model: &str, outcome: &mut Outcome, status: &str) {
        outcome.counted = true;
        let backend = outcome.backend.as_deref().unwrap_or("none");
        self.metrics
            .inference
            .requests
            .with_label_values(&[self.model_label(model), backend, status])
            .inc();
    }

    /// `model` as a metric label: a configured model's name, else
    /// [`UNKNOWN_MODEL_LABEL`] (the client's string never becomes a series).
    pub(crate) fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if self.models.contains(model) {
            model
        } else {
            UNKNOWN_MODEL_LABEL
        }
    }
}

impl ChatCompletionRequest {
    /// The backend's request for this chat: messages with their template roles.
    fn generate_request(&self, request_id: &str) -> pb::GenerateRequest {
        let messages = self
            .messages
            .iter()
            .map(|m| pb::ChatMessage {
                role: m.role.template_name().to_string(),
                content: m.text(),
            })
            .collect();
        let input = pb::generate_request::Input::Chat(pb::ChatInput { messages });
        generate_request(
            &self.model,
            request_id,
            input,
            &self.sampling,
            self.max_tokens(),
        )
    }
}

impl CompletionRequest {
    /// The backend's request for this completion: its (first) prompt, as text
    /// or token ids.
    fn generate_request(&self, request_id: &str) -> pb::GenerateRequest {
        use pb::generate_request::Input;
        let input = match &self.prompt {
            Prompt::Text(t) => Input::Prompt(t.clone()),
            Prompt::Texts(v) => Input::Prompt(v[0].clone()),
            Prompt::Tokens(ids) => Input::TokenIds(pb::TokenIdsInput { ids: ids.clone() }),
            Prompt::TokenLists(v) => Input::TokenIds(pb::TokenIdsInput { ids: v[0].clone() }),
        };
        let sampling = &self.sampling;
        generate_request(
            &self.model,
            request_id,
            input,
            sampling,
            sampling.max_tokens,
        )
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
            // Unset: the model's default (its backend's [models.sampling]).
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k.unwrap_or(0),
            seed: s.seed.map(|v| v as u64),
            stop: s.stop_list(),
            repetition_penalty: s.repetition_penalty,
        }),
    }
}

/// The models a request can see: its route's pools', narrowed to its key's.
struct Scope<'s, 'p> {
    pools: &'s [&'p Arc<InferencePool>],
    tenant: Option<&'s Tenant>,
}

impl<'p> Scope<'_, 'p> {
    fn visible(&self, model: &str) -> bool {
        self.tenant.is_none_or(|t| t.may_use(model))
    }

    fn models(&self) -> Vec<Model> {
        self.pools
            .iter()
            .flat_map(|p| {
                let visible = p.config.models.iter().filter(|m| self.visible(m));
                visible.map(|m| Model {
                    id: m.clone(),
                    object: "model",
                    created: 0,
                    owned_by: p.config.name.clone(),
                })
            })
            .collect()
    }

    fn model_names(&self) -> Vec<String> {
        self.models().into_iter().map(|m| m.id).collect()
    }

    /// The pool serving `model`, if the request may see it.
    fn pool_for(&self, model: &str) -> Option<&'p Arc<InferencePool>> {
        if !self.visible(model) {
            return None;
        }
        self.pools.iter().find(|p| p.serves(model)).copied()
    }
}

/// A slot of `pool`'s `max_inflight`, once the request passed its input
/// limits (`check`).
fn admit_to(
    pool: &Arc<InferencePool>,
    metrics: &Metrics,
    check: impl FnOnce(&gantry_config::InputLimits) -> Result<(), TooLarge>,
) -> Result<PoolSlot, ApiError> {
    if let Err(too_large) = check(&pool.config.input) {
        metrics.refused(too_large.limit);
        return Err(too_large.error);
    }
    match pool.admit() {
        Some(slot) => Ok(slot),
        None => {
            metrics.refused(Refusal::InferenceInflight);
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
