#!/usr/bin/env bash
# Build what scripts/device-check.sh runs on the GPU machine: the backend's
# integration tests with the `cuda` feature, compressed to fit one transfer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-cuda.sh test --release --no-run -p gantry-inference --test all
bin=$(ls -t target/cuda/release/deps/all-* | grep -v '\.d$' | head -1)
mkdir -p target/device
xz -T2 -9 -c "$bin" > target/device/inference-tests.xz
ls -la target/device/inference-tests.xz
