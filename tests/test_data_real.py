"""Real-data checks of the data layer that cut across modules: the CLI on real files, bad input named
clearly, and nothing written next to the shared data."""
import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from deo_kit.cli import main
from deo_kit.data.io import open_band_files, open_raster, open_scene


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readers_modify_nothing(shared_data):
    scene, forest = shared_data / "s2_l1c_scene", shared_data / "eurosat_ms_subset" / "train" / "Forest"
    before = _digest(scene), _digest(forest)
    open_band_files(scene, bands=["B02", "B01"], window=(0, 0, 64, 64))
    for f in sorted(forest.glob("*.tif"))[:3]:
        open_raster(f, layout="eurosat-ms")
    assert (_digest(scene), _digest(forest)) == before


def test_deo_data_info_console_script(shared_data):
    f = sorted((shared_data / "eurosat_ms_subset" / "test" / "SeaLake").glob("*.tif"))[0]
    out = subprocess.run(["deo", "data", "info", str(f), "--layout", "eurosat-ms"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("B")]
    assert [r[0] for r in rows][-1] == "B8A" and len(rows) == 13
    mean = {r[0]: float(r[1]) for r in rows}
    assert mean["B8A"] < mean["B02"]  # water: NIR darker than blue


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_truncated_geotiff_names_file(shared_data, tmp_path, cut):
    src = sorted((shared_data / "eurosat_ms_subset" / "train" / "River").glob("*.tif"))[0]
    raw = src.read_bytes()
    bad = tmp_path / "truncated_river.tif"
    bad.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(OSError, match="truncated_river.tif"):
        open_raster(bad, layout="eurosat-ms")


def test_non_raster_and_wrong_layout_via_cli(shared_data, tmp_path, capsys):
    txt = tmp_path / "readme.tif"
    txt.write_text("hello")
    assert main(["data", "info", str(txt), "--layout", "eurosat-ms"]) == 1
    assert "readme.tif: not a readable raster" in capsys.readouterr().err
    f = sorted((shared_data / "eurosat_ms_subset" / "train" / "Forest").glob("*.tif"))[0]
    assert main(["data", "info", str(f), "--layout", "rgb"]) == 1
    assert "has 3 bands but the file has 13" in capsys.readouterr().err
    assert main(["data", "info", str(f), "--layout", "B01,B02,B13"]) == 1
    assert "valid names: B01" in capsys.readouterr().err


def test_landsat_folder_stacks_on_finest_grid_with_nearest_quality_band(shared_data):
    l8 = open_scene(shared_data / "l8_scene", bands=["B4", "B8", "BQA"], window=(100, 100, 32, 32))
    assert l8.attrs["sensor"] == "landsat-8" and l8.rio.resolution() == (15.0, -15.0)
    qa = l8.sel(band="BQA").values
    with __import__("rasterio").open(shared_data / "l8_scene" / "l8_BQA.tif") as ds:
        codes = set(np.unique(ds.read(1)).tolist())
    assert set(np.unique(qa).tolist()) <= codes  # nearest keeps bit fields intact


def test_band_folder_copy_with_missing_band_lists_available(shared_data, tmp_path):
    for b in ("B02", "B03"):
        shutil.copy(shared_data / "s2_l1c_scene" / f"s2_{b}.tif", tmp_path)
    with pytest.raises(KeyError, match=r"\['B04'\] not present; available: \['B02', 'B03'\]"):
        open_band_files(tmp_path, bands=["B04", "B03", "B02"])


def test_cli_help_everywhere():
    for argv in (["--help"], ["data", "--help"], ["data", "info", "--help"], ["data", "stats", "--help"]):
        out = subprocess.run(["deo", *argv], capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout, (argv, out.stderr)
