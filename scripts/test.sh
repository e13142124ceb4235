#!/usr/bin/env bash
# Install what is missing and run Gantry's whole test suite: format check, the
# example Wasm plugins, cargo-deny, clippy with warnings as errors, every test, and `gantry config check` over the examples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TERM_COLOR=never RUST_BACKTRACE=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --all --manifest-path plugins/examples/Cargo.toml -- --check
echo "== example plugins (wasm32, proxy-wasm SDK)"
scripts/build-plugins.sh
echo "== cargo deny: licenses, bans, sources (advisories by hand, see deny.toml)"
cargo deny check licenses bans sources
echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== the gateway-only build (no model runtime) compiles and links no candle"
cargo clippy --locked -p gantry --no-default-features --bins -- -D warnings
if cargo tree --locked -p gantry --no-default-features -e normal | grep -q candle; then
    echo "gantry --no-default-features links candle" >&2
    exit 1
fi
echo "== cargo test"
log=$(mktemp)
cargo test --locked --workspace 2>&1 | tee "$log"
echo "== example plugins' own tests (host target)"
cargo test --locked --manifest-path plugins/examples/Cargo.toml 2>&1 | tee -a "$log"
echo "== gantry config check config/examples/*.toml"
cargo run --locked -q -p gantry -- config check config/examples/*.toml

# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
