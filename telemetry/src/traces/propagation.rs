//! W3C trace context in HTTP headers and gRPC metadata, read and written
//! by the OpenTelemetry propagator (`traceparent`, `tracestate`).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The trace context a client sent in `headers`, if it sent a valid one.
pub fn extract(headers: &http::HeaderMap) -> Option<SpanContext> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    valid(TraceContextPropagator::new().extract(&Headers(headers)))
}

/// The trace context a gRPC caller sent in `metadata`, if valid.
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Option<SpanContext> {
    valid(TraceContextPropagator::new().extract(&Metadata(metadata)))
}

/// `span`'s context as the `traceparent` and (when it has one) the
/// `tracestate` header values, for a request going upstream.
pub fn traceparent(span: &SpanContext) -> (String, Option<String>) {
    let mut out = Pairs::default();
    TraceContextPropagator::new().inject_context(
        &Context::new().with_remote_span_context(span.clone()),
        &mut out,
    );
    (out.traceparent, out.tracestate)
}

/// Write `span`'s context into outgoing gRPC `metadata`.
pub fn inject_grpc(span: &SpanContext, metadata: &mut tonic::metadata::MetadataMap) {
    let (parent, state) = traceparent(span);
    if let Ok(v) = parent.parse() {
        metadata.insert("traceparent", v);
    }
    match state.map(|s| s.parse()) {
        Some(Ok(v)) => {
            metadata.insert("tracestate", v);
        }
        _ => {
            metadata.remove("tracestate");
        }
    }
}

fn valid(cx: Context) -> Option<SpanContext> {
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

#[derive(Default)]
struct Pairs {
    traceparent: String,
    tracestate: Option<String>,
}

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_context_round_trips_and_a_broken_one_is_none() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        headers.insert("tracestate", "vendor=abc".parse().unwrap());
        let span = extract(&headers).expect("valid");
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span.is_sampled() && span.is_remote());
        assert_eq!(
            traceparent(&span),
            (PARENT.to_string(), Some("vendor=abc".to_string()))
        );

        for broken in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            headers.insert("traceparent", broken.parse().unwrap());
            assert!(extract(&headers).is_none(), "{broken}");
        }
        assert!(extract(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn grpc_metadata_carries_the_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let span = extract(&headers).unwrap();
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("tracestate", "stale=1".parse().unwrap());
        inject_grpc(&span, &mut metadata);
        assert_eq!(metadata.get("traceparent").unwrap(), PARENT);
        assert!(metadata.get("tracestate").is_none());
        assert_eq!(extract_grpc(&metadata), Some(span));
    }
}
