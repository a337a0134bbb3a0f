"""The library as users meet it: `deo export` output that timm loads in one line (offline), student-only checkpoints
(`train.save=student`), and the CLI's bad-input messages for the export and config commands."""
import contextlib
import io
import json
import os

import pytest
import torch
import yaml

from deo_kit.cli import main

TINY = {"student": {"arch": "vit_tiny", "patch_size": 8, "init_from_teacher": False, "kwargs": {"depth": 2}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2, "rgb_scale": 3000},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 2}, "train": {"steps": 2, "checkpoint_every": 2, "log_every": 1}}


def deo(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def tiny_run(tmp, name, **train):
    cfg = {**TINY, "train": {**TINY["train"], **train}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = deo("pretrain", "--config", tmp / f"{name}.yaml", "--out", tmp / name, "--no-progress")
    assert code == 0, err
    return tmp / name


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("surface"), "run")


def test_export_loads_in_timm_one_line(run_dir, tmp_path, monkeypatch):
    import timm
    from deo_kit.eval.encoders import load_encoder
    from deo_kit.export import normalise_input
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local-dir must not need the hub
    code, out, err = deo("export", run_dir, "--out", tmp_path / "export")
    assert code == 0, err
    net = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True).eval()
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    meta = json.loads((tmp_path / "export" / "deo_export.json").read_text())
    enc = load_encoder(f"{run_dir}:ms")
    assert cfg["bands"] == list(enc.bands) and cfg["pretrained_cfg"]["input_size"] == [len(enc.bands), 32, 32]
    assert cfg["model_args"]["patch_size"] == 8 and cfg["model_args"]["in_chans"] == len(enc.bands)
    assert net.pretrained_cfg["mean"] == meta["normalisation"]["mean"] and cfg["pretrained_cfg"]["license"].startswith("apache-2.0")
    x = torch.rand(2, len(enc.bands), 32, 32) * 4000
    with torch.no_grad(): tok = net.forward_features(normalise_input(x, meta))
    torch.testing.assert_close(tok[:, 0], enc.features(x, "global"), rtol=1e-4, atol=1e-4)


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = deo("export", tmp_path, "--out", tmp_path / "e")
    assert code == 1 and "is not a run folder" in err and "config.yaml" in err and "checkpoints/step-NNNNNNN" in err
    code, _, err = deo("export", tmp_path / "missing", "--out", tmp_path / "e")
    assert code == 1 and "no such run folder" in err


def test_student_only_checkpoints(run_dir, tmp_path):
    small = tiny_run(tmp_path, "small", save="student")
    full_ck, small_ck = (sorted((d / "checkpoints").glob("step-*"))[-1] for d in (run_dir, small))
    size = lambda ck: sum(f.stat().st_size for f in ck.iterdir())
    print(f"checkpoint: full {size(full_ck) / 1e6:.2f} MB, student only {size(small_ck) / 1e6:.2f} MB")
    assert not (small_ck / "optimizer.safetensors").exists() and size(small_ck) < size(full_ck) / 3
    from deo_kit.eval.encoders import load_encoder
    x = torch.rand(1, len(load_encoder(str(small)).bands), 32, 32) * 3000
    assert load_encoder(str(small)).features(x).shape[0] == 1  # evaluation reads it
    code, _, err = deo("pretrain", "--resume", small, "--set", "train.steps=4", "--no-progress")
    assert code == 1 and "student-only checkpoint" in err and "cannot resume" in err


def test_config_show_bad_input():
    code, _, err = deo("config", "show", "optim.nope")
    assert code == 1 and "unknown config key 'optim.nope'" in err and "optim.lr" in err
    code, _, err = deo("config", "show", "--preset", "demoo")
    assert code == 1 and "unknown preset 'demoo'" in err and "small-spectral" in err


def test_pretrain_dry_run_writes_nothing(tmp_path):
    code, out, err = deo("pretrain", "--dry-run", "--out", tmp_path / "never")
    assert code == 0, err
    assert "nothing was written" in out and "40 × 8 images" in out and "checkpoints 2" in out and "MB" in out
    assert not (tmp_path / "never").exists()
