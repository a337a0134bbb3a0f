"""The `deo` command starts light: `import deo_kit`, `import deo_kit.cli` and the `--help` of every command that
runs no model load no torch (checked in a fresh interpreter through sys.modules, not by timing)."""
import subprocess
import sys
import time

import pytest

PROBE = ("import sys\n{code}\n"
         "print('HEAVY', sorted(m for m in ('torch', 'rioxarray', 'timm') if m in sys.modules))")


def heavy_modules(code: str) -> list[str]:
    "The heavy modules a fresh interpreter holds after running `code`."
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("HEAVY")][-1]
    return eval(line[len("HEAVY "):])


def test_import_cli_loads_no_torch():
    assert heavy_modules("import deo_kit.cli") == []


def test_import_package_loads_no_torch():
    assert heavy_modules("import deo_kit; deo_kit.__version__") == []


HELPS = [["--help"], ["data", "--help"], ["data", "info", "--help"], ["data", "stats", "--help"],
         ["data", "shard", "--help"], ["pretrain", "--help"], ["eval", "--help"], ["eval", "linear", "--help"],
         ["eval", "report", "--help"], ["sweep", "--help"], ["config", "--help"], ["config", "show", "--help"],
         ["export", "--help"], ["bench", "--help"], ["bench", "kernels", "--help"], ["bench", "step", "--help"],
         ["embed", "--help"],
         ["bench", "step", "--arch", "nope"], ["data", "shard", "x.tif"]]  # bad arguments are refused before torch too


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_loads_no_torch(argv):
    code = f"from deo_kit.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass"
    t0 = time.perf_counter()
    mods = heavy_modules(code)
    print(f"deo {' '.join(argv)}: {time.perf_counter() - t0:.2f} s in a fresh interpreter (reported, not asserted)")
    assert "torch" not in mods, f"deo {' '.join(argv)} imported {mods}"


def test_light_commands_load_no_torch(shared_data):
    "`deo config show` and `deo data info FILE` run without torch (data info reads the raster stack only)."
    tif = sorted((shared_data / "eurosat_ms_subset" / "train" / "Forest").glob("*.tif"))[0]
    for argv in (["config", "show", "optim.lr"], ["data", "info", str(tif), "--layout", "eurosat-ms"]):
        code = f"from deo_kit.cli import main\nassert main({argv!r}) == 0"
        t0 = time.perf_counter()
        mods = heavy_modules(code)
        print(f"deo {' '.join(argv)}: {time.perf_counter() - t0:.2f} s in a fresh interpreter (reported, not asserted)")
        assert "torch" not in mods, f"deo {' '.join(argv)} imported {mods}"
