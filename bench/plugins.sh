#!/usr/bin/env bash
# Wasm plugin overhead, in one run with wrk on loopback: the same gateway process
# and origin, one route without plugins and one with the `add-header` example
# (proxy-wasm SDK, request and response header hooks). Routes are measured in
# alternating order. Then the healthy plugin route's p99 with and without a
# looping plugin on another route taking 1 % of the traffic, and the criterion
# microbenchmarks (plugins/benches/hooks.rs). Writes the tables to
# docs/BENCHMARKS.md (plugins markers).
#
#   bench/plugins.sh      # ROUNDS=3 DURATION=10 CONNS=50 WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
scripts/build-plugins.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-50}; WORKERS=${WORKERS:-1}
ORIGIN=127.0.0.1:18391; GANTRY=127.0.0.1:18392
cargo build --release --locked -p gantry
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# A plugin that spins forever in its request hook: cut off at its CPU limit (500),
# then left out while unhealthy.
cat > "$work/loop.wat" <<'WAT'
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))
WAT
wat2wasm "$work/loop.wat" -o "$work/loop.wasm"
bench_origin "$work" "$ORIGIN"
cat > "$work/gantry.toml" <<CONF
$(bench_gateway_conf "$WORKERS" "$GANTRY" "$ORIGIN")
[[routes]]
name = "plain"
pool = "origin"
path_prefix = "/plain"
$(bench_plugin_route plugin /plugin add_header "$BENCH_ADD_HEADER")
[[routes]]
name = "loop"
pool = "origin"
path_prefix = "/loop"
[[routes.plugins]]
name = "loop"
file = "$work/loop.wasm"
CONF
nginx -c "$work/origin.conf" & pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & pids+=($!)
for p in plain plugin; do bench_wait "http://$GANTRY/$p"; done
curl -sI "http://$GANTRY/plugin" | grep -qi '^x-served-by: gantry' || { echo "plugin not active" >&2; exit 1; }
measure() { bench_measure "http://$GANTRY$1"; } # $1 path → "rps p50 p99"
declare -A rps p50 p99
bench_alternate "$ROUNDS" "http://$GANTRY/plain" "http://$GANTRY/plugin"
# The plugin route's p99 alone, then with a looping plugin on /loop at 1 % of its
# request rate (one connection, paced by a wrk script).
mean_rps=$(echo "${rps[1]}" | tr ' ' '\n' | awk '{s+=$1} END {print s/NR}')
pace_ms=$(awk -v r="$mean_rps" 'BEGIN {printf "%d", 1000 / (0.01 * r)}')
printf 'function delay() return %s end\n' "$pace_ms" > "$work/pace.lua"
alone=""; looped=""; loops=""
for round in $(seq "$ROUNDS"); do
  read -r _ _ b < <(measure /plugin); alone="${alone:+$alone / }$b"
  wrk -t1 -c1 -d"${DURATION}s" -s "$work/pace.lua" "http://$GANTRY/loop" > "$work/loop.out" &
  pacer=$!
  read -r _ _ b < <(measure /plugin); looped="${looped:+$looped / }$b"
  wait "$pacer"
  loops="${loops:+$loops / }$(awk '/requests in/ {print $1}' "$work/loop.out")"
done
codes=$(curl -s -o /dev/null -w '%{http_code}' "http://$GANTRY/loop")
bench_out=$(cargo bench --locked -q -p gantry-plugins --bench hooks 2>/dev/null | awk '/^[a-z].*:/ {name=$0} /time:/ {sub(/^ +/, ""); print name " | " $0}' | sed -E 's/ +time: +/ /')
python3 - "${rps[0]}" "${rps[1]}" "${p50[0]}" "${p50[1]}" "${p99[0]}" "${p99[1]}" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" "$alone" "$looped" "$loops" "$pace_ms" "$codes" "$bench_out" <<'PY'
import re, statistics, sys
r0, r1 = ([float(x) for x in a.split()] for a in sys.argv[1:3])
p50_0, p50_1, p99_0, p99_1 = sys.argv[3:7]
rounds, duration, conns, workers = sys.argv[7:11]
alone, looped, loops, pace, code, micro = sys.argv[11:17]
sys.path.insert(0, "bench")
from bench_doc import mean_ms, wrk_ms as ms
m0, m1 = statistics.mean(r0), statistics.mean(r1)
table = "\n".join([
    f"wrk -t1 -c{conns} -d{duration}s, {rounds} rounds in alternating order, gateway `threads = {workers}`, nginx origin (1 KiB), loopback.",
    "",
    "| route | requests/s (mean) | p50 (ms, mean) | p99 per round |",
    "|---|---|---|---|",
    f"| no plugin | {m0:,.0f} | {mean_ms(p50_0):.3f} | {p99_0} |",
    f"| `add-header` (proxy-wasm SDK, request + response hooks) | {m1:,.0f} | {mean_ms(p50_1):.3f} | {p99_1} |",
    "",
    f"Throughput change with the plugin: **{(m1 / m0 - 1) * 100:+.1f} %** (target ≥ −10 %); added p50: **{(mean_ms(p50_1) - mean_ms(p50_0)) * 1000:+.0f} µs** (target ≤ 20 µs).",
    "",
    f"A looping plugin on another route at 1 % of the traffic (one connection, a request every {pace} ms; requests sent per round: {loops}; it answers {code} once cut off):",
    "",
    "| `add-header` route | p99 per round | p99 (mean) |",
    "|---|---|---|",
    f"| alone | {alone} | {mean_ms(alone):.2f} ms |",
    f"| with the looping route busy | {looped} | {mean_ms(looped):.2f} ms |",
    "",
    f"p99 rise: **{mean_ms(looped) - mean_ms(alone):+.2f} ms** (target ≤ 2 ms).",
    "",
    "Criterion (`cargo bench -p gantry-plugins --bench hooks`; target ≤ 1 µs per hook round trip):",
    "",
    "| benchmark | time [low estimate high] |",
    "|---|---|",
] + [f"| {line.split(' | ')[0]} | {line.split(' | ')[1]} |" for line in micro.splitlines() if " | " in line])
sys.path.insert(0, "bench")
from bench_doc import write_block
write_block("plugins", "Wasm plugin overhead", "bench/plugins.sh", table)
PY
