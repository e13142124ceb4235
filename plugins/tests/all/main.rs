//! The plugin host's sandbox, with tiny inline WAT modules: every limit reached,
//! every trap contained, every bad pointer refused.

mod abi_calls;
mod fuzz_corpus;
mod grpc;
mod host_bounds;
mod queues;
mod sandbox;
mod timers;
