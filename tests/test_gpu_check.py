"""The GPU check's plumbing on this CPU: `tools/gpu_check.sh --dry-run` end to end (with the modules the GPU image lacks
blocked), the checkout shim that maps kernels/ to deo_kit.kernels without an install, the rasterio-free TIFF reader,
and the half-precision demo teacher that travels to the GPU machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, WEIGHTS

sys.path.insert(0, str(REPO / "tools"))
TEACHER = WEIGHTS / "dinov2_vits14_imgfocus.safetensors"


def test_checkout_shim_maps_kernels_without_install():
    "No site-packages at all (python -S): the shim alone makes `deo_kit.kernels` the checkout's kernels/ folder."
    code = (f"import sys; sys.path[:0] = [{str(REPO / 'tools' / 'pyshim')!r}, {str(REPO)!r}]; import sitecustomize; "
            "import deo_kit.kernels as k; print(k.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == REPO / "kernels" / "__init__.py"


def test_blocked_modules_look_absent():
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tools' / 'pyshim'}:{REPO}", DEO_KIT_BLOCK_MODULES="rasterio,dask")
    code = ("import importlib.util as u; assert u.find_spec('dask') is None\n"
            "try:\n import rasterio\nexcept ModuleNotFoundError as e: print('absent', e.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "absent rasterio", out.stderr


def test_tiff_lite_reads_the_packaged_rasters():
    "The GPU machine has no rasterio: the small reader gives the same pixels for every packaged GeoTIFF kind."
    rasterio = pytest.importorskip("rasterio")
    from tiff_lite import read_tiff
    files = sorted((REPO / "deo_kit" / "assets" / "s2_demo").glob("*.tif"))[:4]
    files += sorted((REPO / "deo_kit" / "assets").glob("eurosat_sample/*/*/*.tif"))[:3]
    assert files
    for f in files:
        with rasterio.open(f) as ds:
            np.testing.assert_array_equal(read_tiff(f), ds.read())
    with pytest.raises(ValueError, match="not a classic TIFF"):
        bad = REPO / "README.md"
        read_tiff(bad)


def test_fp16_teacher_loads_like_the_fp32_one(tmp_path):
    if not TEACHER.is_file():
        pytest.skip(f"{TEACHER} not found")
    from make_gpu_pack import make_fp16_teacher
    from deo_kit.models.teachers import load_optical_teacher
    f16 = make_fp16_teacher(TEACHER, tmp_path / "teacher_fp16.safetensors")
    assert f16.stat().st_size < 0.51 * TEACHER.stat().st_size  # travels within the 64 MiB with the checkout
    a, b = load_optical_teacher(TEACHER), load_optical_teacher(f16)
    assert next(b.parameters()).dtype == torch.float32
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        ra, rb = a(x).cls, b(x).cls
    assert ((ra - rb).norm() / ra.norm()).item() < 3e-3  # fp16 weights: ~5e-4 relative


def test_gpu_check_dry_run(tmp_path):
    "The whole script on the CPU: every step passes and ONE gpu_check.json (plus log and junit) lands in $OUT."
    if not TEACHER.is_file():
        pytest.skip(f"{TEACHER} not found")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), DEO_GPU_PACK=str(tmp_path / "no_pack"), TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                       env=env, timeout=1600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["gpu_check.json", "gpu_check.log", "kernels_cuda.xml"]
    d = json.loads((out / "gpu_check.json").read_text())
    assert d["dry_run"] and d["ok"]
    assert [s["step"] for s in d["steps"]] == ["env", "cuda_tests", "kernel_bench", "step_straightforward",
                                               "step_optimised", "method"]
    assert all(s["status"] == "pass" for s in d["steps"])
    assert d["versions"]["rasterio"].startswith("missing")  # the GPU image's missing modules were blocked
    assert d["cuda_tests"]["skipped"] > 10 and d["cuda_tests"]["failed"] == 0
    assert {r["case"] for r in d["kernel_bench"]["rows"]} >= {"dino_fp32", "dino_bf16", "swin_stem", "vit_stem"}
    assert set(d["step_bench"]) == {"step_straightforward", "step_optimised"}
    m = d["method"]
    assert m["steps"] >= 1 and [p["encoder"][:10] for p in m["probes"]] == ["teacher (R", "student MS", "student MS"]
    assert all(0 <= p["mean"] <= 1 for p in m["probes"])
    assert "cuda tests:" in r.stdout and "method:" in r.stdout  # the one-screen summary
