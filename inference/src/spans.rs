//! The backend's spans of one generation, recorded when it finishes from
//! the times the scheduler reports (nothing is traced on the model's step
//! path): `queue` (arrival to admission into a batch), `prefill` (admission
//! to the first token) and `decode` (first token to the last), children of
//! the caller's span (the gateway's attempt span, from the call's
//! `traceparent` metadata), or of a `generate {model}` server span when the
//! caller sent no trace context.

use gantry_telemetry::traces::{
    KeyValue, OtelSpan as _, SpanBuilder, SpanContext, SpanKind, Traces,
};
use std::time::{Duration, SystemTime};

/// What a finished generation reports for its spans.
pub(crate) struct Phases<'a> {
    pub model: &'a str,
    pub request_id: &'a str,
    /// When the request arrived (wall clock).
    pub arrived: SystemTime,
    /// Arrival to admission.
    pub queue_time: Duration,
    /// Arrival to the first token (zero: none was generated).
    pub time_to_first_token: Duration,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl Phases<'_> {
    /// Record the phases as spans under `parent`, ending now.
    pub fn record(&self, traces: &Traces, parent: Option<&SpanContext>) {
        let end = SystemTime::now();
        let common = [
            KeyValue::new("gen_ai.request.model", self.model.to_string()),
            KeyValue::new("gantry.request_id", self.request_id.to_string()),
        ];
        let root = parent.is_none().then(|| {
            let builder = SpanBuilder::from_name(format!("generate {}", self.model))
                .with_kind(SpanKind::Server)
                .with_start_time(self.arrived)
                .with_attributes(common.to_vec());
            traces.start(builder, None)
        });
        let parent = match (&root, parent) {
            (Some(root), _) => root.span_context().clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => unreachable!("a root without a parent"),
        };
        let admitted = self.arrived + self.queue_time;
        let first_token = if self.time_to_first_token.is_zero() {
            end
        } else {
            self.arrived + self.time_to_first_token
        };
        let phase = |name: &str, start, stop, extra: Vec<KeyValue>| {
            let mut attributes = common.to_vec();
            attributes.extend(extra);
            let builder = SpanBuilder::from_name(format!("{name} {}", self.model))
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .with_attributes(attributes);
            traces
                .start(builder, Some(&parent))
                .end_with_timestamp(stop);
        };
        phase("queue", self.arrived, admitted, Vec::new());
        phase(
            "prefill",
            admitted,
            first_token,
            vec![
                KeyValue::new("gen_ai.usage.input_tokens", self.prompt_tokens as i64),
                KeyValue::new(
                    "gen_ai.usage.cache_read.input_tokens",
                    self.cached_tokens as i64,
                ),
            ],
        );
        phase(
            "decode",
            first_token,
            end,
            vec![KeyValue::new(
                "gen_ai.usage.output_tokens",
                self.completion_tokens as i64,
            )],
        );
        if let Some(mut root) = root {
            root.end_with_timestamp(end);
        }
    }
}
