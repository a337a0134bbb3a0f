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


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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
