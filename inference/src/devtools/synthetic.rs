//! Same-shape synthetic models: a llama GGUF file with deterministic random weights.
//!
//! The real SmolLM2 file (98 MB) does not fit in one transfer to a GPU machine, so
//! device checks write a model with the exact same shapes there and compare devices
//! (and engines) on it. The tokenizer is a byte-level vocabulary with no merges:
//! every byte is one token, plus the chat control tokens and filler tokens up to
//! the vocabulary size.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// The shape of a synthetic model.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticShape {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Feed-forward inner size.
    pub ffn: usize,
    /// Vocabulary size (at least 300).
    pub vocab: usize,
    /// Context length.
    pub context_length: usize,
}

impl SyntheticShape {
    /// SmolLM2-135M's shapes.
    pub const SMOLLM2_135M: SyntheticShape = SyntheticShape {
        n_layer: 30,
        hidden: 576,
        n_head: 9,
        n_kv_head: 3,
        ffn: 1536,
        vocab: 49152,
        context_length: 8192,
    };

    /// A tiny model for quick tests.
    pub const TINY: SyntheticShape = SyntheticShape {
        n_layer: 2,
        hidden: 64,
        n_head: 4,
        n_kv_head: 2,
        ffn: 128,
        vocab: 320,
        context_length: 512,
    };
}

/// GPT-2's byte → printable character map (the byte-level BPE alphabet).
fn byte_symbols() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut map = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).expect("valid char");
    }
    map
}

/// Write a synthetic llama GGUF to `path`: weights are Gaussian with a fixed
/// `seed` (Q8_0 matrices, f32 norms), so every machine writes the same file.
pub fn write_llama_gguf(path: &Path, shape: SyntheticShape, seed: u64) -> anyhow::Result<()> {
    write_llama_gguf_with(path, shape, seed, 0.02)
}

/// [`write_llama_gguf`] with the standard deviation of the block weights given:
/// larger values make attention sharper (tests of the attention path need that).
pub fn write_llama_gguf_with(
    path: &Path,
    shape: SyntheticShape,
    seed: u64,
    block_std: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(shape.vocab >= 300, "vocab must be at least 300");
    let tensors = synthetic_tensors(shape, seed, block_std)?;
    let metadata = synthetic_metadata(shape);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut file, &metadata, &tensors)?;
    Ok(())
}

/// Random weights (seeded) for every tensor of a llama model of `shape`.
fn synthetic_tensors(
    shape: SyntheticShape,
    seed: u64,
    block_std: f64,
) -> candle_core::Result<Vec<(String, QTensor)>> {
    let device = Device::Cpu;
    let head_dim = shape.hidden / shape.n_head;
    let kv = shape.n_kv_head * head_dim;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = |rows: usize, cols: usize, std: f64| -> candle_core::Result<QTensor> {
        // Box-Muller: two uniforms give two independent standard normals.
        let mut values = Vec::with_capacity(rows * cols + 1);
        while values.len() < rows * cols {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let a = std::f64::consts::TAU * u2;
            values.push((r * a.cos()) as f32);
            values.push((r * a.sin()) as f32);
        }
        values.truncate(rows * cols);
        let t = Tensor::from_vec(values, (rows, cols), &device)?;
        QTensor::quantize(&t, GgmlDType::Q8_0)
    };
    let ones = |n: usize| -> candle_core::Result<QTensor> {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &device)?,
            GgmlDType::F32,
        )
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            normal(shape.vocab, shape.hidden, 0.25)?,
        ),
        // An untied LM head (a tied one would mostly predict the input token
        // again); its scale makes logits peaky enough that greedy choices are
        // well separated, yet sampling still varies.
        (
            "output.weight".into(),
            normal(shape.vocab, shape.hidden, 0.25)?,
        ),
        ("output_norm.weight".into(), ones(shape.hidden)?),
    ];
    let w = block_std;
    for i in 0..shape.n_layer {
        let p = format!("blk.{i}");
        tensors.push((format!("{p}.attn_norm.weight"), ones(shape.hidden)?));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(shape.hidden)?));
        tensors.push((
            format!("{p}.attn_q.weight"),
            normal(shape.hidden, shape.hidden, w)?,
        ));
        tensors.push((format!("{p}.attn_k.weight"), normal(kv, shape.hidden, w)?));
        tensors.push((format!("{p}.attn_v.weight"), normal(kv, shape.hidden, w)?));
        tensors.push((
            format!("{p}.attn_output.weight"),
            normal(shape.hidden, shape.hidden, w)?,
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            normal(shape.ffn, shape.hidden, w)?,
        ));
        tensors.push((
            format!("{p}.ffn_up.weight"),
            normal(shape.ffn, shape.hidden, w)?,
        ));
        tensors.push((
            format!("{p}.ffn_down.weight"),
            normal(shape.hidden, shape.ffn, w)?,
        ));
    }
    Ok(tensors)
}

/// The metadata of a llama model of `shape`: architecture, a byte-level
/// tokenizer with the chat specials, and a ChatML template.
fn synthetic_metadata(shape: SyntheticShape) -> Vec<(&'static str, Value)> {
    let head_dim = shape.hidden / shape.n_head;
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let bytes = byte_symbols();
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut types: Vec<Value> = specials.iter().map(|_| Value::I32(3)).collect();
    for c in &bytes {
        tokens.push(c.to_string());
        types.push(Value::I32(1));
    }
    while tokens.len() < shape.vocab {
        tokens.push(format!("<filler{}>", tokens.len()));
        types.push(Value::I32(1));
    }
    let u32v = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("gantry-synthetic".into())),
        ("llama.block_count", u32v(shape.n_layer)),
        ("llama.context_length", u32v(shape.context_length)),
        ("llama.embedding_length", u32v(shape.hidden)),
        ("llama.feed_forward_length", u32v(shape.ffn)),
        ("llama.attention.head_count", u32v(shape.n_head)),
        ("llama.attention.head_count_kv", u32v(shape.n_kv_head)),
        ("llama.rope.freq_base", Value::F32(100_000.0)),
        ("llama.rope.dimension_count", u32v(head_dim)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u32v(shape.vocab)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            ),
        ),
    ]
}
