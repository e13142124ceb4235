//! Gantry's inference backend: candle models behind a continuous-batching
//! scheduler, served over gRPC as `gantry.inference.v1.Inference`.
//!
//! * [`llama`] — a llama decoder with a ragged batched forward over candle's
//!   quantized matmuls (one forward per step for every running sequence);
//! * [`scheduler`] — continuous batching: admission, chunked prefill, sampling, stop
//!   strings, cancellation and load reporting;
//! * [`embed`] — BERT sentence embeddings;
//! * [`server`] — the gRPC service, health and lifecycle.

pub mod chat;
pub mod devtools;
pub mod embed;
pub(crate) mod host_attention;
pub mod llama;
pub(crate) mod metrics;
pub mod models;
pub mod prompt;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub(crate) mod service;
pub mod tokenizer;

pub use server::Backend;
