#!/usr/bin/env bash
# Heap allocations and CPU time per request, next to the minimal Pingora proxy:
#   minimal Pingora proxy · Gantry · Gantry + `noop` plugin · Gantry + `add-header` plugin
# (and an earlier Gantry binary's three routes with GANTRY_BEFORE).
#
# Allocations: mimalloc's allocation entry points (`mi_malloc_aligned`, `mi_zalloc_aligned`,
# `mi_realloc_aligned`, what the Rust global allocator calls) counted with perf uprobes in
# the proxy's process while wrk runs, divided by the requests wrk completed. They count
# exactly, so a change of one allocation per request shows where wrk's throughput cannot.
# CPU: the process's user + system ticks over a second wrk run without probes (uprobes
# cost a trap per hit), per request. Needs root (uprobes) and perf.
#
#   bench/allocs.sh                               # defaults: 10 connections, 5 s, 2 rounds
#   GANTRY_BEFORE=/tmp/gantry-old bench/allocs.sh # also an earlier binary, same run
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh bench
scripts/build-plugins.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
. bench/lib.sh
command -v perf >/dev/null || { echo "bench: perf is needed (Debian: linux-perf)" >&2; exit 1; }

CONNS=${CONNS:-10}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-18180}
ORIGIN=127.0.0.1:$((BASE_PORT + 1))
MINIMAL=127.0.0.1:$((BASE_PORT + 3))
GANTRY=127.0.0.1:$((BASE_PORT + 4))
BEFORE=127.0.0.1:$((BASE_PORT + 6))

cargo build --release --locked -p gantry -p minimal-proxy
work=$(mktemp -d)
chmod 755 "$work"
pids=()
groups=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for g in "${groups[@]}"; do perf probe -q -d "$g:*" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

bench_origin "$work" "$ORIGIN"
cat > "$work/gantry.toml" <<CONF
$(bench_gateway_conf 1 "$GANTRY" "$ORIGIN")
[[routes]]
name = "all"
pool = "origin"
$(bench_plugin_route noop /noop noop)
$(bench_plugin_route header /header add_header "$BENCH_ADD_HEADER")
CONF

nginx -c "$work/origin.conf" & pids+=($!)
target/release/minimal-proxy "$MINIMAL" "$ORIGIN" 1 2>/dev/null & minimal_pid=$!; pids+=($!)
RUST_LOG=warn target/release/gantry gateway --config "$work/gantry.toml" & gantry_pid=$!; pids+=($!)
labels=("minimal Pingora proxy" "Gantry" "Gantry + \`noop\` plugin" "Gantry + \`add-header\` plugin")
urls=("http://$MINIMAL/" "http://$GANTRY/" "http://$GANTRY/noop" "http://$GANTRY/header")
procs=("$minimal_pid" "$gantry_pid" "$gantry_pid" "$gantry_pid")
bins=(target/release/minimal-proxy target/release/gantry target/release/gantry target/release/gantry)
if [ -n "${GANTRY_BEFORE:-}" ]; then
  sed -e "s/$GANTRY/$BEFORE/" "$work/gantry.toml" > "$work/before.toml"
  RUST_LOG=warn "$GANTRY_BEFORE" gateway --config "$work/before.toml" & before_pid=$!; pids+=($!)
  labels+=("Gantry before ($(basename "$GANTRY_BEFORE"))" "Gantry before + \`noop\`" "Gantry before + \`add-header\`")
  urls+=("http://$BEFORE/" "http://$BEFORE/noop" "http://$BEFORE/header")
  procs+=("$before_pid" "$before_pid" "$before_pid")
  bins+=("$GANTRY_BEFORE" "$GANTRY_BEFORE" "$GANTRY_BEFORE")
fi
for url in "${urls[@]}"; do bench_wait "$url"; done

# One uprobe group per binary (bench_alloc_probes).
declare -A group_of
for bin in "${bins[@]}"; do
  [ -n "${group_of[$bin]:-}" ] && continue
  g="allocs${#groups[@]}"
  bench_alloc_probes "$g" "$bin"
  group_of[$bin]=$g; groups+=("$g")
done

# wrk_requests URL [COMMAND...]: requests completed in one wrk run, run under
# COMMAND when given (perf stat).
wrk_requests() {
  local url=$1; shift
  "$@" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" | awk '/requests in/ {print $1}'
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A allocs reallocs cpu
hz=$(getconf CLK_TCK)
n=${#urls[@]}
for round in $(seq "$ROUNDS"); do
  for i in $(bench_order "$round" "$n"); do
    pid=${procs[$i]} g=${group_of[${bins[$i]}]}
    t0=$(ticks "$pid"); reqs=$(wrk_requests "${urls[$i]}"); t1=$(ticks "$pid")
    us=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v r="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}')
    reqs=$(wrk_requests "${urls[$i]}" \
      perf stat -x, -o "$work/stat" -e "$g:alloc_$g,$g:zalloc_$g,$g:realloc_$g" -p "$pid" --)
    read -r a r < <(awk -F, -v r="$reqs" '$3 ~ /:(alloc|zalloc)_/ {a += $1} $3 ~ /:realloc_/ {re += $1}
      END {printf "%.2f %.2f\n", a / r, re / r}' "$work/stat")
    allocs[$i]="${allocs[$i]:+${allocs[$i]} / }$a"; reallocs[$i]="${reallocs[$i]:+${reallocs[$i]} / }$r"
    cpu[$i]="${cpu[$i]:+${cpu[$i]} / }$us"
  done
done

cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "Run: $(date -u +%Y-%m-%d), $(nproc) cores ($cpu_model), $ROUNDS rounds, wrk -t1 -c$CONNS -d${DURATION}s per figure,"
echo "one worker per proxy, 1 KiB response, loopback, release profile."
echo
echo "| path | allocations per request | reallocations per request | CPU per request (µs) |"
echo "|---|---|---|---|"
for i in $(seq 0 $((n - 1))); do
  printf '| %s | %s | %s | %s |\n' "${labels[$i]}" "${allocs[$i]}" "${reallocs[$i]}" "${cpu[$i]}"
done
