#!/usr/bin/env bash
# The one command run on a GPU machine (no Rust and no registry there; Python with torch + transformers is).
# What travels: activepref-cuda.xz (scripts/build-cuda.sh) and this repo's small files; no GGUF.
#
#   scripts/gpu-check.sh                          # CUDA: correctness, then benchmarks beside PyTorch, ratios last
#   scripts/gpu-check.sh --device cpu --quick --bin target/release/activepref --no-anchor   # the CPU rehearsal
#
# (a) Correctness: `activepref bench check` against scripts/gpu/reference.json (f32 on the CPU, random weights
#     of real shapes drawn on the host, so the same weights on every device): logits, every parameter's
#     gradient, a 20-step DPO loss curve; on CUDA once in f32 and once with train.dtype = bf16.
# (b) Speed: `bench dpo|score|sample` for gpt2-124m, smollm2-135m, qwen2.5-0.5b and tinyllama-1.1b at
#     8 pairs × 512 tokens, and scripts/bench/torch_anchor.py on the same shapes in the same run.
# Everything lands in $OUT (default ./gpu-check-out): check-*.json, ours.jsonl, anchor.json, gpu-check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda BIN= QUICK=0 ANCHOR=1 OUTDIR="${OUT:-gpu-check-out}"
SHAPES=gpt2-124m,smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --shapes) SHAPES=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-anchor) ANCHOR=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "gpu-check.sh: --device $DEVICE: expected cpu or cuda" >&2; exit 2 ;; esac
mkdir -p "$OUTDIR"
START=$(date +%s)
stage() { echo "== [$(( $(date +%s) - START )) s] $*"; }

if [ -z "$BIN" ]; then
  if [ ! -x ./activepref-cuda ] && [ -f activepref-cuda.xz ]; then
    # xz if the machine has it, else Python's lzma (the GPU machine has Python).
    if command -v xz >/dev/null; then xz -dkf activepref-cuda.xz
    else python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('activepref-cuda.xz'), open('activepref-cuda', 'wb'))"; fi
    chmod +x activepref-cuda
  fi
  BIN=./activepref-cuda
fi
[ -x "$BIN" ] || { echo "gpu-check.sh: no binary at $BIN (build one with scripts/build-cuda.sh, or pass --bin)" >&2; exit 2; }

if [ "$DEVICE" = cuda ]; then
  # The CUDA runtime libraries the binary links (cuBLAS 13, cuRAND 10): the toolkit's, or PyTorch's wheels'.
  LIBS=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
roots = ["/usr/local/cuda-13.0/targets/x86_64-linux/lib", "/usr/local/cuda/lib64", "/usr/local/nvidia/lib64"]
for s in site.getsitepackages():
    roots += glob.glob(os.path.join(s, "nvidia", "*", "lib")) + glob.glob(os.path.join(s, "nvidia", "*", "*", "lib"))
print(":".join(r for r in roots if os.path.isdir(r)))
PY
)
  export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  if ldd "$BIN" | grep 'not found'; then echo "gpu-check.sh: libraries missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2; exit 1; fi
fi

FAILED=0
if [ "$QUICK" = 1 ]; then
  # The rehearsal: a tiny reference written here, then checked, and every benchmark at toy sizes.
  SHAPES=tiny
  stage "reference (tiny shape, written on the CPU)"
  "$BIN" bench check --device cpu --write "$OUTDIR/reference.json" --shapes tiny --grad-shapes tiny --curve-shape tiny --steps 5
  REF="$OUTDIR/reference.json"
  DPO_ARGS=(--pairs 2 --seq-len 32 --steps 2) SCORE_ARGS=(--batch 4 --seq-len 32) SAMPLE_ARGS=(--batch 4 --prompt-len 8 --new-tokens 8)
  ANCHOR_ARGS=(--pairs 2 --seq-len 32 --score-batch 4 --sample-batch 4 --prompt-len 8 --new-tokens 8 --reps 1)
else
  REF=scripts/gpu/reference.json
  DPO_ARGS=(--pairs 8 --seq-len 512 --steps 5) SCORE_ARGS=(--batch 64 --seq-len 512) SAMPLE_ARGS=(--batch 64 --prompt-len 64 --new-tokens 128)
  ANCHOR_ARGS=(--pairs 8 --seq-len 512 --score-batch 64 --sample-batch 64 --prompt-len 64 --new-tokens 128)
fi
DTYPE=f32; [ "$DEVICE" = cuda ] && DTYPE=bf16

stage "(a) correctness against $REF: f32"
"$BIN" bench check --device "$DEVICE" --against "$REF" --json-out "$OUTDIR/check-f32.json" || FAILED=1
if [ "$DEVICE" = cuda ]; then
  stage "(a) correctness: the loss curve with train.dtype = bf16"
  "$BIN" bench check --device cuda --dtype bf16 --curve-only --against "$REF" --json-out "$OUTDIR/check-bf16.json" || FAILED=1
fi

stage "(b) activepref bench dpo|score|sample on $SHAPES ($DEVICE, $DTYPE)"
: > "$OUTDIR/ours.jsonl"
# A benchmark that fails (out of memory on one shape, say) is reported and the others still run: the first
# run on a new machine should bring back every number it can.
BENCH_FAILED=0
bench() { "$BIN" bench "$@" >> "$OUTDIR/ours.jsonl" || { echo "FAILED: activepref bench $*" >&2; BENCH_FAILED=1; }; }
IFS=, read -ra SHAPE_LIST <<< "$SHAPES"
for s in "${SHAPE_LIST[@]}"; do
  bench dpo --json --device "$DEVICE" --dtype "$DTYPE" --shapes "$s" --modes full-live,full-cache "${DPO_ARGS[@]}"
  bench score --json --device "$DEVICE" --shapes "$s" "${SCORE_ARGS[@]}"
  bench sample --json --device "$DEVICE" --dtype "$DTYPE" --shapes "$s" "${SAMPLE_ARGS[@]}"
  stage "  $s done"
done

if [ "$ANCHOR" = 1 ]; then
  stage "(b) the PyTorch anchor on the same shapes"
  python3 scripts/bench/torch_anchor.py --device "$DEVICE" --shapes "$SHAPES" "${ANCHOR_ARGS[@]}" --out "$OUTDIR/anchor.json" \
    || { echo "FAILED: the PyTorch anchor" >&2; BENCH_FAILED=1; }
fi

stage "ratios"
python3 scripts/gpu/summary.py --ours "$OUTDIR/ours.jsonl" --anchor "$OUTDIR/anchor.json" --checks "$OUTDIR" \
  --out "$OUTDIR/gpu-check.json" --elapsed "$(( $(date +%s) - START ))"
[ "$FAILED" = 0 ] || { echo "gpu-check.sh: a correctness check failed (see above and $OUTDIR/check-*.json)" >&2; exit 1; }
[ "$BENCH_FAILED" = 0 ] || { echo "gpu-check.sh: a benchmark failed (see FAILED above)" >&2; exit 1; }
