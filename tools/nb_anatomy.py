"""Notebook anatomy report: how closely each library notebook follows "one public definition per export cell,
then its example, then its check" (issue 15; style_review.md §2.1).

    python tools/nb_anatomy.py                  # working tree, one row per notebook + totals
    python tools/nb_anatomy.py --rev HEAD       # the notebooks as committed at a git revision
    python tools/nb_anatomy.py --totals         # totals only
    python tools/nb_anatomy.py --list-multi     # the export cells that define two or more public names

Library notebooks are nbs/*.ipynb with a `#| default_exp` (tutorials and sweeps are not library code). Columns:
export = cells with `#| export`/`exports`/`exporti`; multi = export cells defining >= 2 public functions or classes
(top-level def/class whose name has no leading underscore; constants not counted); median = median export-cell length
in lines (the `#|` directive line included); >=40 = export cells of 40 lines or more; untested = export cells with
no assertion (`assert`, `test_*(`) in a code cell before the next export cell; long = code lines over 120 characters.
At 395e4d7 (style_review.md §2.1): 300 export cells, 97 (32 %) multi, median 21, 39 cells >= 40 lines.
"""
import argparse
import ast
import json
import re
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT = re.compile(r"^#\|\s*export(s|i)?\b")
CHECK = re.compile(r"^\s*assert\b|\btest_\w*\(|\btest_fail\b", re.M)


def notebooks(rev=None):
    "(name, notebook dict) for each library notebook in the working tree or at git revision `rev`."
    if rev is None:
        return [(p.name, json.loads(p.read_text())) for p in sorted((ROOT / "nbs").glob("*.ipynb"))]
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "nbs/"], capture_output=True,
                           text=True, check=True).stdout.split()
    out = []
    for n in sorted(x for x in names if x.endswith(".ipynb")):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout
        out.append((Path(n).name, json.loads(text)))
    return out


def source(cell):
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def is_export(cell):
    if cell["cell_type"] != "code": return False
    return any(EXPORT.match(line) for line in source(cell).splitlines() if line.startswith("#|"))


def public_names(code):
    "Public functions and classes a cell defines at top level; [] if it does not parse."
    try: tree = ast.parse(code)
    except SyntaxError: return []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n.name for n in tree.body if isinstance(n, defs) and not n.name.startswith("_")]


def anatomy(name, nb):
    "One notebook's row, or None when it is not a library notebook."
    cells = nb["cells"]
    if not any(c["cell_type"] == "code" and "default_exp" in source(c) for c in cells): return None
    exports = [i for i, c in enumerate(cells) if is_export(c)]
    lengths = [len(source(cells[i]).splitlines()) for i in exports]
    multi = [(i, public_names(source(cells[i]))) for i in exports]
    multi = [(i, ns) for i, ns in multi if len(ns) >= 2]
    untested = 0
    for k, i in enumerate(exports):
        end = exports[k + 1] if k + 1 < len(exports) else len(cells)
        if not any(c["cell_type"] == "code" and CHECK.search(source(c)) for c in cells[i + 1:end]): untested += 1
    long = sum(len(line) > 120 for c in cells if c["cell_type"] == "code" for line in source(c).splitlines())
    return dict(notebook=name, export=len(exports), multi=len(multi), lengths=lengths,
                ge40=sum(n >= 40 for n in lengths), untested=untested, long=long, multi_cells=multi)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", help="read the notebooks at this git revision instead of the working tree")
    p.add_argument("--totals", action="store_true", help="print the totals only")
    p.add_argument("--list-multi", action="store_true", help="list export cells defining two or more public names")
    a = p.parse_args(argv)
    rows = [r for r in (anatomy(n, nb) for n, nb in notebooks(a.rev)) if r]
    if a.list_multi:
        for r in rows:
            for i, ns in r["multi_cells"]: print(f"{r['notebook']} cell {i}: {', '.join(ns)}")
        return
    head = f"{'notebook':<28} {'export':>6} {'multi':>5} {'median':>6} {'>=40':>4} {'untested':>8} {'long':>4}"
    if not a.totals: print(head)
    for r in rows:
        med = statistics.median(r["lengths"]) if r["lengths"] else 0
        if not a.totals:
            print(f"{r['notebook'][:-6]:<28} {r['export']:>6} {r['multi']:>5} {med:>6g} {r['ge40']:>4} "
                  f"{r['untested']:>8} {r['long']:>4}")
    lengths = [n for r in rows for n in r["lengths"]]
    n_exp, n_multi = len(lengths), sum(r["multi"] for r in rows)
    print(f"{len(rows)} library notebooks, {n_exp} export cells: {n_multi} ({100 * n_multi / max(n_exp, 1):.0f} %) "
          f"define >= 2 public names; median {statistics.median(lengths):g} lines "
          f"(mean {statistics.mean(lengths):.1f}); {sum(n >= 40 for n in lengths)} cells >= 40 lines; "
          f"{sum(r['untested'] for r in rows)} with no check before the next export; "
          f"{sum(r['long'] for r in rows)} code lines > 120 characters")


if __name__ == "__main__":
    main()
