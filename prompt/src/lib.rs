//! Request text → the prompt token ids a model reads: its chat template
//! ([`chat`]) and tokenizer, with client text unable to forge control tokens
//! ([`prompt`]), and the whole of it as data one side can hand the other
//! ([`format`]).
//!
//! Owns: rendering and tokenizing prompts. Used by the backend, which runs the
//! model, and by the gateway, which names a prompt's KV blocks to send it where
//! its prefix is already computed; both must get the very same ids. Must never
//! import: candle, Pingora, a Gantry crate but `gantry-proto` (whose requests
//! it reads).

pub mod chat;
pub mod format;
pub mod prompt;

pub use format::PromptFormat;
pub use prompt::{encoding_threads, PromptEncoder, PromptError, PromptText};
