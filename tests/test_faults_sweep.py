"""Fault cases of `deo sweep` (issue 16): a dry run reads the template, it never executes it."""
import pytest

pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

from deo_kit.sweep import cli_main  # noqa: E402


def _template(path, marker):
    "A template whose `config` cell would create `marker` if anything executed it."
    cells = [('x = 1  # a number\nout_dir = ""  # run folder', ["parameters"]),
             (f"open({str(marker)!r}, 'w').write('ran')", ["config"]),
             ("import json, pathlib\npathlib.Path(out_dir, 'metrics.json').write_text(json.dumps({'y': x}))", [])]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s, metadata={"tags": t}) for s, t in cells])
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    nbformat.write(nb, path)
    return path


def test_dry_run_executes_no_template_code(tmp_path, capsys):
    marker = tmp_path / "executed.txt"
    t = _template(tmp_path / "t.ipynb", marker)
    code = cli_main([str(t), "--grid", "x=1,2", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "2 points" in out and "x=2__seed=0" in out
    assert not marker.exists(), "the dry run executed the template's config cell"
    assert "not executed" in out  # says what it did not check


def test_dry_run_still_refuses_bad_grid_without_running(tmp_path, capsys):
    marker = tmp_path / "executed.txt"
    t = _template(tmp_path / "t.ipynb", marker)
    assert cli_main([str(t), "--grid", "x=a,b", "--dry-run"]) == 1
    assert "expected int" in capsys.readouterr().err and not marker.exists()
