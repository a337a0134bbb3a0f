"""Write README.md's sections into nbs/index.ipynb's markdown cells (README.md is the master; Quarto is not
available here, so the two are kept in step by this script and checked by tests/test_packaging.py).

Usage: python tools/sync_readme.py
"""
import json
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sections(readme: str) -> list[str]:
    "README split at its `## ` headings, one cell each."
    parts = readme.split("\n\n## ")
    return [parts[0]] + ["## " + p for p in parts[1:]]


def first_lines(texts) -> set[str]:
    return {t.strip().splitlines()[0] for t in texts if t.strip()}


def main():
    readme = (REPO / "README.md").read_text(encoding="utf-8").strip()
    path = REPO / "nbs" / "index.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    old_md = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    new = sections(readme)
    lost = first_lines("".join(c["source"]) for c in old_md) - first_lines(new)
    if lost:  # a section written only in the notebook would be dropped
        raise SystemExit(f"nbs/index.ipynb has sections README.md lacks: {sorted(lost)}; "
                         "merge them into README.md first")
    cells = [{"cell_type": "markdown", "id": old_md[i]["id"] if i < len(old_md) else uuid.uuid4().hex[:8],
              "metadata": {}, "source": sec.splitlines(keepends=True)} for i, sec in enumerate(new)]
    nb["cells"] = code + cells
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"nbs/index.ipynb: {len(new)} sections from README.md")


if __name__ == "__main__":
    main()
