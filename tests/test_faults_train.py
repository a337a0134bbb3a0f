"""Fault cases of `deo pretrain` (issue 16): run folders are never shared or overwritten, a resume keeps the
run's saved config, the NaN guard names the term and a checkpoint that can really be resumed, truncated or
pickled weight files are one-line errors naming the file, a finished run has nothing to do, and an
unwritable cache is found before the teacher download. A tiny model and a random teacher: machinery only."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from deo_kit.train.cli import cli_main

TINY = {"student": {"arch": "vit_tiny", "init_from_teacher": False, "kwargs": {"depth": 1}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 4}, "train": {"steps": 3, "checkpoint_every": 1, "log_every": 1}}


def _run(capsys, *argv):
    code = cli_main([*map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope="module")
def done_run(tiny, tmp_path_factory):
    "A finished 3-step run (checkpoints at steps 1, 2, 3)."
    out = tmp_path_factory.mktemp("runs") / "run"
    assert cli_main(["--config", str(tiny), "--out", str(out), "--no-progress"]) == 0
    return out


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_out_refuses_a_non_empty_folder(tiny, done_run, tmp_path, capsys):
    run = shutil.copytree(done_run, tmp_path / "run")
    before = _snapshot(run)
    code, _, err = _run(capsys, "--config", tiny, "--set", "train.steps=1", "--out", run)
    assert code == 1 and f"--out {run}: the folder is not empty" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run) == before  # nothing written
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert _run(capsys, "--config", tiny, "--out", tmp_path / "mine")[0] == 1
    code, out, _ = _run(capsys, "--config", tiny, "--set", "train.steps=1", "--out", run, "--overwrite")
    assert code == 0 and sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000001"]  # no old checkpoint mixed in


def test_two_runs_in_one_second_get_two_folders(tmp_path, monkeypatch):
    from deo_kit.train.cli import prepare_run_dir
    from deo_kit.train.loop import _default_out
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261206-050000")  # both start in the same second
    a, b = prepare_run_dir(None), prepare_run_dir(None)
    c, d = _default_out(None), _default_out(None)
    assert len({a, b, c, d}) == 4 and all(p.is_dir() and not any(p.iterdir()) for p in (a, b, c, d)), (a, b, c, d)


def test_resume_uses_the_saved_config(tiny, done_run, tmp_path, capsys):
    run = shutil.copytree(done_run, tmp_path / "run")
    ck = run / "checkpoints" / "step-0000002"
    code, out, err = _run(capsys, "--resume", ck, "--set", "train.steps=4")
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["crops"]["global_size"] == 32 and saved["train"]["steps"] == 4 and saved["optim"]["batch_size"] == 4
    assert (run / "checkpoints" / "step-0000004").is_dir()
    code, _, err = _run(capsys, "--resume", run, "--set", "train.steps=5", "--set", "optim.lr=0.1", "--set", "optim.batch_size=8")
    assert code == 1 and "optim.lr: checkpoint" in err and "optim.batch_size: checkpoint 4 vs now 8" in err
    assert "train.steps" in err.split("may change only")[1] and len(err.strip().splitlines()) == 1, err


def test_resuming_a_finished_run_has_nothing_to_do(done_run, capsys):
    before = _snapshot(done_run)
    code, out, err = _run(capsys, "--resume", done_run)
    assert code == 0 and "nothing to do" in out and "train.steps" in out
    assert "checkpoint  None" not in out and "nan images/s" not in out
    assert _snapshot(done_run) == before


def test_truncated_checkpoint_names_the_intact_earlier_one(done_run, tmp_path, capsys):
    run = shutil.copytree(done_run, tmp_path / "run")
    f = run / "checkpoints" / "step-0000003" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = _run(capsys, "--resume", run, "--set", "train.steps=4")
    assert code == 1 and str(f) in err and "truncated" in err and str(run / "checkpoints" / "step-0000002") in err, err
    assert len(err.strip().splitlines()) == 1


def test_truncated_and_pickled_teachers(tiny, tmp_path, capsys, shared_data):
    teacher = shared_data.parent / "weights" / "dinov2_vits14_imgfocus.safetensors"
    cut = tmp_path / "cut.safetensors"
    with open(teacher, "rb") as f: cut.write_bytes(f.read(5_000_000))
    code, _, err = _run(capsys, "--config", tiny, "--teacher", cut, "--set", "teacher.img_size=null", "--out", tmp_path / "a")
    assert code == 1 and str(cut) in err and "truncated" in err and len(err.strip().splitlines()) == 1, err
    pickled = tmp_path / "teacher.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Path("x")}, pickled)  # a Path object: refused by weights_only
    code, _, err = _run(capsys, "--config", tiny, "--teacher", pickled, "--set", "teacher.img_size=null", "--out", tmp_path / "b")
    assert code == 1 and str(pickled) in err and "pickled" in err and "weights_only" not in err, err


def test_nan_guard_names_term_and_a_resumable_checkpoint(tiny, tmp_path, capsys):
    # lr 1e30: step 0 is finite but its update makes weights of ~1e28; a checkpoint of them cannot be resumed
    code, _, err = _run(capsys, "--config", tiny, "--set", "optim.lr=1e30", "--out", tmp_path / "simdino")
    assert code == 3 and "last good checkpoint: none" in err and "step-0000001" not in err, err
    assert "'ms_expansion' (coding rate)" in err and "linalg.cholesky" in err  # the Cholesky failure is the guard's too
    code, _, err = _run(capsys, "--config", tiny, "--set", "optim.lr=1e30", "--set", "loss.objective=dino", "--out", tmp_path / "dino")
    assert code == 3 and "loss term 'total'" not in err and "non-finite:" in err and "last good checkpoint: none" in err, err


def test_unwritable_cache_is_found_before_the_download(tmp_path, monkeypatch, capsys):
    import deo_kit.models.demo_teacher as dt
    from deo_kit.models.teachers import resolve_teacher_path
    blocker = tmp_path / "file"; blocker.write_text("a file, not a folder")
    monkeypatch.setenv("DEO_KIT_CACHE", str(blocker / "cache"))
    monkeypatch.delenv("DEO_KIT_TEACHER", raising=False)
    calls = []
    monkeypatch.setattr(dt.subprocess, "run", lambda *a, **k: calls.append(a) or pytest.fail("downloaded before checking the cache"))
    with pytest.raises(OSError, match="DEO_KIT_CACHE") as e:
        resolve_teacher_path()
    assert str(blocker / "cache") in str(e.value) and not calls


def test_pretraining_on_a_truncated_shard_is_one_line(tiny, tmp_path, capsys, shared_data):
    from deo_kit.data.shards import write_shards
    src = sorted((shared_data / "eurosat_ms_subset" / "train" / "Forest").iterdir())[0]
    sh = tmp_path / "sh"
    write_shards([src], sh, bands="s2-10-deo", size=32, shard_size=2, layout="eurosat-ms", progress=False)
    bad = sh / "shard-000001.tar"
    bad.write_bytes(bad.read_bytes()[:3000])
    code, _, err = _run(capsys, "--config", tiny, "--data", sh, "--set", "train.steps=2", "--set", "optim.batch_size=2", "--out", tmp_path / "r")
    assert code == 1 and str(bad) in err and len(err.strip().splitlines()) == 1, err
