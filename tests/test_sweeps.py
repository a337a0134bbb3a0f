"""`deo sweep` as users call it: the shipped ablation on a tiny grid through papermill end to end, resuming,
failures recorded while the sweep goes on (also with parallel jobs), and bad input refused before anything runs."""
import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

from deo_kit.sweep import cli_main, load_sweep, point_status, sweep_record, sweeps_dir, template_parameters  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NBS_SWEEPS = REPO / "nbs" / "sweeps"
SHARED = Path(os.environ.get("DEO_KIT_SHARED", REPO.parent / "shared"))
TEACHER = SHARED / "weights" / "dinov2_vits14_imgfocus.safetensors"
SHIPPED = (".ipynb", ".yaml")


def _cli(capsys, *argv):
    code = cli_main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _toy(path):
    """A template without torch: y = x², `fail=True` raises inside the notebook."""
    cells = [('x = 1  # a number\nfail = False  # raise on purpose\nseed = 0  # seed\nout_dir = ""  # run folder', ["parameters"]),
             ("import json, pathlib\nif fail: raise RuntimeError('asked to fail')\n"
              "pathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'y': x * x + seed}))", [])]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s, metadata={"tags": t}) for s, t in cells])
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    nbformat.write(nb, path)
    return path


def test_shipped_sweeps_equal_nbs():
    """deo_kit/sweeps/ holds byte copies of nbs/sweeps/ (package data cannot drift from the tested templates)."""
    nbs = sorted(p.name for p in NBS_SWEEPS.iterdir() if p.suffix in SHIPPED)
    pkg = sorted(p.name for p in sweeps_dir().iterdir() if p.suffix in SHIPPED)
    assert nbs == pkg, f"nbs/sweeps has {nbs}, deo_kit/sweeps has {pkg}"
    for name in nbs:
        assert (NBS_SWEEPS / name).read_bytes() == (sweeps_dir() / name).read_bytes(), \
            f"deo_kit/sweeps/{name} differs from nbs/sweeps/{name}: cp nbs/sweeps/{name} deo_kit/sweeps/"


def test_every_shipped_template_and_sweep_file_is_valid():
    import papermill
    for p in NBS_SWEEPS.glob("*.ipynb"):
        names = set(template_parameters(p))
        assert "out_dir" in names and "seed" in names
        # papermill parses the cell itself too (an '=' inside a comment confuses it): both must see every line
        assert set(papermill.inspect_notebook(str(p))) == names
    for p in NBS_SWEEPS.glob("*.yaml"):
        spec = load_sweep(p)
        assert spec.template.is_file() and spec.grid


@pytest.mark.skipif(not TEACHER.is_file(), reason=f"teacher weights not found at {TEACHER} (set DEO_KIT_SHARED)")
def test_ablation_tiny_grid_end_to_end_and_resume(tmp_path, capsys, monkeypatch, shared_data):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DEO_KIT_SHARED", str(SHARED))
    out = tmp_path / "ablation"
    argv = ["ablation", "--grid", "objective=simdino,dino", "--grid", "rung=5-rgb-aug", "--seeds", "1",
            "-p", "steps=1", "-p", "batch_size=2", "-p", "probe_folds=2", "-p", "eval_split=test",
            "-p", f"teacher_path={TEACHER}", "--out", out]
    code, stdout, stderr = _cli(capsys, *argv)
    assert code == 0, stderr + stdout
    import xarray as xr
    with xr.open_dataset(out / "results.nc") as ds:
        assert dict(ds.sizes) == {"objective": 2, "rung": 1, "seed": 1}
        acc = ds.linear_acc.values
        assert ((acc >= 0) & (acc <= 1)).all(), acc
        assert list(ds.objective.values) == ["simdino", "dino"]
    assert "| dino | 5-rgb-aug |" in (out / "results.md").read_text()
    assert len((out / "results.csv").read_text().splitlines()) == 3 and (out / "results.png").stat().st_size > 1000
    run = out / "runs" / "objective=dino__rung=5-rgb-aug__seed=0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert Path(metrics["checkpoint"]).is_dir() and (run / "config.yaml").is_file() and (run / "probe.json").is_file()
    assert "objective: dino" in (run / "config.yaml").read_text()
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    # the same command again: every point is done, nothing runs
    t0 = time.perf_counter()
    code, stdout, _ = _cli(capsys, *argv)
    assert code == 0 and "2 already done, 0 to run" in stdout and time.perf_counter() - t0 < 60


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    toy, out = _toy(tmp_path / "toy.ipynb"), tmp_path / "toy-sweep"
    argv = [toy, "--grid", "x=2,3", "--grid", "fail=false,true", "--jobs", "2", "--out", out]
    code, stdout, _ = _cli(capsys, *argv)
    assert code == 3, stdout
    bad = out / "runs" / "x=3__fail=true__seed=0"
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "asked to fail" in status["error"]
    assert "RuntimeError" in Path(status["traceback"]).read_text() and str(status["traceback"]) in stdout
    assert point_status(out / "runs" / "x=3__fail=false__seed=0") == "done"
    assert "| 3 | false | 9.000 | 1/1 |" in (out / "results.md").read_text()
    # a rerun retries only the failed points
    code, stdout, _ = _cli(capsys, *argv)
    assert code == 3 and "2 already done, 2 to run" in stdout
    # every point failing still leaves a results table that says so
    spec = tmp_path / "toy.yaml"
    spec.write_text("template: toy.ipynb\nmetrics: [y]\ngrid: {fail: [true]}\n")
    code, stdout, _ = _cli(capsys, spec, "--out", tmp_path / "all-fail")
    assert code == 3 and "| true | 0/1 |" in (tmp_path / "all-fail" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["ablation", "--grid", "objectiv=dino"], "unknown parameter 'objectiv'"),
    (["ablation", "-p", "steps=ten"], "steps = 'ten': expected int"),
    (["ablation", "--grid", "rung=1-ms,6-hr-data"], "is not one of its variants"),
    (["ablation", "-p", "probe_folds=2.5"], "probe_folds = 2.5: expected int"),
    (["ablation", "-p", "init_from_teacher=maybe"], "init_from_teacher = 'maybe': expected bool"),
    (["ablation", "-p", "rgb_aug=true"], "both fixed and set by the grid axis 'rung'"),
    (["ablation", "--grid", "objective=dion", "--seeds", "1"], "loss.objective: got 'dion'; allowed: simdino | dino"),
    (["ablation", "--grid", "seed=1,2"], "cannot be an axis"),
    (["no-such-sweep"], "shipped sweep"),
])
def test_bad_input_stops_before_anything_runs(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("DEO_KIT_SHARED", str(SHARED))
    out = tmp_path / "out"
    code, _, stderr = _cli(capsys, *args, "--out", out)
    assert code == 1 and message in stderr, stderr
    assert not out.exists()


def test_bad_template_and_foreign_folders(tmp_path, capsys):
    bare = tmp_path / "bare.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, bare)
    code, _, err = _cli(capsys, bare, "--out", tmp_path / "o1")
    assert code == 1 and "exactly one code cell tagged 'parameters'" in err and not (tmp_path / "o1").exists()
    toy = _toy(tmp_path / "toy.ipynb")
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.json").write_text(json.dumps(sweep_record(load_sweep(toy))))  # a folder of the toy sweep
    code, _, err = _cli(capsys, toy, "--grid", "x=5", "--out", other)
    assert code == 1 and "holds a different sweep (grid differ" in err and not (other / "runs").exists()
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    code, _, err = _cli(capsys, toy, "--out", tmp_path / "stuff")
    assert code == 1 and "not a sweep folder" in err
    code, _, err = _cli(capsys, toy)
    assert code == 1 and "--out is required" in err


def _papermill_record(output, *started):
    "Write the output notebook as papermill leaves it: a cell start time for each cell that began."
    cells = [{"cell_type": "code", "metadata": {"papermill": {"start_time": s}}} for s in started]
    Path(output).write_text(json.dumps({"cells": cells}))


def test_a_kernel_that_does_not_start_is_started_again(tmp_path, monkeypatch):
    "Parallel points can lose jupyter_client's free-port race; such a point is run again, one whose cells began is not."
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from deo_kit.sweep import KERNEL_START_TRIES, run_point
    calls = []
    def flaky(template, output, parameters, **kw):
        calls.append(output); _papermill_record(output, None, None)
        if len(calls) < KERNEL_START_TRIES: raise RuntimeError("Kernel died before replying to kernel_info")
        (Path(parameters["out_dir"]) / "metrics.json").write_text("{}")
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    assert run_point(tmp_path / "t.ipynb", tmp_path / "ok", {})["status"] == "done" and len(calls) == KERNEL_START_TRIES
    for name, started, error in [("died", "2026-11-27T09:00", RuntimeError("Kernel died")),
                                 ("raised", None, PapermillExecutionError(0, 1, "", "RuntimeError", "the notebook's own error", []))]:
        calls.clear()
        def broken(template, output, parameters, **kw):
            calls.append(output); _papermill_record(output, started, None); raise error
        monkeypatch.setattr(papermill, "execute_notebook", broken)
        st = run_point(tmp_path / "t.ipynb", tmp_path / name, {})
        assert st["status"] == "failed" and len(calls) == 1, (name, st)
