//! Gantry's gateway: a Pingora reverse proxy expressed as phases (see [`gateway`]),
//! with routes, upstream pools, the OpenAI-compatible API over inference pools ([`inference`]), health checks, TLS, limits, metrics and graceful
//! shutdown. The `gantry` binary (`src/main.rs`) is a thin CLI over [`server::Gantry`].

pub mod admin;
pub mod error;
pub mod forwarding;
pub mod framing;
pub mod front;
pub mod gateway;
pub mod lifecycle;
pub mod metrics;
pub mod normalize;
pub mod openai;
pub mod plugins;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;

pub use server::{Gantry, ShutdownHandle, ShutdownTrigger};
