"""Every writer replaces its file in one rename (issue 16): a writer killed with SIGKILL at a random moment leaves
the previous complete file, never a torn one. The child process writes a config, band statistics and a probe
result over and over through a slow disk (each write in ten pieces with a pause: most of the time is spent mid-write);
the parent kills it after a random delay, a few times, and checks every file parses and is one whole version.
The seed is printed; replay with DEO_KIT_SEED=<seed>."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import yaml

CHILD = textwrap.dedent('''
    import sys, time, pathlib
    _open = open
    def slow_write_text(self, data, encoding=None, errors=None, newline=None):  # a slow disk: most of the time is spent mid-write
        n = max(1, len(data) // 10)
        with _open(self, "w", encoding=encoding, errors=errors, newline=newline) as f:
            for i in range(0, len(data), n): f.write(data[i:i + n]); f.flush(); time.sleep(0.02)
        return len(data)
    pathlib.Path.write_text = slow_write_text
    from pathlib import Path
    from deo_kit.config import DEOConfig, save_config
    from deo_kit.data.stats import BandStats, save_stats
    from deo_kit.eval.probes import ProbeResult
    out, v = Path(sys.argv[1]), int(sys.argv[2])
    cfg = DEOConfig()
    def write(v):
        cfg.data.sources = [f"v{v}"] * 2000
        save_config(cfg, out / "config.yaml")
        save_stats(BandStats(("B04",), (float(v),), (1.0,), (1,), f"v{v}" * 10000), out / "stats.json")
        ProbeResult(metric="accuracy", mean=float(v), std=0.0, folds=[float(v)] * 10000).to_json(out / "result.json")
    write(v); print("ready", flush=True)
    while True: v += 1; write(v)
''')


def _versions(out) -> dict:
    "The one version each file holds (an error if a file is torn or mixes versions)."
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    srcs = set(cfg["data"]["sources"]); assert len(srcs) == 1 and len(cfg["data"]["sources"]) == 2000, "config.yaml torn"
    st = json.loads((out / "stats.json").read_text())
    v_st = int(st["bands"]["B04"]["mean"]); assert st["source"] == f"v{v_st}" * 10000, "stats.json torn"
    res = json.loads((out / "result.json").read_text())
    assert set(res["folds"]) == {res["mean"]} and len(res["folds"]) == 10000, "result.json torn"
    return {"config": int(next(iter(srcs))[1:]), "stats": v_st, "result": int(res["mean"])}


def test_writers_killed_at_random_points_leave_whole_files(tmp_path):
    from deo_kit.core import fresh_seed
    seed = fresh_seed(); rng = random.Random(seed)
    print(f"seed={seed} (replay with DEO_KIT_SEED={seed})")
    script = tmp_path / "child.py"; script.write_text(CHILD)
    out = tmp_path / "out"; out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen = {}
    for it in range(3):
        start = 1000 * (it + 1)
        p = subprocess.Popen([sys.executable, str(script), str(out), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        delay = rng.uniform(0.05, 1.5)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL); p.wait()
        v = _versions(out)  # every file whole, whatever the moment of the kill
        assert all(start <= x for x in v.values()), v  # this run's first write landed (no older file survived)
        seen[delay] = v
    print(seen)
