//! The `gantry.inference.v1` gRPC contract, generated from
//! `proto/gantry/inference/v1/inference.proto` for both ends: the backend
//! (`inference_server`) and the gateway (`inference_client`).
//!
//! Owns: the wire contract both ends share — messages, the limits both ends
//! enforce ([`limits`]), how both name a prompt's KV blocks ([`prefix`]), and
//! refusals as data ([`violation`]). Must never
//! import: another Gantry crate, Pingora, candle; it is the leaf both the
//! gateway and the backend build on, so neither knows the other.

/// Generated messages, client and server for `gantry.inference.v1`.
pub mod v1 {
    tonic::include_proto!("gantry.inference.v1");
}

pub use v1::*;

pub mod limits;
pub mod prefix;
pub mod violation;

/// The `.proto` source, for tools that want to hand it to other clients.
pub const PROTO_SOURCE: &str = include_str!("../gantry/inference/v1/inference.proto");
