#!/usr/bin/env bash
# Build `gantry` with the `cuda` feature on a machine without a GPU.
#
#   scripts/build-cuda.sh [cargo args...]     (default: build --release)
#
# Follows the verified recipe: CUDA 13.0 compiler wheels from PyPI (newer nvcc
# writes PTX that driver 580 rejects), link stubs with the real SONAMEs generated
# from cudarc's bindings (the real libraries are only needed on the GPU machine),
# CUDA_COMPUTE_CAP=90 (H100/H200). Output goes to target/cuda/.
# Env: GANTRY_CUDA_DIR (toolkit and stubs; default target/cuda-toolkit),
#      CUDA_COMPUTE_CAP (default 90).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${GANTRY_CUDA_DIR:-$ROOT/target/cuda-toolkit}"
TOOLKIT="$DIR/wheels"
STUBS="$DIR/stubs"
mkdir -p "$DIR"

if [ ! -x "$TOOLKIT/nvidia/cu13/bin/nvcc" ]; then
  echo "build-cuda: installing the CUDA 13.0 compiler wheels into $TOOLKIT"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$TOOLKIT" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96
fi
CU="$TOOLKIT/nvidia/cu13"

cargo fetch --manifest-path "$ROOT/Cargo.toml" --quiet
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)"

# Link stubs: every symbol cudarc's bindings declare, with the library's SONAME.
if [ ! -f "$STUBS/lib64/libcuda.so" ]; then
  mkdir -p "$STUBS/lib64" "$STUBS/src"
  stub() { # module soname libname
    grep -ohE '^(pub unsafe fn|[[:space:]]*fn)[[:space:]]+[A-Za-z_][A-Za-z0-9_]*[[:space:]]*\(' "$CUDARC/src/$1/sys/mod.rs" \
      | sed -E 's/^(pub unsafe fn|[[:space:]]*fn)[[:space:]]+([A-Za-z_][A-Za-z0-9_]*).*/\2/' \
      | grep -vE '^(load|culib|lib|bitand|bitor|bitand_assign|bitor_assign|eq|fmt|clone|default|from|hash|partial_cmp|cmp|ne)$' \
      | sort -u | sed 's/.*/void &(void) {}/' > "$STUBS/src/$3.c"
    gcc -shared -fPIC -O0 -Wl,-soname,"$2" -o "$STUBS/lib64/lib$3.so" "$STUBS/src/$3.c"
  }
  stub driver libcuda.so.1 cuda
  stub cublas libcublas.so.13 cublas
  stub cublaslt libcublasLt.so.13 cublasLt
  stub curand libcurand.so.10 curand
  stub nvrtc libnvrtc.so.13 nvrtc
  ln -sf "$CU/lib/libcudart.so.13" "$STUBS/lib64/libcudart.so"
  ln -sf "$CU/lib/libcudart.so.13" "$STUBS/lib64/libcudart.so.13"
fi

export PATH="$CU/bin:$PATH"
export CUDA_HOME="$STUBS"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13000
export NVCC_PREPEND_FLAGS="-I$CU/include ${NVCC_PREPEND_FLAGS:-}"
export LIBRARY_PATH="$STUBS/lib64:${LIBRARY_PATH:-}"
cd "$ROOT"
if [ $# -eq 0 ]; then set -- build --release; fi
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-thin}" CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}"
exec cargo "$@" --features gantry-inference/cuda --target-dir "$ROOT/target/cuda"
