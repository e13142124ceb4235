//! Gantry's inference backend: candle models behind a continuous-batching
//! scheduler, served over gRPC as `gantry.inference.v1.Inference`.
//!
//! * [`llama`] — a llama decoder with a ragged batched forward over candle's
//!   quantized matmuls (one forward per step for every running sequence);
//! * [`kv_blocks`] — the CPU KV cache in blocks, shared by prompt prefix, and
//!   [`kv_events`] — which blocks a model holds, for `WatchKvBlocks`;
//! * [`scheduler`] — continuous batching: admission, chunked prefill, sampling, stop
//!   strings, cancellation and load reporting;
//! * [`embed`] — BERT sentence embeddings;
//! * [`models`] — loading each model onto its device and warming it up;
//! * `service` — the gRPC service (crate-private), `spans` — its traces
//!   (queue, prefill, decode), and
//!   [`server`] — health and lifecycle;
//! * [`devtools`] — synthetic weights and Hugging Face export, apart from serving.
//!
//! Owns: the models, the scheduler and the gRPC service. Must never import:
//! Pingora, the gateway (`gantry`), the plugin host; it knows the gateway only
//! through `gantry-proto`.

pub use gantry_prompt::chat;
pub mod devtools;
pub mod embed;
pub(crate) mod host_attention;
pub mod kv_blocks;
pub mod kv_events;
pub mod llama;
pub(crate) mod metrics;
pub mod models;
pub use gantry_prompt::prompt;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub(crate) mod service;
pub(crate) mod spans;
pub mod tokenizer;

pub use server::Backend;
