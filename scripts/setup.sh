#!/usr/bin/env bash
# Install what building and testing Gantry needs on a fresh Debian/Ubuntu machine.
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v perl >/dev/null || need_apt+=(perl)
command -v curl >/dev/null || need_apt+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
for tool in "$@"; do
  case "$tool" in
    bench) command -v wrk >/dev/null || need_apt+=(wrk); command -v nginx >/dev/null || need_apt+=(nginx-light) ;;
  esac
done

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: no Rust toolchain found; install one with rustup (https://rustup.rs), then rerun" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
