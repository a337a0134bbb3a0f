"""The inspector in a real browser, as a user meets it: a JupyterLab server on 127.0.0.1, headless Chromium driven by
selenium, a notebook that builds `FeatureMapInspector` on the packaged EuroSAT-MS sample and displays it (nothing else
loaded by hand). Asserted from the page's pixels: the map canvases hold images (not blank, not a text dump), one tap on
a patch redraws the similarity maps, the stage control redraws the maps. From Chromium's network log: the page fetched
nothing from a host other than 127.0.0.1/localhost (deo_kit must work offline). Screenshots go to $DEO_KIT_ARTIFACTS
(default tests/_artifacts). Needs Debian's `chromium` and `chromium-driver` and the `selenium` package."""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.parse, urllib.request
from pathlib import Path

import numpy as np
import pytest

ART = Path(os.environ.get("DEO_KIT_ARTIFACTS", Path(__file__).parent / "_artifacts"))
COLS, PX = 3, 160  # images shown, panel edge (screen px)
NOTEBOOK = [
    "from deo_kit.data.datasets import eurosat_sample_path\n"
    "from deo_kit.viz.inspector import FeatureMapInspector\n"
    f"ins = FeatureMapInspector(['teacher'], str(eurosat_sample_path() / 'test'), index=2, count={COLS}, rows=('input', 'pca', 'similarity'))",
    "ins",
]
# every canvas on the page, through bokeh's shadow roots: [x, y, width, height] in CSS px
CANVASES_JS = """
const out = [];
(function walk(root) { root.querySelectorAll('*').forEach(e => {
  if (e.tagName === 'CANVAS') { const r = e.getBoundingClientRect(); out.push([r.x, r.y, r.width, r.height]); }
  if (e.shadowRoot) walk(e.shadowRoot); }); })(document);
return out;"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _needs() -> dict:
    "Skip without the browser stack; the environment the kernel needs for its optical teacher."
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None: pytest.skip(f"{exe} not installed (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
    pytest.importorskip("jupyterlab", reason="jupyterlab not installed")
    try:
        from deo_kit.models.teachers import resolve_teacher_path
        resolve_teacher_path(fetch=False)
        return {}
    except FileNotFoundError:
        shared = Path(__file__).resolve().parents[2] / "shared" / "weights" / "dinov2_vits14_imgfocus.safetensors"
        if not shared.is_file(): pytest.skip("no optical teacher cached (run: deo pretrain once, or set DEO_KIT_TEACHER)")
        return {"DEO_KIT_TEACHER": str(shared)}


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free port of 127.0.0.1 with a token, serving a folder that holds the test notebook."
    extra = _needs()
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "inspector.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path.parent / f"{tmp_path.name}-jupyter"  # config and runtime files outside the served folder
    env = {**os.environ, **extra, "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(home / "rt"), "JUPYTER_CONFIG_DIR": str(home / "cfg")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield url, token
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()
        ART.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "lab.log", ART / "browser_lab.log")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--window-size=1400,1400", "--force-device-scale-factor=1"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # DevTools network events, read by _remote_requests
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    drv.set_script_timeout(30)
    yield drv
    drv.quit()


def _shot(drv, name) -> np.ndarray:
    from PIL import Image
    ART.mkdir(parents=True, exist_ok=True)
    p = ART / f"browser_{name}.png"
    drv.save_screenshot(str(p))
    return np.asarray(Image.open(p).convert("RGB")).astype(float)


def _panels(drv) -> list:
    "Map canvases (about PX wide and high), top-to-bottom then left-to-right."
    c = {tuple(r) for r in drv.execute_script(CANVASES_JS) if 0.8 * PX <= r[3] <= 1.6 * PX and r[2] >= 0.8 * PX}  # bokeh stacks 2 per plot
    return sorted(c, key=lambda r: (round(r[1] / 20), r[0]))


def _crop(im, r, inset=0.25) -> np.ndarray:
    "The central part of a panel (titles and borders left out)."
    x, y, w, h = r
    return im[int(y + inset * h): int(y + (1 - inset) * h), int(x + inset * w): int(x + (1 - inset) * w)]


def _click(drv, x, y):
    "A left click at page coordinates (CSS px), as a mouse gives it."
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        drv.execute_cdp_cmd("Input.dispatchMouseEvent", dict(type=kind, x=float(x), y=float(y), button="left", clickCount=1))
        time.sleep(0.05)


LOCAL = {"127.0.0.1", "localhost", "::1"}


def _remote_requests(drv, seen: list) -> list:
    "URLs the page asked for (network log since the last call, appended to `seen`, plus resource timing) on a non-local host."
    for e in drv.get_log("performance"):
        m = json.loads(e["message"])["message"]
        if m["method"] == "Network.requestWillBeSent": seen.append(m["params"]["request"]["url"])
        elif m["method"] == "Network.webSocketCreated": seen.append(m["params"]["url"])
    seen += drv.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    urls = dict.fromkeys(u for u in seen if urllib.parse.urlsplit(u).scheme not in ("data", "blob", "about", "chrome"))
    return [u for u in urls if urllib.parse.urlsplit(u).hostname not in LOCAL]


def _wait(pred, timeout, step=1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v: return v
        time.sleep(step)
    return pred()


def test_inspector_in_jupyterlab(lab, browser):
    from selenium.webdriver.common.by import By
    url, token = lab
    drv = browser
    drv.get(f"{url}/lab/tree/inspector.ipynb?token={token}")
    menu = _wait(lambda: [e for e in drv.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run"], 90)
    assert menu, "JupyterLab's menu bar never appeared"
    _wait(lambda: drv.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 60)
    _wait(lambda: "Idle" in drv.find_element(By.TAG_NAME, "body").text or None, 60)
    menu[0].click()
    item = _wait(lambda: [e for e in drv.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"], 20, step=0.5)
    assert item, f"no 'Run All Cells' menu item; see {_shot(drv, '0_menu') is not None and ART / 'browser_0_menu.png'}"
    item[0].click()

    n = 3 * COLS  # input, PCA and similarity rows
    panels = _wait(lambda: len(_panels(drv)) >= n and _panels(drv), 240, step=2)
    im0 = _shot(drv, "1_rendered")
    page = drv.find_element(By.TAG_NAME, "body").text
    assert panels, (f"no map canvases after running the notebook (found {len(_panels(drv))}, want {n}); "
                    f"a text dump instead? page text ends: {page[-600:]!r}; see {ART / 'browser_1_rendered.png'}")
    assert ":Layout" not in page, "the view was printed as text"
    requests = []
    remote = _remote_requests(drv, requests)
    assert requests, "the network log is empty: the check below would pass on anything"
    assert not remote, f"the page fetched from the web (deo_kit must work offline): {remote}"
    panels = panels[:n]
    for k, r in enumerate(panels):  # each panel painted (a map may be nearly flat: a forest is similar to itself everywhere)
        white = (_crop(im0, r) > 245).all(-1).mean()
        assert white < 0.5, f"panel {k} at {r} is blank ({white:.0%} white); see {ART / 'browser_1_rendered.png'}"
    for row in range(3):  # each row a picture, not text: many colours, real contrast
        c = np.concatenate([_crop(im0, r) for r in panels[row * COLS: (row + 1) * COLS]], 1)
        colours = len(np.unique((c // 16).reshape(-1, 3), axis=0))
        assert c.std() > 8 and colours > 12, f"row {row} looks blank or like text (std {c.std():.1f}, {colours} colours)"
    sim = panels[2 * COLS: 3 * COLS]

    # one tap on the third image (another class) of the input row; the query starts at the first image's centre
    x, y, w, h = panels[2]
    _click(drv, x + 0.3 * w, y + 0.35 * h)

    def sim_changed():
        im = _shot(drv, "2_after_tap")
        d = max(np.abs(_crop(im, r) - _crop(im0, r)).mean() for r in sim)
        return d > 4 and (im, d)
    got = _wait(sim_changed, 60, step=2)
    assert got, f"a tap on a patch did not redraw the similarity maps within 60 s; see {ART / 'browser_2_after_tap.png'}"
    im1 = got[0]

    # the stage control: 'mid' redraws the PCA and similarity maps
    buttons = [b for b in drv.find_elements(By.CSS_SELECTOR, ".widget-toggle-button") if b.text.strip() == "mid"]
    assert buttons, "no 'mid' stage button in the widget"
    buttons[0].click()

    def stage_changed():
        im = _shot(drv, "3_after_stage")
        d = np.abs(_crop(im, panels[COLS]) - _crop(im1, panels[COLS])).mean()
        return d > 4 and (im, d)
    assert _wait(stage_changed, 60, step=2), f"the stage control did not redraw the PCA maps; see {ART / 'browser_3_after_stage.png'}"
    assert "⚠" not in drv.find_element(By.TAG_NAME, "body").text, "the widget shows an error message"
    remote = _remote_requests(drv, requests)
    assert not remote, f"after the tap and the stage change the page fetched from the web: {remote}"
