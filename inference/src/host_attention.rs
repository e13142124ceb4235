//! Attention for CPU models, in plain Rust over host memory.
//!
//! On the CPU the matmuls are fast (candle's tiled int8 kernels) and what is left
//! of a decode step is the *number* of small tensor ops: per layer and sequence,
//! the tensor formulation of attention needs ~15 of them (slices, copies, cache
//! writes, two matmuls, scale, mask, softmax, reshapes), each with its own
//! allocation and thread-pool dispatch. Here one call per layer rotates the new
//! queries and keys, writes keys and values into each sequence's cache blocks
//! ([`crate::kv_blocks`], `[position][kv_head][head_dim]` per layer and block),
//! and computes causal attention for every new row, rows spread over candle's
//! thread pool. Positions are visited in order whatever blocks hold them, so a
//! row's result does not depend on which blocks were shared.

use crate::kv_blocks::{BlockId, KvBlocks};
use gantry_proto::prefix::KV_BLOCK_TOKENS;

/// Rows of this many or more are spread over threads.
const PARALLEL_MIN_ROWS: usize = 2;

/// Shapes the kernel needs.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Width of an output row (attention width plus zero padding).
    pub out_width: usize,
}

/// Rotate pairs `(x[2i], x[2i+1])` of every head in `x` by the position's angles
/// (llama's interleaved rotary embedding, as GGUF stores q/k weights).
fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums so the compiler can vectorise without reassociating.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// One sequence's share of a step: its cache blocks and where its rows are.
pub struct SeqRows<'a> {
    /// The sequence's blocks, covering at least `past + rows` positions.
    pub blocks: &'a [BlockId],
    /// Positions already cached before this step.
    pub past: usize,
    /// First row of this sequence in the step's `qkv`.
    pub first_row: usize,
    /// Rows (new tokens) of this sequence.
    pub rows: usize,
}

/// Attention of one layer for a whole step.
///
/// `qkv` is `[rows, (n_head + 2·n_kv_head)·head_dim]` (queries, keys, values of
/// every new token, unrotated); `cos`/`sin` are `[rows, head_dim/2]` for each
/// row's position. Returns `[rows, out_width]`, zero beyond the attention width.
pub fn attention(
    d: Dims,
    layer: usize,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    kv: &mut KvBlocks,
    seqs: &[SeqRows<'_>],
) -> Vec<f32> {
    let q = rotated_queries(d, qkv, cos, sin);
    write_keys_values(d, layer, qkv, cos, sin, kv, seqs);
    let kv = &*kv;
    let total_rows = q.len() / (d.n_head * d.head_dim);
    // Which sequence (and position) each row belongs to.
    let mut owner = Vec::with_capacity(total_rows);
    for (i, s) in seqs.iter().enumerate() {
        for j in 0..s.rows {
            owner.push((i, s.past + j));
        }
    }
    // Each sequence's keys and values of this layer, block by block.
    let caches: Vec<Vec<(&[f32], &[f32])>> = seqs
        .iter()
        .map(|s| {
            let used = (s.past + s.rows).div_ceil(KV_BLOCK_TOKENS);
            s.blocks[..used]
                .iter()
                .map(|&b| kv.layer(b, layer))
                .collect()
        })
        .collect();
    let mut out = vec![0f32; total_rows * d.out_width];
    let q_width = d.n_head * d.head_dim;
    let row = |(r, dst): (usize, &mut [f32])| {
        let (seq, pos) = owner[r];
        attend_row(
            d,
            &q[r * q_width..(r + 1) * q_width],
            &caches[seq],
            pos,
            dst,
        );
    };
    if total_rows >= PARALLEL_MIN_ROWS {
        // candle's own pool, the one its matmuls use: with a second pool (rayon)
        // the two spun against each other for the cores (measured at 8 streams on
        // 2 cores: 36–44 ms per step here against 47–50 ms with rayon).
        let rows: Vec<std::sync::Mutex<&mut [f32]>> = out
            .chunks_mut(d.out_width)
            .map(std::sync::Mutex::new)
            .collect();
        candle_core::utils::barrier_pool().execute_chunked(total_rows, |range| {
            for r in range {
                let mut dst = rows[r].lock().unwrap_or_else(|p| p.into_inner());
                row((r, &mut dst));
            }
        });
    } else {
        out.chunks_mut(d.out_width).enumerate().for_each(row);
    }
    out
}

/// The queries of every row, rotated for the row's position: `[rows, q_width]`.
fn rotated_queries(d: Dims, qkv: &[f32], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let q_width = d.n_head * d.head_dim;
    let row_width = q_width + 2 * d.n_kv_head * d.head_dim;
    let half = d.head_dim / 2;
    let total_rows = qkv.len() / row_width;
    let mut q = vec![0f32; total_rows * q_width];
    for (r, (dst, src)) in q
        .chunks_exact_mut(q_width)
        .zip(qkv.chunks_exact(row_width))
        .enumerate()
    {
        dst.copy_from_slice(&src[..q_width]);
        rope(
            dst,
            d.head_dim,
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
    }
    q
}

/// Writes each sequence's new keys (rotated) and values into its blocks.
fn write_keys_values(
    d: Dims,
    layer: usize,
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    kv: &mut KvBlocks,
    seqs: &[SeqRows<'_>],
) {
    let q_width = d.n_head * d.head_dim;
    let kv_width = d.n_kv_head * d.head_dim;
    let row_width = q_width + 2 * kv_width;
    let half = d.head_dim / 2;
    for s in seqs {
        for j in 0..s.rows {
            let r = s.first_row + j;
            let pos = s.past + j;
            let src = &qkv[r * row_width..(r + 1) * row_width];
            let (keys, values) = kv.layer_mut(s.blocks[pos / KV_BLOCK_TOKENS], layer);
            let slot = pos % KV_BLOCK_TOKENS * kv_width..(pos % KV_BLOCK_TOKENS + 1) * kv_width;
            let k = &mut keys[slot.clone()];
            k.copy_from_slice(&src[q_width..q_width + kv_width]);
            rope(
                k,
                d.head_dim,
                &cos[r * half..(r + 1) * half],
                &sin[r * half..(r + 1) * half],
            );
            values[slot].copy_from_slice(&src[q_width + kv_width..]);
        }
    }
}

/// One row's attention output, every head: softmax of its query against the
/// cached keys at positions `0..=pos` (causal), weighting the cached values.
/// `blocks` holds the sequence's keys and values of this layer, block by block.
fn attend_row(d: Dims, q: &[f32], blocks: &[(&[f32], &[f32])], pos: usize, dst: &mut [f32]) {
    let kv_width = d.n_kv_head * d.head_dim;
    let group = d.n_head / d.n_kv_head;
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let mut scores = vec![0f32; pos + 1];
    // Position t: block t / KV_BLOCK_TOKENS, slot t % KV_BLOCK_TOKENS.
    let at = |t: usize| (t / KV_BLOCK_TOKENS, t % KV_BLOCK_TOKENS * kv_width);
    for h in 0..d.n_head {
        let g = h / group;
        let head = g * d.head_dim..(g + 1) * d.head_dim;
        let qh = &q[h * d.head_dim..(h + 1) * d.head_dim];
        let mut max = f32::NEG_INFINITY;
        for (t, score) in scores.iter_mut().enumerate() {
            let (b, off) = at(t);
            let k = &blocks[b].0[off..][head.clone()];
            *score = dot(qh, k) * scale;
            max = max.max(*score);
        }
        let mut sum = 0f32;
        for score in scores.iter_mut() {
            *score = (*score - max).exp();
            sum += *score;
        }
        let o = &mut dst[h * d.head_dim..(h + 1) * d.head_dim];
        for (t, &p) in scores.iter().enumerate() {
            let (b, off) = at(t);
            let v = &blocks[b].1[off..][head.clone()];
            let w = p / sum;
            for (o, v) in o.iter_mut().zip(v) {
                *o += w * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_blocks::{BlockLayout, KvLimits};

    fn store(d: Dims) -> KvBlocks {
        KvBlocks::new(
            BlockLayout {
                n_layer: 1,
                kv_width: d.n_kv_head * d.head_dim,
            },
            KvLimits {
                total_bytes: None,
                kept_bytes: 0,
            },
        )
    }

    #[test]
    fn a_single_position_attends_to_itself() {
        let d = Dims {
            n_head: 2,
            n_kv_head: 1,
            head_dim: 2,
            out_width: 6,
        };
        // q (2 heads), k, v for one token at position 0 (no rotation).
        let qkv = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 3.0, 4.0];
        let mut kv = store(d);
        let blocks = [kv.allocate()];
        let seqs = [SeqRows {
            blocks: &blocks,
            past: 0,
            first_row: 0,
            rows: 1,
        }];
        let out = attention(d, 0, &qkv, &[1.0], &[0.0], &mut kv, &seqs);
        // One visible position: both heads copy its value; padding stays zero.
        assert_eq!(out, vec![3.0, 4.0, 3.0, 4.0, 0.0, 0.0]);
        assert_eq!(kv.layer(blocks[0], 0).0[..2], [0.5, 0.5]);
    }

    #[test]
    fn later_rows_see_earlier_ones_and_not_the_reverse() {
        let d = Dims {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 2,
            out_width: 2,
        };
        // Two tokens with equal keys: row 0 sees only value 0, row 1 averages both.
        let qkv = [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 4.0, 2.0];
        let mut kv = store(d);
        let blocks = [kv.allocate()];
        let seqs = [SeqRows {
            blocks: &blocks,
            past: 0,
            first_row: 0,
            rows: 2,
        }];
        let out = attention(d, 0, &qkv, &[1.0, 1.0], &[0.0, 0.0], &mut kv, &seqs);
        assert_eq!(out, vec![2.0, 0.0, 3.0, 1.0]);
    }

    #[test]
    fn rows_across_a_block_boundary_see_every_earlier_position() {
        let d = Dims {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 2,
            out_width: 2,
        };
        // KV_BLOCK_TOKENS + 1 tokens, equal keys, value t at position t: the
        // last row (in the second block) averages all of them.
        let n = KV_BLOCK_TOKENS + 1;
        let qkv: Vec<f32> = (0..n)
            .flat_map(|t| [0.0, 0.0, 1.0, 0.0, t as f32, 0.0])
            .collect();
        let mut kv = store(d);
        let blocks = [kv.allocate(), kv.allocate()];
        let seqs = [SeqRows {
            blocks: &blocks,
            past: 0,
            first_row: 0,
            rows: n,
        }];
        let out = attention(d, 0, &qkv, &vec![1.0; n], &vec![0.0; n], &mut kv, &seqs);
        let mean = (0..n).sum::<usize>() as f32 / n as f32;
        assert!(
            (out[2 * (n - 1)] - mean).abs() < 1e-5,
            "{}",
            out[2 * (n - 1)]
        );
    }
}
