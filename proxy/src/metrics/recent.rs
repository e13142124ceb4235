//! What the admin pages read back: the last failed requests
//! ([`RecentErrors`], a ring of [`RECENT_ERRORS`]) and each plugin's totals
//! ([`super::Metrics::plugin_totals`]), for `/status` and the dashboard.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Failed requests kept for `/status`, newest first; older ones leave.
pub const RECENT_ERRORS: usize = 50;
/// Longest error text kept per failed request, in bytes.
const ERROR_TEXT_MAX: usize = 200;

/// A request that failed on the gateway's side (a 5xx, or no answer at all).
#[derive(Debug, Clone, Serialize)]
pub struct FailedRequest {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub request_id: String,
    pub route: String,
    /// 0 when no response was sent.
    pub status: u16,
    /// What went wrong, at most [`ERROR_TEXT_MAX`] bytes.
    pub error: String,
    /// The endpoint or backend it last went to, if any.
    pub upstream: String,
}

/// The last [`RECENT_ERRORS`] failed requests.
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<FailedRequest>>);

impl RecentErrors {
    /// Keep `failed` (its error text cut at [`ERROR_TEXT_MAX`] bytes), dropping
    /// the oldest past [`RECENT_ERRORS`].
    pub fn record(&self, mut failed: FailedRequest) {
        if failed.error.len() > ERROR_TEXT_MAX {
            let mut end = ERROR_TEXT_MAX;
            while !failed.error.is_char_boundary(end) {
                end -= 1;
            }
            failed.error.truncate(end);
        }
        let mut ring = self.0.lock().expect("recent errors lock");
        if ring.len() == RECENT_ERRORS {
            ring.pop_back();
        }
        ring.push_front(failed);
    }

    /// The failed requests kept, newest first.
    pub fn list(&self) -> Vec<FailedRequest> {
        self.0
            .lock()
            .expect("recent errors lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// One plugin's totals since start, as `/status` shows them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PluginTotals {
    /// Hook calls on the route (`gantry_plugin_calls_total`).
    pub calls: u64,
    /// Of those, failed or refused (`error`, `unhealthy`, `busy`).
    pub failed: u64,
    /// Limits it reached, on any route (`gantry_plugin_limit_hits_total`).
    pub limit_hits: u64,
}

/// The sum of `vec`'s series whose labels include every `(name, value)` of
/// `labels` and, when given, whose `outcome` is one of `outcomes`. Reads the
/// series that exist; creates none.
pub(super) fn sum(
    vec: &prometheus::IntCounterVec,
    labels: &[(&str, &str)],
    outcomes: Option<&[&str]>,
) -> u64 {
    use prometheus::core::Collector;
    let mut total = 0.0;
    for family in vec.collect() {
        for m in family.get_metric() {
            let pairs = m.get_label();
            let has = |name: &str, value: &str| {
                pairs
                    .iter()
                    .any(|p| p.get_name() == name && p.get_value() == value)
            };
            let outcome_ok = outcomes.is_none_or(|o| o.iter().any(|v| has("outcome", v)));
            if outcome_ok && labels.iter().all(|(n, v)| has(n, v)) {
                total += m.get_counter().get_value();
            }
        }
    }
    total as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(n: usize, error: &str) -> FailedRequest {
        FailedRequest {
            at_ms: n as u64,
            request_id: format!("r{n}"),
            route: "r".into(),
            status: 502,
            error: error.into(),
            upstream: String::new(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_cuts_long_texts() {
        let ring = RecentErrors::default();
        for n in 0..RECENT_ERRORS + 7 {
            ring.record(failed(n, "x"));
        }
        let kept = ring.list();
        assert_eq!(kept.len(), RECENT_ERRORS);
        assert_eq!(kept[0].request_id, format!("r{}", RECENT_ERRORS + 6));
        assert_eq!(kept[RECENT_ERRORS - 1].request_id, "r7");
        ring.record(failed(0, &"é".repeat(ERROR_TEXT_MAX)));
        let text = &ring.list()[0].error;
        assert!(
            text.len() <= ERROR_TEXT_MAX && text.starts_with('é'),
            "{}",
            text.len()
        );
    }
}
