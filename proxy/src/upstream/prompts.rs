//! An inference pool's prompt encoders, one per model, built from the
//! format a backend hands out (`GetPromptFormat`): the gateway then computes a
//! prompt's token ids, and so its KV block names and its token count, exactly
//! as the backends do ([`gantry_prompt`]), without a tokenizer of its own to
//! configure or keep in step.
//!
//! Fetched once per model, in the background, on the first request that needs
//! it. Prefix routing goes by load until it is ready (never held up); a key's
//! input-token limit waits for it ([`FORMAT_WAIT`] at most). A failed fetch
//! (no backend serving, a backend too old to answer) is tried again after
//! [`REFETCH_AFTER_FAILURE`]. A backend whose tokenizer differed would name no
//! block alike, so it would simply never match: the pick falls back to load.

use gantry_prompt::{PromptEncoder, PromptFormat, PromptText};
use gantry_proto::inference_client::InferenceClient;
use gantry_proto::GetPromptFormatRequest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Wait before fetching a model's prompt format again after a failure.
pub const REFETCH_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Largest prompt format accepted (a tokenizer.json is a few MiB).
const MAX_FORMAT_BYTES: usize = 64 << 20;
/// Longest a request that must have its prompt counted waits for the
/// model's format to arrive.
pub const FORMAT_WAIT: Duration = Duration::from_secs(5);

enum State {
    Fetching,
    Ready(Arc<PromptEncoder>),
    Failed(Instant),
}

/// Each model's encoder, once fetched.
#[derive(Default)]
pub struct PoolPrompts {
    models: Mutex<HashMap<String, State>>,
    /// Woken whenever a fetch ends.
    fetched: tokio::sync::Notify,
}

/// Where a model's encoder stands, decided under one lock.
enum Lookup {
    Ready(Arc<PromptEncoder>),
    /// A fetch is under way: [`PoolPrompts::fetched`] wakes when it ends.
    Fetching,
    /// No fetch is under way and none could start (no backend serving, or a
    /// recent failure).
    Unavailable,
}

impl PoolPrompts {
    /// The encoder for `model` if it is ready; otherwise `None`, and a fetch
    /// over `channel` is started on `runtime` when none is under way.
    pub fn encoder(
        self: &Arc<Self>,
        model: &str,
        endpoint: impl FnOnce() -> Option<Endpoint>,
        runtime: &tokio::runtime::Handle,
    ) -> Option<Arc<PromptEncoder>> {
        match self.lookup(model, endpoint, runtime) {
            Lookup::Ready(encoder) => Some(encoder),
            Lookup::Fetching | Lookup::Unavailable => None,
        }
    }

    /// The encoder for `model`, waiting up to [`FORMAT_WAIT`] while it is
    /// fetched; `None` when no backend gives it.
    pub async fn encoder_waiting(
        self: &Arc<Self>,
        model: &str,
        endpoint: impl Fn() -> Option<Endpoint>,
        runtime: &tokio::runtime::Handle,
    ) -> Option<Arc<PromptEncoder>> {
        let deadline = tokio::time::Instant::now() + FORMAT_WAIT;
        loop {
            // Made before looking, so the end of a fetch cannot slip between.
            let fetched = self.fetched.notified();
            match self.lookup(model, &endpoint, runtime) {
                Lookup::Ready(encoder) => return Some(encoder),
                Lookup::Unavailable => return None,
                Lookup::Fetching => {
                    if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Where `model`'s encoder stands, starting a fetch when none is under
    /// way and a backend is serving. One lock for the look and the start, so
    /// a fetch that ends meanwhile is seen as ended, never as never begun.
    fn lookup(
        self: &Arc<Self>,
        model: &str,
        endpoint: impl FnOnce() -> Option<Endpoint>,
        runtime: &tokio::runtime::Handle,
    ) -> Lookup {
        let mut models = self.models.lock().expect("prompts lock");
        match models.get(model) {
            Some(State::Ready(encoder)) => return Lookup::Ready(encoder.clone()),
            Some(State::Fetching) => return Lookup::Fetching,
            Some(State::Failed(at)) if at.elapsed() < REFETCH_AFTER_FAILURE => {
                return Lookup::Unavailable
            }
            _ => {}
        }
        let Some(endpoint) = endpoint() else {
            return Lookup::Unavailable;
        };
        models.insert(model.to_string(), State::Fetching);
        let (this, model) = (self.clone(), model.to_string());
        runtime.spawn(async move {
            let state = match fetch(endpoint.connect_lazy(), &model).await {
                Ok(encoder) => State::Ready(Arc::new(encoder)),
                Err(why) => {
                    tracing::warn!(model = %model, error = %why, "no prompt format: prefix routing falls back to load, and keys with input_tokens_per_minute get 503");
                    State::Failed(Instant::now())
                }
            };
            this.models.lock().expect("prompts lock").insert(model, state);
            this.fetched.notify_waiters();
        });
        Lookup::Fetching
    }
}

async fn fetch(channel: Channel, model: &str) -> Result<PromptEncoder, String> {
    let mut client = InferenceClient::new(channel).max_decoding_message_size(MAX_FORMAT_BYTES);
    let format = client
        .get_prompt_format(GetPromptFormatRequest {
            model: model.to_string(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let format = PromptFormat::from_proto(format);
    // Parsing a tokenizer is CPU work: off the runtime.
    tokio::task::spawn_blocking(move || {
        PromptEncoder::from_format(&format, gantry_prompt::encoding_threads())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// `text`'s prompt token ids, as the backends encode them; `None` when it
/// cannot be encoded (the backend will say why).
pub async fn encode(encoder: &Arc<PromptEncoder>, text: PromptText) -> Option<Vec<u32>> {
    // The pool's input limits already bound the text; the context is the
    // backend's to check.
    encoder.encode(text, "messages", usize::MAX).await.ok()
}

/// The KV block names of the whole blocks of a prompt that a backend could
/// reuse (before its last token), as the backends name them.
pub fn reusable_blocks(ids: &[u32]) -> Vec<u64> {
    match ids.split_last() {
        Some((_, before_last)) => gantry_proto::prefix::block_hashes(before_last),
        None => Vec::new(),
    }
}
