#!/usr/bin/env bash
# What asking a gRPC rate-limit service costs a request, in one run with wrk on
# loopback: the same gateway process and nginx origin, one route without
# plugins and one with the `grpc-ratelimit` example (proxy-wasm SDK,
# `dispatch_grpc_call` to the fixture rate-limit service, Envoy's
# `RateLimitService` shape, answering OK), measured in alternating order.
# Writes the table to docs/BENCHMARKS.md (grpc-ratelimit markers).
#
# At one connection the added p50 is the call's latency; at more, requests
# also queue for this machine's CPU, which the service shares.
#
#   bench/grpc-ratelimit.sh      # ROUNDS=3 DURATION=10 CONCS="1 10" WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
scripts/build-plugins.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONCS=${CONCS:-1 10}; WORKERS=${WORKERS:-1}
ORIGIN=127.0.0.1:18491; GANTRY=127.0.0.1:18492; SERVICE=127.0.0.1:18493
cargo build --release --locked -p gantry -p gantry-fixture-backend
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
bench_origin "$work" "$ORIGIN"
cat > "$work/gantry.toml" <<CONF
$(bench_gateway_conf "$WORKERS" "$GANTRY" "$ORIGIN")
[[pools]]
name = "ratelimit"
endpoints = ["$SERVICE"]
[[routes]]
name = "plain"
pool = "origin"
path_prefix = "/plain"
$(bench_plugin_route limited /limited grpc_ratelimit '{ upstream = "ratelimit", domain = "bench", entries = [{ key = "api_key", header = "x-api-key" }], failure_mode_deny = true }')
upstreams = ["ratelimit"]
CONF
nginx -c "$work/origin.conf" & pids+=($!)
target/release/fixture-backend --ratelimit --listen "$SERVICE" 2>/dev/null & pids+=($!)
bench_wait_port "${SERVICE##*:}"
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & pids+=($!)
bench_wait "http://$GANTRY/plain"
# Every request carries a key the service lets through.
printf 'wrk.headers["x-api-key"] = "ok-bench"\n' > "$work/key.lua"
export WRK_SCRIPT="$work/key.lua"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: ok-bench' "http://$GANTRY/limited")
over=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: over-bench' "http://$GANTRY/limited")
[ "$code" = 200 ] && [ "$over" = 429 ] || { echo "the plugin does not follow the service: $code $over" >&2; exit 1; }
results=()
for conns in $CONCS; do
  declare -A rps=() p50=() p99=()
  CONNS=$conns bench_alternate "$ROUNDS" "http://$GANTRY/plain" "http://$GANTRY/limited"
  results+=("$conns|${rps[0]}|${rps[1]}|${p50[0]}|${p50[1]}|${p99[0]}|${p99[1]}")
done
python3 - "$ROUNDS" "$DURATION" "$WORKERS" "${results[@]}" <<'PY'
import statistics, sys
sys.path.insert(0, "bench")
from bench_doc import mean_ms, write_block
rounds, duration, workers = sys.argv[1:4]
lines = [
    f"wrk -t1 -d{duration}s, {rounds} rounds in alternating order per concurrency, gateway `threads = {workers}`, nginx origin (1 KiB), "
    "the fixture rate-limit service (tonic, one thread) answering OK, all on loopback on the same 2 cores.",
    "",
    "| connections | route | requests/s (mean) | p50 per round | p50 (ms, mean) | p99 per round | added p50 |",
    "|---|---|---|---|---|---|---|",
]
for row in sys.argv[4:]:
    conns, r0, r1, p50_0, p50_1, p99_0, p99_1 = row.split("|")
    m0 = statistics.mean(float(x) for x in r0.split())
    m1 = statistics.mean(float(x) for x in r1.split())
    added = (mean_ms(p50_1) - mean_ms(p50_0)) * 1000
    lines.append(f"| {conns} | no plugin | {m0:,.0f} | {p50_0} | {mean_ms(p50_0):.3f} | {p99_0} | |")
    lines.append(f"| {conns} | `grpc-ratelimit` (one `ShouldRateLimit` per request) | {m1:,.0f} ({m1 / m0:.2f}×) | {p50_1} | {mean_ms(p50_1):.3f} | {p99_1} | **{added:+.0f} µs** |")
lines += ["", "Target: added p50 ≤ 300 µs on loopback."]
write_block("grpc-ratelimit", "A gRPC rate-limit call per request (issue 20)", "bench/grpc-ratelimit.sh", "\n".join(lines))
PY
