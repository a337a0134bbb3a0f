"""`deo pretrain` as users call it: bad input stops before any work with a message naming the fault,
a NaN loss stops the run and keeps the last good checkpoint, and 2 gloo processes follow the same loss
trajectory as 1 process with the same global batch."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from deo_kit.config import load_config, merge
from deo_kit.train.cli import cli_main
from deo_kit.train.loop import pretrain
from deo_kit.train.metrics import NonFiniteLossError

# A tiny model and a random (not pretrained) teacher: these tests check the machinery, not learning.
TINY = {"student": {"arch": "vit_tiny", "init_from_teacher": False, "kwargs": {"depth": 2}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 4}, "train": {"steps": 3, "checkpoint_every": 1, "log_every": 1}}


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def _run(capsys, *argv):
    code = cli_main([*map(str, argv), "--no-progress"])
    return code, capsys.readouterr()


@pytest.mark.parametrize("sets, message", [
    (["data.bands=B05,B06,B07"], "lacks ['B04', 'B03', 'B02']"),
    (["crops.global_size=30"], "not multiples of the patch size"),
    (["crops.local_size=64"], "bigger than global_size"),
    (["optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
])
def test_bad_config_is_refused(capsys, tmp_path, tiny_yaml, sets, message):
    code, out = _run(capsys, "--config", tiny_yaml, *sum((["--set", s] for s in sets), []), "--out", tmp_path / "run")
    assert code == 1 and message in out.err, out.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_teacher_file_is_named(capsys, tmp_path, tiny_yaml):
    code, out = _run(capsys, "--config", tiny_yaml, "--teacher", tmp_path / "nope.safetensors", "--out", tmp_path / "run")
    assert code == 1 and "nope.safetensors" in out.err and "DEO_KIT_TEACHER" in out.err


def test_teacher_of_wrong_architecture(capsys, tmp_path, tiny_yaml, shared_data):
    weights = shared_data.parent / "weights" / "dinov2_vits14_imgfocus.safetensors"
    code, out = _run(capsys, "--config", tiny_yaml, "--teacher", weights, "--set", "teacher.arch=vit_base_patch16_dinov3",
                     "--out", tmp_path / "run")
    assert code == 1 and "dinov2_vits14_imgfocus.safetensors" in out.err and "vit_base_patch16_dinov3" in out.err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import deo_kit.train.meta as meta
    real = meta.deo_step_losses
    calls = {"n": 0}

    def poisoned(model, crops, rgb, temp=None):
        calls["n"] += 1
        loss, parts = real(model, crops, rgb, temp)
        if calls["n"] == 3:  # the third step's distillation term goes NaN
            parts["distill"] = parts["distill"] * float("nan")
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(meta, "deo_step_losses", poisoned)
    # step-0000002's weights are the ones that gave the NaN at step 2: the last good checkpoint is step-0000001
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss term 'distill' is nan.*last good checkpoint: .*step-0000001\)"):
        pretrain(merge(load_config("demo"), TINY), out_dir=tmp_path, progress=False)
    ck = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ck == ["step-0000001", "step-0000002"]


def test_resume_of_another_band_set_is_refused(capsys, tmp_path, tiny_yaml):
    assert _run(capsys, "--config", tiny_yaml, "--set", "train.steps=1", "--out", tmp_path / "run")[0] == 0
    code, out = _run(capsys, "--config", tiny_yaml, "--set", "data.bands=s2-13", "--resume", tmp_path / "run")
    assert code == 1 and "data.bands: checkpoint 's2-10-deo' vs now 's2-13'" in out.err


def _losses(run_dir, columns):
    rows = list(csv.DictReader(open(Path(run_dir) / "metrics.csv")))
    return [[float(r[k]) for k in columns] for r in rows]


# the default objective, and the extension terms with self-distillation off: the MS head gets no gradient, so DDP must know
SPECTRAL = ["loss.ext.self_distill=0", "loss.ext.spectral_recon=1", "loss.ext.rgb_anchor=1", "optim.ms_stem_train=new_bands"]
@pytest.mark.parametrize("sets, columns", [
    ([], ("total", "ms", "ms_compression", "ms_expansion", "distill")),
    (SPECTRAL, ("total", "distill", "spectral_recon_mse", "rgb_anchor_cos"))], ids=["default", "spectral"])
def test_ddp_two_gloo_processes_match_one_process(tmp_path, tiny_yaml, sets, columns):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    deo = [sys.executable, "-c", "import sys; from deo_kit.cli import main; sys.exit(main())"]
    one = subprocess.run([*deo, "pretrain", "--config", str(tiny_yaml), "--out", str(tmp_path / "one"), "--no-progress",
                          *[a for kv in sets for a in ("--set", kv)]],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    script = tmp_path / "deo_entry.py"
    script.write_text("import sys\nfrom deo_kit.cli import main\nsys.exit(main())\n")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                          "pretrain", "--config", str(tiny_yaml), "--set", "optim.batch_size=2", "--out", str(tmp_path / "two"),
                          "--no-progress", *[a for kv in sets for a in ("--set", kv)]], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.tensor(_losses(tmp_path / "one", columns)), torch.tensor(_losses(tmp_path / "two", columns))
    assert a.shape == b.shape == (3, len(columns))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # same global batch, gradients averaged, covariance all-reduced
