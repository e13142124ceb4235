//! Configuration of `gantry backend`: the gRPC inference server and its models.
//!
//! Same two layers as the gateway's configuration: [`BackendFile`] is what operators
//! write (strict TOML, documented defaults as `DEFAULT_*` constants) and
//! [`BackendConfig`] is what the backend runs on (validated, paths resolved).

use crate::validate::{deserialize, Checker};
use crate::{ConfigError, Problem};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backend configuration compiled into the binary, used by `gantry backend`
/// without `--config`. Kept as `config/examples/backend.toml`; parse it with
/// [`EMBEDDED_BACKEND_BASE`] as the base, so its model paths land in `models/` under
/// the current directory (where `scripts/setup.sh` installs them).
pub const EMBEDDED_BACKEND_DEFAULT: &str = include_str!("../examples/backend.toml");
/// Base directory for the relative paths of [`EMBEDDED_BACKEND_DEFAULT`], in
/// the source tree; see [`crate::embedded_base`] for where it is looked for.
pub const EMBEDDED_BACKEND_BASE: &str = "config/examples";

/// Address the gRPC server listens on.
pub const DEFAULT_BACKEND_LISTEN: &str = "127.0.0.1:50051";
/// Address of the backend's Prometheus `/metrics` listener.
pub const DEFAULT_BACKEND_METRICS_LISTEN: &str = "127.0.0.1:9091";
/// How long running generations get to finish after SIGTERM, in milliseconds.
pub const DEFAULT_BACKEND_GRACE_PERIOD_MS: u64 = 30_000;
/// Sequences decoded together in one batch (generation models).
pub const DEFAULT_MAX_RUNNING: u32 = 16;
/// Requests waiting for a batch slot before new ones get RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_QUEUED: u32 = 64;
/// Longest prompt plus output, in tokens (generation); longest input (embeddings).
pub const DEFAULT_MAX_CONTEXT: u32 = 2048;
/// Largest `max_tokens` a generation request may ask for (capped below
/// `max_context`, which must leave room for the prompt).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// Prompt tokens prefilled in one batched step; longer prompts are prefilled in
/// chunks so running streams keep decoding.
pub const DEFAULT_MAX_BATCH_TOKENS: u32 = 512;
/// Texts in one Embed request.
pub const DEFAULT_MAX_BATCH: u32 = 64;
/// Default `prefix_cache_bytes`: KV blocks kept for reuse after their sequences
/// end (128 MiB: about 2,800 tokens of SmolLM2-135M's f32 KV).
pub const DEFAULT_PREFIX_CACHE_BYTES: u64 = 128 << 20;

/// The backend's spans' default `service.name`.
const BACKEND_SERVICE_NAME: &str = "gantry-backend";

/// A backend configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// Server settings.
    #[serde(default)]
    pub backend: ServerFile,
    /// The models to serve.
    #[serde(default)]
    pub models: Vec<ModelFile>,
    /// OpenTelemetry traces (OTLP). Absent: none.
    pub traces: Option<crate::traces::TracesSection>,
}

/// `[backend]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// `ip:port` of the gRPC server. Default [`DEFAULT_BACKEND_LISTEN`].
    pub listen: Option<String>,
    /// Milliseconds running generations get after SIGTERM. Default
    /// [`DEFAULT_BACKEND_GRACE_PERIOD_MS`].
    pub shutdown_grace_period_ms: Option<u64>,
    /// `ip:port` of the Prometheus `/metrics` listener, or `"off"`. Default
    /// [`DEFAULT_BACKEND_METRICS_LISTEN`].
    pub metrics_listen: Option<String>,
}

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Text generation from a llama-architecture GGUF file.
    Generate,
    /// Sentence embeddings from a BERT directory (safetensors, config.json,
    /// tokenizer.json).
    Embed,
}

/// Weight format a generation model is converted to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// 8-bit blocks (candle has SIMD kernels for them); closest to the source.
    #[default]
    Q8_0,
    /// 4-bit blocks: half the memory of q8_0, a little less accurate.
    Q4_0,
    /// 4-bit k-quant super-blocks (`q4_k`): candle has a tiled int8 kernel for
    /// them too, so a step costs about what `q8_0` costs with ~110 MB less
    /// resident for SmolLM2-135M, at a measured quality cost (docs/INFERENCE.md).
    Q4K,
    /// Keep the file's own format.
    Keep,
    /// Dequantise to 16-bit floats (bf16); the usual choice on CUDA.
    Bf16,
}

/// `[[models]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Name clients ask for.
    pub name: String,
    /// `generate` or `embed`.
    pub kind: ModelKind,
    /// GGUF file (generate) or model directory (embed); relative paths are
    /// resolved against the configuration file's directory.
    pub path: String,
    /// `cpu` (default) or `cuda:N` (needs a build with the `cuda` feature).
    pub device: Option<String>,
    /// Generation models: weight format at load. Default `q8_0` on CPU, `bf16` on CUDA.
    pub quantization: Option<Quantization>,
    /// Generation: sequences decoded together. Default [`DEFAULT_MAX_RUNNING`].
    pub max_running: Option<u32>,
    /// Requests waiting for a slot. Default [`DEFAULT_MAX_QUEUED`].
    pub max_queued: Option<u32>,
    /// Tokens of prompt plus output (generate) or of one input (embed).
    /// Default [`DEFAULT_MAX_CONTEXT`], capped by the model's own.
    pub max_context: Option<u32>,
    /// Largest `max_tokens`. Default [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: Option<u32>,
    /// Prompt tokens prefilled per step. Default [`DEFAULT_MAX_BATCH_TOKENS`].
    pub max_batch_tokens: Option<u32>,
    /// Embed: texts per request. Default [`DEFAULT_MAX_BATCH`].
    pub max_batch: Option<u32>,
    /// Generation on CUDA: bytes of GPU memory the KV caches may use; requests
    /// that would go past it wait in the queue. Default: no budget beyond
    /// `max_running` × `max_context`.
    pub kv_cache_budget_bytes: Option<u64>,
    /// Generation on the CPU: bytes of KV blocks kept after their sequences end,
    /// so a later prompt with the same prefix skips computing it (evicted least
    /// recently used first, and within `kv_cache_budget_bytes` together with
    /// the blocks in use). 0 turns prefix reuse off. Default
    /// [`DEFAULT_PREFIX_CACHE_BYTES`].
    pub prefix_cache_bytes: Option<u64>,
    /// Generation: sampling applied when a request leaves a value unset (as
    /// vLLM applies a model's `generation_config.json`); reported in
    /// `ListModels`. Absent values: greedy decoding, no top-p, top-k or
    /// repetition penalty.
    pub sampling: Option<SamplingDefaultsFile>,
}

/// `[models.sampling]`: a generation model's default sampling.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaultsFile {
    /// 0 to 2 (0: greedy).
    pub temperature: Option<f32>,
    /// Greater than 0, at most 1.
    pub top_p: Option<f32>,
    /// 0 (off) or the number of most likely tokens kept.
    pub top_k: Option<u32>,
    /// 0.01 to 2 (1: off).
    pub repetition_penalty: Option<f32>,
}

/// A generation model's default sampling, validated; `None`: unset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
}

/// The validated backend configuration.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Time running generations get after SIGTERM.
    pub grace_period: Duration,
    /// Models, in file order.
    pub models: Vec<ModelConfig>,
    /// Where spans are exported; `None`: no traces.
    pub traces: Option<crate::traces::Traces>,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// One validated model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Name clients ask for.
    pub name: String,
    /// What it does.
    pub kind: ModelKind,
    /// Resolved file or directory.
    pub path: PathBuf,
    /// Where it runs.
    pub device: DeviceSpec,
    /// Weight format at load (generation).
    pub quantization: Quantization,
    /// Its limits.
    pub limits: ModelLimits,
    /// Sampling for values a request leaves unset (generation).
    pub sampling: SamplingDefaults,
}

/// A model's limits; each is enforced with a clear error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Sequences decoded together.
    pub max_running: usize,
    /// Requests waiting for a slot.
    pub max_queued: usize,
    /// Tokens of prompt plus output (or of one embedding input).
    pub max_context: usize,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Prompt tokens prefilled per step.
    pub max_batch_tokens: usize,
    /// Texts per Embed request.
    pub max_batch: usize,
    /// KV cache byte budget, if any.
    pub kv_cache_budget_bytes: Option<u64>,
    /// Bytes of KV blocks kept for prefix reuse (0: none).
    pub prefix_cache_bytes: u64,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            max_running: DEFAULT_MAX_RUNNING as usize,
            max_queued: DEFAULT_MAX_QUEUED as usize,
            max_context: DEFAULT_MAX_CONTEXT as usize,
            max_tokens: DEFAULT_MAX_TOKENS as usize,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS as usize,
            max_batch: DEFAULT_MAX_BATCH as usize,
            kv_cache_budget_bytes: None,
            prefix_cache_bytes: DEFAULT_PREFIX_CACHE_BYTES,
        }
    }
}

/// Read and validate a backend configuration file; relative model paths are
/// resolved against the file's directory.
pub fn load_backend(path: &Path) -> Result<BackendConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        file: path.display().to_string(),
        cause,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_backend(&text, &path.display().to_string(), base)
}

/// Parse and validate backend configuration text; `name` labels errors, relative
/// paths are resolved against `base`.
pub fn parse_backend(text: &str, name: &str, base: &Path) -> Result<BackendConfig, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: name.to_string(),
        problems,
    };
    let raw: BackendFile = deserialize(text).map_err(|p: Problem| invalid(vec![p]))?;
    convert(raw, base).map_err(invalid)
}

fn convert(raw: BackendFile, base: &Path) -> Result<BackendConfig, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let listen_text = raw
        .backend
        .listen
        .as_deref()
        .unwrap_or(DEFAULT_BACKEND_LISTEN);
    let listen = c.socket_addr("backend.listen".into(), listen_text);
    let metrics_listen = match raw
        .backend
        .metrics_listen
        .as_deref()
        .unwrap_or(DEFAULT_BACKEND_METRICS_LISTEN)
    {
        "off" => None,
        text => c.socket_addr("backend.metrics_listen".into(), text),
    };
    let grace_period = c.millis(
        "backend.shutdown_grace_period_ms".into(),
        raw.backend.shutdown_grace_period_ms,
        DEFAULT_BACKEND_GRACE_PERIOD_MS,
    );
    if raw.models.is_empty() {
        c.fail("models", "at least one [[models]] entry is needed");
    }
    let mut names = HashSet::new();
    let mut models = Vec::new();
    for (i, m) in raw.models.iter().enumerate() {
        c.unique(&mut names, format!("models[{i}].name"), "model", &m.name);
        models.push(convert_model(&mut c, i, m, base));
    }
    let traces = raw.traces.as_ref().map(|t| {
        if t.accept_incoming == Some(crate::traces::AcceptIncoming::TrustedProxies) {
            c.fail(
                "traces.accept_incoming",
                "the backend has no trusted proxies: `always` (its callers are gateways) or `never`",
            );
        }
        if t.plugin_spans {
            c.fail(
                "traces.plugin_spans",
                "the backend runs no plugins (a gateway setting)",
            );
        }
        let accept = crate::traces::AcceptIncoming::Always;
        crate::traces::convert_traces(&mut c, t, BACKEND_SERVICE_NAME, accept)
    });
    if c.problems.is_empty() {
        Ok(BackendConfig {
            traces,
            listen: listen.expect("checked"),
            metrics_listen,
            grace_period,
            models,
        })
    } else {
        Err(c.problems)
    }
}

/// One `[[models]]` entry: its file, device, quantization and limits.
fn convert_model(c: &mut Checker, i: usize, m: &ModelFile, base: &Path) -> ModelConfig {
    let at = |field: &str| format!("models[{i}].{field}");
    let path = base.join(&m.path);
    let wanted = match m.kind {
        ModelKind::Generate => path.is_file(),
        ModelKind::Embed => {
            path.join("model.safetensors").is_file()
                && path.join("config.json").is_file()
                && path.join("tokenizer.json").is_file()
        }
    };
    if !wanted {
        let what = match m.kind {
            ModelKind::Generate => "a GGUF file",
            ModelKind::Embed => {
                "a directory with model.safetensors, config.json and tokenizer.json"
            }
        };
        c.fail(
            at("path"),
            format!(
                "`{}` is not {what} (scripts/install.sh installs the default models into $GANTRY_HOME; scripts/setup.sh into the source tree)",
                path.display()
            ),
        );
    }
    let device = match m.device.as_deref().unwrap_or("cpu") {
        "cpu" => DeviceSpec::Cpu,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => DeviceSpec::Cuda(n),
            _ => {
                c.fail(
                    at("device"),
                    format!("`{other}` is not a device: use `cpu` or `cuda:N` (e.g. `cuda:0`)"),
                );
                DeviceSpec::Cpu
            }
        },
    };
    let quantization = m.quantization.unwrap_or(match device {
        DeviceSpec::Cpu => Quantization::Q8_0,
        DeviceSpec::Cuda(_) => Quantization::Bf16,
    });
    if m.kind == ModelKind::Embed && m.quantization.is_some() {
        c.fail(at("quantization"), "applies to generation models only");
    }
    let limits = ModelLimits {
        max_running: c.at_least_one(at("max_running"), m.max_running, DEFAULT_MAX_RUNNING) as usize,
        max_queued: c.at_least_one(at("max_queued"), m.max_queued, DEFAULT_MAX_QUEUED) as usize,
        max_context: c.at_least_one(at("max_context"), m.max_context, DEFAULT_MAX_CONTEXT) as usize,
        max_tokens: c.at_least_one(
            at("max_tokens"),
            m.max_tokens,
            DEFAULT_MAX_TOKENS.min(
                m.max_context
                    .unwrap_or(DEFAULT_MAX_CONTEXT)
                    .saturating_sub(1)
                    .max(1),
            ),
        ) as usize,
        max_batch_tokens: c.at_least_one(
            at("max_batch_tokens"),
            m.max_batch_tokens,
            DEFAULT_MAX_BATCH_TOKENS,
        ) as usize,
        max_batch: c.at_least_one(at("max_batch"), m.max_batch, DEFAULT_MAX_BATCH) as usize,
        kv_cache_budget_bytes: m.kv_cache_budget_bytes,
        prefix_cache_bytes: m.prefix_cache_bytes.unwrap_or(DEFAULT_PREFIX_CACHE_BYTES),
    };
    if m.kind == ModelKind::Embed && m.prefix_cache_bytes.is_some() {
        c.fail(
            at("prefix_cache_bytes"),
            "applies to generation models only",
        );
    }
    if m.kind == ModelKind::Generate
        && m.max_tokens.is_some()
        && limits.max_tokens >= limits.max_context
    {
        c.fail(
            at("max_tokens"),
            format!(
                "must be below max_context ({}) to leave room for the prompt",
                limits.max_context
            ),
        );
    }
    let sampling = m.sampling.clone().unwrap_or_default();
    if m.sampling.is_some() && m.kind == ModelKind::Embed {
        c.fail(at("sampling"), "only generation models sample");
    }
    if let Err((field, why)) = gantry_proto::limits::check_sampling(
        sampling.temperature,
        sampling.top_p,
        sampling.repetition_penalty,
    ) {
        c.fail(at(&format!("sampling.{field}")), why);
    }
    ModelConfig {
        name: m.name.clone(),
        kind: m.kind,
        path,
        device,
        quantization,
        limits,
        sampling: SamplingDefaults {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            repetition_penalty: sampling.repetition_penalty,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse_backend(text, "t.toml", Path::new("/nonexistent")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn sampling_defaults_are_checked_like_a_requests() {
        let p = problems(
            r#"
[[models]]
name = "m"
kind = "generate"
path = "missing.gguf"
[models.sampling]
temperature = 3.0
[[models]]
name = "e"
kind = "embed"
path = "missing"
[models.sampling]
top_p = 0.5
"#,
        )
        .join("\n");
        assert!(
            p.contains("models[0].sampling.temperature: temperature must be between 0 and 2"),
            "{p}"
        );
        assert!(
            p.contains("models[1].sampling: only generation models sample"),
            "{p}"
        );
    }

    #[test]
    fn every_bad_field_is_named_with_its_limit() {
        let p = problems(
            r#"
[backend]
listen = "nowhere"
[[models]]
name = "m"
kind = "generate"
path = "missing.gguf"
device = "gpu"
max_running = 0
max_tokens = 4096
max_context = 1024
"#,
        );
        let all = p.join("\n");
        assert!(
            all.contains("backend.listen: `nowhere` is not an `ip:port`"),
            "{all}"
        );
        assert!(
            all.contains("models[0].path: `/nonexistent/missing.gguf` is not a GGUF file"),
            "{all}"
        );
        assert!(
            all.contains("models[0].device: `gpu` is not a device"),
            "{all}"
        );
        assert!(
            all.contains("models[0].max_running: must be at least 1"),
            "{all}"
        );
        assert!(
            all.contains("models[0].max_tokens: must be below max_context (1024)"),
            "{all}"
        );
    }

    #[test]
    fn the_default_max_tokens_leaves_room_for_a_prompt_in_a_small_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
        let cfg = parse_backend(
            "[[models]]\nname = \"m\"\nkind = \"generate\"\npath = \"m.gguf\"\nmax_context = 512\n",
            "t",
            dir.path(),
        )
        .unwrap();
        assert_eq!(cfg.models[0].limits.max_tokens, 511);
    }

    #[test]
    fn quantizations_are_named_as_llama_cpp_names_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
        for (name, want) in [
            ("q8_0", Quantization::Q8_0),
            ("q4_0", Quantization::Q4_0),
            ("q4_k", Quantization::Q4K),
            ("keep", Quantization::Keep),
            ("bf16", Quantization::Bf16),
        ] {
            let text = format!(
                "[[models]]\nname = \"m\"\nkind = \"generate\"\npath = \"m.gguf\"\nquantization = \"{name}\"\n"
            );
            let cfg = parse_backend(&text, "t", dir.path()).unwrap();
            assert_eq!(cfg.models[0].quantization, want, "{name}");
        }
    }

    #[test]
    fn unknown_fields_get_the_nearest_name() {
        let p =
            problems("[[models]]\nname = \"m\"\nkind = \"embed\"\npath = \".\"\nmax_runing = 3\n");
        assert!(p[0].contains("did you mean `max_running`?"), "{p:?}");
    }

    #[test]
    fn cuda_devices_parse_and_default_to_bf16() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"x").unwrap();
        let cfg = parse_backend(
            "[[models]]\nname = \"m\"\nkind = \"generate\"\npath = \"m.gguf\"\ndevice = \"cuda:1\"\n",
            "t",
            dir.path(),
        )
        .unwrap();
        assert_eq!(cfg.models[0].device, DeviceSpec::Cuda(1));
        assert_eq!(cfg.models[0].quantization, Quantization::Bf16);
        assert_eq!(cfg.models[0].limits.max_tokens, DEFAULT_MAX_TOKENS as usize);
        assert_eq!(cfg.listen.to_string(), DEFAULT_BACKEND_LISTEN);
    }
}
