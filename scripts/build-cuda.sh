#!/usr/bin/env bash
# Builds `activepref` with `--features cuda` on a CPU-only Linux machine whose only network is crates.io and
# PyPI: the CUDA 13.0 toolkit (nvcc, headers, cuBLAS/cuRAND/NVRTC/runtime for linking) comes from NVIDIA's PyPI
# wheels, and the driver library is a link-time stub (the GPU machine brings the real libcuda.so.1).
#
#   scripts/build-cuda.sh              # -> target-cuda/release/activepref and activepref-cuda.xz
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # A100 (default 90: H100/H200)
#
# About 17 minutes from clean on 2 cores (most of it nvcc on candle's kernels). nvcc 13.0 on purpose: a newer
# nvcc emits PTX that the 580.x driver (CUDA 13.0) rejects. On the GPU machine:
#   export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:$LD_LIBRARY_PATH
#   xz -d activepref-cuda.xz && chmod +x activepref-cuda && ./activepref-cuda bench dpo --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
W=${CUDA_WHEELS_DIR:-$HOME/.cache/activepref-cuda13}   # unpacked wheels (never carried to the GPU machine)
mkdir -p "$W/whl" "$W/site"
if [ ! -x "$W/site/nvidia/cu13/bin/nvcc" ]; then
  echo "== CUDA 13.0 toolkit from PyPI wheels into $W"
  PLAT=(--platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" --python-version 3.11 -d "$W/whl" \
    'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' \
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' \
    'nvidia-cublas==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' 'nvidia-curand==10.4.0.*'
  for w in "$W"/whl/*.whl; do unzip -q -o "$w" -d "$W/site"; done
fi
T="$W/site/nvidia/cu13"
( cd "$T/lib" && for n in cublas cublasLt cudart nvrtc; do ln -sf "lib$n.so.13" "lib$n.so"; done && ln -sf libcurand.so.10 libcurand.so )
cargo fetch -q
# The driver API's symbols, as cudarc declares them, exported by an empty library (link time only).
CUDARC_SRC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.* | sort -V | tail -1)
mkdir -p "$T/lib/stubs"
grep -o -E 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" | sed 's/pub unsafe fn //; s/($//' | sort -u |
  awk '{print "void " $1 "(void) {}"}' > "$T/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$T/lib/stubs/libcuda.so" "$T/lib/stubs/libcuda_stub.c"
export PATH="$T/bin:$PATH" NVCC="$T/bin/nvcc" CUDA_HOME="$T" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13000   # cudarc wants 13000, not 13.0
export RUSTFLAGS="${RUSTFLAGS:-} -L $T/lib -L $T/lib/stubs"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
echo "== cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP)"
cargo build --release -p activepref --features cuda
BIN="$CARGO_TARGET_DIR/release/activepref"
strip -o activepref-cuda "$BIN" && xz -T0 -f -9 activepref-cuda
ls -l "$BIN" activepref-cuda.xz
echo "built $BIN and activepref-cuda.xz (carry the .xz to the GPU machine)"
