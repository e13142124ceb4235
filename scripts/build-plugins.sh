#!/usr/bin/env bash
# Build the example plugins (plugins/examples) for wasm32-unknown-unknown:
# with rustup's wasm32-unknown-unknown target when it is installed, otherwise with
# Debian's rustc-web toolchain (rustc-web, rust-web-src, lld), building std from
# source (-Zbuild-std; the first build takes a few minutes).
# Output: plugins/examples/target/wasm32-unknown-unknown/release/*.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
manifest=plugins/examples/Cargo.toml
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "build-plugins: rustup's wasm32-unknown-unknown target"
  cargo build --release --locked --manifest-path "$manifest" --target wasm32-unknown-unknown
else
  if [ ! -x /usr/bin/rustc ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || ! command -v wasm-ld >/dev/null; then
    echo "build-plugins: installing rustc-web, rust-web-src and lld (Debian)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends rustc-web rust-web-src lld >/dev/null
  fi
  echo "build-plugins: Debian rustc-web with -Zbuild-std"
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
    cargo build --release --locked --manifest-path "$manifest" --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort
fi
ls -l plugins/examples/target/wasm32-unknown-unknown/release/*.wasm
