"""Export of a real `deo pretrain` run folder: plain timm reproduces the run's student and EMA teacher features."""
import json

import pytest
import torch
import yaml

from deo_kit.eval.encoders import load_encoder
from deo_kit.eval.monitor import KNNMonitor
from deo_kit.export import export_student, load_exported, normalise_input
from deo_kit.train.cli import cli_main

TINY = {"student": {"arch": "vit_tiny", "patch_size": 8, "init_from_teacher": False, "kwargs": {"depth": 2}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2, "rgb_scale": 3000},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 4}, "train": {"steps": 2, "checkpoint_every": 2, "log_every": 1}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert cli_main(["--config", str(tmp / "tiny.yaml"), "--out", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run"


@pytest.mark.parametrize("path", ["ms", "rgb", "teacher"])
def test_export_run_round_trip(run_dir, tmp_path, path):
    spec = f"{run_dir}:{path}"
    out = export_student(spec, tmp_path / "export")
    net, meta = load_exported(out)
    enc = load_encoder(spec)
    assert meta["bands"] == list(enc.bands) and meta["patch_size"] == 8
    x = torch.rand(2, len(enc.bands), 32, 32) * 4000
    tok = net.forward_features(normalise_input(x, meta))
    torch.testing.assert_close(tok[:, 0], enc.features(x, "global"), rtol=1e-4, atol=1e-4)
    json.loads((out / "deo_export.json").read_text())  # plain JSON


def test_knn_monitor_on_run(run_dir, shared_data):
    enc = load_encoder(str(run_dir))
    mon = KNNMonitor(shared_data / "eurosat_ms_subset", every=1, n_train=50, n_test=30)
    r = mon(enc.model, 1)
    assert set(r) == {"knn_top1", "knn_seconds"} and 0 <= r["knn_top1"] <= 1


def test_export_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        export_student(tmp_path / "missing", tmp_path / "e")
    with pytest.raises(ValueError, match="only students"):
        export_student("band-stats", tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        load_exported(tmp_path)
    with pytest.raises(ValueError, match="every must be"):
        KNNMonitor(tmp_path, every=0)
