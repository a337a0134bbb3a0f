"""Fault cases of `deo eval` (issue 16): results never replace another dataset's, NaN pixels and pixel scales are
checked against the statistics in use, tiny images and a failed teacher fetch are one-line errors naming the
file, and the feature cache follows the files' content and the layout. Real EuroSAT-MS patches, copied."""
import json
import shutil

import numpy as np
import pytest
import rasterio

from deo_kit.cli import main

ARGS = ["--encoder", "band-stats", "--folds", "2", "--repeats", "1", "--no-progress"]


def _subset(src, dst, classes=("Forest", "SeaLake", "AnnualCrop"), per_class=4):
    for c in classes:
        (dst / c).mkdir(parents=True)
        for f in sorted((src / "train" / c).iterdir())[:per_class]: shutil.copy(f, dst / c / f.name)
    return dst


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    "Run in tmp_path: the default --out (runs/eval) and its cache must not land in the repository."
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data(tmp_path, shared_data):
    return _subset(shared_data / "eurosat_ms_subset", tmp_path / "eurosat")


def _rewrite(f, fn, dtype=None):
    "Rewrite a GeoTIFF in place with fn(pixels) (keeping CRS and transform), optionally as another dtype."
    with rasterio.open(f) as ds: a, prof = ds.read().astype("float64"), ds.profile
    a = fn(a)
    prof.update(dtype=dtype or prof["dtype"], nodata=None)
    with rasterio.open(f, "w", **prof) as ds: ds.write(a.astype(prof["dtype"]))


def _eval(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_second_dataset_does_not_replace_the_first_result(data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for c in other.iterdir(): sorted(c.iterdir())[0].unlink()  # another dataset: one patch fewer per class
    ev = tmp_path / "ev"
    assert _eval(capsys, "knn", *ARGS, "--data", data, "--out", ev)[0] == 0
    assert _eval(capsys, "knn", *ARGS, "--data", other, "--out", ev)[0] == 0
    results = {json.loads(f.read_text())["data"] for f in ev.glob("*.json")}
    assert results == {str(data), str(other)}, results  # both kept
    # an explicit --json naming the first dataset's file is refused for another dataset, replaced with --overwrite
    first = next(f for f in ev.glob("*.json") if json.loads(f.read_text())["data"] == str(data))
    code, _, err = _eval(capsys, "knn", *ARGS, "--data", other, "--json", first)
    assert code == 1 and str(first) in err and "holds another result" in err and "--overwrite" in err
    assert json.loads(first.read_text())["data"] == str(data)
    assert _eval(capsys, "knn", *ARGS, "--data", other, "--json", first, "--overwrite")[0] == 0
    assert json.loads(first.read_text())["data"] == str(other)


def test_nan_pixels_are_an_error_naming_the_file_or_a_stated_fill(data, tmp_path, capsys):
    f = sorted((data / "Forest").iterdir())[0]
    _rewrite(f, lambda a: np.where(np.arange(64)[None, :, None] < 8, np.nan, a), "float32")  # 8 rows of NaN
    code, _, err = _eval(capsys, "knn", *ARGS, "--data", data, "--out", tmp_path / "ev")
    assert code == 1 and str(f) in err and "NaN" in err and "--nodata" in err and len(err.strip().splitlines()) == 1, err
    with pytest.warns(UserWarning, match=f.name):
        code, out, _ = _eval(capsys, "knn", *ARGS, "--data", data, "--out", tmp_path / "ev", "--nodata", "mean")
    assert code == 0


def test_reflectance_and_8bit_data_against_dn_statistics(data, tmp_path, capsys):
    ref = tmp_path / "ref.json"
    assert _eval(capsys, "knn", *ARGS, "--data", data, "--json", ref)[0] == 0
    refl = tmp_path / "refl"; shutil.copytree(data, refl)
    for f in refl.rglob("*.tif"): _rewrite(f, lambda a: a / 10000, "float32")  # reflectance in [0, 1]
    code, _, err = _eval(capsys, "knn", *ARGS, "--data", refl, "--json", tmp_path / "r.json")
    assert code == 1 and "reflectance in [0, 1]" in err and "--scale 10000" in err and ".tif" in err, err
    assert _eval(capsys, "knn", *ARGS, "--data", refl, "--json", tmp_path / "r.json", "--scale", "10000")[0] == 0
    np.testing.assert_allclose(json.loads((tmp_path / "r.json").read_text())["folds"], json.loads(ref.read_text())["folds"])
    u8 = tmp_path / "u8"; shutil.copytree(data, u8)
    for f in u8.rglob("*.tif"): _rewrite(f, lambda a: np.clip(a / 16, 0, 255), "uint8")
    code, _, err = _eval(capsys, "knn", *ARGS, "--data", u8, "--json", tmp_path / "u.json")
    assert code == 1 and "8-bit" in err and "--scale" in err, err


def test_a_1x1_image_in_a_class_folder_is_named(data, tmp_path, capsys):
    src = sorted((data / "SeaLake").iterdir())[0]
    with rasterio.open(src) as ds: prof, a = ds.profile, ds.read(window=((0, 1), (0, 1)))
    prof.update(width=1, height=1)
    tiny = data / "SeaLake" / "tiny.tif"
    with rasterio.open(tiny, "w", **prof) as ds: ds.write(a)
    code, _, err = _eval(capsys, "knn", *ARGS, "--data", data, "--out", tmp_path / "ev")
    assert code == 1 and str(tiny) in err and "1×1 px" in err and len(err.strip().splitlines()) == 1, err


def test_feature_cache_follows_content_and_layout(data, tmp_path):
    from deo_kit.data.bands import get_layout
    from deo_kit.data.datasets import ClassFolderDataset
    from deo_kit.eval.encoders import BandStatsEncoder, extract_features
    enc, cache = BandStatsEncoder(), tmp_path / "cache"
    X1, _ = extract_features(enc, ClassFolderDataset(data), cache_dir=cache, progress=False)
    files = ClassFolderDataset(data).files
    shutil.copy(files[-1], files[0])  # the first image overwritten by another one
    X2, _ = extract_features(enc, ClassFolderDataset(data), cache_dir=cache, progress=False)
    np.testing.assert_allclose(X2[0], X2[-1]); assert not np.allclose(X1[0], X2[0]), "stale cached features"
    wrong = list(reversed(get_layout("eurosat-ms").bands))  # a wrong band order, then the fixed one
    Xw, _ = extract_features(enc, ClassFolderDataset(data, layout=wrong, bands="s2-13"), cache_dir=cache, progress=False)
    assert not np.allclose(Xw, X2)
    Xr, _ = extract_features(enc, ClassFolderDataset(data, bands="s2-13"), cache_dir=cache, progress=False)
    np.testing.assert_allclose(Xr, X2)


def test_failed_teacher_fetch_is_one_line(data, tmp_path, capsys, monkeypatch):
    import subprocess
    import deo_kit.models.demo_teacher as dt
    monkeypatch.setenv("DEO_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEO_KIT_TEACHER", raising=False)
    monkeypatch.setattr(dt.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable"))
    code, _, err = _eval(capsys, "knn", "--encoder", "teacher", "--folds", "2", "--no-progress", "--data", data, "--out", tmp_path / "ev")
    assert code == 1 and "could not download the demo teacher" in err and "network is unreachable" in err
    assert len(err.strip().splitlines()) == 1, err
