#!/usr/bin/env bash
# Install what is missing, build the example Wasm plugins and the release
# `gantry` (target/release/gantry): what scripts/run.sh and scripts/install.sh
# both start with.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
scripts/build-plugins.sh
cargo build --release --locked -p gantry
