#!/usr/bin/env bash
# Install what is missing, build Gantry (release) and run `gantry serve` on the
# embedded default: gateway on 127.0.0.1:8080, admin on 127.0.0.1:9090.
# Extra arguments go to `gantry serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec target/release/gantry serve "$@"
