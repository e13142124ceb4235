//! Loading a llama GGUF file: the shape from its metadata, the tokenizer and chat
//! vocabulary, and the weights converted to the format the forward runs in
//! (fused, padded for the block format and tiled kernels, re-quantised as configured).

use super::{Block, Llama, LlamaShape};
use crate::chat::ChatTemplate;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use gantry_config::backend::Quantization;
use std::path::Path;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Everything a GGUF file gives a generation model.
pub struct LoadedGguf {
    /// The model.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if the file has one.
    pub chat_template: Option<ChatTemplate>,
    /// End-of-sequence token ids.
    pub eos: Vec<u32>,
}

/// candle's tiled int8 matmul kernels on x86 (AVX-512 VNNI / AVX-VNNI) need the
/// inner dimension to be a multiple of this; without them its Q8_0 matmul is a
/// per-row dot-product loop that batching cannot speed up.
const TILED_K: usize = 256;

/// Zero columns to append to a `hidden`-wide state so every matmul's inner
/// dimension suits the weights' format and kernels:
/// - q4_k always: its super-block holds 256 weights of a row, on every device
///   and with or without the tiled kernels (a CI machine without VNNI found
///   SmolLM2's 576 refused);
/// - q8_0 where candle's tiled kernels run (`tiled_kernels`: CPU with VNNI), to
///   a multiple of [`TILED_K`]. Measured here for SmolLM2 (576 → 768): 4.8×
///   faster at one row and 7.6× per row at eight rows, despite a third more
///   arithmetic;
/// - otherwise none.
///
/// The padding is exact: padded weights and state columns are zero, and the RMS
/// norms are rescaled so they still average over `hidden` columns.
fn hidden_padding(hidden: usize, quantization: Quantization, tiled_kernels: bool) -> usize {
    let multiple = match quantization {
        Quantization::Q4K => GgmlDType::Q4K.block_size(),
        Quantization::Q8_0 if tiled_kernels => TILED_K,
        _ => return 0,
    };
    hidden.next_multiple_of(multiple) - hidden
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::env::var("GANTRY_NO_TILED").is_err()
            && ((is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> candle_core::Result<usize> {
    ct.metadata
        .get(key)
        .ok_or_else(|| candle_core::Error::msg(format!("GGUF metadata `{key}` is missing")))?
        .to_u32()
        .map(|v| v as usize)
}

fn meta_f32(ct: &gguf_file::Content, key: &str, default: f32) -> candle_core::Result<f32> {
    Ok(ct
        .metadata
        .get(key)
        .map(|v| v.to_f32())
        .transpose()?
        .unwrap_or(default))
}

impl Llama {
    /// Load a llama GGUF file onto `device`, converting weights per `quantization`.
    pub fn load(
        path: &Path,
        device: &Device,
        quantization: Quantization,
    ) -> anyhow::Result<LoadedGguf> {
        let mut file = std::fs::File::open(path)?;
        let ct = gguf_file::Content::read(&mut file)
            .map_err(|e| e.with_path(path))
            .map_err(anyhow::Error::from)?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(
            arch == "llama",
            "{}: architecture `{arch}` is not supported (only `llama`)",
            path.display()
        );
        let shape = shape_from_metadata(&ct)?;
        let tokenizer = crate::tokenizer::from_gguf(&ct)?;
        let (chat_template, eos) = chat_vocabulary(&ct, &tokenizer)?;
        let mut weights = Weights::new(&ct, &mut file, device, quantization, shape.hidden);
        let model = weights.model(shape)?;
        Ok(LoadedGguf {
            model,
            tokenizer,
            chat_template,
            eos,
        })
    }
}

/// The architecture numbers in a llama GGUF file's metadata (the vocabulary size
/// is read from the embedding table when the weights load).
fn shape_from_metadata(ct: &gguf_file::Content) -> anyhow::Result<LlamaShape> {
    let n_head = meta_u32(ct, "llama.attention.head_count")?;
    let hidden = meta_u32(ct, "llama.embedding_length")?;
    let shape = LlamaShape {
        n_layer: meta_u32(ct, "llama.block_count")?,
        n_head,
        n_kv_head: meta_u32(ct, "llama.attention.head_count_kv")?,
        head_dim: hidden / n_head,
        hidden,
        ffn: meta_u32(ct, "llama.feed_forward_length")?,
        vocab: 0,
        context_length: meta_u32(ct, "llama.context_length")?,
        rms_eps: meta_f32(ct, "llama.attention.layer_norm_rms_epsilon", 1e-5)? as f64,
        rope_base: meta_f32(ct, "llama.rope.freq_base", 10_000.0)?,
    };
    anyhow::ensure!(
        shape.n_head * shape.head_dim == shape.hidden,
        "attention width {} differs from the hidden size {}",
        shape.n_head * shape.head_dim,
        shape.hidden
    );
    Ok(shape)
}

/// The chat template (if the file has one) and every token that ends a turn: the
/// file's end-of-sequence id and the chat models' end-of-turn tokens.
fn chat_vocabulary(
    ct: &gguf_file::Content,
    tokenizer: &Tokenizer,
) -> anyhow::Result<(Option<ChatTemplate>, Vec<u32>)> {
    let token_id = |key: &str| ct.metadata.get(key)?.to_u32().ok();
    let token_text = |key: &str| tokenizer.id_to_token(token_id(key)?);
    let bos = token_text("tokenizer.ggml.bos_token_id").unwrap_or_default();
    let eos_text = token_text("tokenizer.ggml.eos_token_id").unwrap_or_default();
    let chat_template = match ct.metadata.get("tokenizer.chat_template") {
        Some(v) => Some(ChatTemplate::new(v.to_string()?, &bos, &eos_text)?),
        None => None,
    };
    let mut eos: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")
        .into_iter()
        .collect();
    for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    Ok((chat_template, eos))
}

/// Reads a GGUF file's tensors onto a device in the format the forward runs in.
struct Weights<'a> {
    ct: &'a gguf_file::Content,
    file: &'a mut std::fs::File,
    device: &'a Device,
    quantization: Quantization,
    /// The dtype of dense weights and activations.
    dtype: DType,
    /// Zero columns appended to the hidden state (see [`hidden_padding`]).
    pad: usize,
    /// Scale of the RMS norm weights so the mean square over `hidden + pad`
    /// columns stands for the mean over `hidden`.
    rescale: f64,
}

impl<'a> Weights<'a> {
    fn new(
        ct: &'a gguf_file::Content,
        file: &'a mut std::fs::File,
        device: &'a Device,
        quantization: Quantization,
        hidden: usize,
    ) -> Self {
        let pad = hidden_padding(hidden, quantization, device.is_cpu() && has_vnni());
        Self {
            ct,
            file,
            device,
            quantization,
            dtype: match quantization {
                Quantization::Bf16 => DType::BF16,
                _ => DType::F32,
            },
            pad,
            rescale: (hidden as f64 / (hidden + pad) as f64).sqrt(),
        }
    }

    /// The whole model: embedding and LM head, blocks, final norm, rotary tables.
    fn model(&mut self, mut shape: LlamaShape) -> anyhow::Result<Llama> {
        // The hidden width is padded to the block (see `hidden_padding`); the
        // feed-forward width, the down projection's inner dimension, is not.
        if let Some(format) = self.block_format() {
            let block = format.block_size();
            anyhow::ensure!(
                shape.ffn.is_multiple_of(block),
                "`quantization`: {format:?} stores rows in blocks of {block} weights, but \
                 this model's feed-forward width is {}; choose `keep` or `bf16`",
                shape.ffn
            );
        }
        let (embed, lm_head) = self.embedding_and_head(&mut shape)?;
        let norm = self.norm("output_norm.weight")?;
        let blocks = (0..shape.n_layer)
            .map(|i| self.block(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (cos, sin) = rope_tables(&shape, self.device, self.dtype)?;
        let host_rope = if self.device.is_cpu() && self.dtype == DType::F32 {
            Some((
                cos.flatten_all()?.to_vec1::<f32>()?,
                sin.flatten_all()?.to_vec1::<f32>()?,
            ))
        } else {
            None
        };
        let pad = self.pad;
        Ok(Llama {
            host_rope,
            shape,
            device: self.device.clone(),
            dtype: self.dtype,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            pad,
            norm_eps: (shape.rms_eps * shape.hidden as f64 / (shape.hidden + pad) as f64) as f32,
        })
    }

    /// The block format weights are re-quantised to, if the configuration
    /// names one (`keep` and `bf16` do not).
    fn block_format(&self) -> Option<GgmlDType> {
        match self.quantization {
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4_0 => Some(GgmlDType::Q4_0),
            Quantization::Q4K => Some(GgmlDType::Q4K),
            Quantization::Keep | Quantization::Bf16 => None,
        }
    }

    fn raw(&mut self, name: &str) -> candle_core::Result<QTensor> {
        self.ct.tensor(self.file, name, self.device)
    }

    /// The embedding table (padded like the hidden state) and the LM head, which
    /// shares the table when the file ties them and it already has the wanted
    /// format. Sets the shape's vocabulary size.
    fn embedding_and_head(
        &mut self,
        shape: &mut LlamaShape,
    ) -> candle_core::Result<(QMatMul, QMatMul)> {
        let embed_q = self.raw("token_embd.weight")?;
        shape.vocab = embed_q.shape().dims2()?.0;
        let embed_q = if self.pad > 0 {
            let dense = embed_q
                .dequantize(self.device)?
                .pad_with_zeros(1, 0, self.pad)?;
            QTensor::quantize(&dense, GgmlDType::Q8_0)?
        } else {
            embed_q
        };
        let embed_q = Arc::new(embed_q);
        let wanted = match self.quantization {
            Quantization::Keep => Some(embed_q.dtype()),
            _ => self.block_format(),
        };
        let lm_head = match self.raw("output.weight") {
            Ok(t) => self.convert(vec![t], 0, self.pad)?,
            Err(_) if wanted == Some(embed_q.dtype()) => QMatMul::from_arc(embed_q.clone())?,
            Err(_) if self.quantization == Quantization::Bf16 => {
                QMatMul::Tensor(embed_q.dequantize(self.device)?.to_dtype(DType::BF16)?)
            }
            Err(_) => {
                let table = self.raw("token_embd.weight")?;
                self.convert(vec![table], 0, self.pad)?
            }
        };
        Ok((QMatMul::from_arc(embed_q)?, lm_head))
    }

    /// Transformer block `i`, with q|k|v and gate|up fused into one matmul each.
    fn block(&mut self, i: usize) -> candle_core::Result<Block> {
        let pad = self.pad;
        let name = |part: &str| format!("blk.{i}.{part}.weight");
        Ok(Block {
            attn_norm: self.norm(&name("attn_norm"))?,
            qkv: self.matmul(&[&name("attn_q"), &name("attn_k"), &name("attn_v")], 0, pad)?,
            wo: self.matmul(&[&name("attn_output")], pad, pad)?,
            ffn_norm: self.norm(&name("ffn_norm"))?,
            gate_up: self.matmul(&[&name("ffn_gate"), &name("ffn_up")], 0, pad)?,
            down: self.matmul(&[&name("ffn_down")], pad, 0)?,
        })
    }

    /// The named weights as one matmul (see [`Weights::convert`]).
    fn matmul(
        &mut self,
        names: &[&str],
        pad_n: usize,
        pad_k: usize,
    ) -> candle_core::Result<QMatMul> {
        let parts = names
            .iter()
            .map(|n| self.raw(n))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.convert(parts, pad_n, pad_k)
    }

    /// Weights used as a matmul: concatenated along the output dimension,
    /// zero-padded (`pad_n` output rows, `pad_k` input columns) and converted to
    /// the configured format.
    fn convert(
        &self,
        parts: Vec<QTensor>,
        pad_n: usize,
        pad_k: usize,
    ) -> candle_core::Result<QMatMul> {
        let target = self.block_format();
        if parts.len() == 1
            && pad_n == 0
            && pad_k == 0
            && target.is_none_or(|t| t == parts[0].dtype())
            && self.dtype == DType::F32
        {
            return QMatMul::from_qtensor(parts.into_iter().next().expect("one part"));
        }
        let source_dtype = parts[0].dtype();
        let dense = parts
            .iter()
            .map(|p| p.dequantize(self.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dense = Tensor::cat(&dense, 0)?
            .pad_with_zeros(0, 0, pad_n)?
            .pad_with_zeros(1, 0, pad_k)?;
        match (self.quantization, target) {
            (Quantization::Bf16, _) => Ok(QMatMul::Tensor(dense.to_dtype(DType::BF16)?)),
            (_, Some(t)) => QMatMul::from_qtensor(QTensor::quantize(&dense, t)?),
            (_, None) => QMatMul::from_qtensor(QTensor::quantize(&dense, source_dtype)?),
        }
    }

    /// An RMS norm weight vector, padded with zeros and rescaled so the mean
    /// square over `hidden + pad` columns stands for the mean over `hidden` (the
    /// epsilon is scaled to match, see `Llama::norm_eps`).
    fn norm(&mut self, name: &str) -> candle_core::Result<Tensor> {
        let v = self.raw(name)?.dequantize(self.device)?;
        let v = if self.pad > 0 {
            (v * self.rescale)?.pad_with_zeros(0, 0, self.pad)?
        } else {
            v
        };
        v.to_dtype(self.dtype)
    }
}

/// Rotary angle tables `[context, head_dim/2]`: cosines and sines.
fn rope_tables(
    shape: &LlamaShape,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = shape.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / shape.rope_base.powf(2.0 * i as f32 / shape.head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let positions = Tensor::arange(0u32, shape.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((shape.context_length, 1))?;
    let angles = positions.matmul(&inv)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_pads_the_hidden_width_to_its_block_with_or_without_tiled_kernels() {
        for tiled in [false, true] {
            assert_eq!(
                hidden_padding(576, Quantization::Q4K, tiled),
                192,
                "{tiled}"
            );
            assert_eq!(hidden_padding(768, Quantization::Q4K, tiled), 0, "{tiled}");
            assert_eq!(hidden_padding(576, Quantization::Q4_0, tiled), 0, "{tiled}");
            assert_eq!(hidden_padding(576, Quantization::Bf16, tiled), 0, "{tiled}");
        }
        assert_eq!(hidden_padding(576, Quantization::Q8_0, true), 192);
        assert_eq!(hidden_padding(576, Quantization::Q8_0, false), 0);
    }
}
