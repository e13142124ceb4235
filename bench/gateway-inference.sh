#!/usr/bin/env bash
# Gateway overhead on inference traffic, in one run on this machine:
#  1. the same streamed generation requests sent directly to a backend over gRPC and
#     through the gateway's OpenAI-compatible API over HTTP (server-sent events), at
#     CONC concurrent streams; time to first token and total time, p50/p99, and the
#     difference ("added by the gateway");
#  2. non-streaming requests/s through the gateway, divided by the CPU seconds the
#     gateway process used (requests per core-second);
#  3. end to end with the real model (SmolLM2-135M on the CPU), direct vs gateway.
# Backend for 1 and 2: `fixture-backend`, a BENCHMARK FIXTURE that streams tokens on
# a timer without a model, so the gateway is what is measured.
# Writes the table to docs/BENCHMARKS.md (between the gateway-inference markers).
#
#   bench/gateway-inference.sh     # CONC=500 REQUESTS=5000 ROUNDS=3 TOKENS=16 GAPS_US="20000 100000"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
CONC=${CONC:-500}
REQUESTS=${REQUESTS:-6000}
ROUNDS=${ROUNDS:-3}
TOKENS=${TOKENS:-16}
FIRST_US=${FIRST_US:-5000}
GAPS_US=${GAPS_US:-20000 100000}
THROUGHPUT_CONC=${THROUGHPUT_CONC:-64}
THROUGHPUT_SECONDS=${THROUGHPUT_SECONDS:-10}
cargo build --release --locked -p gantry -p gantry-fixture-backend -p openai-load

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

gateway_config() { # $1 listen port, $2 backend port, $3 model list
  cat <<TOML
[server]
threads = 1
[limits]
max_connections = 20000
max_connections_per_client = 20000   # every load connection comes from 127.0.0.1
[[listeners]]
name = "http"
address = "127.0.0.1:$1"
[[inference_pools]]
name = "bench"
endpoints = ["127.0.0.1:$2"]
models = [$3]
[[routes]]
name = "openai"
path_prefix = "/v1"
inference_pools = ["bench"]
TOML
}

LOAD=target/release/openai-load
# 1. streams: fixture with a first-token delay and a gap between tokens, one
#    fixture + gateway pair per gap.
: > "$work/results.jsonl"
port=0
for gap in $GAPS_US; do
  port=$((port + 1))
  target/release/fixture-backend --listen 127.0.0.1:5016$port --tokens "$TOKENS" \
    --first-token-us "$FIRST_US" --inter-token-us "$gap" 2>/dev/null & pids+=($!)
  gateway_config 1817$port 5016$port '"fixture"' > "$work/stream$port.toml"
  RUST_LOG=warn target/release/gantry gateway --config "$work/stream$port.toml" & pids+=($!)
  bench_wait_port 5016$port; bench_wait_port 1817$port; sleep 1
  # Poisson arrivals at the rate that keeps CONC streams in flight on average
  # (closed-loop workers would send synchronized waves of CONC requests at once).
  rate=$(python3 -c "print($CONC / (($FIRST_US + ($TOKENS - 1) * $gap) / 1e6))")
  for round in $(seq 1 "$ROUNDS"); do
    $LOAD --grpc 127.0.0.1:5016$port --rate "$rate" --concurrency "$CONC" --requests "$REQUESTS" --label "streams gap $gap r$round" >> "$work/results.jsonl"
    $LOAD --http http://127.0.0.1:1817$port --stream --rate "$rate" --concurrency "$CONC" --requests "$REQUESTS" --label "streams gap $gap r$round" >> "$work/results.jsonl"
  done
done

# 2. throughput: fixture answers at once (16 tokens, no delays).
target/release/fixture-backend --listen 127.0.0.1:50169 --tokens "$TOKENS" 2>/dev/null & pids+=($!)
gateway_config 18189 50169 '"fixture"' > "$work/rps.toml"
RUST_LOG=warn target/release/gantry gateway --config "$work/rps.toml" & gw=$!; pids+=($gw)
bench_wait_port 50169; bench_wait_port 18189; sleep 1
$LOAD --http http://127.0.0.1:18189 --concurrency "$THROUGHPUT_CONC" --seconds 2 --label warm > /dev/null
before=$(cpu_ticks $gw)
$LOAD --http http://127.0.0.1:18189 --concurrency "$THROUGHPUT_CONC" --seconds "$THROUGHPUT_SECONDS" --label throughput > "$work/rps.json"
after=$(cpu_ticks $gw)
echo "{\"gateway_cpu_seconds\": $(( after - before )) }" | python3 -c "import json,sys; d=json.load(sys.stdin); d['gateway_cpu_seconds']/= $(getconf CLK_TCK); print(json.dumps(d))" > "$work/cpu.json"
cat "$work/rps.json" >> "$work/results.jsonl"

# 3. the real model, end to end: `gantry backend` on the CPU, direct vs gateway.
sed -e "s#127.0.0.1:50051#127.0.0.1:50163#" -e 's#"127.0.0.1:9091"#"off"#' -e "s#../../models#$PWD/models#" \
  config/examples/backend.toml > "$work/backend.toml"
RUST_LOG=warn target/release/gantry backend --config "$work/backend.toml" & pids+=($!)
gateway_config 18183 50163 '"smollm2-135m"' > "$work/real.toml"
RUST_LOG=warn target/release/gantry gateway --config "$work/real.toml" & pids+=($!)
bench_wait_port 50163; bench_wait_port 18183; sleep 15
for round in $(seq 1 "$ROUNDS"); do
  $LOAD --grpc 127.0.0.1:50163 --model smollm2-135m --max-tokens 32 --concurrency 1 --requests 10 --label "real r$round" >> "$work/results.jsonl"
  $LOAD --http http://127.0.0.1:18183 --stream --model smollm2-135m --max-tokens 32 --concurrency 1 --requests 10 --label "real r$round" >> "$work/results.jsonl"
done
cat "$work/results.jsonl"

python3 - "$work/results.jsonl" "$work/cpu.json" "$CONC" "$TOKENS" "$FIRST_US" "$GAPS_US" "$THROUGHPUT_CONC" <<'PY'
import json, re, statistics, sys, platform
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = json.load(open(sys.argv[2]))["gateway_cpu_seconds"]
conc, tokens, first_us, gaps_us, tconc = sys.argv[3:8]
def mean(label_prefix, mode, key, p):
    vals = [r[key][p] for r in rows if r["label"].startswith(label_prefix) and r["mode"] == mode]
    return statistics.mean(vals) if vals else float("nan")
lines = []
def block(prefix, title, direct_mode, gw_mode):
    lines.append(f"| {title} | direct gRPC | through gateway | added |")
    lines.append("|---|---|---|---|")
    for key, name in (("ttft_ms", "time to first token"), ("total_ms", "total")):
        for p in ("p50", "p99"):
            d, g = mean(prefix, direct_mode, key, p), mean(prefix, gw_mode, key, p)
            lines.append(f"| {name} {p} (ms) | {d:.2f} | {g:.2f} | **{g - d:+.2f}** |")
    errs = sum(r["errors"] for r in rows if r["label"].startswith(prefix))
    lines.append(f"| errors | | | {errs} |")
    lines.append("")
for gap in gaps_us.split():
    rate = int(conc) * 1e6 / int(gap)
    inflight = statistics.mean(r["concurrency"] for r in rows if r["label"].startswith(f"streams gap {gap} "))
    lines.append(f"About {inflight:.0f} streams in flight (Poisson arrivals), {tokens} tokens each, first token after {int(first_us)/1000:g} ms, then one every {int(gap)/1000:g} ms "
                 f"(fixture backend; about {rate:,.0f} tokens/s in all); means of the rounds.")
    lines.append("")
    block(f"streams gap {gap} ", f"{conc} streams, {int(gap)/1000:g} ms/token", "grpc-direct", "http-gateway-stream")
t = [r for r in rows if r["label"] == "throughput"][0]
lines.append(f"Non-streaming through the gateway ({tconc} connections, {tokens} tokens per answer, fixture backend): "
             f"**{t['rps']:.0f} requests/s** using {cpu:.1f} CPU-seconds in {t['seconds']:.1f} s "
             f"= **{t['requests'] / max(cpu, 1e-9):.0f} requests per core-second**; p50 {t['total_ms']['p50']:.2f} ms, p99 {t['total_ms']['p99']:.2f} ms; errors {t['errors']}.")
lines.append("")
lines.append("Real model end to end (SmolLM2-135M q8_0 on the CPU, 32 tokens, one stream at a time):")
lines.append("")
block("real", "SmolLM2, 1 stream", "grpc-direct", "http-gateway-stream")
lines.append(f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores; gateway with `threads = 1` (plus one background runtime thread that watches the backend); load generator and backend on the same cores.")
table = "\n".join(lines)
sys.path.insert(0, "bench")
from bench_doc import write_block
write_block("gateway-inference", "Gateway overhead on inference traffic", "bench/gateway-inference.sh", table)
PY
