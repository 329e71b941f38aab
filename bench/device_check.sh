#!/usr/bin/env bash
# Device check for an NVIDIA GPU (reference machine: one H200; Python 3.12, torch 2.11 CUDA 13, nvcc, numpy,
# pillow, onnx, onnxruntime; no pip index).
#
#   bash bench/device_check.sh              # from anywhere; runs in the repository root
#   OUT=/some/dir bash bench/device_check.sh
#
# 1. installs carried wheels (shared/wheels/*.whl, bench/wheels/*.whl) without an index,
# 2. builds the extension for this GPU against the torch installed here (TORCH_CUDA_ARCH_LIST=9.0 unless set),
# 3. prints `python -m smalldepthmask.info`,
# 4. runs the GPU tests (pytest -m cuda over tests/, and every cuda case of tests/test_kernel.py),
# 5. benchmarks the composite op on CUDA (bench/bench_composite.py: samples/s, and the bytes it must move per
#    second against a device-to-device copy measured in the same run; goal >= 70% of the copy's bandwidth),
# 6. runs bench/device_check_depth.py and bench/bench_gen.py --device cuda when they exist,
# and prints a short summary table last. Everything is also written to $OUT/device_check-<date>.log
# (OUT defaults to bench/results). A failing step is reported in the summary; the script goes on.
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

section "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
BUILD_LOG="$OUT/device_check-$STAMP-build.log"
t0=$(date +%s)
if timeout 300 $PY -m pip install -v --no-build-isolation --no-deps -e . >"$BUILD_LOG" 2>&1; then
  how="pip install -e"
else
  echo "pip install -e failed (tail of $BUILD_LOG):"; tail -25 "$BUILD_LOG"
  echo "falling back to: setup.py build_ext --inplace"
  if timeout 240 $PY setup.py build_ext --inplace >>"$BUILD_LOG" 2>&1; then how="setup.py build_ext --inplace"
  else how=""; tail -40 "$BUILD_LOG"; fi
fi
grep -E "^smalldepthmask: " "$BUILD_LOG" || true
SO=$(ls smalldepthmask/_C*.so 2>/dev/null | head -1 || true)
[ -n "$SO" ] && command -v readelf >/dev/null && { readelf -d "$SO" | grep NEEDED | grep -E "cudart|c10_cuda" || true; }
if [ -n "$how" ] && [ -n "$SO" ] && $PY -c 'import sys; from smalldepthmask import _ops; print("kernels:", _ops.kernels()); sys.exit("cuda" not in _ops.kernels())'; then
  note "build CUDA extension" ok "$how, $(( $(date +%s) - t0 )) s"
else
  note "build CUDA extension" FAIL "see $BUILD_LOG"
fi

section "python -m smalldepthmask.info"
run_step "smalldepthmask.info" 120 $PY -m smalldepthmask.info

section "GPU tests: pytest -m cuda tests/"
run_step "pytest -m cuda tests/" 150 $PY -m pytest -q -m cuda tests/ -p no:cacheprovider

section "kernel tests, cuda cases: tests/test_kernel.py -k cuda"
run_step "pytest tests/test_kernel.py -k cuda" 90 $PY -m pytest -q tests/test_kernel.py -k cuda -rs -p no:cacheprovider

section "composite benchmark (cpu and cuda, with the copy-bandwidth comparison)"
BENCH_JSON="$OUT/composite-cuda-$STAMP.json"
run_step "bench_composite.py" 90 $PY bench/bench_composite.py --device all --json "$BENCH_JSON"

if [ -f bench/device_check_depth.py ]; then
  section "depth teacher device check"
  run_step "device_check_depth.py" 150 $PY bench/device_check_depth.py --out "$OUT/depth-device-$STAMP.json"
else
  note "device_check_depth.py" skip "not present"
fi
if [ -f bench/bench_gen.py ]; then
  section "generator benchmark on cuda"
  run_step "bench_gen.py --device cuda" 90 $PY bench/bench_gen.py --device cuda --n 4000 --naive-n 100 \
    --repeats 1 --workers 16 --json "$OUT/gen-cuda-$STAMP.json"
else
  note "bench_gen.py" skip "not present"
fi
section "training benchmark on cuda"
run_step "bench_train.py --device cuda" 90 $PY bench/bench_train.py --device cuda --json "$OUT/train-cuda-$STAMP.json"

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
printf '%-38s %-6s %s\n' "step" "status" "note"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "log: $LOG"
exit "$FAILED"
