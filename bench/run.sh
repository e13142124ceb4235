#!/usr/bin/env bash
# Gateway throughput and latency on loopback, in one run, for a 1 KiB response:
#   direct to the origin · through nginx · through a minimal Pingora proxy · through Gantry
#   · through Gantry on a route with the `noop` plugin · and with the `add-header` plugin.
# Same wrk load for each (threads, connections, duration), every target once per round,
# interleaved. One worker/thread per proxy. Prints the ratios the hot-path targets are
# stated in, and writes the table to docs/BENCHMARKS.md (between the markers).
#
#   bench/run.sh                  # defaults: 1 wrk thread, 50 connections, 10 s, 1 proxy thread
#   CONNS=100 DURATION=20 ROUNDS=4 bench/run.sh
#   GANTRY_BEFORE=/tmp/gantry-old bench/run.sh   # also an earlier gantry binary, same run (before → after)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
scripts/build-plugins.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh

WRK_THREADS=${WRK_THREADS:-1}
CONNS=${CONNS:-50}
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-18080}
ORIGIN=127.0.0.1:$((BASE_PORT + 1))
NGINX=127.0.0.1:$((BASE_PORT + 2))
MINIMAL=127.0.0.1:$((BASE_PORT + 3))
GANTRY=127.0.0.1:$((BASE_PORT + 4))
ADMIN=127.0.0.1:$((BASE_PORT + 5))
BEFORE=127.0.0.1:$((BASE_PORT + 6))
BEFORE_ADMIN=127.0.0.1:$((BASE_PORT + 7))

cargo build --release --locked -p gantry -p minimal-proxy
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

bench_origin "$work" "$ORIGIN"
bench_nginx_conf "$work" proxy "upstream origin { server $ORIGIN; keepalive 128; }
  server { listen $NGINX; location / { proxy_pass http://origin; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }" "$WORKERS"
cat > "$work/gantry.toml" <<CONF
$(bench_gateway_conf "$WORKERS" "$GANTRY" "$ORIGIN")
[admin]
address = "$ADMIN"
[[routes]]
name = "all"
pool = "origin"
$(bench_plugin_route noop /noop noop)
$(bench_plugin_route header /header add_header "$BENCH_ADD_HEADER")
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/proxy.conf" & pids+=($!)
target/release/minimal-proxy "$MINIMAL" "$ORIGIN" "$WORKERS" 2>/dev/null & pids+=($!)
# Access logs off (level warn) to match nginx's `access_log off`.
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & gantry_pid=$!; pids+=($gantry_pid)
labels=("direct to origin (nginx static)" "nginx reverse proxy" "minimal Pingora proxy (bench/minimal-proxy)" "Gantry"
  "Gantry + \`noop\` plugin" "Gantry + \`add-header\` plugin")
urls=("http://$ORIGIN/" "http://$NGINX/" "http://$MINIMAL/" "http://$GANTRY/" "http://$GANTRY/noop" "http://$GANTRY/header")
if [ -n "${GANTRY_BEFORE:-}" ]; then
  sed -e "s/$GANTRY/$BEFORE/" -e "s/$ADMIN/$BEFORE_ADMIN/" "$work/gantry.toml" > "$work/before.toml"
  RUST_LOG=warn "$GANTRY_BEFORE" gateway --config "$work/before.toml" & pids+=($!)
  labels+=("Gantry before ($(basename "$GANTRY_BEFORE"))" "Gantry before + \`noop\`" "Gantry before + \`add-header\`")
  urls+=("http://$BEFORE/" "http://$BEFORE/noop" "http://$BEFORE/header")
fi

for url in "${urls[@]}"; do bench_wait "$url" || { tail -n 5 "$work"/*.err >&2 2>/dev/null; exit 1; }; done
curl -sI "http://$GANTRY/header" | grep -qi '^x-served-by: gantry' || { echo "bench: add-header plugin not active" >&2; exit 1; }
idle_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gantry_pid/status")

# Every target once per round, in bench_order.
declare -A rps p50 p99
n=${#urls[@]}
for round in $(seq "$ROUNDS"); do
  for i in $(bench_order "$round" "$n"); do
    read -r r a b < <(bench_measure "${urls[$i]}")
    rps[$i]="${rps[$i]:+${rps[$i]} }$r"; p50[$i]="${p50[$i]:+${p50[$i]} / }$a"; p99[$i]="${p99[$i]:+${p99[$i]} / }$b"
  done
done
rows=$(for i in $(seq 0 $((n - 1))); do
  mean=$(bench_mean "${rps[$i]}")
  printf '| %s | %s | %s | %s | %s |\n' "${labels[$i]}" "$mean" "${rps[$i]// / \/ }" "${p50[$i]}" "${p99[$i]}"
done)
loaded_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gantry_pid/status")

# The ratios the targets are stated in (docs/BENCHMARKS.md), from the same rounds.
series=$(for i in $(seq 0 $((n - 1))); do printf '%s|%s|%s\n' "${rps[$i]}" "${p50[$i]}" "${p99[$i]}"; done)
ratios=$(python3 - "$series" <<'PY'
import statistics, sys
sys.path.insert(0, "bench")
from bench_doc import wrk_ms as ms
rows = [line.split("|") for line in sys.argv[1].splitlines()]
rps = [statistics.mean(float(x) for x in r.split()) for r, _, _ in rows]
p50 = [statistics.mean(ms(x) for x in a.split(" / ")) for _, a, _ in rows]
p99 = [statistics.mean(ms(x) for x in b.split(" / ")) for _, _, b in rows]
def line(name, a, b, target):
    return f"| {name} | {rps[a] / rps[b]:.2f}× | {p99[a] / p99[b]:.2f}× | {(p50[a] - p50[b]) * 1000:+.0f} µs | {target} |"
out = ["| ratio (same run) | throughput | p99 | p50 added | target |", "|---|---|---|---|---|",
       line("Gantry / minimal Pingora", 3, 2, "≥ 0.95×, p99 ≤ 1.1×"),
       line("Gantry / nginx", 3, 1, "≥ 0.9×, p99 ≤ 1.2×"),
       line("`noop` plugin route / plain route", 4, 3, "≥ 0.97×"),
       line("`add-header` plugin route / plain route", 5, 3, "≥ 0.92×, p50 added ≤ 20 µs")]
if len(rows) > 6:
    out += [line("before: Gantry / minimal Pingora", 6, 2, ""),
            line("before: Gantry / nginx", 6, 1, ""),
            line("before: `noop` / plain", 7, 6, ""),
            line("before: `add-header` / plain", 8, 6, "")]
print("\n".join(out))
PY
)

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
table=$(cat <<TABLE
Run: $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $ROUNDS rounds of wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency,
$WORKERS worker/thread per proxy, 1 KiB response, loopback, release profile (fat LTO, codegen-units = 1, mimalloc).

| path | requests/s (mean) | requests/s per round | p50 per round | p99 per round |
|---|---|---|---|---|
$rows

$ratios

Gantry RSS: idle $((idle_rss_kib / 1024)) MiB, after the run $((loaded_rss_kib / 1024)) MiB.
TABLE
)
echo "$table"

doc=docs/BENCHMARKS.md
if grep -q '<!-- bench:start -->' "$doc" 2>/dev/null; then
  python3 - "$doc" "$table" <<'PY'
import sys, re
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->",
              "<!-- bench:start -->\n" + table.replace("\\", "\\\\") + "\n<!-- bench:end -->", text, flags=re.S)
open(path, "w").write(text)
PY
fi
