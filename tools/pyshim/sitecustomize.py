"""`deo_kit.kernels` from a source checkout with no install (tools/gpu_check.sh puts this folder first on PYTHONPATH).

setup.py ships the top-level `kernels/` folder as `deo_kit.kernels`; where `pip install -e .` is impossible (the GPU
machine reaches no registry) this import hook does the same mapping. It then runs the `sitecustomize` it shadows, if
the interpreter has one, so the machine's own start-up settings still apply."""
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_KERNELS = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "kernels")


class CheckoutKernelsFinder:
    "Finds `deo_kit.kernels` in the checkout's kernels/ folder; its submodules follow from the package path."

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "deo_kit.kernels":
            return None
        return importlib.util.spec_from_file_location(name, os.path.join(_KERNELS, "__init__.py"),
                                                      submodule_search_locations=[_KERNELS])


_BLOCKED = frozenset(n.strip() for n in os.environ.get("DEO_KIT_BLOCK_MODULES", "").split(",") if n.strip())


class HideBlocked:
    """`DEO_KIT_BLOCK_MODULES=a,b`: those top-level modules look absent (gpu_check.sh --dry-run plays the GPU image).
    Wraps every finder, so `import a` fails as for a missing package and `importlib.util.find_spec('a')` is None."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


def _chain_shadowed_sitecustomize():
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.origin and os.path.abspath(spec.origin) != os.path.abspath(__file__):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.path.isfile(os.path.join(_KERNELS, "__init__.py")):
    sys.meta_path.insert(0, CheckoutKernelsFinder)  # before an editable install's finder, so a dry run uses it too
if _BLOCKED:
    sys.meta_path[:] = [HideBlocked(f) for f in sys.meta_path]
_chain_shadowed_sitecustomize()
