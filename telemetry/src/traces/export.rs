//! Spans on their way out: a bounded queue in front of the SDK's batch
//! processor, and the OTLP exporter run on a tokio runtime.
//!
//! A request ends its span and goes on: the span is queued if fewer than
//! `queue_spans` are waiting (queued or in an export not yet answered), and
//! dropped and counted otherwise; nothing ever waits for the receiver. The
//! bound is ours, not only the SDK's, so that every drop is counted
//! (the SDK's own count is private).

use gantry_config::traces::{OtlpProtocol, Traces as Config};
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What became of spans, counted: each ended span is exactly one of these.
#[derive(Clone, Debug)]
pub struct SpanCounts {
    /// Accepted by the receiver.
    pub exported: IntCounter,
    /// Not queued: the queue was full.
    pub dropped: IntCounter,
    /// In an export that failed or timed out.
    pub failed: IntCounter,
}

impl SpanCounts {
    /// Register `name` (`…_trace_spans_total`) with its closed `result`
    /// label set: `exported`, `dropped`, `failed`.
    pub fn register(r: &mut crate::Registrar, name: &str) -> Self {
        let spans = r.counter(
            name,
            "Finished spans, by what became of them: exported, dropped (export queue full), failed (export failed or timed out)",
            &["result"],
        );
        SpanCounts {
            exported: spans.with_label_values(&["exported"]),
            dropped: spans.with_label_values(&["dropped"]),
            failed: spans.with_label_values(&["failed"]),
        }
    }
}

/// The processor `config` describes: bounded queue, batches, OTLP export
/// run on `runtime`.
pub(super) fn processor(
    config: &Config,
    runtime: &tokio::runtime::Handle,
    counts: SpanCounts,
) -> Result<Bounded, String> {
    // The exporter's connections belong to the runtime it is built on.
    let exporter = {
        let _entered = runtime.enter();
        otlp_exporter(config)?
    };
    let waiting = Arc::new(AtomicUsize::new(0));
    let exporter = OnRuntime {
        inner: Arc::new(exporter),
        runtime: runtime.clone(),
        waiting: waiting.clone(),
        counts: counts.clone(),
    };
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(config.queue_spans)
        .with_max_export_batch_size(config.batch_spans)
        .with_scheduled_delay(config.batch_delay)
        .build();
    Ok(Bounded {
        inner: BatchSpanProcessor::new(exporter, batches),
        waiting,
        queue_spans: config.queue_spans,
        dropped: counts.dropped,
    })
}

fn otlp_exporter(config: &Config) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match config.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &config.headers {
                let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                    .map_err(|e| format!("traces.headers: `{name}`: {e}"))?;
                let value = value
                    .parse()
                    .map_err(|e| format!("traces.headers: `{name}`: {e}"))?;
                metadata.insert(name, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout)
                .with_metadata(metadata)
                .build()
        }
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(signal_url(&config.endpoint))
            .with_timeout(config.export_timeout)
            .with_headers(config.headers.iter().cloned().collect())
            .build(),
    };
    built.map_err(|e| format!("traces: {e}"))
}

/// OTLP/HTTP's traces URL under a receiver's base URL.
fn signal_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// The SDK's batch processor behind a bound of our own.
#[derive(Debug)]
pub(super) struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet in an answered export.
    waiting: Arc<AtomicUsize>,
    queue_spans: usize,
    dropped: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_spans {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, its exports run as tasks of a tokio runtime (the
/// batch processor's own thread only waits for them), counted.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    waiting: Arc<AtomicUsize>,
    counts: SpanCounts,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let inner = self.inner.clone();
        let result = self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => self.counts.exported.inc_by(n as u64),
            Err(e) => {
                self.counts.failed.inc_by(n as u64);
                tracing::debug!(error = %e, spans = n, "traces: export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_signal_path_goes_under_the_base_url() {
        assert_eq!(
            signal_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            signal_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }
}
