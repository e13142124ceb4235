#!/usr/bin/env bash
# Gateway throughput and latency on loopback, in one run, for a 1 KiB response:
#   direct to the origin · through nginx · through a minimal Pingora proxy · through Gantry.
# Same wrk load for each (threads, connections, duration). One worker/thread per proxy.
# Writes the results table to docs/BENCHMARKS.md (between the markers) and prints it.
#
#   bench/run.sh                  # defaults: 1 wrk thread, 50 connections, 10 s, 1 proxy thread
#   CONNS=100 DURATION=20 ROUNDS=4 bench/run.sh
#   GANTRY_BEFORE=/tmp/gantry-old bench/run.sh   # also an earlier gantry binary, same run (before → after)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

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

head -c 1024 /dev/zero | tr '\0' 'x' > "$work/1k.txt"
nginx_conf() { # $1 name, $2 server block
  cat > "$work/$1.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/$1-body; proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fcgi; uwsgi_temp_path $work/$1-uwsgi; scgi_temp_path $work/$1-scgi;
  $2
}
CONF
}
nginx_conf origin "server { listen $ORIGIN; location / { root $work; try_files /1k.txt =404; } }"
nginx_conf proxy "upstream origin { server $ORIGIN; keepalive 128; }
  server { listen $NGINX; location / { proxy_pass http://origin; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
cat > "$work/gantry.toml" <<CONF
[server]
threads = $WORKERS
[admin]
address = "$ADMIN"
[[listeners]]
name = "bench"
address = "$GANTRY"
[[pools]]
name = "origin"
endpoints = ["$ORIGIN"]
[[routes]]
name = "all"
pool = "origin"
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/proxy.conf" & pids+=($!)
target/release/minimal-proxy "$MINIMAL" "$ORIGIN" "$WORKERS" 2>/dev/null & pids+=($!)
# Access logs off (level warn) to match nginx's `access_log off`.
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & gantry_pid=$!; pids+=($gantry_pid)
labels=("direct to origin (nginx static)" "nginx reverse proxy" "minimal Pingora proxy (bench/minimal-proxy)" "Gantry")
addrs=("$ORIGIN" "$NGINX" "$MINIMAL" "$GANTRY")
if [ -n "${GANTRY_BEFORE:-}" ]; then
  sed -e "s/$GANTRY/$BEFORE/" -e "s/$ADMIN/$BEFORE_ADMIN/" "$work/gantry.toml" > "$work/before.toml"
  RUST_LOG=warn "$GANTRY_BEFORE" gateway --config "$work/before.toml" & pids+=($!)
  labels+=("Gantry before ($(basename "$GANTRY_BEFORE"))"); addrs+=("$BEFORE")
fi

for addr in "${addrs[@]}"; do
  for _ in $(seq 100); do curl -sf "http://$addr/" -o /dev/null && break; sleep 0.1; done
  curl -sf "http://$addr/" -o /dev/null || { echo "bench: $addr does not answer" >&2; tail -n 5 "$work"/*.err >&2 2>/dev/null; exit 1; }
done
idle_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gantry_pid/status")

# One wrk run; prints "rps p50 p99".
measure() { # $1 addr
  local out; out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://$1/")
  awk '/Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {printf "%.0f %s %s\n", r, p50, p99}' <<<"$out"
}

# Every target once per round; odd rounds run in reverse order so no target is
# always measured first or last on a shared, noisy machine.
declare -A rps p50 p99
n=${#addrs[@]}
for round in $(seq "$ROUNDS"); do
  order=($(seq 0 $((n - 1)))); [ $((round % 2)) -eq 0 ] && order=($(seq $((n - 1)) -1 0))
  for i in "${order[@]}"; do
    read -r r a b < <(measure "${addrs[$i]}")
    rps[$i]="${rps[$i]:+${rps[$i]} }$r"; p50[$i]="${p50[$i]:+${p50[$i]} / }$a"; p99[$i]="${p99[$i]:+${p99[$i]} / }$b"
  done
done
rows=$(for i in $(seq 0 $((n - 1))); do
  mean=$(tr ' ' '\n' <<<"${rps[$i]}" | awk '{s+=$1} END {printf "%.0f", s/NR}')
  printf '| %s | %s | %s | %s | %s |\n' "${labels[$i]}" "$mean" "${rps[$i]// / \/ }" "${p50[$i]}" "${p99[$i]}"
done)
loaded_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gantry_pid/status")

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
table=$(cat <<TABLE
Run: $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $ROUNDS rounds of wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency,
$WORKERS worker/thread per proxy, 1 KiB response, loopback, release profile (fat LTO, codegen-units = 1, mimalloc).

| path | requests/s (mean) | requests/s per round | p50 per round | p99 per round |
|---|---|---|---|---|
$rows

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
