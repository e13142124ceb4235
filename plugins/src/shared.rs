//! What all instances of one plugin share, and no other plugin sees: shared data,
//! the metrics it defines, its log budget, and the count of host-side limits it
//! ran into. Everything here is host memory a guest makes the gateway hold, so
//! everything is bounded ([`PluginLimits`]); a refused call is not a trap (a
//! client could otherwise push a plugin into its unhealthy state), it answers
//! `BadArgument` or drops the line, and is counted.

use crate::limits::Limit;
use crate::PluginLimits;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bookkeeping bytes counted per shared-data key, on top of key and value.
pub const SHARED_DATA_ENTRY_BYTES: usize = 64;
/// Longest metric name a plugin may define, in bytes.
pub const MAX_METRIC_NAME_BYTES: usize = 128;
/// Longest log line kept, in bytes; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 4096;

/// A metric a plugin defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name, as the plugin gave it.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: MetricKind,
    /// Counter or gauge value; for a histogram, the last recorded value.
    pub value: u64,
}

/// Metric types of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set or moved.
    Gauge,
    /// Recorded values.
    Histogram,
}

/// Why a shared-data write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetRefused {
    /// The compare-and-swap version did not match (or the key does not exist).
    CasMismatch,
    /// The write would take the plugin past `shared_data_bytes`.
    Full,
}

#[derive(Debug, Default)]
struct Data {
    entries: HashMap<String, (Vec<u8>, u32)>,
    /// Keys, values and [`SHARED_DATA_ENTRY_BYTES`] per key.
    bytes: usize,
}

/// Lines written in the current one-second window.
#[derive(Debug)]
struct LogWindow {
    started: Instant,
    lines: u32,
}

/// Metrics and shared data of one plugin, visible to all its instances and to no
/// other plugin.
#[derive(Debug)]
pub struct Shared {
    data: Mutex<Data>,
    metrics: Mutex<Vec<Metric>>,
    log: Mutex<LogWindow>,
    shared_data_bytes: usize,
    max_metrics: usize,
    log_lines_per_second: u32,
    /// Limits refused inside host calls, by [`Limit`], until the next scrape.
    hits: [AtomicU64; Limit::ALL.len()],
    /// Ticks run (0) and failed (1), until the next scrape.
    ticks: [AtomicU64; 2],
    /// Queue deliveries (`proxy_on_queue_ready`) run (0) and failed (1).
    deliveries: [AtomicU64; 2],
    /// Its shared queues.
    pub(crate) queues: crate::queues::Queues,
    /// Wakes the engine's background thread (set when the plugin is loaded).
    pub(crate) background:
        std::sync::OnceLock<std::sync::Weak<crate::background::BackgroundThread>>,
}

impl Shared {
    /// Empty, bounded by `limits`.
    pub fn new(limits: &PluginLimits) -> Self {
        Shared {
            data: Mutex::default(),
            metrics: Mutex::default(),
            log: Mutex::new(LogWindow {
                started: Instant::now(),
                lines: 0,
            }),
            shared_data_bytes: limits.shared_data_bytes,
            max_metrics: limits.max_metrics,
            log_lines_per_second: limits.log_lines_per_second,
            hits: Default::default(),
            ticks: Default::default(),
            deliveries: Default::default(),
            queues: crate::queues::Queues::new(limits.shared_queue_bytes),
            background: std::sync::OnceLock::new(),
        }
    }

    /// Something was enqueued: the background thread delivers it.
    pub(crate) fn wake_background(&self) {
        if let Some(thread) = self.background.get().and_then(std::sync::Weak::upgrade) {
            thread.wake();
        }
    }

    pub(crate) fn delivered(&self, ok: bool) {
        self.deliveries[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Queue deliveries (`proxy_on_queue_ready` calls) that ran and that
    /// failed since the last call.
    pub fn take_deliveries(&self) -> (u64, u64) {
        (
            self.deliveries[0].swap(0, Ordering::Relaxed),
            self.deliveries[1].swap(0, Ordering::Relaxed),
        )
    }

    /// Bytes its shared queues hold now.
    pub fn queue_bytes(&self) -> usize {
        self.queues.bytes()
    }

    /// The shared data value of `key`, if set.
    pub fn data(&self, key: &str) -> Option<Vec<u8>> {
        self.get(key).map(|(value, _)| value)
    }

    pub(crate) fn ticked(&self, ok: bool) {
        self.ticks[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Ticks (`proxy_on_tick` calls) that ran and that failed since the last call.
    pub fn take_ticks(&self) -> (u64, u64) {
        (
            self.ticks[0].swap(0, Ordering::Relaxed),
            self.ticks[1].swap(0, Ordering::Relaxed),
        )
    }

    pub(crate) fn hit(&self, limit: Limit) {
        self.hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Host-side limit hits since the last call (`shared_data_bytes`,
    /// `metrics`, `log_lines`, `body_bytes`).
    pub fn take_limit_hits(&self) -> Vec<(Limit, u64)> {
        Limit::ALL
            .iter()
            .zip(&self.hits)
            .map(|(label, n)| (*label, n.swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub(crate) fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data
            .lock()
            .expect("shared lock")
            .entries
            .get(key)
            .cloned()
    }

    /// Bytes of shared data held now.
    pub fn data_bytes(&self) -> usize {
        self.data.lock().expect("shared lock").bytes
    }

    /// Keys of shared data held now.
    pub fn data_keys(&self) -> usize {
        self.data.lock().expect("shared lock").entries.len()
    }

    /// Set `key` if `cas` is 0 or equals its current version (a key that does
    /// not exist has none: a non-zero `cas` never creates it), within
    /// `shared_data_bytes`.
    pub(crate) fn set(&self, key: String, value: Vec<u8>, cas: u32) -> Result<(), SetRefused> {
        let mut data = self.data.lock().expect("shared lock");
        let (old_bytes, version) = match data.entries.get(&key) {
            Some((v, version)) => (key.len() + v.len() + SHARED_DATA_ENTRY_BYTES, *version),
            None => (0, 0),
        };
        if cas != 0 && cas != version {
            return Err(SetRefused::CasMismatch);
        }
        let new_bytes = key.len() + value.len() + SHARED_DATA_ENTRY_BYTES;
        let total = data.bytes - old_bytes + new_bytes;
        if total > self.shared_data_bytes {
            drop(data);
            self.hit(Limit::SharedDataBytes);
            return Err(SetRefused::Full);
        }
        data.bytes = total;
        data.entries
            .insert(key, (value, version.wrapping_add(1).max(1)));
        Ok(())
    }

    pub(crate) fn define_metric(&self, kind: i32, name: &str) -> Option<u32> {
        let kind = match kind {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        };
        let mut metrics = self.metrics.lock().expect("metrics lock");
        if let Some(i) = metrics.iter().position(|m| m.name == name) {
            return Some(i as u32);
        }
        if name.is_empty()
            || name.len() > MAX_METRIC_NAME_BYTES
            || metrics.len() >= self.max_metrics
        {
            drop(metrics);
            self.hit(Limit::Metrics);
            return None;
        }
        metrics.push(Metric {
            name: name.into(),
            kind,
            value: 0,
        });
        Some(metrics.len() as u32 - 1)
    }

    pub(crate) fn increment_metric(&self, id: u32, offset: i64) -> bool {
        let mut metrics = self.metrics.lock().expect("metrics lock");
        let Some(m) = metrics.get_mut(id as usize) else {
            return false;
        };
        if m.kind == MetricKind::Counter && offset < 0 {
            return false;
        }
        m.value = m.value.saturating_add_signed(offset);
        true
    }

    pub(crate) fn record_metric(&self, id: u32, value: u64) -> bool {
        let mut metrics = self.metrics.lock().expect("metrics lock");
        let Some(m) = metrics.get_mut(id as usize) else {
            return false;
        };
        m.value = value;
        true
    }

    pub(crate) fn metric_value(&self, id: u32) -> Option<u64> {
        self.metrics
            .lock()
            .expect("metrics lock")
            .get(id as usize)
            .map(|m| m.value)
    }

    /// Every metric the plugin defined, for export.
    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics.lock().expect("metrics lock").clone()
    }

    /// Whether one more log line fits this second's budget; a line over it is
    /// dropped and counted.
    pub(crate) fn log_allowed(&self) -> bool {
        let mut window = self.log.lock().expect("log lock");
        let now = Instant::now();
        if now.duration_since(window.started) >= Duration::from_secs(1) {
            window.started = now;
            window.lines = 0;
        }
        if window.lines >= self.log_lines_per_second {
            drop(window);
            self.hit(Limit::LogLines);
            return false;
        }
        window.lines += 1;
        true
    }
}

/// A guest's log message made safe for one log line: cut at
/// [`MAX_LOG_LINE_BYTES`] (on a character boundary), control characters
/// escaped, so a plugin cannot forge or split log lines.
pub fn log_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut cut = text.len().min(MAX_LOG_LINE_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut line = String::with_capacity(cut + 8);
    for ch in text[..cut].chars() {
        if ch.is_control() {
            line.extend(ch.escape_default());
        } else {
            line.push(ch);
        }
    }
    if cut < text.len() {
        line.push_str("…[cut]");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_cut_and_escaped() {
        let forged = b"ok\n2026-01-01T00:00:00Z  INFO gantry: admin logged in\r\x1b[2J";
        let line = log_line(forged);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("\\n2026"), "{line:?}");
        let long = vec![b'a'; MAX_LOG_LINE_BYTES * 2];
        assert!(log_line(&long).len() < MAX_LOG_LINE_BYTES + 16);
        let multibyte = "é".repeat(MAX_LOG_LINE_BYTES);
        assert!(log_line(multibyte.as_bytes()).starts_with('é'));
    }

    #[test]
    fn shared_data_is_bounded_and_a_failed_cas_creates_nothing() {
        let limits = PluginLimits {
            shared_data_bytes: 1000,
            ..PluginLimits::default()
        };
        let shared = Shared::new(&limits);
        assert_eq!(
            shared.set("k".into(), vec![1], 7),
            Err(SetRefused::CasMismatch)
        );
        assert_eq!(shared.data_keys(), 0, "a failed CAS must not create a key");
        assert_eq!(shared.data_bytes(), 0);
        shared.set("k".into(), vec![0; 100], 0).unwrap();
        assert_eq!(shared.data_bytes(), 1 + 100 + SHARED_DATA_ENTRY_BYTES);
        // Replacing a value counts only the difference.
        shared.set("k".into(), vec![0; 800], 1).unwrap();
        assert_eq!(
            shared.set("k2".into(), vec![0; 200], 0),
            Err(SetRefused::Full)
        );
        shared.set("k".into(), vec![], 0).unwrap();
        shared.set("k2".into(), vec![0; 200], 0).unwrap();
        let mut keys = 2;
        while shared.set(format!("key{keys}"), Vec::new(), 0).is_ok() {
            keys += 1;
        }
        assert!(shared.data_bytes() <= 1000);
        assert!(keys < 20, "empty values still cost their key: {keys}");
        assert_eq!(shared.take_limit_hits(), vec![(Limit::SharedDataBytes, 2)]);
        assert!(shared.take_limit_hits().is_empty(), "taken once");
    }

    #[test]
    fn metric_definitions_are_bounded_in_count_and_name_length() {
        let limits = PluginLimits {
            max_metrics: 3,
            ..PluginLimits::default()
        };
        let shared = Shared::new(&limits);
        assert!(shared
            .define_metric(0, &"n".repeat(MAX_METRIC_NAME_BYTES + 1))
            .is_none());
        for i in 0..3 {
            assert_eq!(shared.define_metric(0, &format!("m{i}")), Some(i));
        }
        assert_eq!(
            shared.define_metric(1, "m1"),
            Some(1),
            "an existing name is found"
        );
        assert!(shared.define_metric(0, "m3").is_none());
        assert_eq!(shared.metrics().len(), 3);
        assert_eq!(shared.take_limit_hits(), vec![(Limit::Metrics, 2)]);
    }

    #[test]
    fn log_lines_past_the_rate_are_dropped_and_counted() {
        let limits = PluginLimits {
            log_lines_per_second: 5,
            ..PluginLimits::default()
        };
        let shared = Shared::new(&limits);
        let allowed = (0..50).filter(|_| shared.log_allowed()).count();
        assert_eq!(allowed, 5);
        assert_eq!(shared.take_limit_hits(), vec![(Limit::LogLines, 45)]);
    }
}
