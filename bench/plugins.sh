#!/usr/bin/env bash
# Wasm plugin overhead, in one run with wrk on loopback: the same gateway process
# and origin, one route without plugins and one with the `add-header` example
# (proxy-wasm SDK, request and response header hooks). Routes are measured in
# alternating order. Writes the table to docs/BENCHMARKS.md (plugins markers).
#
#   bench/plugins.sh      # ROUNDS=3 DURATION=10 CONNS=50 WORKERS=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
scripts/build-plugins.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-50}; WORKERS=${WORKERS:-1}
ORIGIN=127.0.0.1:18391; GANTRY=127.0.0.1:18392
cargo build --release --locked -p gantry
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/1k.txt"
cat > "$work/origin.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/origin.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/b; proxy_temp_path $work/p; fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen $ORIGIN; location / { root $work; try_files /1k.txt =404; } } }
CONF
cat > "$work/gantry.toml" <<CONF
[server]
threads = $WORKERS
[[listeners]]
name = "bench"
address = "$GANTRY"
[[pools]]
name = "origin"
endpoints = ["$ORIGIN"]
[[routes]]
name = "plain"
pool = "origin"
path_prefix = "/plain"
[[routes]]
name = "plugin"
pool = "origin"
path_prefix = "/plugin"
[[routes.plugins]]
name = "add-header"
file = "$PWD/plugins/examples/target/wasm32-unknown-unknown/release/add_header.wasm"
configuration = { request = { "x-team" = "edge" }, response = { "x-served-by" = "gantry" } }
CONF
nginx -c "$work/origin.conf" & pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & pids+=($!)
for p in plain plugin; do
  for _ in $(seq 100); do curl -sf "http://$GANTRY/$p" -o /dev/null && break; sleep 0.1; done
done
curl -sI "http://$GANTRY/plugin" | grep -qi '^x-served-by: gantry' || { echo "plugin not active" >&2; exit 1; }
measure() { # $1 path → "rps p50 p99"
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$GANTRY$1" |
    awk '/Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {printf "%.0f %s %s\n", r, p50, p99}'
}
declare -A rps p50 p99
paths=(/plain /plugin)
for round in $(seq "$ROUNDS"); do
  order=(0 1); [ $((round % 2)) -eq 0 ] && order=(1 0)
  for i in "${order[@]}"; do
    read -r r a b < <(measure "${paths[$i]}")
    rps[$i]="${rps[$i]:+${rps[$i]} }$r"; p50[$i]="${p50[$i]:+${p50[$i]} / }$a"; p99[$i]="${p99[$i]:+${p99[$i]} / }$b"
  done
done
python3 - "${rps[0]}" "${rps[1]}" "${p50[0]}" "${p50[1]}" "${p99[0]}" "${p99[1]}" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import re, statistics, sys
r0, r1 = ([float(x) for x in a.split()] for a in sys.argv[1:3])
p50_0, p50_1, p99_0, p99_1 = sys.argv[3:7]
rounds, duration, conns, workers = sys.argv[7:11]
def ms(v):
    v = v.strip()
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[:-len(unit)]) * f
    return float(v)
def mean_ms(s):
    return statistics.mean(ms(x) for x in s.split(" / "))
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
])
doc = "docs/BENCHMARKS.md"
text = open(doc).read()
block = "<!-- plugins:start -->\n" + table + "\n<!-- plugins:end -->"
if "<!-- plugins:start -->" in text:
    text = re.sub(r"<!-- plugins:start -->.*<!-- plugins:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## Wasm plugin overhead\n\n`bench/plugins.sh`\n\n" + block + "\n"
open(doc, "w").write(text)
print(table)
PY
