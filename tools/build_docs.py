"""Build deo_kit's static docs site offline: README as the home page, the tutorials and research notebooks (with their
committed outputs, not re-run), and one API page per module whose parameter tables come from the docments (the
comments beside each parameter in the notebooks). MkDocs + mkdocs-jupyter render it; Quarto is not needed.

    python tools/build_docs.py                # -> _site/ (open _site/index.html)
    python tools/build_docs.py --out DIR --src DIR --modules deo_kit.core deo_kit.viz.inspector   # a subset (tests)
"""
import argparse, html, importlib, inspect, json, re, shutil, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    "Every module nbdev exports (from deo_kit/_modidx.py), in notebook order."
    from deo_kit._modidx import d
    return sorted(m for m in d["syms"] if m.startswith("deo_kit."))


def _md(s) -> str: return html.escape(str(s), quote=False).replace("|", "&#124;").replace("\n", " ")


def param_table(obj) -> str:
    "A Markdown table of a callable's parameters: name, type, default and its docment."
    from fastcore.docments import docments
    try: docs = docments(obj, full=True)
    except (TypeError, ValueError, OSError): return ""
    rows = [(k, v) for k, v in docs.items() if k not in ("self", "return") and not k.startswith("_")]
    if not rows: return ""
    fmt = lambda a: "" if a is inspect._empty or a is type(None) else getattr(a, "__name__", str(a)).replace("typing.",
                                                                                                             "")
    out = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for k, v in rows:
        default = "" if v["default"] is inspect._empty else f"`{v['default']!r}`".replace("|", "&#124;")
        out.append(f"| `{k}` | {_md(fmt(v['anno']))} | {default} | {_md(v['docment'] or '')} |")
    ret = docs.get("return")
    if ret and ret["docment"]: out.append(f"\n**Returns:** {_md(ret['docment'])}")
    return "\n".join(out)


def _signature(name, obj) -> str:
    try: return f"{name}{inspect.signature(obj)}".replace("(self, ", "(").replace("(self)", "()")
    except (TypeError, ValueError): return name


def symbol_doc(name, obj, level=3) -> str:
    "Heading, signature, docstring and parameter table of one exported symbol (and a class's own public methods)."
    if not callable(obj):  # a constant: its value
        r = repr(obj)
        return f"{'#' * level} `{name}`\n\n```python\n{name} = {r if len(r) < 600 else r[:600] + ' …'}\n```"
    parts = [f"{'#' * level} `{name}`", f"```python\n{_signature(name, obj)}\n```", inspect.getdoc(obj) or ""]
    if callable(obj): parts.append(param_table(obj.__init__ if inspect.isclass(obj) else obj))
    if inspect.isclass(obj):
        for base in obj.__mro__:  # the class and the mixins it is built from, not object
            if base is object or not base.__module__.startswith("deo_kit"): continue
            for k, m in vars(base).items():
                if k.startswith("_") or not (inspect.isfunction(m) or isinstance(m, property)): continue
                f = m.fget if isinstance(m, property) else m
                parts += [f"{'#' * (level + 1)} `{obj.__name__}.{k}`", f"```python\n{_signature(k, f)}\n```",
                          inspect.getdoc(f) or "", param_table(f)]
    return "\n\n".join(p for p in parts if p)


def api_page(modname: str) -> str:
    mod = importlib.import_module(modname)
    src = getattr(mod, "__file__", "")
    nb = re.search(r"File to edit: (\S+\.ipynb)", Path(src).read_text()) if src else None
    head = [f"# `{modname}`", inspect.getdoc(mod) or ""]
    if nb: head.append(f"*Source notebook:* `nbs/{Path(nb.group(1)).name}`")
    names = [n for n in getattr(mod, "__all__", []) if hasattr(mod, n)]
    body = [symbol_doc(n, getattr(mod, n)) for n in names]
    return "\n\n".join(head + (body or ["*(no exported symbols)*"])) + "\n"


def write_sources(src: Path, mods: list[str]) -> dict:
    "The docs source folder and the navigation."
    if src.exists(): shutil.rmtree(src)
    (src / "api").mkdir(parents=True)
    readme = (REPO / "README.md").read_text()
    (src / "index.md").write_text(readme)
    for ref in re.findall(r"\]\(([^)#\s]+)", readme):  # local files the README links to (images, notebooks) come along
        f = REPO / ref
        if "://" not in ref and f.is_file() and not (src / ref).exists():
            (src / ref).parent.mkdir(parents=True, exist_ok=True); shutil.copy(f, src / ref)
    nav = [{"Home": "index.md"}]
    for folder, title in ((REPO / "nbs" / "tutorials", "Tutorials"), (REPO / "research", "Research")):
        items = []
        for nb in sorted(folder.glob("*.ipynb")):
            (src / folder.name).mkdir(exist_ok=True)
            shutil.copy(nb, src / folder.name / nb.name)
            title = json.loads(nb.read_text())["cells"][0]["source"][0].lstrip("# ").strip()
            items.append({title: f"{folder.name}/{nb.name}"})
        if (folder / "images").is_dir(): shutil.copytree(folder / "images", src / folder.name / "images")
        if items: nav.append({title: items})
    api = []
    for m in mods:
        (src / "api" / f"{m}.md").write_text(api_page(m))
        api.append({m.removeprefix("deo_kit."): f"api/{m}.md"})
    nav.append({"API": api})
    return nav


def write_config(src: Path, out: Path, nav: list) -> Path:
    import yaml
    cfg = {"site_name": "deo_kit", "docs_dir": str(src), "site_dir": str(out), "use_directory_urls": False,
           "theme": {"name": "material", "font": False},  # no web fonts: the site works offline
           "plugins": ["search", {"mkdocs-jupyter": {"execute": False, "include_source": True,
                                                     "ignore_h1_titles": False}}],
           "markdown_extensions": ["tables", "fenced_code", "toc"], "nav": nav}
    p = src.parent / f"{src.name}.mkdocs.yml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return p


def build(out=REPO / "_site", src=REPO / "_site_src", mods=None) -> Path:
    "Write the sources and run `mkdocs build`; returns the site folder."
    out, src = Path(out).resolve(), Path(src).resolve()
    nav = write_sources(src, mods or modules())
    cfg = write_config(src, out, nav)
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f"mkdocs build failed:\n{r.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "_site")); ap.add_argument("--src", default=str(REPO / "_site_src"))
    ap.add_argument("--modules", nargs="*", help="only these modules' API pages (default: all)")
    a = ap.parse_args()
    print(f"site: {build(a.out, a.src, a.modules)}/index.html")
