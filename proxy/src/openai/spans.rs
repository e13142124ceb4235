//! The spans of an inference request, as the OpenTelemetry GenAI semantic
//! conventions name them: one client span per backend attempt, called
//! `{gen_ai.operation.name} {gen_ai.request.model}`, a child of the
//! request's server span; the backend's own spans (queue, prefill, decode)
//! continue from it through the call's `traceparent` metadata.
//!
//! Tracing off, every value here is `None` and nothing is built.

use crate::upstream::inference::InferenceBackend;
use gantry_proto as pb;
use gantry_telemetry::traces::{
    inject_grpc, Array, KeyValue, OtelSpan as _, Span, SpanBuilder, SpanContext, SpanKind, Status,
    Traces, Value,
};
use std::time::Duration;

/// `gen_ai.provider.name` of Gantry's own backends (not one of the
/// conventions' well-known providers).
const PROVIDER: &str = "gantry";

/// Where a request's attempt spans go: its tracer and its server span.
#[derive(Clone, Copy)]
pub struct Trace<'a> {
    /// The process's tracer.
    pub traces: &'a Traces,
    /// The request's server span.
    pub parent: &'a SpanContext,
}

/// What every attempt of one request carries: the request's attributes.
pub(super) struct AttemptSpans<'a> {
    trace: Trace<'a>,
    name: String,
    attributes: Vec<KeyValue>,
}

impl<'a> AttemptSpans<'a> {
    /// Attempt spans of a generation (`operation`: `chat` or
    /// `text_completion`) asking `request`.
    pub fn generation(
        trace: Option<Trace<'a>>,
        operation: &'static str,
        request: &pb::GenerateRequest,
    ) -> Option<Self> {
        let mut spans = Self::new(trace?, operation, &request.model);
        if let Some(s) = &request.sampling {
            let a = &mut spans.attributes;
            if s.max_tokens > 0 {
                a.push(KeyValue::new(
                    "gen_ai.request.max_tokens",
                    i64::from(s.max_tokens),
                ));
            }
            if let Some(t) = s.temperature {
                a.push(KeyValue::new("gen_ai.request.temperature", f64::from(t)));
            }
            if let Some(p) = s.top_p {
                a.push(KeyValue::new("gen_ai.request.top_p", f64::from(p)));
            }
        }
        Some(spans)
    }

    /// Attempt spans of an embeddings request for `model`.
    pub fn embeddings(trace: Option<Trace<'a>>, model: &str) -> Option<Self> {
        Some(Self::new(trace?, "embeddings", model))
    }

    fn new(trace: Trace<'a>, operation: &'static str, model: &str) -> Self {
        AttemptSpans {
            trace,
            name: format!("{operation} {model}"),
            attributes: vec![
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("gen_ai.provider.name", PROVIDER),
                KeyValue::new("gen_ai.request.model", model.to_string()),
            ],
        }
    }

    /// The span of an attempt on `backend`, started.
    pub fn start(&self, backend: &InferenceBackend) -> AttemptSpan {
        let mut attributes = self.attributes.clone();
        attributes.push(KeyValue::new(
            "server.address",
            backend.addr.ip().to_string(),
        ));
        attributes.push(KeyValue::new("server.port", i64::from(backend.addr.port())));
        let builder = SpanBuilder::from_name(self.name.clone())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        AttemptSpan(Some(
            self.trace.traces.start(builder, Some(self.trace.parent)),
        ))
    }
}

/// One backend attempt's span (`None` inside when tracing is off); ended
/// by [`Self::failed`] or [`Self::answered`], or when dropped.
#[derive(Default)]
pub(super) struct AttemptSpan(Option<Span>);

impl AttemptSpan {
    /// A backend call carrying this attempt's trace context, timed out
    /// after `left`.
    pub fn request<M>(
        context: Option<&SpanContext>,
        message: M,
        left: Duration,
    ) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(left);
        if let Some(span) = context {
            inject_grpc(span, request.metadata_mut());
        }
        request
    }

    /// Its context, for the backend call.
    pub fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|s| s.span_context().clone())
    }

    /// The attempt failed (`error_type`: a gRPC code's name, `timeout`,
    /// `stream_ended`, or the HTTP status it became).
    pub fn failed(&mut self, error_type: impl std::fmt::Display) {
        if let Some(mut span) = self.0.take() {
            let error_type = error_type.to_string();
            span.set_attribute(KeyValue::new("error.type", error_type.clone()));
            span.set_status(Status::error(error_type));
            span.end();
        }
    }

    /// The answer's attributes, recorded; the span ends with the attempt.
    pub fn answered(&mut self, answer: Answered<'_>) {
        let Some(span) = self.0.as_mut() else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "gen_ai.response.model",
            answer.model.to_string(),
        ));
        span.set_attribute(KeyValue::new(
            "gen_ai.usage.input_tokens",
            i64::from(answer.input_tokens),
        ));
        if let Some(id) = answer.id {
            span.set_attribute(KeyValue::new("gen_ai.response.id", id.to_string()));
        }
        if let Some(out) = answer.output_tokens {
            span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", i64::from(out)));
        }
        if let Some(reason) = answer.finish_reason {
            let reasons = Array::String(vec![reason.into()]);
            span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(reasons),
            ));
        }
    }

    /// End it (answered, or given up on without a failure of its own).
    pub fn end(&mut self) {
        if let Some(mut span) = self.0.take() {
            span.end();
        }
    }
}

/// What an answer's span records.
pub(super) struct Answered<'a> {
    pub model: &'a str,
    pub id: Option<&'a str>,
    pub input_tokens: u32,
    pub output_tokens: Option<u32>,
    pub finish_reason: Option<&'static str>,
}
