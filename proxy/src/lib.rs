//! Gantry's gateway: a Pingora reverse proxy expressed as phases (see [`gateway`]),
//! with routes, upstream pools ([`upstream`]), the OpenAI-compatible API over
//! inference pools ([`openai`]), the front door of every connection
//! ([`front`]), health checks, TLS, limits, metrics and graceful shutdown. The
//! `gantry` binary (`src/main.rs`) is a thin CLI over [`server::Gantry`];
//! docs/ARCHITECTURE.md walks a request through these modules.
//!
//! Owns: everything between a client's connection and an upstream. Must never
//! import: the backend's internals (the `gantry-inference` crate is linked only
//! by the binary's `backend` feature, for its commands); inference backends are
//! reached over `gantry-proto`'s gRPC, plugins through `gantry-plugins`'
//! contract.

pub mod admin;
pub mod clock;
pub mod error;
pub mod forwarding;
pub mod framing;
pub mod front;
pub mod gateway;
pub mod lifecycle;
pub mod metrics;
pub mod normalize;
pub mod openai;
pub mod own_headers;
pub mod plugins;
pub mod process;
pub mod reload;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod tenants;
pub mod tls;
pub mod upstream;

pub use process::{Process, ShutdownHandle, ShutdownTrigger};
pub use reload::ConfigSource;
pub use server::Gantry;
