"""Split export cells that define several public functions/classes into one export cell per public definition
(issue 15, notebook anatomy), and move each new cell down to just before the first following cell that uses it.

    python tools/nb_split.py nbs/70_sweep.spec.ipynb [--dry-run]

Private helpers and constants go with the public definition that uses them (else with the one before). Cells only
move among the non-export cells up to the next export cell, so the exported module keeps its statement order:
`nbdev_export` output changes by blank lines only. A cell that does not parse (magics) is left alone. The notebook is
read, changed and written in one step.
"""
import argparse
import ast
import json
import re
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nb_anatomy import is_export, public_names, source  # noqa: E402

WORD = re.compile(r"\b[A-Za-z_]\w*\b")
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def defined(node):
    "Names a top-level statement binds."
    if isinstance(node, DEFS): return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        ts = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in ts for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def start_line(node, lines):
    "0-based first line of a statement, with its decorators and the comment lines right above it."
    i = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while i > 0 and lines[i - 1].lstrip().startswith("#") and not lines[i - 1].startswith("#|"): i -= 1
    return i


def chunks(src):
    "[(code, names defined)] of one export cell, one chunk per public definition; None when there is nothing to split."
    try: body = ast.parse(src).body
    except SyntaxError: return None
    lines = src.splitlines(keepends=True)
    pub = [k for k, n in enumerate(body) if isinstance(n, DEFS) and not n.name.startswith("_")]
    if len(pub) < 2: return None
    owner = {}  # statement index -> index into pub
    for k, n in enumerate(body):
        if k in pub: owner[k] = pub.index(k); continue
        nxt = next((j for j, p in enumerate(pub) if p > k), None)
        prev = max([j for j, p in enumerate(pub) if p < k], default=0)
        used_by_next = nxt is not None and defined(n) & set(WORD.findall(ast.get_source_segment(src, body[pub[nxt]])))
        owner[k] = nxt if (used_by_next or prev == 0 and k < pub[0]) else prev
    # statements of one chunk must be contiguous (else we would reorder the module)
    order = [owner[k] for k in range(len(body))]
    if order != sorted(order): return None
    starts = [0] + [start_line(body[min(k for k in owner if owner[k] == j)], lines) for j in range(1, len(pub))]
    head = "".join(x for x in lines[:starts[0] + 1] if x.startswith("#|"))
    out = []
    for j, a in enumerate(starts):
        b = starts[j + 1] if j + 1 < len(starts) else len(lines)
        code = "".join(lines[a:b]) if j == 0 else head + "".join(lines[a:b])
        names = set().union(*(defined(body[k]) for k in owner if owner[k] == j))
        out.append((code.rstrip("\n"), names))
    return out


def used(cell):
    return set(WORD.findall(source(cell))) if cell["cell_type"] == "code" else set()


def new_cell(code, like):
    c = {"cell_type": "code", "execution_count": None, "id": secrets.token_hex(4), "metadata": {}, "outputs": [],
         "source": code.splitlines(keepends=True)}
    if "id" not in like: del c["id"]
    return c


def uses_of_definitions(cells):
    "{name: words in its definition} over the top-level statements of the given export cells."
    out = {}
    for c in cells:
        if not is_export(c): continue
        src = source(c)
        try: body = ast.parse(src).body
        except SyntaxError: continue
        for n in body:
            for name in defined(n): out[name] = set(WORD.findall(ast.get_source_segment(src, n) or ""))
    return out


def split_notebook(nb):
    "Split every multi-definition export cell of `nb` in place; returns [(first cell index, names per chunk)]."
    cells, done, i = nb["cells"], [], 0
    while i < len(cells):
        c = cells[i]
        parts = chunks(source(c)) if is_export(c) else None
        if not parts: i += 1; continue
        earlier = uses_of_definitions(cells[:i])  # a test may reach the new cells through an earlier definition
        end = next((k for k in range(i + 1, len(cells)) if is_export(cells[k])), len(cells))
        follow = cells[i + 1:end]
        needs = [set(WORD.findall(code)) for code, _ in parts]
        def closure(names):
            ks, grow, seen = set(), True, set()
            while grow:
                grow = False
                for name in (names & earlier.keys()) - seen:
                    seen.add(name); names = names | earlier[name]; grow = True
                for k, (_, ns) in enumerate(parts):
                    if k not in ks and ns & names: ks.add(k); names = names | needs[k]; grow = True
            return ks
        reqs = [closure(used(f)) for f in follow]
        pos = [0] + [next((t for t, r in enumerate(reqs) if k in r), None) for k in range(1, len(parts))]
        for k in range(1, len(pos)):
            if pos[k] is None: pos[k] = pos[k - 1]
        for k in range(len(pos) - 2, -1, -1): pos[k] = min(pos[k], pos[k + 1])
        first = dict(c, source=(parts[0][0]).splitlines(keepends=True))
        new = [first] + [new_cell(code, c) for code, _ in parts[1:]]
        merged, t = [], 0
        for k, cell in enumerate(new):
            while t < pos[k]: merged.append(follow[t]); t += 1
            merged.append(cell)
        merged += follow[t:]
        cells[i:end] = merged
        done.append((i, [sorted(n for n in ns if not n.startswith("_") and n in public_names(code))
                         for code, ns in parts]))
        i += len(merged)
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    for path in map(Path, a.notebooks):
        nb = json.loads(path.read_text())
        done = split_notebook(nb)
        for i, groups in done: print(f"{path.name} cell {i}: " + " | ".join(", ".join(g) for g in groups))
        if done and not a.dry_run: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
