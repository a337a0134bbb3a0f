"""Shared pytest setup. TRITON_INTERPRET must be set before anything imports triton
(timm and torchvision import it through torch._dynamo), so it is set here, first."""
import os

if not os.environ.get("DEO_KIT_GPU_CHECK"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEO_KIT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"

# Tolerances for comparing fast paths against their torch reference: dtype -> (rtol, atol).
TOLERANCES = {"float32": (1e-5, 1e-5), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2),
              # fp32 sums over very long rows (K = 65,536+) or many patches, where summation order differs
              "float32_long": (1e-4, 1e-5)}

# GPU (cuda-marked tests): relative Frobenius error ||out - ref|| / ||ref|| of the stem against an fp64 reference, by
# GEMM precision: TF32 (10-bit mantissa, ~5e-4 per product, fp32 input, torch's conv default), IEEE fp32, and bf16 /
# fp16 parameters (the output is rounded to them). "bf16_train_loss": 20 bf16 training steps, fused kernels on vs off,
# per-step |loss difference| <= this * |loss|.
GPU_TOLERANCES = {"tf32": 2e-3, "ieee": 1e-5, "bfloat16": 1e-2, "float16": 2e-3, "bf16_train_loss": 2e-2}


def pytest_collection_modifyitems(config, items):
    import torch
    gpu_run = torch.cuda.is_available() and (os.environ.get("DEO_KIT_GPU_CHECK") or os.environ.get("TRITON_INTERPRET") != "1")
    if gpu_run:
        return
    # no GPU, or a GPU box in interpreter mode (full-size kernels in the interpreter would take hours)
    reason = "needs a CUDA GPU" if not torch.cuda.is_available() else "TRITON_INTERPRET=1: set DEO_KIT_GPU_CHECK=1 to run on the GPU"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    "With DEO_KIT_TEST_LOG set (tools/gpu_check.sh), one JSON line per test outcome, so a run cut off by its time limit still says what passed."
    path = os.environ.get("DEO_KIT_TEST_LOG")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    import json
    with open(path, "a") as f:
        f.write(json.dumps(dict(name=report.nodeid, when=report.when, outcome=report.outcome, seconds=round(report.duration, 2),
                                message=str(report.longrepr)[-300:] if report.failed else "")) + "\n")


@pytest.fixture(scope="session")
def shared_data():
    if not DATA.is_dir():
        pytest.skip(f"real data folder not found at {DATA} (set DEO_KIT_SHARED)")
    return DATA


@pytest.fixture
def seed():
    """A fresh seed per test, printed so a failure can be replayed with DEO_KIT_SEED=<seed>."""
    from deo_kit.core import fresh_seed, seed_everything
    s = seed_everything(fresh_seed())
    print(f"seed={s} (replay with DEO_KIT_SEED={s})")
    return s
