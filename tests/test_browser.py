"""A real-browser check: the inspector's interactive view (bokeh, JavaScript inlined) opened in headless
Chromium; the screenshot must show the rendered maps, not a blank or error page. The screenshot is kept
under $DEO_KIT_ARTIFACTS (default tests/_artifacts) for CI."""
import os, shutil, subprocess, tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, WEIGHTS

ART = Path(os.environ.get("DEO_KIT_ARTIFACTS", Path(__file__).parent / "_artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p: return p
    return None


def test_inspector_renders_in_chromium():
    browser = _chromium()
    if browser is None: pytest.skip("chromium not installed (apt-get install -y chromium)")
    teacher = WEIGHTS / "dinov2_vits14_imgfocus.safetensors"
    if not teacher.is_file() or not DATA.is_dir(): pytest.skip("shared data/weights not found")
    from PIL import Image
    from deo_kit.data.datasets import ClassFolderDataset
    from deo_kit.models.teachers import load_optical_teacher
    from deo_kit.viz.inspector import FeatureMapInspector
    euro = ClassFolderDataset(DATA / "eurosat_ms_subset", split="test")
    ins = FeatureMapInspector({"dinov2": load_optical_teacher(teacher)}, euro, index=20, count=3)
    ART.mkdir(parents=True, exist_ok=True)
    page, shot = ins.save_html(ART / "inspector.html", px=200), ART / "inspector_chromium.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=900,900", "--virtual-time-budget=10000",
                            f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said:\n{r.stderr[-2000:]}"
    im = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    ink = np.argwhere((im < 235).any(-1))  # non-white pixels: where bokeh drew something
    assert len(ink) > 50_000, f"screenshot looks blank ({len(ink)} drawn pixels); see {shot}"
    (y0, x0), (y1, x1) = ink.min(0), ink.max(0)
    region = im[y0:y1, x0:x1]
    assert y1 - y0 > 500 and x1 - x0 > 500, f"drawn area only {y1 - y0}×{x1 - x0} px; see {shot}"
    assert region.std() > 25, f"rendered area is flat (std {region.std():.1f}); see {shot}"
    colours = np.unique((region // 32).reshape(-1, 3), axis=0)
    assert len(colours) > 40, f"too few distinct colours ({len(colours)}) for rendered maps; see {shot}"
    # three rows of panels (input, PCA, similarity) that differ from each other
    h = (y1 - y0) / 3
    rows = [region[int(k * h + 0.3 * h): int(k * h + 0.9 * h)].mean((0, 1)) for k in range(3)]
    assert np.abs(rows[1] - rows[2]).max() > 10 and np.abs(rows[0] - rows[1]).max() > 10, rows
