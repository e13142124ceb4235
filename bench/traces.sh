#!/usr/bin/env bash
# What tracing costs on the non-streaming AI path, in one run on this machine:
# the same gateway configuration three ways, measured in interleaved rounds
# (fixture backend answering at once, `openai-load` at THROUGHPUT_CONC):
#   off   no [traces];
#   on    [traces], every request sampled, exported over OTLP/gRPC to a
#         receiver that accepts everything (grpcio, in Python);
#   down  [traces], every request sampled, the receiver not running: every
#         export fails, spans are dropped past queue_spans.
# Prints requests/s, p50 and p99, the ratios to `off`, the gateway's RSS after
# the runs and its span counters; writes the table to docs/BENCHMARKS.md.
#
#   bench/traces.sh     # ROUNDS=3 SECONDS_EACH=10 THROUGHPUT_CONC=64
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-10}
THROUGHPUT_CONC=${THROUGHPUT_CONC:-64}
cargo build --release --locked -p gantry -p gantry-fixture-backend -p openai-load

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# An OTLP/gRPC receiver that answers every export (the body is not decoded:
# the receiver's own cost is not what is measured).
cat > "$work/receiver.py" <<'PY'
import sys, time
from concurrent import futures
import grpc
received = [0]
def export(request, context):
    received[0] += len(request)
    return b""
handler = grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(sys.argv[1])
server.start()
server.wait_for_termination()
PY
python3 "$work/receiver.py" 127.0.0.1:43170 & pids+=($!)
target/release/fixture-backend --listen 127.0.0.1:50170 --tokens 16 2>/dev/null & pids+=($!)

gateway_config() { # $1 listen port, $2 [traces] lines (or nothing)
  cat <<TOML
[server]
threads = 1
[limits]
max_connections = 20000
max_connections_per_client = 20000
[admin]
address = "127.0.0.1:1${1}"
[[listeners]]
name = "http"
address = "127.0.0.1:$1"
[[inference_pools]]
name = "bench"
endpoints = ["127.0.0.1:50170"]
models = ["fixture"]
[[routes]]
name = "openai"
path_prefix = "/v1"
inference_pools = ["bench"]
$2
TOML
}
gateway_config 8171 "" > "$work/off.toml"
gateway_config 8172 $'[traces]\nendpoint = "http://127.0.0.1:43170"' > "$work/on.toml"
gateway_config 8173 $'[traces]\nendpoint = "http://127.0.0.1:43179"' > "$work/down.toml"
declare -A gw
for mode in off on down; do
  RUST_LOG=warn target/release/gantry gateway --config "$work/$mode.toml" & gw[$mode]=$!; pids+=($!)
done
bench_wait_port 43170 50170 8171 8172 8173; sleep 1

LOAD=target/release/openai-load
port() { case $1 in off) echo 8171;; on) echo 8172;; down) echo 8173;; esac; }
: > "$work/results.jsonl"
for mode in off on down; do
  $LOAD --http "http://127.0.0.1:$(port $mode)" --concurrency "$THROUGHPUT_CONC" --seconds 2 --label warm > /dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  order="off on down"; [ $((round % 2)) -eq 0 ] && order="down on off"
  for mode in $order; do
    $LOAD --http "http://127.0.0.1:$(port $mode)" --concurrency "$THROUGHPUT_CONC" --seconds "$SECONDS_EACH" --label "$mode" >> "$work/results.jsonl"
  done
done
for mode in off on down; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/${gw[$mode]}/status")
  spans=$(curl -s "http://127.0.0.1:1$(port $mode)/metrics" |
    awk '/^gantry_trace_spans_total/ {match($1, /result="[a-z]+"/); printf "%s=%s ", substr($1, RSTART + 8, RLENGTH - 9), $2}')
  echo "{\"mode\": \"$mode\", \"rss_kib\": $rss, \"spans\": \"$spans\"}" >> "$work/state.jsonl"
done

python3 - "$work/results.jsonl" "$work/state.jsonl" "$THROUGHPUT_CONC" "$SECONDS_EACH" "$ROUNDS" <<'PY'
import json, re, statistics, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
state = {s["mode"]: s for s in map(json.loads, open(sys.argv[2]))}
conc, secs, rounds = sys.argv[3:6]
def m(mode, f):
    return statistics.mean(f(r) for r in rows if r["label"] == mode)
off = m("off", lambda r: r["rps"])
lines = [f"Non-streaming chat completions through the gateway ({conc} connections, fixture backend answering 16 tokens at once, "
         f"{rounds} interleaved rounds of {secs} s; means), tracing off, on (every request sampled, exported over OTLP/gRPC to a "
         "receiver that accepts everything), and on with the receiver down:", "",
         "| tracing | requests/s | vs off | p50 (ms) | p99 (ms) | errors | gateway RSS after (MiB) | spans |",
         "|---|---|---|---|---|---|---|---|"]
for mode in ("off", "on", "down"):
    rps = m(mode, lambda r: r["rps"])
    p50 = m(mode, lambda r: r["total_ms"]["p50"])
    p99 = m(mode, lambda r: r["total_ms"]["p99"])
    errs = sum(r["errors"] for r in rows if r["label"] == mode)
    spans = state[mode]["spans"].strip()
    lines.append(f"| {mode} | {rps:.0f} | **{rps / off:.3f}×** | {p50:.2f} | {p99:.2f} | {errs} | {state[mode]['rss_kib'] / 1024:.0f} | {spans or '—'} |")
lines.append("")
lines.append(f"Machine: {platform.machine()}, {os.cpu_count()} cores; each gateway `threads = 1` (plus its background runtime, where exports run); "
             "load generator, fixture and receiver on the same cores.")
table = "\n".join(lines)
sys.path.insert(0, "bench")
from bench_doc import write_block
write_block("traces", "What tracing costs", "bench/traces.sh", table)
PY
