#!/usr/bin/env bash
# Reload and binary upgrade under load (issue 18): a `gantry gateway` process
# (the test profile: correctness, not speed) serving HTTP requests (6 clients, kept-alive connections, a
# 20 ms origin) and streamed completions (4 clients, a fixture backend, 40
# tokens at 10 ms) for a minute, its configuration rewritten and reloaded by
# SIGHUP every second, and its binary upgraded three times (a new process with
# `--upgrade`, SIGQUIT to the old one, a request outlasting each hand-over).
# Prints the run's line: requests and streams answered, failures (must be 0),
# and how long each old process took to exit after SIGQUIT.
#
#   bench/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --locked -p gantry --test all \
  upgrade::bench_a_minute_of_reloads_with_three_upgrades -- --ignored --nocapture 2>&1 \
  | grep -E '^upgrade-bench|test result|panicked|failed'
