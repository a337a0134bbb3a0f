#!/usr/bin/env bash
# The one prepared GPU check: real (compiled) Triton kernels vs the torch references, then the benchmark tables.
# Runs on a machine with no internet and possibly an older stack (seen: torch 2.11, triton 3.6, Python 3.12, no
# nbdev/rioxarray), so deo_kit is installed without dependencies. Budget: under 5 minutes.
# Usage: tools/gpu_check.sh [--grid]   (--grid also runs the whole interpreter grid on the GPU, ~1-2 min more)
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET                 # compile for the GPU; conftest leaves it unset when DEO_KIT_GPU_CHECK is set
export DEO_KIT_GPU_CHECK=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
status=0
start=$SECONDS

echo "== install (no deps, no build isolation)"
$PY -m pip install --quiet --no-deps --no-build-isolation -e . || { echo "install failed"; exit 1; }

echo "== device"
$PY - <<'PY' || exit 1
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, end="")
try:
    import triton; print(" | triton", triton.__version__)
except Exception as e:
    print(" | triton missing:", e)
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
PY

echo "== cuda-marked kernel tests"
timeout 110 $PY -m pytest -q -m cuda tests/kernels -p no:cacheprovider || status=1

if [[ "${1:-}" == "--grid" ]]; then
  echo "== full kernel grid on the GPU"
  timeout 120 $PY -m pytest -q tests/kernels -p no:cacheprovider || status=1
fi

echo "== benchmark (fwd+bwd, median of 20, ratios to eager from this run)"
timeout 120 $PY -c "import sys; from deo_kit.bench.kernels import cli_main; sys.exit(cli_main(['--reps', '20']))" || {
  echo "benchmark with torch.compile failed or ran out of time; rerunning without it"
  timeout 45 $PY -c "import sys; from deo_kit.bench.kernels import cli_main; sys.exit(cli_main(['--reps', '20', '--no-compile']))" || status=1
}

# --- training-step benchmark (issue 8): Swin-B, 64 images, bf16, optimised vs deo_kit's straightforward mode
echo "== deo bench step: Swin-B, 64 images, bf16 (straightforward, optimised, optimised + compile)"
BENCH=${BENCH_OUT:-/tmp/deo_bench_step}; mkdir -p "$BENCH"
STEP="import sys; from deo_kit.bench.step import cli_main; sys.exit(cli_main(sys.argv[1:]))"
STEP_ARGS=(--arch swin_b --images 64 --dtype bf16)
timeout 150 $PY -c "$STEP" "${STEP_ARGS[@]}" --straightforward --json "$BENCH/straightforward.json" || status=1
timeout 150 $PY -c "$STEP" "${STEP_ARGS[@]}" --json "$BENCH/optimised.json" || status=1
timeout 240 $PY -c "$STEP" "${STEP_ARGS[@]}" --compile --json "$BENCH/compiled.json" || echo "compiled step failed or ran out of time"
$PY - "$BENCH" <<'PY' || status=1
import json, sys, pathlib
d = pathlib.Path(sys.argv[1]); r = {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}
base = r.get("straightforward")
for k in ("straightforward", "optimised", "compiled"):
    if k in r:
        x = r[k]; ratio = f"{x['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        print(f"{k:<16}{x['images_per_s']:>9.1f} images/s {x['median_s']:>8.3f} s/it  peak GPU {x['peak_gpu_gib']:.1f} GiB  vs straightforward {ratio}  (target >= 1.5x)")
PY

echo "== done in $((SECONDS - start)) s, status $status"
exit $status
