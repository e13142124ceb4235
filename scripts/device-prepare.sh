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

# The benchmark's binaries (scripts/device-bench.sh): the gateway/backend with
# CUDA, the stock-candle baseline with CUDA, and the load generator.
scripts/build-cuda.sh build --release --locked -p gantry -p inference-client -p stock-candle \
  --features stock-candle/cuda
for b in gantry inference-client stock-candle; do
  xz -T2 -9 -c "target/cuda/release/$b" > "target/device/$b.xz"
done
ls -la target/device/
