#!/usr/bin/env bash
# Where a proxy's heap allocations come from, per request: perf records mimalloc's
# allocation entry points (uprobes, as bench/allocs.sh counts them) with DWARF call
# chains while wrk runs, and each allocation is charged to its first two frames
# outside the allocator, std and the collections (the code that asked for it).
#
#   bench/alloc-sites.sh                          # Gantry's plain route
#   PLUGIN=noop bench/alloc-sites.sh              # a route with the noop (or add_header) plugin
#   PROXY=minimal bench/alloc-sites.sh            # the minimal Pingora proxy
#   GANTRY_BIN=/tmp/gantry-old bench/alloc-sites.sh
# Needs root (uprobes) and perf; run after a release build (bench/allocs.sh builds one).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PROXY=${PROXY:-gantry}
GANTRY_BIN=${GANTRY_BIN:-target/release/gantry}
TOP=${TOP:-40}
BASE_PORT=${BASE_PORT:-18280}
ORIGIN=127.0.0.1:$((BASE_PORT + 1))
LISTEN=127.0.0.1:$((BASE_PORT + 4))

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  perf probe -q -d "sites:*" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
bench_origin "$work" "$ORIGIN"
nginx -c "$work/origin.conf" & pids+=($!)
if [ "$PROXY" = minimal ]; then
  bin=target/release/minimal-proxy
  "$bin" "$LISTEN" "$ORIGIN" 1 2>/dev/null & proxy=$!
else
  bin=$GANTRY_BIN
  {
    bench_gateway_conf 1 "$LISTEN" "$ORIGIN"
    if [ -n "${PLUGIN:-}" ]; then
      bench_plugin_route plugin / "$PLUGIN" "$([ "$PLUGIN" = add_header ] && echo "$BENCH_ADD_HEADER")"
    else
      printf '[[routes]]\nname = "all"\npool = "origin"\n'
    fi
  } > "$work/gantry.toml"
  RUST_LOG=warn "$bin" gateway --config "$work/gantry.toml" & proxy=$!
fi
pids+=("$proxy")
bench_wait "http://$LISTEN/"
bench_alloc_probes sites "$bin"
wrk -t1 -c10 -d1s "http://$LISTEN/" >/dev/null # connections open, pools warm
# Two connections and a large buffer: DWARF call chains are big, and a lost chunk
# would undercount.
perf record -q -m 16M -o "$work/perf.data" -e sites:alloc_sites,sites:zalloc_sites,sites:realloc_sites \
  --call-graph dwarf,8192 -p "$proxy" -- sleep 3 & rec=$!
sleep 0.5
reqs=$(wrk -t1 -c2 -d1s "http://$LISTEN/" | awk '/requests in/ {print $1}')
wait "$rec"
perf script -i "$work/perf.data" -F event,ip,sym --no-inline 2>/dev/null | awk -v reqs="$reqs" -v top="$TOP" '
  BEGIN { RS = ""; FS = "\n"; skip = "^(mi_|__rust|alloc::|<alloc::|core::|<core::|hashbrown|<hashbrown|bytes::|<bytes::|std::|<std::|http::header::|<http::header::|smallvec|<smallvec|\\[unknown\\])" }
  {
    ev = $1; sub(/^ *[a-z]+:/, "", ev); sub(/[: ].*/, "", ev); sub(/_sites$/, "", ev)
    key = ""; n = 0
    for (i = 2; i <= NF && n < 2; i++) {
      f = $i; sub(/^[ \t]*[0-9a-f]+ /, "", f)
      if (f ~ skip) continue
      key = key (n ? " <- " : "") substr(f, 1, 100); n++
    }
    count[ev " " key]++; total++
  }
  END {
    printf "%d requests, %.1f allocations (and reallocations) per request\n", reqs, total / reqs
    for (k in count) printf "%7.2f %s\n", count[k] / reqs, k | "sort -rn | head -" top
  }'
