//! `[traces]`: OpenTelemetry traces exported over OTLP, the same section in
//! the gateway's file and the backend's. Absent: no spans are made and
//! nothing is parsed or sent (tracing off costs nothing).

use crate::validate::Checker;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Share of new traces recorded (a trace continued from a trusted parent
/// follows the parent's decision).
pub const DEFAULT_TRACES_SAMPLING_RATIO: f64 = 1.0;
/// Finished spans waiting for export; past it a span is dropped and counted
/// (`…trace_spans_total{result="dropped"}`), never waited for.
pub const DEFAULT_TRACES_QUEUE_SPANS: usize = 2048;
/// Most spans in one export request.
pub const DEFAULT_TRACES_BATCH_SPANS: usize = 512;
/// Longest wait before a batch smaller than `batch_spans` is exported, in milliseconds.
pub const DEFAULT_TRACES_BATCH_DELAY_MS: u64 = 1_000;
/// Longest one export may take before it is abandoned (its spans counted
/// `failed`), in milliseconds.
pub const DEFAULT_TRACES_EXPORT_TIMEOUT_MS: u64 = 10_000;
/// Most spans one queue may hold (a bound on the memory spans may take).
pub const MAX_TRACES_QUEUE_SPANS: usize = 1 << 20;

/// `[traces]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesSection {
    /// The OTLP receiver (an OpenTelemetry Collector): `http://host:4317` for
    /// `protocol = "grpc"`, `http://host:4318` for `"http"` (spans go to its
    /// `/v1/traces`). Plain HTTP: for TLS, export to a collector on the node
    /// or in the cluster, which forwards.
    pub endpoint: String,
    /// `grpc` (default) or `http` (OTLP HTTP/protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (e.g. a collector's API key).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// 0 to 1. Default [`DEFAULT_TRACES_SAMPLING_RATIO`].
    pub sampling_ratio: Option<f64>,
    /// Default [`DEFAULT_TRACES_QUEUE_SPANS`], at most [`MAX_TRACES_QUEUE_SPANS`].
    pub queue_spans: Option<usize>,
    /// Default [`DEFAULT_TRACES_BATCH_SPANS`]; at most `queue_spans`.
    pub batch_spans: Option<usize>,
    /// Milliseconds. Default [`DEFAULT_TRACES_BATCH_DELAY_MS`].
    pub batch_delay_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_TRACES_EXPORT_TIMEOUT_MS`].
    pub export_timeout_ms: Option<u64>,
    /// Whose `traceparent`/`tracestate` a request's span continues:
    /// `always`, `trusted_proxies` (peers in `server.trusted_proxies`; the
    /// gateway's default) or `never`. A context not believed starts a new
    /// trace that links to it, and is replaced in what goes upstream. The
    /// backend's default is `always` (its callers are gateways).
    pub accept_incoming: Option<AcceptIncoming>,
    /// `service.name` of the spans. Default `gantry` (gateway), `gantry-backend`.
    pub service_name: Option<String>,
    /// Gateway only: a span for each plugin's request and response-headers
    /// hook in a sampled request (`plugin {name} {hook}`). Default false.
    #[serde(default)]
    pub plugin_spans: bool,
}

/// How spans reach the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// Whose incoming trace context is continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptIncoming {
    /// Every client's.
    Always,
    /// Only from peers in `server.trusted_proxies`.
    TrustedProxies,
    /// Nobody's: every request starts a trace.
    Never,
}

/// `[traces]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Traces {
    /// Receiver URL.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// Sent with every export.
    pub headers: Vec<(String, String)>,
    /// Share of new traces recorded.
    pub sampling_ratio: f64,
    /// Spans waiting for export, at most.
    pub queue_spans: usize,
    /// Spans per export, at most.
    pub batch_spans: usize,
    /// Longest wait before a partial batch goes.
    pub batch_delay: Duration,
    /// Longest one export may take.
    pub export_timeout: Duration,
    /// Whose incoming context is continued.
    pub accept_incoming: AcceptIncoming,
    /// `service.name`.
    pub service_name: String,
    /// A span per plugin hook call (gateway).
    pub plugin_spans: bool,
}

/// Validate `raw` (at `path`), filling defaults: `service` and `accept` are
/// the role's (gateway or backend).
pub(crate) fn convert_traces(
    c: &mut Checker,
    raw: &TracesSection,
    service: &str,
    accept: AcceptIncoming,
) -> Traces {
    let field = |f: &str| format!("traces.{f}");
    match raw.endpoint.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {}
        _ => c.fail(
            field("endpoint"),
            format!(
                "`{}` is not an http:// URL of an OTLP receiver (e.g. `http://otel-collector:4317`; \
                 for TLS, export to a collector on the node or in the cluster)",
                raw.endpoint
            ),
        ),
    }
    for (name, value) in &raw.headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            c.fail(field("headers"), format!("`{name}` is not a header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            c.fail(
                field("headers"),
                format!("the value of `{name}` has control characters"),
            );
        }
    }
    let sampling_ratio = raw.sampling_ratio.unwrap_or(DEFAULT_TRACES_SAMPLING_RATIO);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        c.fail(field("sampling_ratio"), "must be between 0 and 1");
    }
    let queue_spans = c.at_least_one(
        field("queue_spans"),
        raw.queue_spans,
        DEFAULT_TRACES_QUEUE_SPANS,
    );
    if queue_spans > MAX_TRACES_QUEUE_SPANS {
        c.fail(
            field("queue_spans"),
            format!("must be at most {MAX_TRACES_QUEUE_SPANS}"),
        );
    }
    let batch_spans = c.at_least_one(
        field("batch_spans"),
        raw.batch_spans,
        DEFAULT_TRACES_BATCH_SPANS.min(queue_spans),
    );
    if batch_spans > queue_spans {
        c.fail(
            field("batch_spans"),
            format!("must be at most queue_spans ({queue_spans})"),
        );
    }
    let service_name = raw.service_name.clone().unwrap_or_else(|| service.into());
    if service_name.is_empty() {
        c.fail(field("service_name"), "must not be empty");
    }
    Traces {
        endpoint: raw.endpoint.clone(),
        protocol: raw.protocol,
        headers: raw.headers.clone().into_iter().collect(),
        sampling_ratio,
        queue_spans,
        batch_spans,
        batch_delay: c.millis(
            field("batch_delay_ms"),
            raw.batch_delay_ms,
            DEFAULT_TRACES_BATCH_DELAY_MS,
        ),
        export_timeout: c.millis(
            field("export_timeout_ms"),
            raw.export_timeout_ms,
            DEFAULT_TRACES_EXPORT_TIMEOUT_MS,
        ),
        accept_incoming: raw.accept_incoming.unwrap_or(accept),
        service_name,
        plugin_spans: raw.plugin_spans,
    }
}
