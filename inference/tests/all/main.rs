//! Integration tests of the inference backend, in-process on ephemeral ports.
//!
//! Model and scheduler tests run on the device named by `GANTRY_TEST_DEVICE`
//! (`cpu` by default, `cuda:N` in a build with the `cuda` feature) and on the
//! model named by `GANTRY_TEST_MODEL`: the real SmolLM2 file from models/ by
//! default, or `synthetic` for a same-shape model with random weights (what the
//! GPU machine uses, as the real file cannot be carried there). Tests that check
//! what the real model says run only on the real model.

mod chat;
mod common;
mod embed;
mod grpc;
mod hf;
mod kv_events;
mod model;
mod prefix_cache;
mod python_client;
mod scheduler;
mod tokenizer;
