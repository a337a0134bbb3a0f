"""deo_kit's imports only go down the layer order, with no cycle and no hidden (function-local) import of a deo_kit
module except the reasoned ones below. Parses every module with `ast`; imports nothing from deo_kit."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "deo_kit"

# The layer order (DESIGN.md "Layers"); a module may import its own layer or lower ones. Longest prefix wins.
LAYERS = [
    ("core", "config", "dist", "data.bands"),  # data.bands: the band registry (pure Python) the config checks names against
    ("data",),
    ("layers", "kernels"),
    ("models",),
    ("loss",),
    ("checkpoint",),
    ("eval",),
    ("train",),
    ("export", "scene_embed", "viz"),
    ("sweep", "bench"),
    ("cli", "api", "train.cli", "eval.cli", "embed_cli"),
]
LEVEL = {f"deo_kit.{name}": i for i, names in enumerate(LAYERS) for name in names}

# Function-local imports of deo_kit modules that are allowed, each with its reason.
LAZY_OK = {
    "deo_kit.kernels": "Triton is an optional, Linux-only extra: the kernels are imported only when an op dispatches to them",
    "deo_kit.viz.inspector": "ipywidgets is an optional extra (deo_kit[viz]): `deo_kit.viz` exposes the inspector lazily",
}
# Modules that may import lazily: entry points whose start-up must stay light (`deo --help`, `import deo_kit`).
LAZY_MODULES = {
    "deo_kit.cli": "`deo --help` and each sub-command load only what they use (no torch for `deo data`)",
    "deo_kit.train.cli": "the parser is built without importing torch",
    "deo_kit.eval.cli": "the parser is built without importing torch",
    "deo_kit.embed_cli": "the parser is built without importing torch",
    "deo_kit.api": "`import deo_kit` stays light; the top-level API loads each part on first use",
    "deo_kit.data": "package __init__: lazy attributes of its own submodules",
}
# Upward edges that are allowed, each with its reason (keep this empty where possible).
UP_OK: dict = {}  # (module, target): reason; empty: no module imports from a higher layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(pkg: Path = PKG) -> dict[str, Path]:
    "Every deo_kit module (the hand-written kernels live outside deo_kit/ and are installed as deo_kit.kernels)."
    out = {module_name(p): p for p in pkg.rglob("*.py") if p.name != "_modidx.py"}
    kernels = ROOT / "kernels"
    for p in kernels.glob("*.py"):
        out["deo_kit.kernels" + ("" if p.stem == "__init__" else f".{p.stem}")] = p
    return out


def level(mod: str) -> int | None:
    "The layer of a module: its longest prefix in LEVEL (the root package has none)."
    parts = mod.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LEVEL: return LEVEL[".".join(parts[:n])]
    return None


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level: return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str, path: Path, all_modules) -> list[tuple[str, int, bool]]:
    "(imported deo_kit module, line, inside a function) for every import of a deo_kit module."
    tree = ast.parse(path.read_text(), str(path))
    local = {id(c) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for c in ast.walk(f) if c is not f}
    out, is_pkg = [], path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import): targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            t = _resolve(mod, is_pkg, node)
            # `from deo_kit.eval import dense` imports the module deo_kit.eval.dense
            targets = [f"{t}.{a.name}" if f"{t}.{a.name}" in all_modules else t for a in node.names]
        else: continue
        for t in targets:
            if t.startswith("deo_kit.") or t == "deo_kit": out.append((t, node.lineno, id(node) in local))
    return out


ALL = modules()
GRAPH = {m: imports(m, p, ALL) for m, p in ALL.items()}


def problems(graph: dict, all_modules: dict, root: Path = ROOT) -> dict[str, list[str]]:
    "Upward imports, unlisted function-local imports and cycles."
    up, lazy, edges = [], [], {}
    for mod, imps in graph.items():
        for t, line, is_local in imps:
            if t == "deo_kit": continue  # the root package, for deo_kit.__version__ only
            target = max((m for m in all_modules if t == m or t.startswith(m + ".")), key=len, default=t)
            where = f"{all_modules[mod].relative_to(root)}:{line}"
            lm, lt = level(mod), level(target)
            if lm is not None and lt is not None and lt > lm and (mod, target) not in UP_OK:
                up.append(f"{where}: {mod} (layer {lm}) imports {target} (layer {lt})")
            if is_local and not any(target == k or target.startswith(k + ".") for k in LAZY_OK) and mod not in LAZY_MODULES:
                lazy.append(f"{where}: {mod} imports {target} inside a function")
            if target != mod: edges.setdefault(mod, set()).add(target)
    return {"upward": sorted(set(up)), "function-local": sorted(set(lazy)), "cycles": cycles(edges)}


def cycles(edges: dict[str, set]) -> list[str]:
    "One representative path per import cycle (depth-first search)."
    found, state = [], {}
    def visit(m, stack):
        state[m] = 1; stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1: found.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state: visit(t, stack)
        stack.pop(); state[m] = 2
    for m in sorted(edges):
        if m not in state: visit(m, [])
    return found


@pytest.mark.parametrize("kind", ["upward", "function-local", "cycles"])
def test_layering(kind):
    bad = problems(GRAPH, ALL)[kind]
    assert not bad, f"{len(bad)} {kind} import(s):\n  " + "\n  ".join(bad)


def test_every_module_has_a_layer():
    assert [m for m in ALL if m != "deo_kit" and level(m) is None] == []


def test_the_checker_catches_each_kind(tmp_path):
    "A throw-away package with one upward import, one hidden import and one cycle is refused on all three counts."
    pkg = tmp_path / "deo_kit"; (pkg / "data").mkdir(parents=True); (pkg / "models").mkdir()
    for p in ("__init__.py", "data/__init__.py", "models/__init__.py"): (pkg / p).write_text("")
    (pkg / "core.py").write_text("")
    (pkg / "data" / "io.py").write_text("from deo_kit.models.student import X\n")  # up: data -> models
    (pkg / "models" / "student.py").write_text("def f():\n    from deo_kit.models import teachers\n")  # hidden
    (pkg / "models" / "teachers.py").write_text("from .student import f\nfrom deo_kit.models.a import g\n")
    (pkg / "models" / "a.py").write_text("from deo_kit.models.teachers import h\n")  # cycle teachers <-> a
    mods = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p for p in pkg.rglob("*.py")}
    found = problems({m: imports(m, p, mods) for m, p in mods.items()}, mods, tmp_path)
    assert any("deo_kit.data.io (layer 1) imports deo_kit.models.student (layer 3)" in s for s in found["upward"])
    assert any("deo_kit.models.student imports deo_kit.models.teachers inside a function" in s for s in found["function-local"])
    assert any("deo_kit.models.a" in s and "deo_kit.models.teachers" in s for s in found["cycles"])
