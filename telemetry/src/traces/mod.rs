//! Traces: OpenTelemetry spans, exported over OTLP, continued across
//! processes by W3C trace context (`traceparent`, `tracestate`).
//!
//! The gateway and the backend each start one [`Traces`] from their
//! `[traces]` section ([`Traces::new`]) and make spans with [`Traces::start`]; what a span
//! means (its name and attributes) is theirs. Owned here: the export
//! (bounded, never waiting: [`export`]), sampling, and the propagation
//! formats ([`propagation`]).
//!
//! Tracing off is `Option<Traces>::None` in the callers: no span is built and
//! no header is parsed.

mod export;
mod propagation;

pub use export::SpanCounts;
/// The OpenTelemetry `Span` trait (bring it in scope as `OtelSpan as _`
/// to call [`Span`]'s methods).
pub use opentelemetry::trace::Span as OtelSpan;
pub use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceId,
};
pub use opentelemetry::{Array, KeyValue, Value};
pub use opentelemetry_sdk::trace::Span;
pub use propagation::{extract, extract_grpc, inject_grpc, traceparent};

use gantry_config::traces::{AcceptIncoming, Traces as Config};
use opentelemetry::trace::Tracer as _;
use opentelemetry::Context;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::Duration;

/// A process's tracer and its export.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    accept_incoming: AcceptIncoming,
    export_timeout: Duration,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Export spans as `config` says, on `runtime` (exports are its tasks,
    /// never a request's), counting what becomes of each span in `counts`.
    /// An unreachable receiver is not an error here: its spans are counted
    /// `failed` as exports fail.
    pub fn new(
        config: &Config,
        runtime: &tokio::runtime::Handle,
        counts: SpanCounts,
    ) -> Result<Self, String> {
        let processor = export::processor(config, runtime, counts)?;
        // A parent's decision is followed; a new trace is kept with the ratio.
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "gantry");
        Ok(Traces {
            provider,
            tracer,
            accept_incoming: config.accept_incoming,
            export_timeout: config.export_timeout,
        })
    }

    /// Whose incoming trace context a span may continue.
    pub fn accept_incoming(&self) -> AcceptIncoming {
        self.accept_incoming
    }

    /// Start the span `builder` describes, a child of `parent` (a remote
    /// one, or a local span's context), else the root of a new trace. A span
    /// the sampler drops still has a context to propagate (its trace id, and
    /// `sampled` unset), and costs no export.
    pub fn start(&self, builder: SpanBuilder, parent: Option<&SpanContext>) -> Span {
        let cx = match parent {
            Some(p) if p.is_valid() => Context::new().with_remote_span_context(p.clone()),
            _ => Context::new(),
        };
        self.tracer.build_with_context(builder, &cx)
    }

    /// Export what is queued, waiting at most the export timeout; spans
    /// ended later are not exported. For shutdown.
    pub fn flush(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.export_timeout) {
            tracing::debug!(error = %e, "traces: spans not all exported at shutdown");
        }
    }
}
