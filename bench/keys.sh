#!/usr/bin/env bash
# What an API key costs a request, in one run with wrk on loopback: the same
# gateway process and nginx origin, one route open and one with `auth = "keys"`
# whose key has every in-process limit set (requests per minute, concurrency),
# so each request hashes its key, finds its tenant, takes and releases a
# reservation and writes the x-ratelimit-* headers; and the same keyed route on
# a second gateway whose keys are counted in Redis on loopback (a script call
# to admit, one to settle). All get the same Authorization header; routes are
# measured in alternating order. Writes the table to docs/BENCHMARKS.md (keys
# markers).
#
#   bench/keys.sh      # ROUNDS=3 DURATION=10 CONNS=50 WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-50}; WORKERS=${WORKERS:-1}
ORIGIN=127.0.0.1:18393; GANTRY=127.0.0.1:18394; SHARED=127.0.0.1:18395; REDIS=127.0.0.1:18396
KEY=gk-bench-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG
cargo build --release --locked -p gantry
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
bench_origin "$work" "$ORIGIN"
cat > "$work/gantry.toml" <<CONF
$(bench_gateway_conf "$WORKERS" "$GANTRY" "$ORIGIN")
[[routes]]
name = "open"
pool = "origin"
path_prefix = "/open"
[[routes]]
name = "keyed"
pool = "origin"
path_prefix = "/keyed"
auth = "keys"
[[keys]]
name = "bench"
sha256 = "$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
requests_per_minute = 1000000000
max_concurrent = 100000
CONF
# The second gateway: the same, its keys counted in Redis.
sed "s/$GANTRY/$SHARED/" "$work/gantry.toml" > "$work/shared.toml"
printf '[key_store]\nredis = "redis://%s"\n' "$REDIS" >> "$work/shared.toml"
nginx -c "$work/origin.conf" & pids+=($!)
redis-server --bind 127.0.0.1 --port "${REDIS##*:}" --save '' --appendonly no >/dev/null & pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/shared.toml" & pids+=($!)
bench_wait "http://$GANTRY/open"
bench_wait "http://$SHARED/open"
for gw in "$GANTRY" "$SHARED"; do
  # The shared gateway answers 503 until it has reached Redis (within 200 ms).
  for _ in $(seq 50); do
    curl -sf -o /dev/null -H "authorization: Bearer $KEY" "http://$gw/keyed" && break
    sleep 0.1
  done
  curl -sf -o /dev/null -H "authorization: Bearer $KEY" "http://$gw/keyed"
  curl -s -o /dev/null -w '%{http_code}' "http://$gw/keyed" | grep -q 401
done
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$KEY" > "$work/key.lua"
declare -A rps p50 p99
WRK_SCRIPT="$work/key.lua" bench_alternate "$ROUNDS" "http://$GANTRY/open" "http://$GANTRY/keyed" "http://$SHARED/keyed"
python3 - "${rps[0]}" "${rps[1]}" "${rps[2]}" "${p50[0]}" "${p50[1]}" "${p50[2]}" "${p99[0]}" "${p99[1]}" "${p99[2]}" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import re, statistics, sys
r0, r1, r2 = ([float(x) for x in a.split()] for a in sys.argv[1:4])
p50_0, p50_1, p50_2, p99_0, p99_1, p99_2 = sys.argv[4:10]
rounds, duration, conns, workers = sys.argv[10:14]
sys.path.insert(0, "bench")
from bench_doc import mean_ms, wrk_ms as ms
m0, m1, m2 = statistics.mean(r0), statistics.mean(r1), statistics.mean(r2)
table = "\n".join([
    f"wrk -t1 -c{conns} -d{duration}s, {rounds} rounds in alternating order, gateway `threads = {workers}`, nginx origin (1 KiB), loopback; both routes get the same `Authorization` header.",
    "",
    "| route | requests/s (mean) | p50 (ms, mean) | p99 per round |",
    "|---|---|---|---|",
    f"| open | {m0:,.0f} | {mean_ms(p50_0):.3f} | {p99_0} |",
    f"| `auth = \"keys\"`, requests per minute and concurrency limited | {m1:,.0f} | {mean_ms(p50_1):.3f} | {p99_1} |",
    f"| the same, counted in Redis on loopback (`[key_store].redis`) | {m2:,.0f} | {mean_ms(p50_2):.3f} | {p99_2} |",
    "",
    f"Throughput with the key: **{m1 / m0:.3f}×** in process, **{m2 / m0:.3f}×** in Redis; added p50: **{(mean_ms(p50_1) - mean_ms(p50_0)) * 1000:+.0f} µs** in process (target: limiter check ≤ 50 µs), **{(mean_ms(p50_2) - mean_ms(p50_0)) * 1000:+.0f} µs** in Redis (target ≤ 0.5 ms).",
])
sys.path.insert(0, "bench")
from bench_doc import write_block
write_block("keys", "API keys and rate limits", "bench/keys.sh", table)
PY
