#!/usr/bin/env bash
# Run one fuzz target for MINUTES (default 10) with cargo-fuzz on the nightly
# toolchain (`cargo install cargo-fuzz`; `rustup toolchain install nightly`):
#   scripts/fuzz.sh openai_request 10   # proxy/fuzz: OpenAI request parsing and validation
#   scripts/fuzz.sh config_parse 10     # config/fuzz: gateway and backend configuration
#   scripts/fuzz.sh decode_map 10       # plugins/fuzz: the plugin ABI's header-map decoder
# The committed seed corpus (<crate>/fuzz/corpus/<target>) is read, never written:
# new inputs go to target/fuzz-corpus/<target>. A crash is saved under
# <crate>/fuzz/artifacts/<target>/; add it to the seed corpus once fixed, so
# `cargo test` replays it. The last lines of libFuzzer's output are the summary.
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh TARGET [MINUTES]}
minutes=${2:-10}
case "$target" in
  openai_request) crate=proxy ;;
  config_parse) crate=config ;;
  decode_map) crate=plugins ;;
  *) echo "unknown target $target (openai_request, config_parse, decode_map)" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
work="$root/target/fuzz-corpus/$target"
mkdir -p "$work"
cd "$root/$crate"
exec cargo +nightly fuzz run --release "$target" "$work" "fuzz/corpus/$target" -- \
  -max_total_time=$((minutes * 60)) -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
