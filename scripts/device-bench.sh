#!/usr/bin/env bash
# The GPU benchmark (issue 6), run ON the GPU machine from the repo root:
#   bash scripts/device-bench.sh OUTDIR
# On the same weights and dtype, in one run: Gantry through its serving path
# (`gantry backend`: scheduler, continuous batching, gRPC streams, driven by
# inference-client), stock candle `models::llama` (bench/stock-candle) and PyTorch
# transformers `generate` (bench/torch_baseline.py): time to first token and decode
# tokens/s at each batch size, prompt 128, generate 128. The weights are the
# same-shape synthetic SmolLM2-135M (`gantry model synthetic`, exported with
# `gantry model export-hf` for the two baselines), made here because the real file
# cannot be carried. Results: OUTDIR/*.jsonl and OUTDIR/device-bench.log.
#
# Binaries come from BIN_DIR (default target/device; NAME or NAME.xz for gantry,
# inference-client and stock-candle, made by scripts/device-prepare.sh). A CPU
# rehearsal of the whole script (what CI-less machines can check):
#   DEVICE=cpu BIN_DIR=target/release SHAPE=tiny BATCHES=1,4 PROMPT=16 GEN=8 \
#     PY=/path/to/python-with-torch bash scripts/device-bench.sh /tmp/out
set -uo pipefail
OUT=${1:?usage: scripts/device-bench.sh OUTDIR}
mkdir -p "$OUT"
exec > >(tee "$OUT/device-bench.log") 2>&1
DEVICE=${DEVICE:-cuda:0}
BIN_DIR=${BIN_DIR:-target/device}
SHAPE=${SHAPE:-smollm2}
BATCHES=${BATCHES:-1,8,32,64}
PROMPT=${PROMPT:-128}
GEN=${GEN:-128}
PORT=${PORT:-50351}
PY=${PY:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$WORK"' EXIT

bin() { # NAME → path of a runnable binary
  if [ -x "$BIN_DIR/$1" ]; then echo "$BIN_DIR/$1"; return; fi
  "$PY" -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "$BIN_DIR/$1.xz" "$WORK/$1"
  chmod +x "$WORK/$1"; echo "$WORK/$1"
}
GANTRY=$(bin gantry); CLIENT=$(bin inference-client); STOCK=$(bin stock-candle)
case "$DEVICE" in
  cuda:*) DTYPE=bf16; TORCH_DEVICE=cuda; TORCH_DTYPE=bfloat16; QUANT=bf16 ;;
  *) DTYPE=f32; TORCH_DEVICE=cpu; TORCH_DTYPE=float32; QUANT=q8_0 ;;
esac
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
tiny=(); [ "$SHAPE" = tiny ] && tiny=(--tiny)

echo "== weights: synthetic $SHAPE shapes, exported as $DTYPE"
"$GANTRY" model synthetic "${tiny[@]}" "$WORK/model.gguf" || exit 1
"$GANTRY" model export-hf "$WORK/model.gguf" "$WORK/hf" --dtype "$DTYPE" || exit 1

echo "== Gantry (serving path) on $DEVICE, $QUANT"
max_running=$(echo "$BATCHES" | tr ',' '\n' | sort -n | tail -1)
cat > "$WORK/backend.toml" <<TOML
[backend]
listen = "127.0.0.1:$PORT"
metrics_listen = "off"
[[models]]
name = "synthetic"
kind = "generate"
path = "$WORK/model.gguf"
device = "$DEVICE"
quantization = "$QUANT"
max_running = $max_running
max_queued = $((max_running * 2))
max_context = $((PROMPT + GEN + 16))
max_tokens = $GEN
max_batch_tokens = $((PROMPT * 8))
TOML
"$GANTRY" backend --config "$WORK/backend.toml" 2> "$WORK/backend.log" &
pid=$!
for _ in $(seq 300); do grep -qE '(^|[^_])SERVING' "$WORK/backend.log" && break; sleep 0.2; done
grep -qE '(^|[^_])SERVING' "$WORK/backend.log" || { cat "$WORK/backend.log"; exit 1; }
ids=$("$PY" -c 'import random, sys; r = random.Random(0); print(",".join(str(r.randrange(3, int(sys.argv[2]))) for _ in range(int(sys.argv[1]))))' \
  "$PROMPT" "$(grep -o '"vocab_size": *[0-9]*' "$WORK/hf/config.json" | grep -o '[0-9]*$')")
"$CLIENT" --addr "127.0.0.1:$PORT" --model synthetic --prompt-ids "$ids" --max-tokens "$GEN" \
  --concurrency "$BATCHES" --repeat 2 | tee "$OUT/gantry.jsonl"
kill $pid; wait $pid 2>/dev/null; pid=""

echo "== stock candle models::llama on $DEVICE, $DTYPE"
"$STOCK" "$WORK/hf" --device "$DEVICE" --dtype "$DTYPE" --batches "$BATCHES" --prompt "$PROMPT" \
  --generate "$GEN" | tee "$OUT/stock-candle.jsonl"

echo "== PyTorch transformers generate on $TORCH_DEVICE, $TORCH_DTYPE"
rm -f "$OUT/pytorch.jsonl"
"$PY" bench/torch_baseline.py "$WORK/hf" --device "$TORCH_DEVICE" --dtype "$TORCH_DTYPE" \
  --batches "$BATCHES" --prompt "$PROMPT" --generate "$GEN" --out "$OUT/pytorch.jsonl" 2>/dev/null
cat "$OUT/pytorch.jsonl"

"$PY" - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = lambda f: [json.loads(l) for l in open(os.path.join(out, f)) if l.strip()]
g = {r["concurrency"]: r for r in rows("gantry.jsonl")}
s = {r["batch"]: r for r in rows("stock-candle.jsonl")}
t = {r["batch"]: r for r in rows("pytorch.jsonl")}
# Decode rates exclude the first token everywhere (Gantry: the tokens after each
# stream's first over the level's wall time after the mean first-token time; its
# per-stream rates and wall-clock aggregate are in gantry.jsonl).
print("| batch | Gantry decode tok/s | Gantry TTFT ms | stock candle tok/s | stock TTFT ms | PyTorch tok/s | PyTorch TTFT ms |")
print("|---|---|---|---|---|---|---|")
for b in sorted(g):
    gr, sr, tr = g[b], s.get(b, {}), t.get(b, {})
    print(f"| {b} | {(gr['generated_tokens'] - b) / max(gr['wall_s'] - gr['mean_ttft_ms'] / 1000, 1e-9):.0f} | {gr['mean_ttft_ms']:.1f} | {sr.get('decode_tokens_per_s', 0):.0f} | {sr.get('ttft_ms', 0):.1f} | {tr.get('decode_tokens_per_s') or 0:.0f} | {tr.get('ttft_ms', 0):.1f} |")
PY
