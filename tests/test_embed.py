"""`deo embed` as users call it: a georeferenced COG on the patch grid, and bad input refused before any work."""
import pytest
import rasterio

from deo_kit.cli import main
from deo_kit.data.io import demo_scene_path


def _deo(capsys, *argv):
    code = main(["embed", *map(str, argv)])
    return code, capsys.readouterr()


def test_embed_writes_cog_and_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "emb.tif"
    args = ["--encoder", "band-stats", "--data", demo_scene_path(), "--out", out, "--window", "8,16,100,90",
            "--tile", "48", "--overlap", "16", "--preview", tmp_path / "p.png", "--no-progress"]
    code, o = _deo(capsys, *args)
    assert code == 0, o.err
    with rasterio.open(out) as ds, rasterio.open(demo_scene_path() / "s2_B02.tif") as src:
        assert (ds.count, ds.height, ds.width) == (26, 12, 11)
        assert ds.crs == src.crs and ds.transform == src.transform * src.transform.translation(16, 8) * src.transform.scale(8)
        assert ds.tags()["DEO_ENCODER"] == "band-stats" and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert (tmp_path / "p.png").is_file()
    before = out.stat().st_mtime_ns
    code, o = _deo(capsys, *args)
    assert code == 1 and "exists; pass overwrite=True (--overwrite)" in o.err
    assert out.stat().st_mtime_ns == before
    code, o = _deo(capsys, *args, "--overwrite")
    assert code == 0, o.err


@pytest.mark.parametrize("extra, message", [
    (["--window", "900,900,100,100"], "outside"),
    (["--window", "1,2,3"], "ROW,COL,HEIGHT,WIDTH"),
    (["--tile", "64", "--overlap", "64"], "smaller than the tile"),
    (["--encoder", "random:no-such-preset"], "no-such-preset"),
])
def test_embed_bad_input(capsys, tmp_path, extra, message):
    argv = ["--encoder", "band-stats", "--data", demo_scene_path(), "--out", tmp_path / "e.tif", "--no-progress", *extra]
    code, o = _deo(capsys, *argv)
    assert code == 1 and message in o.err, o.err
    assert not (tmp_path / "e.tif").exists() and not list(tmp_path.iterdir())


def test_embed_missing_scene(capsys, tmp_path):
    code, o = _deo(capsys, "--encoder", "band-stats", "--data", tmp_path / "nope", "--out", tmp_path / "e.tif")
    assert code == 1 and "nope" in o.err
