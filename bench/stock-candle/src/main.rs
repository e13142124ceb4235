//! `stock-candle DIR [--device cuda:0] [--dtype bf16] [--batches 1,8,32,64]`:
//! one JSON line per batch size (after a warm-up run), engine `stock-candle`.

use clap::Parser;
use stock_candle::Baseline;

#[derive(Parser)]
struct Args {
    /// A `gantry model export-hf` directory.
    dir: std::path::PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    #[arg(long, default_value_t = 128)]
    generate: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = match args.device.strip_prefix("cuda:") {
        Some(n) => candle_core::Device::new_cuda(n.parse()?)?,
        None => candle_core::Device::Cpu,
    };
    let dtype = match args.dtype.as_str() {
        "f32" => candle_core::DType::F32,
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        other => anyhow::bail!("dtype `{other}`: use f32, bf16 or f16"),
    };
    let baseline = Baseline::load(&args.dir, device, dtype)?;
    for &batch in &args.batches {
        let prompts = baseline.prompts(batch, args.prompt, args.seed);
        baseline.run(&prompts, args.generate.min(4))?; // warm-up
        let row = baseline.run(&prompts, args.generate)?;
        let mut line = serde_json::to_value(&row)?;
        line["engine"] = "stock-candle".into();
        line["device"] = args.device.clone().into();
        line["dtype"] = args.dtype.clone().into();
        line.as_object_mut()
            .expect("object")
            .remove("first_sequence");
        println!("{line}");
    }
    Ok(())
}
