# Shared by the benchmarks (bench/run.sh, plugins.sh, keys.sh, traces.sh, ...): an nginx
# config writer, readiness waits (HTTP and TCP ports), one wrk measurement, and the mean of a list.
# Source it after `cd` to the repository root.

# bench_nginx_conf WORK NAME SERVER_BLOCK [WORKERS]: write WORK/NAME.conf.
bench_nginx_conf() {
  local work=$1 name=$2 server=$3 workers=${4:-1}
  cat > "$work/$name.conf" <<CONF
worker_processes $workers;
daemon off;
pid $work/$name.pid;
error_log $work/$name.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/$name-body; proxy_temp_path $work/$name-proxy;
  fastcgi_temp_path $work/$name-fcgi; uwsgi_temp_path $work/$name-uwsgi; scgi_temp_path $work/$name-scgi;
  $server
}
CONF
}

# bench_origin WORK ADDR: an nginx static origin serving a 1 KiB file on every path.
bench_origin() {
  head -c 1024 /dev/zero | tr '\0' 'x' > "$1/1k.txt"
  bench_nginx_conf "$1" origin "server { listen $2; location / { root $1; try_files /1k.txt =404; } }"
}

# bench_gateway_conf WORKERS LISTEN ORIGIN: the head of a bench gateway's
# configuration: its worker threads, the `bench` listener and the `origin` pool.
bench_gateway_conf() {
  printf '[server]\nthreads = %s\n[[listeners]]\nname = "bench"\naddress = "%s"\n[[pools]]\nname = "origin"\nendpoints = ["%s"]\n' "$1" "$2" "$3"
}

# bench_wait URL: wait up to 10 s for URL to answer 2xx; fail loudly otherwise.
bench_wait() {
  for _ in $(seq 100); do curl -sf "$1" -o /dev/null && return 0; sleep 0.1; done
  echo "bench: $1 does not answer" >&2
  return 1
}

# bench_measure URL: one wrk run (WRK_THREADS, CONNS, DURATION, and WRK_SCRIPT
# when set); prints "rps p50 p99".
bench_measure() {
  wrk -t"${WRK_THREADS:-1}" -c"${CONNS:-50}" -d"${DURATION:-10}s" --latency \
    ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$1" |
    awk '/Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {printf "%.0f %s %s\n", r, p50, p99}'
}

# bench_order ROUND N: the indexes 0..N-1 in the order round ROUND (from 1) measures
# them: odd rounds forward, even rounds backward, so no target is always measured
# first or last on a shared, noisy machine.
bench_order() {
  if [ $(($1 % 2)) -eq 0 ]; then seq $(($2 - 1)) -1 0; else seq 0 $(($2 - 1)); fi
}

# bench_alternate ROUNDS URL...: bench_measure each URL once per round, in
# reverse order every other round; appends to the caller's associative arrays
# rps (space-separated), p50 and p99 (" / "-separated), indexed by the URL's place.
bench_alternate() {
  local rounds=$1 round i r a b; shift
  local urls=("$@")
  for round in $(seq "$rounds"); do
    for i in $(bench_order "$round" ${#urls[@]}); do
      read -r r a b < <(bench_measure "${urls[$i]}")
      rps[$i]="${rps[$i]:+${rps[$i]} }$r"; p50[$i]="${p50[$i]:+${p50[$i]} / }$a"; p99[$i]="${p99[$i]:+${p99[$i]} / }$b"
    done
  done
}

# bench_mean "N N N": the mean, rounded.
bench_mean() {
  tr ' ' '\n' <<<"$1" | awk 'NF {s+=$1; n++} END {printf "%.0f", s/n}'
}

# bench_plugin_route NAME PREFIX WASM [CONFIGURATION]: a Gantry route on the
# `origin` pool at PREFIX, running one example plugin (by file stem, built by
# scripts/build-plugins.sh) with an optional inline TOML configuration.
bench_plugin_route() {
  printf '[[routes]]\nname = "%s"\npool = "origin"\npath_prefix = "%s"\n[[routes.plugins]]\nname = "%s"\nfile = "%s/plugins/examples/target/wasm32-unknown-unknown/release/%s.wasm"\n' \
    "$1" "$2" "$3" "$PWD" "$3"
  [ -n "${4:-}" ] && printf 'configuration = %s\n' "$4"
  return 0
}

# The add-header example's configuration in every bench.
BENCH_ADD_HEADER='{ request = { "x-team" = "edge" }, response = { "x-served-by" = "gantry" } }'

# bench_wait_port PORT...: wait up to 60 s for each loopback PORT to accept
# connections (a gRPC or raw TCP server); fail loudly otherwise.
bench_wait_port() {
  local port
  for port in "$@"; do
    for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue 2; sleep 0.1; done
    echo "bench: port $port never opened" >&2
    return 1
  done
}

# bench_alloc_probes GROUP BIN: uprobes GROUP:alloc_GROUP, zalloc_GROUP and
# realloc_GROUP on BIN's mimalloc entry points (what Rust's global allocator
# calls), replacing any a killed run left. Event names carry the group: perf
# refuses an event name that repeats across groups. Remove with
# `perf probe -q -d "GROUP:*"`.
bench_alloc_probes() {
  perf probe -q -d "$1:*" 2>/dev/null || true
  perf probe -q -x "$2" -a "$1:alloc_$1=mi_malloc_aligned" -a "$1:zalloc_$1=mi_zalloc_aligned" \
    -a "$1:realloc_$1=mi_realloc_aligned"
}
