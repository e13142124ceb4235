//! A llama-architecture decoder with a *ragged batched* forward.
//!
//! candle's `quantized_llama` runs one sequence at a time (its forward slices the
//! last position non-contiguously, which the quantized matmuls reject for a batch).
//! This model runs one forward for a whole batch of sequences, each with its own
//! KV cache and position, and each contributing any number of new tokens — a full
//! prompt (prefill), a prompt chunk, or one token (decode):
//!
//! * the new tokens of all sequences are stacked into one `[tokens, hidden]`
//!   matrix, so every weight matmul (fused q|k|v, output, fused gate|up, down, LM
//!   head) reads the weights once per step for the whole batch;
//! * rotary embeddings use a per-row position table, so rows from different
//!   sequences at different positions share one kernel call;
//! * attention is per sequence, against that sequence's own cache, with a causal
//!   mask only where a sequence feeds more than one token.
//!
//! Weights come from a GGUF file and may be re-quantised at load (Q4_1 has only a
//! scalar CPU kernel in candle; Q8_0 and Q4_0 have SIMD ones).

use crate::host_attention::{self, SeqRows};
use crate::kv_blocks::{BlockId, BlockLayout, KvBlocks};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};
use gantry_proto::prefix::KV_BLOCK_TOKENS;

mod load;

pub use load::LoadedGguf;

/// KV cache capacity grows in steps of this many tokens.
const KV_GROWTH_TOKENS: usize = 128;

/// The architecture numbers of a model, from GGUF metadata.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Feed-forward inner size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// RMS norm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency.
    pub rope_base: f32,
}

struct Block {
    attn_norm: Tensor,
    /// q, k and v projections in one matrix: `[hidden + 2·kv_width, hidden]`.
    qkv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    /// gate and up projections in one matrix: `[2·ffn, hidden]`.
    gate_up: QMatMul,
    down: QMatMul,
}

/// A loaded model.
pub struct Llama {
    shape: LlamaShape,
    device: Device,
    dtype: DType,
    embed: QMatMul,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: QMatMul,
    cos: Tensor,
    sin: Tensor,
    /// Zero columns appended to the hidden state (see `load::hidden_padding`).
    pad: usize,
    /// RMS norm epsilon, adjusted for the padding.
    norm_eps: f32,
    /// Rotary tables `[context, head_dim/2]` in host memory, when attention runs
    /// on the host (CPU, f32).
    host_rope: Option<(Vec<f32>, Vec<f32>)>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("shape", &self.shape)
            .field("device", &self.device)
            .finish()
    }
}

/// The KV cache of one sequence, of which the first `len` positions are filled:
/// on the host, blocks of a [`KvBlocks`] (shared by prefix); on a device, per
/// layer, keys and values `[kv_heads, capacity, head_dim]` of its own.
pub struct SeqCache {
    /// Device caches (tensor attention).
    layers: Vec<(Tensor, Tensor)>,
    /// Host cache blocks (CPU attention, see [`crate::host_attention`]).
    blocks: Vec<BlockId>,
    len: usize,
    capacity: usize,
}

impl SeqCache {
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated for this cache on a device (host blocks are counted
    /// by their [`KvBlocks`], where shared ones count once).
    pub fn device_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Its host blocks, first position first.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Start an empty cache with `blocks` already filled (a prefix taken from
    /// a [`KvBlocks`]).
    pub fn adopt_prefix(&mut self, blocks: Vec<BlockId>) {
        debug_assert!(self.len == 0 && self.blocks.is_empty());
        self.len = blocks.len() * KV_BLOCK_TOKENS;
        self.blocks = blocks;
    }

    /// Its host blocks, handed back (to release them); the cache is empty after.
    pub fn take_blocks(&mut self) -> Vec<BlockId> {
        self.len = 0;
        std::mem::take(&mut self.blocks)
    }
}

impl Llama {
    /// The model's shape.
    pub fn shape(&self) -> &LlamaShape {
        &self.shape
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty KV cache for a new sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache {
            layers: Vec::new(),
            blocks: Vec::new(),
            len: 0,
            capacity: 0,
        }
    }

    /// True when the KV cache lives in host blocks ([`KvBlocks`], shareable by
    /// prefix); false on a device, where each sequence has its own tensors.
    pub fn uses_blocks(&self) -> bool {
        self.host_rope.is_some()
    }

    /// The shape of a host KV block for this model.
    pub fn block_layout(&self) -> BlockLayout {
        BlockLayout {
            n_layer: self.shape.n_layer,
            kv_width: self.shape.n_kv_head * self.shape.head_dim,
        }
    }

    /// Bytes of KV cache one token takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.shape.n_layer
            * self.shape.n_kv_head
            * self.shape.head_dim
            * self.dtype.size_in_bytes()
    }

    fn reserve(&self, cache: &mut SeqCache, needed: usize) -> candle_core::Result<()> {
        if needed <= cache.capacity {
            return Ok(());
        }
        let capacity = needed.div_ceil(KV_GROWTH_TOKENS) * KV_GROWTH_TOKENS;
        let s = &self.shape;
        let mut layers = Vec::with_capacity(s.n_layer);
        for l in 0..s.n_layer {
            let k = Tensor::zeros(
                (s.n_kv_head, capacity, s.head_dim),
                self.dtype,
                &self.device,
            )?;
            let v = Tensor::zeros(
                (s.n_kv_head, capacity, s.head_dim),
                self.dtype,
                &self.device,
            )?;
            if cache.len > 0 {
                let (ok, ov) = &cache.layers[l];
                k.slice_set(&ok.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&ov.narrow(1, 0, cache.len)?.contiguous()?, 1, 0)?;
            }
            layers.push((k, v));
        }
        cache.layers = layers;
        cache.capacity = capacity;
        Ok(())
    }

    /// One batched forward. Each entry feeds `tokens` (at least one) to the sequence
    /// owning `cache`, at the positions after what the cache holds; host caches
    /// take the blocks they grow into from `kv`. Returns the logits of each
    /// entry's last token: `[entries, vocab]`, f32.
    pub fn forward(
        &self,
        kv: &mut KvBlocks,
        batch: &mut [(&[u32], &mut SeqCache)],
    ) -> candle_core::Result<Tensor> {
        let s = self.shape;
        let total: usize = batch.iter().map(|(t, _)| t.len()).sum();
        if batch.is_empty() || batch.iter().any(|(t, _)| t.is_empty()) {
            candle_core::bail!("every sequence in a batch needs at least one token");
        }
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut last_rows = Vec::with_capacity(batch.len());
        for (tokens, cache) in batch.iter_mut() {
            if cache.len + tokens.len() > s.context_length {
                candle_core::bail!(
                    "sequence longer than the model's context ({})",
                    s.context_length
                );
            }
            if self.host_rope.is_some() {
                while cache.blocks.len() * KV_BLOCK_TOKENS < cache.len + tokens.len() {
                    cache.blocks.push(kv.allocate());
                }
            } else {
                self.reserve(cache, cache.len + tokens.len())?;
            }
            ids.extend_from_slice(tokens);
            positions.extend((cache.len..cache.len + tokens.len()).map(|p| p as u32));
            last_rows.push((ids.len() - 1) as u32);
        }
        let half = s.head_dim / 2;
        // Rotary angles of every row's position, where the attention runs.
        let rope = match &self.host_rope {
            Some((cos, sin)) => {
                let gather = |table: &[f32]| -> Vec<f32> {
                    positions
                        .iter()
                        .flat_map(|&p| &table[p as usize * half..(p as usize + 1) * half])
                        .copied()
                        .collect()
                };
                StepRope::Host {
                    cos: gather(cos),
                    sin: gather(sin),
                }
            }
            None => {
                let positions = Tensor::new(positions.as_slice(), &self.device)?;
                StepRope::Device {
                    cos: self.cos.index_select(&positions, 0)?,
                    sin: self.sin.index_select(&positions, 0)?,
                }
            }
        };
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embed.embedding(&ids)?.to_dtype(self.dtype)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, self.norm_eps)?;
            let qkv = block.qkv.forward(&h)?;
            let attn = match &rope {
                StepRope::Host { cos, sin } => self.host_attention(l, &qkv, cos, sin, kv, batch)?,
                StepRope::Device { cos, sin } => self.device_attention(l, &qkv, cos, sin, batch)?,
            };
            x = self.feed_forward(block, (x + block.wo.forward(&attn)?)?)?;
        }
        for (tokens, cache) in batch.iter_mut() {
            cache.len += tokens.len();
        }
        let last_rows = Tensor::new(last_rows.as_slice(), &self.device)?;
        let x = x.index_select(&last_rows, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.norm_eps)?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)
    }
}

/// Rotary angles for one step's rows.
enum StepRope {
    /// `[rows, head_dim/2]` in host memory, for [`host_attention`].
    Host { cos: Vec<f32>, sin: Vec<f32> },
    /// `[rows, head_dim/2]` tensors, for the rotary kernel.
    Device { cos: Tensor, sin: Tensor },
}

impl Llama {
    /// Attention of layer `l` over host caches (CPU, f32): `[rows, hidden + pad]`.
    fn host_attention(
        &self,
        l: usize,
        qkv: &Tensor,
        cos: &[f32],
        sin: &[f32],
        kv: &mut KvBlocks,
        batch: &[(&[u32], &mut SeqCache)],
    ) -> candle_core::Result<Tensor> {
        let s = &self.shape;
        let width = s.n_head * s.head_dim + self.pad;
        let qkv = qkv.flatten_all()?.to_vec1::<f32>()?;
        let mut seqs = Vec::with_capacity(batch.len());
        let mut first_row = 0;
        for (tokens, cache) in batch {
            seqs.push(SeqRows {
                blocks: &cache.blocks,
                past: cache.len,
                first_row,
                rows: tokens.len(),
            });
            first_row += tokens.len();
        }
        let dims = host_attention::Dims {
            n_head: s.n_head,
            n_kv_head: s.n_kv_head,
            head_dim: s.head_dim,
            out_width: width,
        };
        let out = host_attention::attention(dims, l, &qkv, cos, sin, kv, &seqs);
        Tensor::from_vec(out, (first_row, width), &self.device)
    }

    /// Attention of layer `l` with tensor ops over device caches: `[rows, hidden + pad]`.
    fn device_attention(
        &self,
        l: usize,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        batch: &mut [(&[u32], &mut SeqCache)],
    ) -> candle_core::Result<Tensor> {
        let s = &self.shape;
        let total = qkv.dim(0)?;
        let q_width = s.n_head * s.head_dim;
        let kv_width = s.n_kv_head * s.head_dim;
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        // [tokens, heads, dim] → [1, heads, tokens, dim] for the rotary kernel.
        let heads = |start: usize, width: usize, n: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, start, width)?
                .reshape((total, n, s.head_dim))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let q =
            candle_nn::rotary_emb::rope_i(&heads(0, q_width, s.n_head)?, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(q_width, kv_width, s.n_kv_head)?, cos, sin)?
            .squeeze(0)?;
        let v = heads(q_width + kv_width, kv_width, s.n_kv_head)?.squeeze(0)?;
        let mut outputs = Vec::with_capacity(batch.len());
        let mut row = 0;
        for (tokens, cache) in batch.iter_mut() {
            let n = tokens.len();
            let start = cache.len;
            let (kc, vc) = &cache.layers[l];
            kc.slice_set(&k.narrow(1, row, n)?.contiguous()?, 1, start)?;
            vc.slice_set(&v.narrow(1, row, n)?.contiguous()?, 1, start)?;
            let len = start + n;
            let keys = kc.narrow(1, 0, len)?;
            let values = vc.narrow(1, 0, len)?;
            let group = s.n_head / s.n_kv_head;
            // Query heads that share a KV head are stacked as extra rows.
            let q_seq =
                q.narrow(1, row, n)?
                    .contiguous()?
                    .reshape((s.n_kv_head, group * n, s.head_dim))?;
            let mut att = (q_seq.matmul(&keys.t()?)? * scale)?;
            if n > 1 {
                att =
                    att.broadcast_add(&causal_mask(n, group, start, &self.device, self.dtype)?)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let out = att
                .matmul(&values)?
                .reshape((s.n_head, n, s.head_dim))?
                .transpose(0, 1)?
                .reshape((n, q_width))?;
            outputs.push(out);
            row += n;
        }
        let attn = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Tensor::cat(&outputs, 0)?
        };
        if self.pad > 0 {
            attn.pad_with_zeros(1, 0, self.pad)
        } else {
            Ok(attn)
        }
    }

    /// The feed-forward half of a block, residual included.
    fn feed_forward(&self, block: &Block, x: Tensor) -> candle_core::Result<Tensor> {
        let ffn = self.shape.ffn;
        let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, self.norm_eps)?;
        let gate_up = block.gate_up.forward(&h)?;
        let gate = gate_up.narrow(1, 0, ffn)?;
        let up = gate_up.narrow(1, ffn, ffn)?;
        let mlp = (candle_nn::ops::silu(&gate)? * up)?;
        x + block.down.forward(&mlp)?
    }
}

/// Additive causal mask for `n` new tokens after `past` cached ones, with rows
/// laid out as `group` stacked copies of the `n` query positions.
fn causal_mask(
    n: usize,
    group: usize,
    past: usize,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let len = past + n;
    let mut mask = Vec::with_capacity(group * n * len);
    for _ in 0..group {
        for i in 0..n {
            mask.extend((0..len).map(|j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Tensor::from_vec(mask, (group * n, len), device)?.to_dtype(dtype)
}

/// Greedy next tokens for each row of `logits` (`[rows, vocab]`).
pub fn argmax_rows(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}
