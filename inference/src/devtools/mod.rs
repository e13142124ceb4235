//! Development tools, apart from the serving code: model files with a real
//! model's exact shapes and deterministic weights ([`synthetic`]), and their
//! export to the Hugging Face layout for the PyTorch and stock-candle
//! baselines ([`hf`]). Nothing in the backend's request path uses them.

pub mod hf;
pub mod synthetic;
