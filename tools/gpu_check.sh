#!/usr/bin/env bash
# The one prepared GPU check (issue 20). Runs on the GPU machine AS IT IS: python3 3.12, torch 2.11 + triton 3.6, timm,
# torchvision, scikit-learn, safetensors, pyyaml, pytest; no rasterio/rioxarray/nbdev/papermill, no network, no install.
# deo_kit runs from this checkout (PYTHONPATH), deo_kit.kernels through tools/pyshim (setup.py's mapping of kernels/).
# Carry the demo teacher: `python tools/make_gpu_pack.py` here, then run with carry [".gpu_pack"].
#
# Writes into $OUT (else $DEO_GPU_CHECK_OUT, else /tmp/deo_gpu_check): gpu_check.log, kernels_cuda.xml (junit of the
# CUDA tests) and ONE gpu_check.json (device, versions, every benchmark row, every pass/fail, the method run); prints
# a one-screen summary. Every step has a hard timeout and the whole run stays under $DEO_GPU_CHECK_BUDGET s (470).
#
# Usage: tools/gpu_check.sh [--dry-run]   (--dry-run: the same plumbing on this CPU, torch paths, tiny shapes, with
#        the modules the GPU image lacks blocked, so a missing lazy import shows here first)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
START=$SECONDS
BUDGET=${DEO_GPU_CHECK_BUDGET:-470}  # the GPU machine's per-command limit is 600 s
SLACK=1
if (( DRY )); then  # a shared 2-core CPU: the plumbing is checked, not the speed, so every limit is 4x wider
  SLACK=4
  [[ -z "${DEO_GPU_CHECK_BUDGET:-}" ]] && BUDGET=1500
fi
OUT_DIR=${OUT:-${DEO_GPU_CHECK_OUT:-/tmp/deo_gpu_check}}
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/kernels_cuda.xml" "$OUT_DIR/gpu_check.json"  # a stale file must not pass for this run's
PARTS=$(mktemp -d "${TMPDIR:-/tmp}/deo_gpu_parts.XXXXXX")
trap 'rm -rf "$PARTS"' EXIT
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1

PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/tools/pyshim:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
DRYFLAG=()
if (( DRY )); then
  DRYFLAG=(--dry-run)
  export DEO_KIT_BLOCK_MODULES=rasterio,rioxarray,affine,nbdev,execnb,fastcore,papermill,nbclient,nbformat,ipywidgets,hvplot,holoviews,bokeh,panel,dask
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  unset TRITON_INTERPRET            # compile the kernels for the GPU
  export DEO_KIT_GPU_CHECK=1        # conftest: run the cuda-marked tests on the device
fi
status=0

# run_step NAME CAP CMD...: at most CAP seconds, never past the budget (15 s kept for the merge); one line per step.
run_step() {
  local name=$1 cap=$(( $2 * SLACK )); shift 2
  local left=$(( BUDGET - 15 - (SECONDS - START) ))
  local t=$(( cap < left ? cap : left ))
  if (( t < 10 )); then
    echo "== $name: skipped (no time left in the ${BUDGET} s budget)"
    echo "{\"step\": \"$name\", \"status\": \"skipped\", \"seconds\": 0, \"rc\": null}" >> "$PARTS/steps.jsonl"
    return 0
  fi
  echo "== $name (limit ${t} s)"
  local t0=$SECONDS
  timeout -k 5 "$t" "$@"
  local rc=$?
  local st=pass
  (( rc == 124 || rc == 137 )) && st=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && st=fail
  [[ $st != pass ]] && status=1
  echo "== $name: $st (rc $rc, $(( SECONDS - t0 )) s)"
  echo "{\"step\": \"$name\", \"status\": \"$st\", \"seconds\": $(( SECONDS - t0 )), \"rc\": $rc}" >> "$PARTS/steps.jsonl"
}

run_step env 60 "$PY" tools/gpu_check.py env --parts "$PARTS" "${DRYFLAG[@]}"

# CUDA tests (the dry run collects them and records every one as skipped: the junit plumbing still runs)
export DEO_KIT_POISON=1              # NaN-filled outputs: an element a kernel forgets to write fails the test
export DEO_KIT_TEST_LOG="$PARTS/tests.jsonl"  # one line per test: survives a run cut off by its limit (no junit then)
run_step cuda_tests 200 "$PY" -m pytest -q -m cuda tests/kernels -p no:cacheprovider \
  --junitxml "$OUT_DIR/kernels_cuda.xml" -o junit_family=xunit1
unset DEO_KIT_POISON DEO_KIT_TEST_LOG

run_step kernel_bench 80 "$PY" tools/gpu_check.py kernels --parts "$PARTS" "${DRYFLAG[@]}"

STEP="import sys; from deo_kit.bench.step import cli_main; sys.exit(cli_main(sys.argv[1:]))"
if (( DRY )); then
  STEP_ARGS=(--arch vit_tiny --images 2 --global-size 32 --local-size 16 --n-local 2 --warmup 0 --iters 1 --device cpu
             --teacher vit_small_patch16_dinov3)
  STEP_CAP=75
else
  TEACHER=$(cat "$PARTS/teacher.txt" 2>/dev/null || echo vit_base_patch16_dinov3)  # chosen by the env step (timm's names)
  STEP_ARGS=(--arch swin_b --images 64 --dtype bf16 --warmup 2 --iters 3 --teacher "$TEACHER")
  STEP_CAP=75
fi
run_step step_straightforward $STEP_CAP "$PY" -c "$STEP" "${STEP_ARGS[@]}" --straightforward --json "$PARTS/step_straightforward.json"
run_step step_optimised $STEP_CAP "$PY" -c "$STEP" "${STEP_ARGS[@]}" --json "$PARTS/step_optimised.json"

# the method at GPU speed: pretraining for what the budget leaves (at most 100 s of steps), then the probes
LEFT=$(( BUDGET - 15 - (SECONDS - START) ))
TRAIN_S=$(( LEFT - 75 < 100 ? LEFT - 75 : 100 ))
(( DRY )) && TRAIN_S=5
if (( TRAIN_S >= 5 )); then
  run_step method 200 "$PY" tools/gpu_check.py method --parts "$PARTS" --train-seconds "$TRAIN_S" "${DRYFLAG[@]}"
else
  run_step method 0 true
fi

echo "== merge"
"$PY" tools/gpu_check.py merge --parts "$PARTS" --out "$OUT_DIR" --wall $(( SECONDS - START )) "${DRYFLAG[@]}" || status=1
echo "== done in $(( SECONDS - START )) s, status $status; results in $OUT_DIR"
exit $status
