#!/usr/bin/env bash
# What an API key costs a request, in one run with wrk on loopback: the same
# gateway process and nginx origin, one route open and one with `auth = "keys"`
# whose key has every in-process limit set (requests per minute, concurrency),
# so each request hashes its key, finds its tenant, takes and releases a
# reservation and writes the x-ratelimit-* headers. Both get the same
# Authorization header; routes are measured in alternating order. Writes the
# table to docs/BENCHMARKS.md (keys markers).
#
#   bench/keys.sh      # ROUNDS=3 DURATION=10 CONNS=50 WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-50}; WORKERS=${WORKERS:-1}
ORIGIN=127.0.0.1:18393; GANTRY=127.0.0.1:18394
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
nginx -c "$work/origin.conf" & pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & pids+=($!)
bench_wait "http://$GANTRY/open"
curl -sf -o /dev/null -H "authorization: Bearer $KEY" "http://$GANTRY/keyed"
curl -s -o /dev/null -w '%{http_code}' "http://$GANTRY/keyed" | grep -q 401
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$KEY" > "$work/key.lua"
declare -A rps p50 p99
WRK_SCRIPT="$work/key.lua" bench_alternate "$ROUNDS" "http://$GANTRY/open" "http://$GANTRY/keyed"
python3 - "${rps[0]}" "${rps[1]}" "${p50[0]}" "${p50[1]}" "${p99[0]}" "${p99[1]}" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import re, statistics, sys
r0, r1 = ([float(x) for x in a.split()] for a in sys.argv[1:3])
p50_0, p50_1, p99_0, p99_1 = sys.argv[3:7]
rounds, duration, conns, workers = sys.argv[7:11]
def ms(v):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[:-len(unit)]) * f
    return float(v)
def mean_ms(s):
    return statistics.mean(ms(x.strip()) for x in s.split(" / "))
m0, m1 = statistics.mean(r0), statistics.mean(r1)
table = "\n".join([
    f"wrk -t1 -c{conns} -d{duration}s, {rounds} rounds in alternating order, gateway `threads = {workers}`, nginx origin (1 KiB), loopback; both routes get the same `Authorization` header.",
    "",
    "| route | requests/s (mean) | p50 (ms, mean) | p99 per round |",
    "|---|---|---|---|",
    f"| open | {m0:,.0f} | {mean_ms(p50_0):.3f} | {p99_0} |",
    f"| `auth = \"keys\"`, requests per minute and concurrency limited | {m1:,.0f} | {mean_ms(p50_1):.3f} | {p99_1} |",
    "",
    f"Throughput with the key: **{m1 / m0:.3f}×**; added p50: **{(mean_ms(p50_1) - mean_ms(p50_0)) * 1000:+.0f} µs** (target: limiter check ≤ 50 µs).",
])
doc = "docs/BENCHMARKS.md"
text = open(doc).read()
block = "<!-- keys:start -->\n" + table + "\n<!-- keys:end -->"
if "<!-- keys:start -->" in text:
    text = re.sub(r"<!-- keys:start -->.*<!-- keys:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## API keys and rate limits\n\n`bench/keys.sh`\n\n" + block + "\n"
open(doc, "w").write(text)
print(table)
PY
