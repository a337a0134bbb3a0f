"""Papermill sweeps: a template notebook run once per grid point, checked before anything runs, resumable, failures
recorded, results gathered into one `xarray.Dataset`, a CSV, a markdown table and a plot.

Hand-written (not exported by a notebook): the package's public names in one place, so `from deo_kit.sweep import
run_sweep` and `deo sweep` (`cli_main`) work as they did before the module became a package. The modules, each from its
notebook: `spec` (nbs/70_sweep.spec: templates, sweep files, values, points), `results` (nbs/70a_sweep.results),
`run` (nbs/70b_sweep.run) and `cli` (nbs/70c_sweep.cli)."""
from .spec import *  # noqa: F401,F403
from .results import *  # noqa: F401,F403
from .run import *  # noqa: F401,F403
from .cli import *  # noqa: F401,F403
