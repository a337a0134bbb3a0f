"""Packaging: README in step with nbs/index.ipynb, kernels shipped as deo_kit.kernels only,
notebooks named after the module they export, and a wheel that installs and imports outside the repo."""
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_matches_index_notebook():
    nb = json.loads((REPO / "nbs" / "index.ipynb").read_text())
    md = "\n\n".join("".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "markdown")
    assert md == (REPO / "README.md").read_text().strip(), "README.md and nbs/index.ipynb differ: keep them in step"


def test_notebook_names_match_default_exp():
    for nb in sorted((REPO / "nbs").glob("[0-9]*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        src = "".join(cells[0]["source"])
        m = re.search(r"#\|\s*default_exp\s+(\S+)", src)
        assert m, f"{nb.name}: first cell must be '#| default_exp <module>'"
        assert nb.stem.split("_", 1)[1] == m.group(1), f"{nb.name} exports {m.group(1)}"
        assert not m.group(1).startswith("kernels"), f"{nb.name}: deo_kit.kernels belongs to the kernels/ folder"


def test_kernels_not_tracked_under_deo_kit():
    out = subprocess.run(["git", "ls-files", "deo_kit/kernels"], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "", "deo_kit/kernels/ is tracked; kernels live in the top-level kernels/ folder"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    return next(out.glob("deo_kit-*.whl"))


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "deo_kit/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels package leaked into the wheel"
    top = [n for n in names if n.endswith("top_level.txt")]
    assert not top or zipfile.ZipFile(wheel).read(top[0]).decode().split() == ["deo_kit"]
    assert any(n.startswith("deo_kit/assets/") for n in names), "package data (demo scene, statistics) missing"
    sample = [n for n in names if n.startswith("deo_kit/assets/eurosat_sample/")]
    assert sum(n.endswith(".tif") for n in sample) == 100, "the packaged EuroSAT-MS sample is incomplete in the wheel"
    assert {"deo_kit/assets/eurosat_sample/PROVENANCE.md", "deo_kit/assets/eurosat_sample/manifest.csv"} <= set(sample)


def test_wheel_imports_outside_repo(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import deo_kit, deo_kit.kernels, deo_kit.data.bands; print(deo_kit.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(target))
