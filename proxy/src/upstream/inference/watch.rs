//! Each backend's watch streams, kept open for as long as it exists: health
//! and load reports (whether it is serving, and how loaded), and its KV block
//! events for prefix routing.

use super::{InferenceBackend, ModelLoad, MAX_ANSWER_BYTES};
use crate::metrics::Metrics;
use gantry_proto::inference_client::InferenceClient;
use gantry_proto::{ListModelsRequest, LoadReport, WatchKvBlocksRequest, WatchLoadRequest};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// First wait before re-opening a backend's watch streams; doubles up to
/// [`WATCH_BACKOFF_MAX`].
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between attempts to re-open a backend's watch streams.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Keep a backend's health and load streams open for as long as it exists.
pub(super) async fn watch(
    backend: std::sync::Weak<InferenceBackend>,
    channel: Channel,
    metrics: Arc<Metrics>,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    loop {
        let Some(b) = backend.upgrade() else { return };
        let (pool, label) = (b.pool.clone(), b.label.clone());
        drop(b);
        let mut health_client = HealthClient::new(channel.clone());
        let mut load_client = InferenceClient::new(channel.clone());
        let mut models_client = load_client.clone();
        let opened = tokio::try_join!(
            health_client.watch(HealthCheckRequest {
                service: String::new()
            }),
            load_client.watch_load(WatchLoadRequest {}),
        );
        if let Ok((health, load)) = opened {
            backoff = WATCH_BACKOFF_MIN;
            let (mut health, mut load) = (health.into_inner(), load.into_inner());
            let mut healthy = false;
            let mut loaded = false;
            loop {
                tokio::select! {
                    msg = health.message() => match msg {
                        Ok(Some(h)) => healthy = h.status == ServingStatus::Serving as i32,
                        _ => break,
                    },
                    msg = load.message() => match msg {
                        Ok(Some(report)) => {
                            loaded = true;
                            let Some(b) = backend.upgrade() else { return };
                            apply_report(&b, report);
                        }
                        _ => break,
                    },
                }
                let Some(b) = backend.upgrade() else { return };
                let now = healthy && loaded;
                if b.serving.load(Ordering::Acquire) != now && now {
                    // Its models answer once they are loaded.
                    if let Ok(models) = models_client.list_models(ListModelsRequest {}).await {
                        let limits = models.into_inner().models.into_iter();
                        *b.max_tokens.write().expect("max_tokens lock") =
                            limits.map(|m| (m.name, m.max_tokens)).collect();
                    }
                }
                if b.serving.swap(now, Ordering::AcqRel) != now {
                    if now {
                        tracing::info!(pool = %pool, backend = %label, "inference backend serving");
                    } else {
                        tracing::warn!(pool = %pool, backend = %label, "inference backend not serving");
                    }
                }
            }
        }
        let Some(b) = backend.upgrade() else { return };
        if b.serving.swap(false, Ordering::AcqRel) {
            tracing::warn!(pool = %pool, backend = %label, "inference backend lost (watch streams ended)");
            metrics
                .backends
                .lost
                .with_label_values(&[&pool, &label])
                .inc();
        }
        drop(b);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// Keep a backend's KV block index in step with its `WatchKvBlocks` stream:
/// a snapshot then changes; on a gap, or when the stream ends, the index is
/// emptied and the stream reopened (a snapshot makes it exact again).
pub(super) async fn watch_kv_blocks(
    backend: std::sync::Weak<InferenceBackend>,
    channel: Channel,
    models: Vec<String>,
    max_blocks: usize,
    metrics: Arc<Metrics>,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    loop {
        let mut client =
            InferenceClient::new(channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES);
        if let Ok(stream) = client.watch_kv_blocks(WatchKvBlocksRequest {}).await {
            backoff = WATCH_BACKOFF_MIN;
            let mut stream = stream.into_inner();
            while let Ok(Some(update)) = stream.message().await {
                let Some(b) = backend.upgrade() else { return };
                let applied = b
                    .blocks
                    .write()
                    .expect("blocks lock")
                    .apply(update, &models, max_blocks);
                if let Err(problem) = applied {
                    metrics
                        .backends
                        .prefix_index_problems
                        .with_label_values(&[&b.pool, &b.label, problem.label()])
                        .inc();
                    if problem == crate::upstream::prefix_index::IndexProblem::Gap {
                        break;
                    }
                }
            }
        }
        let Some(b) = backend.upgrade() else { return };
        b.blocks.write().expect("blocks lock").clear();
        drop(b);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

fn apply_report(b: &InferenceBackend, report: LoadReport) {
    b.draining.store(report.draining, Ordering::Release);
    let mut map = b.load.write().expect("load lock");
    for m in report.models {
        map.insert(
            m.model,
            ModelLoad {
                queued: m.queued,
                running: m.running,
                tokens_in_flight: m.tokens_in_flight,
                max_running: m.max_running,
                max_queued: m.max_queued,
                kv_cache_bytes: m.kv_cache_bytes,
                tokens_per_second: m.tokens_per_second,
            },
        );
    }
}
