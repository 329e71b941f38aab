#!/usr/bin/env bash
# Device check for an NVIDIA GPU (reference machine: one H200; Python 3.12, torch 2.11 CUDA 13, nvcc, numpy,
# pillow, onnx, onnxruntime; no pip index).
#
#   bash bench/device_check.sh              # from anywhere; runs in the repository root
#   OUT=/some/dir bash bench/device_check.sh
#
# In the order of what matters most, so a run cut short still answers the first questions:
# 1. carried wheels (.whl/, shared/wheels, bench/wheels) without an index;
# 2. the kernels built for this GPU by the first-use build (TORCH_CUDA_ARCH_LIST=9.0 unless set, with
#    SMALLDEPTHMASK_REQUIRE_EXT=1 so a CPU-only fallback fails loudly), then `info`;
# 3. the CUDA kernel against the host device-body kernel, bit for bit, on every kernel test case, and the
#    no-sync pipeline test;
# 4. gen end to end with a random-weight DenseDepth at 448->224, batch 64 and 128, --profile (triplets/s and the
#    per-stage table: bench/bench_gen_teacher.py);
# 5. the composite op against a device-to-device copy (bench_composite.py) and the teacher against a bf16 matmul
#    (device_check_depth.py), each measured in the same run;
# 6. the remaining GPU tests (pytest -m cuda), the training benchmark;
# and prints a short summary table last. Not verifiable on the reference H200 (not installed there): TensorRT,
# DALI's mixed mode, Ray, several GPUs. Everything is also written to $OUT/device_check-<date>.log (OUT defaults
# to bench/results). A failing step is reported in the summary; the script goes on.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results}
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
LOG="$OUT/device_check-$STAMP.log"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build works even if pip install -e cannot

declare -a SUMMARY=()
FAILED=0
note() { SUMMARY+=("$(printf '%-38s %-6s %s' "$1" "$2" "${3:-}")"); [ "$2" = ok ] || [ "$2" = skip ] || FAILED=1; }
section() { echo; echo "=== $* ($(date +%H:%M:%S))"; }
# run_step NAME TIMEOUT CMD...: runs CMD, records ok/FAIL (rc) in the summary, never stops the script
# The device tool allows 600 s per command: the whole script keeps to BUDGET seconds (steps past it are skipped).
BUDGET=${BUDGET:-540}
run_step() {
  local name=$1 limit=$2; shift 2
  local rc=0 left=$(( BUDGET - SECONDS ))
  if [ "$left" -le 20 ]; then note "$name" skip "out of time budget (${BUDGET}s)"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then note "$name" ok; else note "$name" FAIL "rc=$rc$([ "$rc" -eq 124 ] && echo ", timed out after ${limit}s")"; fi
  return 0
}

section "machine"
echo "log: $LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true
command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc not on PATH"
$PY -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' || true

section "carried wheels"
shopt -s nullglob
WHEELS=(.whl/*.whl shared/wheels/*.whl bench/wheels/*.whl)  # .whl/: made by bench/fetch_device_wheels.sh
shopt -u nullglob
if [ "${#WHEELS[@]}" -gt 0 ]; then
  run_step "install carried wheels (${#WHEELS[@]})" 120 $PY -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "${WHEELS[@]}"
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
else
  echo "none"; note "install carried wheels" skip "no shared/wheels or bench/wheels"
fi

section "build on first use (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
export SMALLDEPTHMASK_EXT_CACHE=${SMALLDEPTHMASK_EXT_CACHE:-/tmp/smalldepthmask-ext}
t0=$(date +%s)
if SMALLDEPTHMASK_REQUIRE_EXT=1 timeout 300 $PY -c 'import sys; from smalldepthmask import _ops; s = _ops.load(); print(s); print("kernels:", _ops.kernels()); sys.exit("cuda" not in _ops.kernels())'; then
  note "build CUDA kernels (first use)" ok "$(( $(date +%s) - t0 )) s"
else
  note "build CUDA kernels (first use)" FAIL "logs: $SMALLDEPTHMASK_EXT_CACHE/*/build.log"
  tail -40 "$SMALLDEPTHMASK_EXT_CACHE"/*/build.log 2>/dev/null || true
fi
run_step "smalldepthmask.info" 60 $PY -m smalldepthmask.info

section "CUDA kernel vs device body (bit for bit), and the no-sync pipeline"
run_step "pytest kernel cuda + device_body" 120 $PY -m pytest -q -rs -p no:cacheprovider tests/test_kernel.py \
  -m "cuda or device_body"
run_step "pytest no-sync pipeline" 90 $PY -m pytest -q -rs -p no:cacheprovider tests/test_pipeline.py

section "gen end to end with a random-weight DenseDepth, 448 -> 224, --profile"
run_step "bench_gen_teacher.py (batch 64, 128)" 180 $PY bench/bench_gen_teacher.py --device cuda \
  --batches 64,128 --n 1024 4096 --json "$OUT/gen-teacher-cuda-$STAMP.json"

if $PY -c "import tensorrt" 2>/dev/null; then
  run_step "bench_gen_teacher.py tensorrt (batch 64)" 240 $PY bench/bench_gen_teacher.py --device cuda \
    --batches 64 --n 1024 4096 --gen-args="--depth-runner tensorrt" --json "$OUT/gen-teacher-trt-$STAMP.json"
else
  note "gen end to end, TensorRT runner" skip "tensorrt is not installed (not verified)"
fi

section "composite benchmark (cpu and cuda, with the copy-bandwidth comparison)"
BENCH_JSON="$OUT/composite-cuda-$STAMP.json"
run_step "bench_composite.py" 90 $PY bench/bench_composite.py --device all --json "$BENCH_JSON"

section "depth teacher device check (vs a bf16 matmul)"
run_step "device_check_depth.py" 120 $PY bench/device_check_depth.py --out "$OUT/depth-device-$STAMP.json"

section "remaining GPU tests: pytest -m cuda tests/"
run_step "pytest -m cuda tests/" 120 $PY -m pytest -q -m cuda -rs tests/ -p no:cacheprovider

section "training benchmark on cuda"
run_step "bench_train.py --device cuda" 60 $PY bench/bench_train.py --device cuda --json "$OUT/train-cuda-$STAMP.json"

section "summary"
if [ -f "$BENCH_JSON" ]; then
  $PY - "$BENCH_JSON" <<'EOF' || true
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(f"{'device':6} {'size':9} {'impl':9} {'compose':7} {'samples/s':>12} {'x ref':>8} {'kernel GB/s':>11} "
      f"{'copy GB/s':>9} {'% copy':>6}")
for r in rows:
    f = lambda k, fmt: (fmt.format(r[k]) if r.get(k) is not None else "")
    if r["device"] == "cpu" and r.get("threads", 1) == 1 and r["impl"] == "ext":
        continue
    print(f"{r['device']:6} {r['size']:9} {r['impl']:9} {r['compose']:7} {f('samples/s', '{:,.0f}'):>12} "
          f"{f('x ref', '{:,.0f}'):>8} {f('kernel GB/s', '{:,.0f}'):>11} {f('copy GB/s', '{:,.0f}'):>9} "
          f"{f('% copy', '{:.0f}%'):>6}")
EOF
fi
echo
for f in "$OUT"/gen-teacher-cuda-"$STAMP".json; do
  [ -f "$f" ] && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); [print(f"gen+teacher batch {r[\"batch\"]}: {r[\"triplets/s\"]} triplets/s") for r in d["rows"]]' "$f" || true
done
echo "not verified here: TensorRT, DALI mixed mode, Ray, several GPUs (not installed / one GPU)"
printf '%-38s %-6s %s\n' "step" "status" "note"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "log: $LOG"
exit "$FAILED"
