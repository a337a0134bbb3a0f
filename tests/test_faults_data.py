"""Fault cases of the data layer (issue 16): shard indexes and shard files that are tampered with or broken,
`deo data stats` band names and mixed pixel types, and pretraining sources that cannot be trained on
(flat or empty folders, images smaller than the crop, a NaN-only scene, reflectance against DN statistics).
Real EuroSAT-MS patches and the real Sentinel-2 scene, copied into tmp_path."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import rasterio

from deo_kit.cli import main
from deo_kit.config import load_config
from deo_kit.data.shards import ShardDataset, write_shards

EUROSAT = ("eurosat_ms_subset", "train")


@pytest.fixture
def patch(tmp_path, shared_data):
    "One real 13-band EuroSAT-MS patch."
    src = sorted((shared_data.joinpath(*EUROSAT) / "Forest").iterdir())[0]
    return shutil.copy(src, tmp_path / "forest.tif")


@pytest.fixture
def shards(tmp_path, patch):
    "4 patches of 32 px in 2 shards."
    out = tmp_path / "sh"
    write_shards([patch], out, bands="s2-10-deo", size=32, shard_size=2, layout="eurosat-ms", progress=False)
    return out


def _read_all(root):
    return [m["key"] for _, m in ShardDataset(root, shuffle=False)]


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd", "sub/../../x.tar"])
def test_shard_index_names_stay_inside_the_folder(shards, tmp_path, name):
    shutil.copy(shards / "shard-000000.tar", tmp_path / "outside.tar")
    ix = json.loads((shards / "index.json").read_text())
    ix["shards"][0]["name"] = name
    (shards / "index.json").write_text(json.dumps(ix))
    with pytest.raises(ValueError, match="points outside the shard folder") as e:
        _read_all(shards)
    assert str(shards / "index.json") in str(e.value)


def _rewrite_tar(path, edit):
    "Rebuild a shard's tar from its members after edit(list of (TarInfo, bytes))."
    with tarfile.open(path) as tf: members = [(m, tf.extractfile(m).read()) for m in tf]
    members = edit(members)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data is not None else None)


def _symlink(members):
    m = tarfile.TarInfo("000000000.npy"); m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [(m, None)] + members[1:]

def _directory(members):
    m = tarfile.TarInfo("000000000.npy"); m.type = tarfile.DIRTYPE
    return [(m, None)] + members

def _swapped(members):
    return [members[1], members[0]] + members[2:]

def _wrong_shape(members):
    b = io.BytesIO(); np.save(b, np.zeros((10, 16, 16), "float32")); data = b.getvalue()
    m = members[0][0]; m.size = len(data)
    return [(m, data)] + members[1:]


@pytest.mark.parametrize("edit, message", [(_symlink, "is a symlink"), (_directory, "is a directory"),
                                           (_swapped, "out of order"), (_wrong_shape, r"the index says float32 \(10, 32, 32\)")])
def test_broken_shard_members_are_one_error_naming_the_shard(shards, edit, message):
    bad = shards / "shard-000001.tar"
    _rewrite_tar(bad, edit)
    with pytest.raises(ValueError, match=message) as e:
        _read_all(shards)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_truncated_shard_is_named(shards):
    bad = shards / "shard-000000.tar"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(ValueError, match="shard") as e:
        _read_all(shards)
    assert str(bad) in str(e.value)


def test_data_stats_band_names_normalise(patch, tmp_path, capsys):
    assert main(["data", "stats", str(patch), "--layout", "eurosat-ms", "--bands", "b04,b8a", "--out", str(tmp_path / "s.json")]) == 0
    assert list(json.loads((tmp_path / "s.json").read_text())["bands"]) == ["B04", "B8A"]
    assert main(["data", "stats", str(patch), "--layout", "eurosat-ms", "--bands", "B04,B99", "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err
    assert "B99" in err and "B8A" in err and "not all values found" not in err and not (tmp_path / "t.json").exists()


def test_data_stats_refuses_pooling_uint8_with_uint16(patch, tmp_path, capsys):
    with rasterio.open(patch) as ds: a, prof = ds.read(), ds.profile
    prof.update(dtype="uint8")
    u8 = tmp_path / "u8.tif"
    with rasterio.open(u8, "w", **prof) as ds: ds.write(np.clip(a // 16, 0, 255).astype("uint8"))
    code = main(["data", "stats", str(patch), str(u8), "--layout", "eurosat-ms", "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 1 and "u8.tif" in err and "uint8" in err and "uint16" in err and not (tmp_path / "s.json").exists(), err


def _cfg(*sources, **crops):
    return load_config("demo", overrides=[f"data.sources={json.dumps([str(s) for s in sources])}",
                                          *(f"crops.{k}={v}" for k, v in crops.items())])


def _loader(cfg):
    from deo_kit.train.data import build_loader
    return build_loader(cfg)


def test_flat_and_empty_folders_for_pretraining(tmp_path, shared_data):
    flat = tmp_path / "flat"; flat.mkdir()
    for f in sorted((shared_data.joinpath(*EUROSAT) / "Forest").iterdir())[:3]: shutil.copy(f, flat / f.name)
    from deo_kit.train.data import read_sources
    src = read_sources(_cfg(flat))
    assert len(src.images) == 3 and src.names[0].endswith(".tif")  # a flat folder of images is read as images
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no raster files") as e:
        read_sources(_cfg(tmp_path / "empty"))
    assert "class folder" not in str(e.value).split(";")[0]


def test_image_smaller_than_the_crop_is_named(tmp_path, patch):
    root = tmp_path / "imgs"; (root / "A").mkdir(parents=True); (root / "B").mkdir()  # class folders (labels unused)
    shutil.copy(patch, root / "A" / "ok.tif")
    with rasterio.open(patch) as ds: prof, a = ds.profile, ds.read(window=((0, 1), (0, 1)))
    prof.update(width=1, height=1)
    with rasterio.open(root / "B" / "dot.tif", "w", **prof) as ds: ds.write(a)
    with pytest.raises(ValueError, match=r"dot.tif: the image is 1×1 px, smaller than crops.global_size 64"):
        _loader(_cfg(root))


def test_nan_only_scene_is_named(tmp_path, shared_data):
    "A per-band folder of the real scene's profiles whose pixels are all nodata."
    scene = tmp_path / "scene"; scene.mkdir()
    for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"):
        with rasterio.open(shared_data / "s2_l1c_scene" / f"s2_{b}.tif") as ds: prof = ds.profile
        n = 128 if b in ("B02", "B03", "B04", "B08") else 64  # 10 m and 20 m bands over the same 1.28 km
        prof.update(nodata=0, width=n, height=n)
        with rasterio.open(scene / f"s2_{b}.tif", "w", **prof) as ds: ds.write(np.zeros((1, n, n), prof["dtype"]))
    with pytest.raises(ValueError, match="hold no valid pixel") as e:
        _loader(_cfg(scene))
    assert str(scene) in str(e.value)


def test_reflectance_against_dn_statistics_for_pretraining(tmp_path, patch):
    root = tmp_path / "refl"
    with rasterio.open(patch) as ds: a, prof = ds.read(), ds.profile
    prof.update(dtype="float32")
    for c in ("A", "B"):  # class folders of reflectance in [0, 1]
        (root / c).mkdir(parents=True)
        with rasterio.open(root / c / "r.tif", "w", **prof) as ds: ds.write(a.astype("float32") / 10000)
    with pytest.raises(ValueError, match=r"r.tif: pixel values \(mean 0.1.*not on the scale of data.stats 's2-l1c'.*deo data stats"):
        _loader(_cfg(root))
