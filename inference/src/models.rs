//! Model loading: each configured model read from its file, put on its
//! device and warmed up, then served by a scheduler (generation) or an
//! embedder; the set of served models and the backend's draining state.

use crate::embed::Embedder;
use crate::kv_blocks::{KvBlocks, KvLimits};
use crate::llama::Llama;
use crate::prompt::PromptEncoder;
use crate::scheduler::GenerateEngine;
use candle_core::Device;
use gantry_config::backend::{DeviceSpec, ModelConfig, ModelKind, ModelLimits};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::{Notify, Semaphore};
use tonic::Status;

/// A served model.
pub(crate) enum Served {
    Generate {
        engine: GenerateEngine,
        prompts: Arc<PromptEncoder>,
        vocab: usize,
    },
    Embed {
        embedder: Arc<Mutex<Embedder>>,
        slots: Arc<Semaphore>,
    },
}

pub(crate) struct Model {
    pub(crate) config: ModelConfig,
    /// Effective limits (max_context capped by the model's own).
    pub(crate) limits: ModelLimits,
    pub(crate) served: Served,
}

pub(crate) struct State {
    pub(crate) models: OnceLock<BTreeMap<String, Model>>,
    pub(crate) draining: AtomicBool,
    pub(crate) load_changed: Notify,
}

impl State {
    pub(crate) fn models(&self) -> Result<&BTreeMap<String, Model>, Status> {
        self.models
            .get()
            .ok_or_else(|| Status::unavailable("models are still loading; retry shortly"))
    }

    /// The model a new request names, unless the backend is draining.
    pub(crate) fn model(&self, name: &str) -> Result<&Model, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "backend is draining; send to another backend",
            ));
        }
        let models = self.models()?;
        if name.is_empty() {
            return Err(gantry_proto::violation::invalid_field(
                "model",
                "model must be set",
            ));
        }
        models.get(name).ok_or_else(|| {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            Status::not_found(format!(
                "model `{name}` is not served here; known models: {}",
                known.join(", ")
            ))
        })
    }
}

/// Resident set size of this process (Linux), in bytes.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Prompts one model tokenizes at once (on blocking threads): the machine's
/// cores, so tokenizing never takes more than the CPUs it could use anyway.
/// The candle device for a configured one.
pub fn device(spec: DeviceSpec) -> anyhow::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda:{n} needs a gantry built with the `cuda` feature (cargo build --features cuda)"
                );
            }
            Ok(Device::new_cuda(n)?)
        }
    }
}

pub(crate) fn load_model(config: &ModelConfig) -> anyhow::Result<Model> {
    let dev = device(config.device)?;
    let mut limits = config.limits;
    let started = Instant::now();
    let served = match config.kind {
        ModelKind::Generate => {
            let loaded = Llama::load(&config.path, &dev, config.quantization)?;
            limits.max_context = limits.max_context.min(loaded.model.shape().context_length);
            limits.max_tokens = limits.max_tokens.min(limits.max_context - 1);
            let vocab = loaded.model.shape().vocab;
            // Warm-up: one real forward, so the first request does not pay for
            // lazy initialisation (thread pools, kernel compilation on CUDA).
            let mut cache = loaded.model.new_cache();
            let mut kv = KvBlocks::new(loaded.model.block_layout(), KvLimits::NO_REUSE);
            let warm = loaded
                .tokenizer
                .encode("Hello", false)
                .map_err(anyhow::Error::msg)?;
            loaded
                .model
                .forward(&mut kv, &mut [(warm.get_ids(), &mut cache)])?;
            let tokenizer = Arc::new(loaded.tokenizer);
            let prompts = Arc::new(PromptEncoder::new(
                tokenizer.clone(),
                loaded.chat_template,
                gantry_prompt::encoding_threads(),
            ));
            // Made now, so GetPromptFormat and ListModels answer at once.
            prompts.format().map_err(anyhow::Error::msg)?;
            Served::Generate {
                engine: GenerateEngine::start(
                    &config.name,
                    loaded.model,
                    tokenizer.clone(),
                    loaded.eos,
                    limits,
                ),
                prompts,
                vocab,
            }
        }
        ModelKind::Embed => {
            let embedder = Embedder::load(&config.path, &dev)?;
            limits.max_context = limits.max_context.min(embedder.max_position);
            embedder.embed(&["Hello".to_string()])?;
            Served::Embed {
                embedder: Arc::new(Mutex::new(embedder)),
                slots: Arc::new(Semaphore::new(limits.max_queued + 1)),
            }
        }
    };
    tracing::info!(
        target: "gantry::backend",
        model = %config.name,
        device = %config.device,
        seconds = started.elapsed().as_secs_f32(),
        "model loaded and warmed up"
    );
    Ok(Model {
        config: config.clone(),
        limits,
        served,
    })
}
