//! Drives `gantry backend` over gRPC and prints one JSON line per measurement.
//!
//!   inference-client --addr 127.0.0.1:50051 --model smollm2-135m \
//!       --prompt-ids 504,3575,... --max-tokens 128 --concurrency 1,4,8,16
//!
//! Every stream sends the same prompt token ids (so llama.cpp can be given the
//! very same prompt) with greedy decoding and no stop strings. Per stream: time
//! to first token and decode rate after the first token; per level: aggregate
//! generated tokens/s over the wall time of the level.
//!
//! With `--prefix-ttft ROUNDS --prefix-text FILE` it measures the prefix cache
//! instead: per round a prefix never sent before (the file's text after a
//! round-specific first line) with one question (cold), then the same prefix
//! with another question (warm); median time to first token of each, and the
//! prompt tokens the warm one reused.

use clap::Parser;
use gantry_proto::v1 as pb;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Prompt token ids, comma-separated (the bench script makes them with the
    /// model's tokenizer so llama.cpp sees the same prompt).
    #[arg(long, default_value = "")]
    prompt_ids: String,
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
    /// Runs per level; the best is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Measure cold against warm prefixes for this many rounds, then stop.
    #[arg(long, requires = "prefix_text")]
    prefix_ttft: Option<usize>,
    /// The shared text of `--prefix-ttft` (a system prompt).
    #[arg(long)]
    prefix_text: Option<std::path::PathBuf>,
}

struct Stream {
    ttft: Duration,
    total: Duration,
    tokens: usize,
    cached_tokens: u32,
    prompt_tokens: u32,
}

async fn one(
    client: pb::inference_client::InferenceClient<tonic::transport::Channel>,
    model: String,
    ids: Vec<u32>,
    max_tokens: u32,
) -> anyhow::Result<Stream> {
    let input = pb::generate_request::Input::TokenIds(pb::TokenIdsInput { ids });
    generate(client, model, input, max_tokens).await
}

async fn generate(
    mut client: pb::inference_client::InferenceClient<tonic::transport::Channel>,
    model: String,
    input: pb::generate_request::Input,
    max_tokens: u32,
) -> anyhow::Result<Stream> {
    let started = Instant::now();
    let mut stream = client
        .generate(pb::GenerateRequest {
            model,
            request_id: String::new(),
            input: Some(input),
            sampling: Some(pb::SamplingParams {
                max_tokens,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut ttft = None;
    let mut tokens = 0;
    let mut cached_tokens = 0;
    let mut prompt_tokens = 0;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(pb::generate_response::Event::Delta(d)) => {
                ttft.get_or_insert_with(|| started.elapsed());
                tokens += d.token_ids.len();
            }
            Some(pb::generate_response::Event::Finished(f)) => {
                // A first token that ends the answer (end of sequence) sends
                // no delta: the answer's end is its first token then.
                ttft.get_or_insert_with(|| started.elapsed());
                if let Some(u) = f.usage {
                    tokens = u.completion_tokens as usize;
                    cached_tokens = u.cached_tokens;
                    prompt_tokens = u.prompt_tokens;
                }
            }
            None => {}
        }
    }
    Ok(Stream {
        ttft: ttft.unwrap_or_default(),
        total: started.elapsed(),
        tokens,
        cached_tokens,
        prompt_tokens,
    })
}

/// Cold against warm time to first token of a prefix, `rounds` times.
async fn prefix_ttft(
    client: pb::inference_client::InferenceClient<tonic::transport::Channel>,
    model: &str,
    text: &str,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    let (mut cold, mut warm, mut cached) = (Vec::new(), Vec::new(), 0);
    let mut prompt_tokens = 0;
    for round in 0..rounds {
        let ask = |question: &str| {
            pb::generate_request::Input::Prompt(format!(
                "Session {round}.\n{text}\nQuestion: {question}\nAnswer:"
            ))
        };
        let first = generate(client.clone(), model.into(), ask("where?"), 4).await?;
        let again = generate(client.clone(), model.into(), ask("when?"), 4).await?;
        cold.push(first.ttft.as_secs_f64() * 1e3);
        warm.push(again.ttft.as_secs_f64() * 1e3);
        cached = again.cached_tokens;
        prompt_tokens = again.prompt_tokens;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (cold, warm) = (median(&mut cold), median(&mut warm));
    Ok(serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "rounds": rounds,
        "cold_ttft_ms": cold,
        "warm_ttft_ms": warm,
        "warm_over_cold": warm / cold,
        "warm_cached_tokens": cached,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client =
        pb::inference_client::InferenceClient::connect(format!("http://{}", args.addr)).await?;
    if let (Some(rounds), Some(file)) = (args.prefix_ttft, &args.prefix_text) {
        let text = std::fs::read_to_string(file)?;
        // Warm-up, on text no round starts with.
        let warm_up = pb::generate_request::Input::Prompt(text.clone());
        generate(client.clone(), args.model.clone(), warm_up, 8).await?;
        println!(
            "{}",
            prefix_ttft(client, &args.model, &text, rounds.max(1)).await?
        );
        return Ok(());
    }
    let ids: Vec<u32> = args
        .prompt_ids
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    // Warm-up.
    one(client.clone(), args.model.clone(), ids.clone(), 8).await?;
    for &n in &args.concurrency {
        let mut best: Option<serde_json::Value> = None;
        for _ in 0..args.repeat {
            let started = Instant::now();
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    tokio::spawn(one(
                        client.clone(),
                        args.model.clone(),
                        ids.clone(),
                        args.max_tokens,
                    ))
                })
                .collect();
            let mut streams = Vec::new();
            for h in handles {
                streams.push(h.await??);
            }
            let wall = started.elapsed().as_secs_f64();
            let tokens: usize = streams.iter().map(|s| s.tokens).sum();
            let mean = |f: &dyn Fn(&Stream) -> f64| streams.iter().map(f).sum::<f64>() / n as f64;
            let ttft_ms = mean(&|s| s.ttft.as_secs_f64() * 1e3);
            let decode =
                mean(&|s| (s.tokens.saturating_sub(1)) as f64 / (s.total - s.ttft).as_secs_f64());
            let row = serde_json::json!({
                "concurrency": n,
                "prompt_tokens": ids.len(),
                "generated_tokens": tokens,
                "aggregate_tokens_per_s": tokens as f64 / wall,
                "per_stream_decode_tokens_per_s": decode,
                "mean_ttft_ms": ttft_ms,
                "wall_s": wall,
            });
            let better = best.as_ref().is_none_or(|b| {
                row["aggregate_tokens_per_s"].as_f64() > b["aggregate_tokens_per_s"].as_f64()
            });
            if better {
                best = Some(row);
            }
        }
        println!("{}", best.expect("at least one run"));
    }
    Ok(())
}
