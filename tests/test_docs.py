"""The docs site builds offline (tools/build_docs.py: MkDocs + mkdocs-jupyter) with the tutorials, the research notes and
API pages whose parameter tables come from the docments; every page exists and every local link resolves. A subset of the
API pages keeps it short; `python tools/build_docs.py` builds them all."""
import importlib.util, re, subprocess, sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["deo_kit.data.datasets", "deo_kit.viz.inspector", "deo_kit.viz.maps"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for pkg in ("mkdocs", "mkdocs_jupyter", "fastcore"):
        if importlib.util.find_spec(pkg) is None: pytest.skip(f"{pkg} not installed (pip install -e '.[dev]')")
    t = tmp_path_factory.mktemp("docs")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "build_docs.py"), "--out", str(t / "site"), "--src", str(t / "src"),
                        "--modules", *MODULES], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return t / "site"


def test_pages_exist(site):
    want = ["index.html", *[f"tutorials/{p.stem}.html" for p in (REPO / "nbs" / "tutorials").glob("*.ipynb")],
            *[f"research/{p.stem}.html" for p in (REPO / "research").glob("*.ipynb")], *[f"api/{m}.html" for m in MODULES]]
    missing = [w for w in want if not (site / w).is_file()]
    assert not missing, f"pages not built: {missing}"
    tut = (site / "tutorials" / "02_inspect.html").read_text()
    assert tut.count("<img") >= 2 and "data:image/png;base64" in tut, "the tutorial's committed figures are not on its page"


def test_api_parameters_from_docments(site):
    page = (site / "api" / "deo_kit.data.datasets.html").read_text()
    assert "sample_eurosat" in page and "eurosat_sample_path" in page
    # the comment beside the parameter in the notebook, rendered in the parameter table
    assert re.search(r"<td><code>split</code></td>\s*<td>.*?</td>\s*<td>.*?</td>\s*<td>&#39;train&#39; \(80 patches\)", page.replace("'", "&#39;"), re.S), \
        "parameter docs of sample_eurosat (its docments) missing from the API page"
    ins = (site / "api" / "deo_kit.viz.inspector.html").read_text()
    assert "FeatureMapInspector.select_patch" in ins and "pixel position in that image" in ins


def test_local_links_resolve(site):
    bad = []
    for page in site.rglob("*.html"):
        for ref in re.findall(r'(?:href|src)="([^"]+)"', page.read_text()):
            u = urlparse(ref)
            if u.scheme or ref.startswith(("#", "mailto:", "data:", "//")): continue
            target = (site / unquote(u.path).lstrip("/") if u.path.startswith("/") else page.parent / unquote(u.path)).resolve()
            if target.is_dir(): target = target / "index.html"
            if not target.exists(): bad.append(f"{page.relative_to(site)} -> {ref}")
    assert not bad, f"{len(bad)} broken local links, e.g. {bad[:10]}"


def test_no_remote_scripts(site):
    remote = {m for p in site.rglob("*.html") for m in re.findall(r'<script[^>]+src="(https?://[^"]+)"', p.read_text())}
    assert not remote, f"pages load scripts from the web: {sorted(remote)[:5]}"
