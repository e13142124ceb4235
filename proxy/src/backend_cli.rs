//! The model runtime's commands: `gantry backend`, the backend half of
//! `gantry serve`, and `gantry model` (the `backend` feature).

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a llama GGUF with SmolLM2-135M's exact shapes (or tiny ones) and
    /// deterministic random weights: the same file on every machine.
    #[command(after_help = "Example:\n  gantry model synthetic /tmp/smollm2-shapes.gguf")]
    Synthetic {
        /// Output file.
        out: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Tiny shapes (2 layers, hidden 64) instead of SmolLM2-135M's.
        #[arg(long)]
        tiny: bool,
    },
    /// Export a llama GGUF to the Hugging Face layout (config.json +
    /// model.safetensors) for PyTorch transformers and stock candle: same weights,
    /// Q/K rows in the order their rotary embedding expects.
    #[command(
        after_help = "Example:\n  gantry model export-hf /tmp/smollm2-shapes.gguf /tmp/smollm2-hf --dtype bf16"
    )]
    ExportHf {
        /// The GGUF file.
        gguf: PathBuf,
        /// Output directory.
        dir: PathBuf,
        /// Weight type: f32, bf16 or f16.
        #[arg(long, default_value = "bf16", value_parser = ["f32", "bf16", "f16"])]
        dtype: String,
    },
}

pub fn model_command(command: ModelCommand) -> anyhow::Result<()> {
    use gantry_inference::devtools::synthetic::SyntheticShape;
    match command {
        ModelCommand::Synthetic { out, seed, tiny } => {
            let shape = if tiny {
                SyntheticShape::TINY
            } else {
                SyntheticShape::SMOLLM2_135M
            };
            gantry_inference::devtools::synthetic::write_llama_gguf(&out, shape, seed)
        }
        ModelCommand::ExportHf { gguf, dir, dtype } => {
            let dtype = gantry_inference::devtools::hf::dtype_named(&dtype)?;
            gantry_inference::devtools::hf::export_llama(&gguf, &dir, dtype)
        }
    }
}

pub fn backend_config(
    path: Option<PathBuf>,
) -> anyhow::Result<gantry_config::backend::BackendConfig> {
    use gantry_config::backend;
    Ok(match path {
        Some(p) => backend::load_backend(&p)?,
        None => backend::parse_backend(
            backend::EMBEDDED_BACKEND_DEFAULT,
            "<embedded backend default>",
            &gantry_config::embedded_base(),
        )?,
    })
}

pub fn run_backend(config: gantry_config::backend::BackendConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gantry-grpc")
        .build()?;
    runtime.block_on(async move {
        let server = gantry_inference::Backend::start(config).await?;
        tracing::info!(target: "gantry::backend", addr = %server.addr, "listening (NOT_SERVING until the models are warm)");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            r = server.ready() => {
                r?;
                tracing::info!(target: "gantry::backend", "SERVING");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        tracing::info!(target: "gantry::backend", "draining: NOT_SERVING, running streams get the grace period");
        server.shutdown().await
    })
}
