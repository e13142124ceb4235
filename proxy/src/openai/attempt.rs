//! Attempts of one request on an inference pool's backends, shared by
//! generation and embeddings: each attempt picks a backend not tried yet
//! (load-aware), counts a retry when it is not the first, and classifies a
//! failure: retryable ones eject the backend (or mark it saturated) and move
//! on while the pool's `retries` last; the others are the answer.

use super::error::{ApiError, DEFAULT_RETRY_AFTER_SECONDS};
use super::spans::{AttemptSpan, AttemptSpans};
use super::{Api, Outcome};
use crate::upstream::inference::{remaining, InferenceBackend, InferencePool, LoadGuard, NoPick};
use gantry_proto::inference_client::InferenceClient;
use gantry_telemetry::traces::SpanContext;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The attempts of one request on one pool.
pub(super) struct Attempts<'a> {
    api: &'a Api,
    pool: &'a InferencePool,
    model: &'a str,
    deadline: Instant,
    tried: Vec<SocketAddr>,
    /// The prompt's KV block names, for a prefix-aware pick (empty: by load).
    prefix: Vec<u64>,
    /// Why the last attempt failed.
    last: Option<ApiError>,
    /// Each attempt's span, when the request is traced.
    spans: Option<AttemptSpans<'a>>,
    /// The backend a plugin asked for (its `ip:port`), tried first.
    preferred: Option<String>,
}

/// What a successful call gave, with the backend that gave it and its load.
pub(super) struct Answered<T> {
    pub backend: Arc<InferenceBackend>,
    pub load: LoadGuard,
    pub value: T,
    /// The attempt's span, ended with the answer.
    pub span: AttemptSpan,
}

impl<'a> Attempts<'a> {
    /// Attempts of a request for `model` on `pool`, all within `deadline`.
    pub fn new(api: &'a Api, pool: &'a InferencePool, model: &'a str, deadline: Instant) -> Self {
        Attempts {
            api,
            pool,
            model,
            deadline,
            tried: Vec::new(),
            prefix: Vec::new(),
            last: None,
            spans: None,
            preferred: None,
        }
    }

    /// Try the backend `preferred` first, while it takes traffic and is not
    /// saturated (a routing plugin's choice).
    pub fn with_preferred(mut self, preferred: Option<String>) -> Self {
        self.preferred = preferred;
        self
    }

    /// Trace each attempt with a span of `spans`.
    pub fn with_spans(mut self, spans: Option<AttemptSpans<'a>>) -> Self {
        self.spans = spans;
        self
    }

    /// Pick by where the prompt's prefix is (`prefix`: its block names).
    pub fn with_prefix(mut self, prefix: Vec<u64>) -> Self {
        self.prefix = prefix;
        self
    }

    /// Whether the pool's retries allow another attempt.
    pub fn may_retry(&self) -> bool {
        self.tried.len() <= self.pool.config.retries as usize
    }

    /// Record a failure of the current backend found after its call returned
    /// (a stream that broke): it is ejected, and the error kept.
    pub fn broke(&mut self, backend: &InferenceBackend, error: ApiError) {
        backend.eject(&error.message);
        self.last = Some(error);
    }

    /// The next backend to try (not one tried already), counted as a retry
    /// when it is not the first; or the answer when none is left: the last
    /// failure if there was one, else 429 (all saturated) or 503 (none healthy).
    fn next_backend(&mut self, outcome: &mut Outcome) -> Result<Arc<InferenceBackend>, ApiError> {
        let name = &self.pool.config.name;
        let preferred = self
            .preferred
            .take()
            .and_then(|label| self.pool.preferred(&label, self.model, &self.tried));
        let picked = match preferred {
            Some(backend) => Ok(backend),
            None => self.pool.pick(self.model, &self.prefix, &self.tried),
        };
        let backend = picked.map_err(|why| {
            self.last.take().unwrap_or_else(|| match why {
                NoPick::Saturated => {
                    ApiError::saturated(name, "every queue is full", DEFAULT_RETRY_AFTER_SECONDS)
                }
                NoPick::NoneHealthy => ApiError::no_backend(name),
            })
        })?;
        if !self.tried.is_empty() {
            self.api
                .metrics
                .inference
                .retries
                .with_label_values(&[name])
                .inc();
        }
        self.tried.push(backend.addr);
        outcome.attempts = self.tried.len();
        outcome.backend = Some(backend.label.clone());
        Ok(backend)
    }

    /// Call backends in turn with `call` (given a client, the time left and
    /// the attempt's trace context, see [`AttemptSpan::request`])
    /// until one answers `Some`, carrying an estimated `load` of tokens. A
    /// `None` (a stream that ended before its first event) and a retryable
    /// status move on to another backend while retries last; `param` is the
    /// API parameter a backend's INVALID_ARGUMENT names when it names the
    /// input.
    pub async fn call<T, F, Fut>(
        &mut self,
        outcome: &mut Outcome,
        load: u64,
        param: &str,
        request_id: &str,
        mut call: F,
    ) -> Result<Answered<T>, ApiError>
    where
        F: FnMut(InferenceClient<Channel>, Duration, Option<SpanContext>) -> Fut,
        Fut: Future<Output = Result<Option<T>, tonic::Status>>,
    {
        let name = &self.pool.config.name;
        while self.may_retry() {
            let backend = self.next_backend(outcome)?;
            let guard = backend.begin(load);
            let mut span = match &self.spans {
                Some(spans) => spans.start(&backend),
                None => AttemptSpan::default(),
            };
            let attempt = call(backend.client(), remaining(self.deadline), span.context());
            match tokio::time::timeout_at(self.deadline.into(), attempt).await {
                Err(_) => {
                    span.failed("timeout");
                    return Err(ApiError::timeout(name, self.pool.config.request_timeout));
                }
                Ok(Ok(Some(value))) => {
                    return Ok(Answered {
                        backend,
                        load: guard,
                        value,
                        span,
                    })
                }
                Ok(Ok(None)) => {
                    span.failed("stream_ended");
                    backend.eject("stream ended before any event");
                    tracing::warn!(pool = %name, backend = %backend.label, "inference stream ended before any event");
                    self.last = Some(ApiError::upstream());
                }
                Ok(Err(status)) => {
                    span.failed(format_args!("{:?}", status.code()));
                    let err = ApiError::from_status(&status, param, name, request_id);
                    if !ApiError::retryable(status.code()) {
                        return Err(err);
                    }
                    if status.code() == tonic::Code::ResourceExhausted {
                        backend.mark_saturated(self.model);
                    } else {
                        backend.eject(status.message());
                    }
                    tracing::warn!(pool = %name, backend = %backend.label, code = ?status.code(), error = %status.message(), "inference call failed before the first token");
                    self.last = Some(err);
                }
            }
        }
        Err(self.last.take().expect("at least one attempt"))
    }
}
