//! `fixture-backend`: the benchmark fixture as a process (see the library docs).
//! It is not a model server: it streams `tok0 tok1 ...` on a timer.

use clap::Parser;
use gantry_fixture_backend::{Behaviour, Fixture};
use std::time::Duration;

/// A fake gantry.inference.v1 backend for gateway benchmarks (no model).
#[derive(Parser)]
#[command(
    after_help = "Example:\n  fixture-backend --listen 127.0.0.1:50061 --tokens 16 --inter-token-us 1000"
)]
struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: std::net::SocketAddr,
    /// Tokens per answer.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Microseconds before the first token.
    #[arg(long, default_value_t = 0)]
    first_token_us: u64,
    /// Microseconds between tokens.
    #[arg(long, default_value_t = 0)]
    inter_token_us: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Serve the rate-limit fixture (Envoy's `RateLimitService` shape) instead.
    #[arg(long)]
    ratelimit: bool,
}

fn main() {
    let args = Args::parse();
    if args.ratelimit {
        let service = gantry_fixture_backend::ratelimit::RateLimitFixture::start(args.listen);
        eprintln!(
            "fixture rate-limit service (benchmark fixture) on {}",
            service.addr
        );
        loop {
            std::thread::park();
        }
    }
    let behaviour = Behaviour {
        tokens: args.tokens,
        first_token_delay: Duration::from_micros(args.first_token_us),
        inter_token_delay: Duration::from_micros(args.inter_token_us),
        max_running: 100_000,
        max_queued: 100_000,
        ..Behaviour::default()
    };
    let fixture = Fixture::start_with_threads(args.listen, behaviour, args.threads);
    eprintln!(
        "fixture-backend (benchmark fixture, no model) on {}",
        fixture.addr
    );
    loop {
        std::thread::park();
    }
}
