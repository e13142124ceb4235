//! Gantry's inference backend: candle models behind a continuous-batching
//! scheduler, served over gRPC as `gantry.inference.v1.Inference`.
//!
//! * [`llama`] — a llama decoder with a ragged batched forward over candle's
//!   quantized matmuls (one forward per step for every running sequence);
//! * [`engine`] — the scheduler: admission, chunked prefill, sampling, stop
//!   strings, cancellation and load reporting;
//! * [`embed`] — BERT sentence embeddings;
//! * [`server`] — the gRPC service, health and lifecycle.

pub mod chat;
pub mod embed;
pub mod engine;
pub mod hf;
pub mod host_attention;
pub mod llama;
pub mod metrics;
pub mod prompt;
pub mod sequence;
pub mod server;
pub mod synthetic;
pub mod tokenizer;

pub use server::Backend;
