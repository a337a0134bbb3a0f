"""Config values are refused where the config is built, in one line that names the key or file (issue 16, items 10 and
13); configs and run folders written with deo_kit 0.1.0's flat loss keys still load and resume (issue 15)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from deo_kit.config import RENAMED, ConfigError, config_from_dict, load_config, load_yaml, migrate, to_dict
from deo_kit.train.cli import cli_main

OLD_CONFIG = Path(__file__).parent / "data" / "config_v0.1.0_small-spectral.yaml"  # written by deo_kit 0.1.0 (395e4d7)

# A tiny model and a random teacher, as in tests/test_pretrain.py.
TINY = {"student": {"arch": "vit_tiny", "init_from_teacher": False, "kwargs": {"depth": 2}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 4}, "train": {"steps": 2, "checkpoint_every": 1, "log_every": 1}}


def _pretrain(capsys, *argv):
    code = cli_main([*map(str, argv), "--no-progress"])
    return code, capsys.readouterr()


@pytest.mark.parametrize("item, message", [
    # issue 16, item 10: accepted before (fp16 without scaling, CPU, gradient ascent)
    ("train.precision=fp8", "train.precision: got 'fp8'; allowed: auto | fp32 | bf16 | fp16"),
    ("train.device=tpu", "train.device: got 'tpu'; allowed: auto | cpu | cuda"),
    ("optim.lr=-1", "optim.lr: got -1.0; allowed: > 0"),
    # issue 16, item 13: TypeError / ZeroDivisionError tracebacks before
    ("optim.lr=abc", "optim.lr: got 'abc'; allowed: a number"),
    ("optim=5", "optim: got 5; allowed: a mapping of batch_size, lr"),
    ("train.steps=2.5", "train.steps: got 2.5; allowed: an integer"),
    ("optim.accum_steps=0", "optim.accum_steps: got 0; allowed: >= 1"),
    ("optim.accum_steps=3", "optim.accum_steps: 3 does not divide optim.batch_size 4"),
    ("loss.dino.impl=cuda", "loss.dino.impl: got 'cuda'; allowed: auto | torch | triton"),
])
def test_bad_value_is_one_line_error(capsys, tmp_path, item, message):
    cfg = tmp_path / "tiny.yaml"; cfg.write_text(yaml.safe_dump(TINY))
    code, out = _pretrain(capsys, "--config", cfg, "--set", item, "--out", tmp_path / "run")
    assert code == 1 and out.err == f"deo pretrain: error: {message}" + out.err.split(message, 1)[1], out.err
    assert out.err.strip().count("\n") == 0 and "Traceback" not in out.err  # one line
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("text, message", [
    ("optim: {lr: 1\n", "not valid YAML: line 2"),
    ("optim: !!python/object/apply:os.system [echo pwned]\n", "tags such as !!python/... are refused"),
    ("- just\n- a list\n", "a config file must hold a mapping"),
    ("optim: {lr: -1}\n", "optim.lr: got -1.0; allowed: > 0"),
    ("base: nope\n", "base: got 'nope'; allowed: a preset name (demo, "),
])
def test_bad_config_file_is_one_line_error_naming_it(capsys, tmp_path, text, message):
    bad = tmp_path / "bad.yaml"; bad.write_text(text)
    code, out = _pretrain(capsys, "--config", bad, "--out", tmp_path / "run")
    assert code == 1 and f"deo pretrain: error: {bad}" in out.err and message in out.err, out.err
    assert out.err.strip().count("\n") == 0 and "Traceback" not in out.err
    assert not (tmp_path / "run").exists()


def test_python_tag_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"; bad.write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError): load_yaml(bad)
    assert not marker.exists()


def test_old_config_file_loads_as_it_ran():
    "A 0.1.0 config.yaml: every value lands on its new key; the frozen-trunk sentinel keeps its meaning."
    old = load_yaml(OLD_CONFIG)
    cfg = config_from_dict(old)
    flat_old = {f"loss.{k}": v for k, v in old["loss"].items()}
    for old_key, new_key in RENAMED.items():
        group, *rest = new_key.split(".")[1:]
        node = getattr(cfg.loss, group) if rest else cfg.loss
        assert getattr(node, rest[0] if rest else group) == flat_old[old_key], (old_key, new_key)
    assert cfg.optim.freeze_trunk_steps == 1000000 and cfg.optim.train_trunk  # still never reaches the trunk in 120 steps
    new = to_dict(load_config("small-spectral"))  # today's preset says the same with new keys and an explicit switch
    mine = to_dict(cfg)
    mine["optim"]["freeze_trunk_steps"], mine["optim"]["train_trunk"] = 0, False
    assert mine == new


def test_migrate_is_complete():
    "Every old flat loss key has a new home, and nothing deo_kit writes today uses an old name."
    assert set(migrate(load_yaml(OLD_CONFIG))["loss"]) == {"objective", "out_dim", "head_hidden", "simdino", "dino",
                                                            "optical", "ext"}
    written = to_dict(load_config("demo"))
    assert not any(old.split(".")[1] in written["loss"] for old in RENAMED)


def _to_old_keys(d: dict) -> dict:
    "The inverse of `migrate`: a config dict as deo_kit 0.1.0 wrote it (flat loss keys, no optim.train_trunk)."
    d = json.loads(json.dumps(d))
    for old, new in RENAMED.items():
        _, group, *rest = new.split(".")
        src = d["loss"][group] if rest else d["loss"]
        d["loss"][old.split(".")[1]] = src.pop(rest[0] if rest else group)
    for group in ("simdino", "dino", "optical", "ext"): assert not d["loss"].pop(group)
    d["optim"].pop("train_trunk")
    return d


def test_resume_run_written_with_old_keys(capsys, tmp_path):
    "A run folder whose config.yaml and checkpoint hold 0.1.0's flat keys resumes (no 'different model' refusal)."
    cfg = tmp_path / "tiny.yaml"; cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "steps": 1}}))
    run = tmp_path / "run"
    code, out = _pretrain(capsys, "--config", cfg, "--out", run)
    assert code == 0, out.err
    old = _to_old_keys(yaml.safe_load((run / "config.yaml").read_text()))
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    for state in run.glob("checkpoints/step-*/state.json"):
        s = json.loads(state.read_text()); s["config"] = old; state.write_text(json.dumps(s))
    code, out = _pretrain(capsys, "--resume", run, "--set", "train.steps=2")
    assert code == 0, out.err
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header, step 0 (kept), step 1 (resumed)
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["ext"]["self_distill"] == 1.0  # rewritten with new keys


@pytest.mark.parametrize("item, message", [("optim.lr=abc", "optim.lr: got 'abc'; allowed: a number"),
                                           ("optim.accum_steps=0", "optim.accum_steps: got 0; allowed: >= 1")])
def test_bench_step_bad_set_is_one_line_error(capsys, item, message):
    from deo_kit.bench.step import cli_main as bench_main
    assert bench_main(["--arch", "vit_tiny", "--set", item]) == 1
    err = capsys.readouterr().err
    assert err == f"deo bench step: error: {message}\n", err


def test_config_options_match_the_code_that_reads_them():
    "Options the config lists by value agree with the modules that act on them (one list may not drift from the other)."
    import typing
    from deo_kit.config import STUDENT_ARCHS, CropsConfig, DataConfig
    from deo_kit.data.crops import SOLARIZE_RULES
    from deo_kit.data.masks import FILTER_MODES
    from deo_kit.models.student import _ALIASES, SWIN_CONFIGS, VIT_CONFIGS
    hints = lambda cls, k: typing.get_args(typing.get_type_hints(cls)[k])
    assert set(STUDENT_ARCHS) == set(VIT_CONFIGS) | set(SWIN_CONFIGS) | set(_ALIASES)
    assert set(hints(DataConfig, "cloud_mode")) == set(FILTER_MODES)
    assert set(hints(CropsConfig, "solarize")) == set(SOLARIZE_RULES)
