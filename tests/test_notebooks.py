"""Every library notebook, tutorial and sweep template runs as one pytest case (nbdev's test runner,
honouring `tst_flags` so `notest`, `slow` and `cuda` cells are skipped)."""
import os
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if not p.name.startswith("_") and ".ipynb_checkpoints" not in str(p))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(nb, monkeypatch):
    import nbdev.test as nbtest  # module import, so pytest does not collect nbdev's test_nb
    from nbdev.config import get_config
    if (nb.parent / ".notest").exists():
        pytest.skip("folder marked .notest")
    flags = get_config().tst_flags.split()
    monkeypatch.chdir(nb.parent)
    ok, elapsed = nbtest.test_nb(nb, skip_flags=flags, force_flags=[], do_print=False)
    assert ok, f"{nb.name} failed (see the traceback above)"
