"""The inspector as a notebook user meets it: a notebook executed headless (nbclient) whose stored widget
state must show the controls' values, the fault message and the rendered view."""
import json, os
from pathlib import Path

import pytest

from conftest import DATA, WEIGHTS

CELLS = [
    "from deo_kit.viz.inspector import FeatureMapInspector\n"
    "from deo_kit.data.datasets import ClassFolderDataset\n"
    "import torch\n"
    "euro = ClassFolderDataset({eurosat!r}, split='test')\n"
    "ins = FeatureMapInspector({{'dinov2': {teacher!r}}}, torch.utils.data.Subset(euro, [0, 30]), count=2, teacher_path={teacher!r})",
    "ins  # displays the widget",
    "ins.controls['composite'].value = 'false'\nins.controls['stage'].value = 'mid'\nins.controls['patch_x'].value = 5",
    "ins.controls['composite'].value = 'B01,B10,B99'  # a fault: must be shown, not swallowed",
    "print(ins.composite, ins.stage, ins.selected_patch, ins.error)",
]


def test_inspector_notebook_widget_state(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    teacher = WEIGHTS / "dinov2_vits14_imgfocus.safetensors"
    if not teacher.is_file() or not DATA.is_dir(): pytest.skip("shared data/weights not found")
    # a teacher spec string: load it through the encoder specs, as a user would
    src = [c.format(eurosat=str(DATA / "eurosat_ms_subset"), teacher=str(teacher)) for c in CELLS]
    src[0] = src[0].replace(f"{{'dinov2': {str(teacher)!r}}}", "{'dinov2': 'teacher'}")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in src])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    os.environ.update(env)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, store_widget_state=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert out.startswith("false mid (0, 32, 5)"), out
    assert "B99" in out
    # the widget was displayed as a widget view
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in nb.cells[1].outputs)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = [m["state"] for m in state.values()]
    by = lambda name: [m for m in models if m.get("_model_name") == name]
    assert any(m.get("value") == "false" for m in by("ComboboxModel"))  # the composite control
    assert any(m.get("value") == 5 and m.get("description") == "col (px)" for m in by("IntSliderModel"))
    assert any("B99" in m.get("value", "") for m in by("HTMLModel"))  # the fault is in the widget
    outputs = [o for m in by("OutputModel") for o in m.get("outputs", [])]
    assert outputs, "the view was never rendered into the output area"
    mimes = {k for o in outputs for k in o.get("data", {})}
    # a bokeh view, not HoloViews' text repr (`:Layout .Overlay.I ...`), which is what shows without the extension
    assert "application/vnd.holoviews_exec.v0+json" in mimes, f"the view was not rendered by bokeh (a text dump?): {sorted(mimes)}"
    assert not any(set(o.get("data", {})) == {"text/plain"} and ":Layout" in o["data"]["text/plain"] for o in outputs), "a text dump"
    remote = sorted({u for u in ("cdn.holoviz.org", "cdn.bokeh.org", "unpkg.com", "cdn.jsdelivr.net") if u in json.dumps(outputs)})
    assert not remote, f"the view links {remote}: its CSS/JS must be inlined (deo_kit works offline)"
    load = "application/vnd.holoviews_load.v0+json"
    where = {i for i, c in enumerate(nb.cells) for o in c.outputs if load in o.get("data", {})}
    assert where == {1}, f"deo_kit must load the HoloViews extension by itself, once, where the widget is shown (cells {where})"
    js = max((o["data"][load] for o in nb.cells[1].outputs if load in o.get("data", {})), key=len)
    assert len(js) > 1_000_000 and "cdn.bokeh.org/bokeh/release" not in js, "BokehJS must be inlined (no CDN), so the view renders offline"
    fg = [m for m in by("DropdownModel") if m.get("description") == "foreground"]
    assert fg and fg[0].get("index") is not None and fg[0]["_options_labels"][fg[0]["index"]] == "off", fg  # a value is shown
    (tmp_path / "executed.ipynb").write_text(json.dumps(nb))
