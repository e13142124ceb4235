//! Export a llama GGUF to the Hugging Face layout (`config.json` +
//! `model.safetensors`), so PyTorch `transformers` and stock candle
//! `models::llama` load exactly the weights Gantry serves: the baselines of the GPU
//! benchmark (`bench/torch_baseline.py`, `scripts/device-check.sh`) run on the same
//! numbers.
//!
//! GGUF stores Q and K rows permuted for interleaved rotary embeddings (llama.cpp's
//! converter permutes them; Gantry applies `rope_i`); the HF layout keeps them in
//! the order for half-split rotary embeddings (`rope`). The export undoes the
//! permutation, so both layouts compute the same function. Quantised tensors are
//! dequantised to `dtype`.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn meta(ct: &gguf_file::Content, key: &str) -> anyhow::Result<usize> {
    Ok(ct
        .metadata
        .get(key)
        .ok_or_else(|| anyhow::anyhow!("GGUF metadata `{key}` is missing"))?
        .to_u32()? as usize)
}

/// Undo llama.cpp's Q/K permutation: rows grouped per head as (2, head_dim/2)
/// become (head_dim/2, 2), i.e. `reshape(heads, 2, hd/2, cols)` was applied to the
/// HF order; this applies its inverse.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The weight type called `name`: `f32`, `bf16` or `f16`.
pub fn dtype_named(name: &str) -> anyhow::Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("weight type `{other}`: use f32, bf16 or f16"),
    })
}

/// Write `dir/config.json` and `dir/model.safetensors` for the llama GGUF at
/// `gguf`, with weights in `dtype` (`F32`, `BF16` or `F16`).
pub fn export_llama(gguf: &Path, dir: &Path, dtype: DType) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(gguf)?;
    let ct = gguf_file::Content::read(&mut file).map_err(|e| e.with_path(gguf))?;
    let n_layer = meta(&ct, "llama.block_count")?;
    let hidden = meta(&ct, "llama.embedding_length")?;
    let n_head = meta(&ct, "llama.attention.head_count")?;
    let n_kv_head = meta(&ct, "llama.attention.head_count_kv")?;
    let ffn = meta(&ct, "llama.feed_forward_length")?;
    let context = meta(&ct, "llama.context_length")?;
    let f32_meta = |key: &str, default: f32| {
        ct.metadata
            .get(key)
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(default)
    };
    let rope_theta = f32_meta("llama.rope.freq_base", 10_000.0);
    let rms_eps = f32_meta("llama.attention.layer_norm_rms_epsilon", 1e-5);
    let token = |key: &str| ct.metadata.get(key).and_then(|v| v.to_u32().ok());
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    for name in names {
        let t = ct.tensor(&mut file, &name, &device)?.dequantize(&device)?;
        let hf = match name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output.weight" => "lm_head.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            other => {
                let rest = other
                    .strip_prefix("blk.")
                    .ok_or_else(|| anyhow::anyhow!("unexpected tensor `{other}`"))?;
                let (layer, part) = rest
                    .split_once('.')
                    .ok_or_else(|| anyhow::anyhow!("unexpected tensor `{other}`"))?;
                let part = match part {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    _ => anyhow::bail!("unexpected tensor `{other}`"),
                };
                format!("model.layers.{layer}.{part}")
            }
        };
        let t = if name.ends_with("attn_q.weight") {
            unpermute(&t, n_head)?
        } else if name.ends_with("attn_k.weight") {
            unpermute(&t, n_kv_head)?
        } else {
            t
        };
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .ok_or_else(|| anyhow::anyhow!("no token_embd.weight"))?
        .dims2()?
        .0;
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => anyhow::bail!("export as f32, bf16 or f16, not {other:?}"),
    };
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": hidden / n_head,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": tied,
        "bos_token_id": token("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token("tokenizer.ggml.eos_token_id"),
        "torch_dtype": torch_dtype,
    });
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}
