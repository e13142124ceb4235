//! Gantry's gateway integration tests: one binary, one module per topic
//! (fast to link on small machines), every server on an ephemeral port.

mod collector;
mod harness;

mod admin;
mod bad_input;
mod balancing;
mod cli;
mod deploy;
mod edge;
mod fuzz_corpus;
mod health;
mod inference_plugins;
mod isolation;
mod keys;
mod openai;
mod openai_backends;
mod plugin_calls;
mod plugin_grpc;
mod plugin_timers;
mod plugins;
mod prefix_routing;
mod python_openai;
mod reload;
mod resolve;
mod retry;
mod routing;
mod shared_keys;
mod shutdown;
mod slow_clients;
mod tls;
mod traces;
mod upgrade;
