"""`deo eval` through the console entry point, and the bad inputs the evaluation issue names:
one class / an empty class, fewer samples than folds, bands the encoder cannot take, a checkpoint
without the requested path, masks whose size differs from their images."""
import json, shutil

import pytest
import torch

from deo_kit.cli import main


def _subset(src, dst, per_class=4, classes=None):
    "Copy `per_class` real EuroSAT-MS files of each class into a temporary class-folder dataset."
    for cdir in sorted(p for p in (src / "train").iterdir() if p.is_dir()):
        if classes and cdir.name not in classes: continue
        (dst / cdir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cdir.iterdir())[:per_class]: shutil.copy(f, dst / cdir.name / f.name)
    return dst


@pytest.fixture(scope="module")
def small_eurosat(tmp_path_factory, shared_data):
    return _subset(shared_data / "eurosat_ms_subset", tmp_path_factory.mktemp("eurosat"), per_class=4,
                   classes=("Forest", "SeaLake", "AnnualCrop"))


def test_eval_help(capsys):
    with pytest.raises(SystemExit): main(["eval", "--help"])
    out = capsys.readouterr().out
    assert all(t in out for t in ("knn", "linear", "seg", "cd", "cka", "report"))


def test_knn_json_and_report(small_eurosat, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", "knn", "--encoder", "band-stats", "--data", str(small_eurosat), "--folds", "2", "--repeats", "2",
                 "--seed", "3", "--out", str(out), "--json", str(out / "k.json"), "--no-progress"]) == 0
    d = json.loads((out / "k.json").read_text())
    assert {"metric", "mean", "std", "folds", "encoder", "data", "deo_kit_version", "command", "seed"} <= set(d)
    assert d["seed"] == 3 and len(d["folds"]) == 4 and d["protocol"]["k"] == 20 and d["protocol"]["T"] == 0.07
    assert main(["eval", "report", str(out)]) == 0
    assert (out / "report.png").is_file() and "band-stats" in (out / "report.md").read_text()


def test_one_class_and_empty_class(small_eurosat, tmp_path, capsys):
    shutil.copytree(small_eurosat / "Forest", tmp_path / "one" / "Forest", dirs_exist_ok=True)
    assert main(["eval", "linear", "--encoder", "band-stats", "--data", str(tmp_path / "one"), "--out", str(tmp_path)]) == 1
    assert "at least two class folders" in capsys.readouterr().err
    shutil.copytree(small_eurosat, tmp_path / "empty"); (tmp_path / "empty" / "Pasture").mkdir()
    assert main(["eval", "linear", "--encoder", "band-stats", "--data", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    assert "'Pasture' holds no images" in capsys.readouterr().err


def test_fewer_samples_than_folds(small_eurosat, tmp_path, capsys):
    assert main(["eval", "linear", "--encoder", "band-stats", "--data", str(small_eurosat), "--folds", "5", "--out", str(tmp_path)]) == 1
    assert "fewer samples than the 5 folds" in capsys.readouterr().err


def test_missing_bands(small_eurosat, tmp_path, capsys):
    from deo_kit.data.datasets import ClassFolderDataset
    from deo_kit.eval.encoders import BandStatsEncoder, extract_features
    with pytest.raises(ValueError, match=r"lacks band\(s\) \['B05'"):
        extract_features(BandStatsEncoder("s2-10-deo"), ClassFolderDataset(small_eurosat, bands="rgb"), progress=False)


def test_checkpoint_without_rgb_stem(small_eurosat, tmp_path, capsys):
    from deo_kit.config import load_config, save_config
    from deo_kit.checkpoint import save_checkpoint
    from deo_kit.models.teachers import build_optical_teacher
    from deo_kit.train.meta import DEOModel
    cfg = load_config("demo", overrides=["student.init_from_teacher=false", "student.kwargs={depth: 1, embed_dim: 32}",
                                         "teacher.path=random:vit_small_patch14_dinov2", "student.rgb_stem=false",
                                         "loss.head_hidden=16", "loss.out_dim=8"])
    model = DEOModel(cfg, build_optical_teacher(cfg))
    save_config(cfg, tmp_path / "run" / "config.yaml"); save_checkpoint(tmp_path / "run", 0, model, torch.optim.AdamW(model.parameters()))
    assert main(["eval", "knn", "--encoder", f"{tmp_path / 'run'}:rgb", "--data", str(small_eurosat), "--folds", "2", "--out", str(tmp_path)]) == 1
    assert "no RGB stem" in capsys.readouterr().err


def test_mask_size_mismatch():
    from deo_kit.eval.dense import SegTiles
    with pytest.raises(ValueError, match="differs from image size"):
        SegTiles(torch.zeros(2, 3, 32, 32), torch.zeros(2, 30, 32), ("B04", "B03", "B02"), ["a", "b"])
