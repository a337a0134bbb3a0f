"""One normalisation per model: a 1-step run with non-default statistics and RGB scale saves them in its checkpoint,
and evaluation, export, the training crops and the optical teacher all use exactly those, even after the statistics
file changes. Checkpoints written before the normalisation was saved still load (derived from their config)."""
import json

import pytest
import torch

from deo_kit.checkpoint import checkpoint_normalisation, latest_checkpoint
from deo_kit.config import load_config, merge
from deo_kit.data.norm import Normalisation
from deo_kit.data.stats import BandStats, get_stats, save_stats
from deo_kit.eval.encoders import load_encoder
from deo_kit.export import export_student, load_exported, normalise_input
from deo_kit.train.data import build_multicrop
from deo_kit.train.loop import pretrain

TINY = {"student": {"arch": "vit_tiny", "patch_size": 8, "init_from_teacher": False, "kwargs": {"depth": 1}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2, "rgb_scale": 2500.0},
        "teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 28},
        "loss": {"head_hidden": 32, "out_dim": 16},
        "optim": {"batch_size": 4}, "train": {"steps": 1, "checkpoint_every": 1, "log_every": 1}}


def odd_stats(path, shift=0.0):
    "The s2-l1c statistics, moved far from the defaults (and by `shift` more)."
    s = get_stats("s2-l1c")
    return save_stats(BandStats(s.bands, tuple(0.5 * m + 321.0 + shift for m in s.mean), tuple(2.0 * v + 7.0 for v in s.std),
                                s.count, "odd"), path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("norm")
    stats = odd_stats(tmp / "odd.json")
    cfg = merge(load_config("demo"), {**TINY, "data": {"stats": str(stats)}})
    res = pretrain(cfg, out_dir=tmp / "run", progress=False)
    return cfg, Normalisation.from_config(cfg), res.out_dir, stats


def test_checkpoint_holds_the_run_normalisation(run):
    cfg, norm, out, _ = run
    saved = json.loads((latest_checkpoint(out) / "state.json").read_text())["normalisation"]
    assert Normalisation.from_dict(saved) == norm
    assert norm.mean[0] == pytest.approx(0.5 * get_stats("s2-l1c").select(["B04"])[0][0] + 321.0, rel=1e-6)
    assert (norm.rgb_rule, norm.rgb_scale) == ("clip", 2500.0)
    assert build_multicrop(cfg).norm == norm  # the training crops read the same object


def test_evaluation_and_export_use_the_saved_statistics(run, tmp_path):
    _, norm, out, stats = run
    odd_stats(stats, shift=1000.0)  # the statistics file changes after training: the model must not notice
    x = torch.rand(2, len(norm.bands), 32, 32) * 4000
    enc = load_encoder(str(out))
    assert enc.norm == norm and Normalisation.from_config(merge(load_config("demo"), {**TINY, "data": {"stats": str(stats)}})) != norm
    torch.testing.assert_close(enc.normalise(x), norm(x))
    with torch.no_grad(): direct = enc.model(norm(x), path="ms", patches=False).global_
    torch.testing.assert_close(enc.features(x, "global"), direct)
    for path, n in (("ms", norm), ("rgb", norm.rgb_only())):
        exp = export_student(f"{out}:{path}", tmp_path / path)
        net, meta = load_exported(exp)
        assert Normalisation.from_dict(meta["normalisation"]["deo_kit"]) == n and meta["normalisation"]["mean"] == list(n.mean)
        xi = x if path == "ms" else x[:, list(norm.rgb_idx)]
        torch.testing.assert_close(normalise_input(xi, meta), n(xi))
        torch.testing.assert_close(net.forward_features(normalise_input(xi, meta))[:, 0], load_encoder(f"{out}:{path}").features(xi, "global"),
                                   rtol=1e-4, atol=1e-4)


def test_older_checkpoint_derives_it_from_its_config(run):
    _, norm, out, stats = run
    odd_stats(stats)  # back to the trained numbers, as the config names them
    ck = latest_checkpoint(out)
    st = json.loads((ck / "state.json").read_text()); del st["normalisation"]
    (ck / "state.json").write_text(json.dumps(st))
    assert checkpoint_normalisation(ck) == norm and load_encoder(str(out)).norm == norm


def test_resume_with_other_statistics_is_refused(run, tmp_path):
    cfg, _, out, stats = run
    other = merge(load_config("demo"), {**TINY, "data": {"stats": str(odd_stats(tmp_path / "other.json", shift=5.0))},
                                        "train": {**TINY["train"], "steps": 2}})
    with pytest.raises(ValueError, match="another input normalisation"):
        pretrain(other, resume=out, progress=False)
