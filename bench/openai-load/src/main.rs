//! Sends the same generation request many times, `--concurrency` at once, either
//! directly to a backend over gRPC (`--grpc ADDR`) or through the gateway over HTTP
//! (`--http URL`, `POST /v1/chat/completions`), and prints one JSON line: request
//! count, errors, requests/s, and p50/p90/p99 of time to first token and of total
//! time, in milliseconds.
//!
//!   openai-load --grpc 127.0.0.1:50061 --concurrency 500 --requests 5000 --stream
//!   openai-load --http http://127.0.0.1:8080 --concurrency 500 --requests 5000 --stream
//!   openai-load --http http://127.0.0.1:8080 --concurrency 64 --seconds 10

use clap::Parser;
use gantry_proto::v1 as pb;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Backend gRPC address (direct).
    #[arg(long, conflicts_with = "http")]
    grpc: Option<String>,
    /// Gateway base URL (through the OpenAI-compatible API).
    #[arg(long)]
    http: Option<String>,
    #[arg(long, default_value = "fixture")]
    model: String,
    #[arg(long, default_value = "Say something about gateways.")]
    prompt: String,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Streams in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests in all (ignored with --seconds).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Run for this long instead of a request count.
    #[arg(long)]
    seconds: Option<f64>,
    /// Open loop: start `--requests` requests at this mean rate per second, with
    /// exponential gaps (Poisson arrivals), however many are in flight. Without it,
    /// `--concurrency` workers loop, which sends synchronized waves when every
    /// answer takes the same time.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP: ask for server-sent events (gRPC always streams).
    #[arg(long)]
    stream: bool,
    /// Rounds of `concurrency` requests sent (and discarded) before measuring, so
    /// every connection of the client's pool is open when measuring starts.
    #[arg(long, default_value_t = 1)]
    warmup_rounds: usize,
    /// Label copied into the output line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
}

#[derive(Clone)]
enum Target {
    Grpc(pb::inference_client::InferenceClient<tonic::transport::Channel>),
    Http(reqwest::Client, String),
}

async fn one(target: &Target, args: &Args) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut ttft = None;
    match target {
        Target::Grpc(client) => {
            let mut client = client.clone();
            let mut stream = client
                .generate(pb::GenerateRequest {
                    model: args.model.clone(),
                    request_id: String::new(),
                    input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
                        messages: vec![pb::ChatMessage {
                            role: "user".into(),
                            content: args.prompt.clone(),
                        }],
                    })),
                    sampling: Some(pb::SamplingParams {
                        max_tokens: args.max_tokens,
                        temperature: Some(0.0),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                if matches!(msg.event, Some(pb::generate_response::Event::Delta(_)))
                    && ttft.is_none()
                {
                    ttft = Some(started.elapsed());
                }
            }
        }
        Target::Http(client, url) => {
            let body = serde_json::json!({
                "model": args.model,
                "messages": [{"role": "user", "content": args.prompt}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "stream": args.stream,
            });
            let mut res = client.post(url).json(&body).send().await?;
            anyhow::ensure!(res.status() == 200, "status {}", res.status());
            while let Some(chunk) = res.chunk().await? {
                if ttft.is_none() && !chunk.is_empty() {
                    ttft = Some(started.elapsed());
                }
            }
        }
    }
    let total = started.elapsed();
    Ok(Sample {
        ttft: ttft.unwrap_or(total),
        total,
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let target = match (&args.grpc, &args.http) {
        (Some(addr), None) => {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            Target::Grpc(pb::inference_client::InferenceClient::new(channel))
        }
        (None, Some(base)) => Target::Http(
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(args.concurrency)
                .tcp_nodelay(true)
                .build()?,
            format!("{base}/v1/chat/completions"),
        ),
        _ => anyhow::bail!("give exactly one of --grpc and --http"),
    };
    for _ in 0..args.warmup_rounds {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (t, a) = (target.clone(), args.clone());
                tokio::spawn(async move { one(&t, &a).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
    }
    if let Some(rate) = args.rate {
        return open_loop(target, args.clone(), rate).await;
    }
    let issued = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = args.seconds.map(|s| started + Duration::from_secs_f64(s));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (t, a, issued, errors) =
                (target.clone(), args.clone(), issued.clone(), errors.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    match until {
                        Some(u) if Instant::now() >= u => break,
                        None if issued.fetch_add(1, Ordering::Relaxed) >= a.requests => break,
                        _ => {}
                    }
                    match one(&t, &a).await {
                        Ok(s) => samples.push(s),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first error: {e:#}");
                            }
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    report(
        &args,
        samples,
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        None,
    );
    Ok(())
}

/// Poisson arrivals at `rate`; reports the mean number in flight as well.
async fn open_loop(target: Target, args: Arc<Args>, rate: f64) -> anyhow::Result<()> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        next += Duration::from_secs_f64(-(1.0 - uniform()).ln() / rate);
        tokio::time::sleep_until(next).await;
        let (t, a) = (target.clone(), args.clone());
        tasks.push(tokio::spawn(async move { one(&t, &a).await }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(s) => samples.push(s),
            Err(e) => {
                if errors == 0 {
                    eprintln!("first error: {e:#}");
                }
                errors += 1;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let busy: f64 = samples.iter().map(|s| s.total.as_secs_f64()).sum();
    report(&args, samples, errors, wall, Some(busy / wall));
    Ok(())
}

fn report(args: &Args, samples: Vec<Sample>, errors: usize, wall: f64, mean_inflight: Option<f64>) {
    let mut ttft: Vec<Duration> = samples.iter().map(|s| s.ttft).collect();
    let mut total: Vec<Duration> = samples.iter().map(|s| s.total).collect();
    ttft.sort();
    total.sort();
    let out = serde_json::json!({
        "label": args.label,
        "mode": if args.grpc.is_some() { "grpc-direct" } else if args.stream { "http-gateway-stream" } else { "http-gateway" },
        "concurrency": mean_inflight.map_or(args.concurrency as f64, |m| m.round()),
        "requests": samples.len(),
        "errors": errors,
        "seconds": wall,
        "rps": samples.len() as f64 / wall,
        "ttft_ms": {"p50": pct(&ttft, 0.5), "p90": pct(&ttft, 0.9), "p99": pct(&ttft, 0.99)},
        "total_ms": {"p50": pct(&total, 0.5), "p90": pct(&total, 0.9), "p99": pct(&total, 0.99)},
    });
    println!("{out}");
}
