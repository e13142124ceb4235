//! The two kinds of upstream pools, side by side: HTTP pools proxied by
//! Pingora's phases ([`http`]), and inference pools spoken to over gRPC by the
//! OpenAI-compatible API ([`inference`]); plugins' gRPC calls reach HTTP
//! pools' endpoints through [`grpc`]. Each knows its endpoints' health and
//! load and picks one per attempt; neither knows the request path.

pub mod grpc;
pub mod http;
pub mod inference;
pub mod prefix_index;
pub mod prompts;
pub mod resolve;

pub use self::http::HttpPool;
pub use self::inference::{InferenceBackend, InferencePool};
