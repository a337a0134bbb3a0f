#!/usr/bin/env python3
"""The steps of tools/gpu_check.sh, one subcommand each, so the shell can give every step its own hard timeout.

  env      device, versions, HBM copy bandwidth            -> PARTS/env.json
  kernels  `deo bench kernels` rows (eager vs Triton)      -> PARTS/kernels.json
  method   DEO pretraining at GPU speed + linear probes    -> PARTS/method.json
  merge    PARTS/* + the junit XML -> OUT/gpu_check.json, and a one-screen summary

With --dry-run every step runs on the CPU with tiny settings (torch paths), writing the same JSON. Nothing here needs
rasterio: the method step reads the packaged GeoTIFFs with tools/tiff_lite.py."""
import argparse
import json
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
PACK = Path(os.environ.get("DEO_GPU_PACK", ROOT / ".gpu_pack"))  # made by tools/make_gpu_pack.py, carried to the GPU
TEACHER_FILE = "dinov2_vits14_imgfocus_fp16.safetensors"
HBM_FALLBACK_TBS = 3.0  # H100 device-to-device copy measured on this workplace's machines (KINDS.md)


def _write(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception as e:  # absent on this image: say so
        return f"missing ({type(e).__name__})"


# ---- env ----

def hbm_copy_tbs(device, gib: float = 1.0, reps: int = 10) -> float:
    "Device-to-device copy bandwidth (TB/s, bytes read + written), the floor's denominator."
    import torch
    n = int(gib * 2**30) // 4
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    b.copy_(a)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        b.copy_(a)
    e1.record()
    torch.cuda.synchronize()
    return 2 * n * 4 * reps / (e0.elapsed_time(e1) / 1e3) / 1e12


def bench_teacher() -> str:
    ("The step benchmark's random optical teacher: the reference's DINOv3 ViT-B/16, or a ViT-B/14 DINOv2 on an older "
     "timm.")
    import timm
    return next(n for n in ("vit_base_patch16_dinov3", "vit_base_patch14_dinov2") if timm.list_models(n))


def cmd_env(a):
    import torch
    import deo_kit.kernels as kernels
    info = dict(dry_run=a.dry_run, python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                triton=_version("triton"), timm=_version("timm"), torchvision=_version("torchvision"),
                numpy=_version("numpy"), sklearn=_version("sklearn"), rasterio=_version("rasterio"),
                kernels_from=str(Path(kernels.__file__).parent), triton_interpret=os.environ.get("TRITON_INTERPRET"))
    if torch.cuda.is_available() and not a.dry_run:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), hbm_copy_tbs=round(hbm_copy_tbs("cuda"), 3))
    else:
        info.update(device=f"CPU ({os.cpu_count()} cores, dry run)" if a.dry_run else "CPU", hbm_copy_tbs=None)
    info["bench_teacher"] = bench_teacher()
    (Path(a.parts) / "teacher.txt").write_text(info["bench_teacher"])  # read by gpu_check.sh for `deo bench step`
    _write(Path(a.parts) / "env.json", info)
    print(json.dumps(info, indent=1))
    return 0


# ---- kernels ----

def cmd_kernels(a):
    "Eager vs Triton (no torch.compile: its cold compiles do not fit the budget) for the DINO loss and both stems."
    from deo_kit.bench.kernels import cli_main
    common = ["--small", "--device", "cpu", "--no-compile", "--reps", "2", "--warmup", "1"] if a.dry_run else \
        ["--no-compile", "--reps", "10", "--warmup", "3"]
    cases = {"dino_fp32": ["--ops", "dino", "--dtype", "float32"], "dino_bf16": ["--ops", "dino", "--dtype",
                                                                                 "bfloat16"],
             "swin_stem": ["--ops", "swin"], "swin_stem_bf16x": ["--ops", "swin", "--x-dtype", "bfloat16"],
             "vit_stem": ["--ops", "vit"]}
    out, parts = {"rows": [], "errors": {}}, Path(a.parts)
    for name, args in cases.items():
        f = parts / f"kernels_{name}.json"
        try:
            cli_main(common + args + ["--json", str(f)])
            d = json.loads(f.read_text())
            out["rows"] += [dict(case=name, **r) for r in d["rows"]]
            out.update(device=d["device"], torch=d["torch"], triton=d["triton"])
        except Exception as e:  # one failing case must not hide the others
            out["errors"][name] = f"{type(e).__name__}: {e}"[:500]
            print(f"kernels {name}: {out['errors'][name]}", flush=True)
        finally:
            f.unlink(missing_ok=True)
    _write(parts / "kernels.json", out)
    return 1 if out["errors"] else 0


# ---- method: DEO pretraining at GPU speed, then linear probes ----

def scene_dn(bands):  # -> numpy array (numpy is imported inside: the check starts without it)
    "The embedded Sentinel-2 scene as (bands, 960, 960) float32 DN on its 10 m grid (20/60 m bands repeated)."
    import numpy as np
    from tiff_lite import read_tiff
    folder = ROOT / "deo_kit" / "assets" / "s2_demo"
    out = []
    for b in bands:
        x = read_tiff(folder / f"s2_{b}.tif")[0].astype(np.float32)
        f = 960 // x.shape[0]
        out.append(np.repeat(np.repeat(x, f, 0), f, 1) if f > 1 else x)
    return np.stack(out)


def eurosat_dn(bands):
    "(N, bands, 64, 64) float32 DN, integer labels, class names and split of the packaged EuroSAT-MS sample."
    import csv
    import numpy as np
    from deo_kit.data.bands import get_layout
    from tiff_lite import read_tiff
    folder = ROOT / "deo_kit" / "assets" / "eurosat_sample"
    if not (folder / "manifest.csv").is_file():
        folder = Path(os.environ.get("DEO_KIT_SHARED", ROOT.parent / "shared")) / "data" / "eurosat_ms_subset"
        rows = [dict(split="all", **{"class": p.parent.name, "filename": p.name, "path": p})
                for p in sorted(folder.glob("*/*.tif"))]
    else:
        rows = [dict(r,
                     path=folder / r["split"] / r["class"] / r["filename"])
                for r in csv.DictReader(open(folder / "manifest.csv"))]
    order = get_layout("eurosat-ms").bands
    idx = [order.index(b) for b in bands]
    X = np.stack([read_tiff(r["path"])[idx].astype(np.float32) for r in rows])
    classes = sorted({r["class"] for r in rows})
    y = np.array([classes.index(r["class"]) for r in rows])
    return X, y, classes, [r["split"] for r in rows]


def _features(enc, X, batch=50):
    import numpy as np
    import torch
    return np.concatenate([enc.features(torch.from_numpy(X[i:i + batch])).numpy() for i in range(0, len(X), batch)])


def _probe(name, feats, y, classes, dry):
    "The harness's linear probe (5 folds x 3 repeats, C chosen by inner CV); the dry run fixes C and repeats once."
    from deo_kit.eval.probes import run_probe
    kw = dict(n_repeats=1, C_grid=(1.0,)) if dry else dict(n_repeats=3)
    r = run_probe(feats, y, probe="linear", n_folds=5, seed=0, classes=classes, **kw)
    return dict(encoder=name, metric=r.metric, mean=r.mean, std=r.std, folds=r.folds, folds_digest=r.folds_digest)


def cmd_method(a):
    """DEO pretraining with the paper's objectives (SimDINO MS self-distillation + optical distillation, no extensions;
    the demo preset: ViT-S/8 student initialised from the DINOv2-S/14 teacher), bf16, on the embedded scene plus the
    EuroSAT-MS sample, for a time budget; then a linear probe of the MS path (the harness's folds) against step 0 and
    the teacher (RGB)."""
    import torch
    from deo_kit.config import load_config
    from deo_kit.data.bands import get_band_set
    from deo_kit.eval.encoders import TeacherEncoder, _student_encoder
    from deo_kit.train.data import build_loader
    from deo_kit.config import validate_config
    from deo_kit.train.loop import _prepare, train_step
    from deo_kit.train.optim import apply_schedule, schedules
    t_start = time.perf_counter()
    dev = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    teacher = PACK / TEACHER_FILE
    if not teacher.is_file():
        teacher = ROOT.parent / "shared" / "weights" / "dinov2_vits14_imgfocus.safetensors"
    steps = a.steps or (2 if a.dry_run else 2000)  # the GPU run re-plans this to its time budget after 10 steps
    over = dict(teacher=dict(path=str(teacher), arch="dinov2_vits14"), optim=dict(batch_size=2 if a.dry_run else 64),
                train=dict(precision="fp32" if a.dry_run else "bf16", steps=steps, seed=0),
                data=dict(num_workers=0 if a.dry_run else 6))
    cfg = validate_config(load_config("demo", overrides=over))
    bands = get_band_set(cfg.data.bands).bands
    X, y, classes, split = eurosat_dn(bands)
    sources = [torch.from_numpy(scene_dn(bands))] + [torch.from_numpy(x) for x in X]
    res = dict(preset="demo", objectives="simdino MS self-distillation + optical distillation (no extensions)",
               student=cfg.student.arch, patch=cfg.student.patch_size, teacher=str(teacher.name),
               precision=cfg.train.precision,
               batch=cfg.optim.batch_size,
               crops=f"2x{cfg.crops.global_size} + {cfg.crops.n_local}x{cfg.crops.local_size}",
               data=f"embedded scene (13 bands, 960x960) + EuroSAT-MS sample ({len(X)} patches, "
                    f"{len(classes)} classes)",
               device=str(dev))
    torch.manual_seed(cfg.train.seed)
    model, opt, scaler, autocast, _ = _prepare(cfg, None, dev)
    timings = dict(setup=time.perf_counter() - t_start)
    rgb = [bands.index(b) for b in ("B04", "B03", "B02")]
    t_enc = TeacherEncoder(model.teacher, size=112 if a.dry_run else 224)
    probes = [_probe("teacher (RGB)", _features(t_enc, X[:, rgb]), y, classes, a.dry_run)]
    probes.append(_probe("student MS, step 0", _features(_student_encoder(model.student, cfg, "ms", "step0", ""), X), y,
                         classes, a.dry_run))
    timings["probes_before"] = time.perf_counter() - t_start - timings["setup"]
    model.student.train()
    loader = build_loader(cfg, sources, 0, 0, 1, model.student.patch_size)
    budget = a.train_seconds
    losses, t0, step, planned = [], time.perf_counter(), 0, cfg.train.steps
    for step, batch in enumerate(loader):
        if step == 5:
            t5 = time.perf_counter()
        if step == 15 and not a.steps:  # re-plan the schedule's length to the speed after the first (compiling) steps
            now = time.perf_counter()
            left = budget - (now - t0)
            cfg.train.steps = planned = max(20, min(planned, 15 + int(left / ((now - t5) / 10))))
        if step >= planned:
            break
        sched = schedules(cfg, step)
        apply_schedule(opt, sched, step)
        parts = train_step(model, model, opt, scaler, autocast, [batch], sched, cfg, dev)
        if step % 10 == 0 or step == planned - 1:
            losses.append((step, float(parts["total"])))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    probes.append(_probe(f"student MS, step {step + 1}", _features(_student_encoder(model.student, cfg, "ms", "trained",
                                                                                    ""), X), y, classes, a.dry_run))
    res.update(steps=step + 1, train_seconds=round(train_s, 1),
               images_per_s=round((step + 1) * cfg.optim.batch_size / train_s, 1),
               loss_first_last=[losses[0], losses[-1]] if losses else None, losses=losses,
               peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
               probes=probes, gain_vs_step0=round(probes[-1]["mean"] - probes[1]["mean"], 4),
               total_seconds=round(time.perf_counter() - t_start, 1),
               seconds={k: round(v, 1) for k, v in dict(timings, train=train_s,
                                                        probe_after=time.perf_counter() - t1).items()})
    _write(Path(a.parts) / "method.json", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("losses", "probes")}))
    return 0


# ---- merge ----

def test_log_summary(path: Path, note: str) -> dict:
    "The conftest hook's JSON lines (DEO_KIT_TEST_LOG), when pytest was stopped before writing its junit file."
    n, cases = dict(passed=0, failed=0, errors=0, skipped=0), []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        r = json.loads(line)
        key = "errors" if r["outcome"] == "failed" and r["when"] != "call" else r["outcome"]
        n[key] += 1
        cases.append(dict(name=r["name"], outcome=key, message=r["message"]))
    return dict(**n, cases=cases, note=note)


def junit_summary(path: Path, log: Path | None = None) -> dict:
    if not path.is_file():
        return test_log_summary(log,
                                f"{path.name} not written (pytest stopped?): outcomes from the per-test log") if log \
            else dict(passed=0, failed=0, errors=0, skipped=0, cases=[], note=f"{path.name} not written")
    root = ET.parse(path).getroot()
    cases, n = [], dict(passed=0, failed=0, errors=0, skipped=0)
    for tc in root.iter("testcase"):
        kind = next((c.tag for c in tc if c.tag in ("failure", "error", "skipped")), "passed")
        key = {"failure": "failed", "error": "errors"}.get(kind, kind)
        n[key] += 1
        msg = next((c.get("message", "") for c in tc if c.tag == kind), "")
        cases.append(dict(name=f"{tc.get('classname', '')}::{tc.get('name')}", outcome=key, message=msg[:300]))
    return dict(**n, cases=cases)


def targets(kernels: dict, steps: dict, env: dict) -> list:
    "The issue's performance targets, evaluated on this run's numbers (reported, never asserted)."
    out, rows = [], kernels.get("rows", [])
    bw = (env.get("hbm_copy_tbs") or HBM_FALLBACK_TBS) * 1e12

    def row(case, impl):
        return next((r for r in rows if r["case"] == case and r["impl"] == impl), None)
    for case, esize in (("dino_fp32", 4), ("dino_bf16", 2)):
        e, t = row(case, "eager"), row(case, "triton")
        if e and t:
            S, T, B, K = 12, 2, 64, 65536
            floor_ms = ((2 * S + T) * B * K * esize) / bw * 1e3  # read student + teacher, write the gradient
            out.append(dict(target=f"{case}: fused fwd+bwd >= 4x eager", value=round(e["ms"] / t["ms"], 2),
                            ok=e["ms"] / t["ms"] >= 4))
            out.append(dict(target=f"{case}: within 2x of the HBM floor ({floor_ms * 1e3:.0f} us)",
                            value=round(t["ms"] / floor_ms, 2), ok=t["ms"] <= 2 * floor_ms))
            if e.get("mem_mib") and t.get("mem_mib") is not None:
                red = 1 - t["mem_mib"] / e["mem_mib"]
                out.append(dict(target=f"{case}: >= 60% less peak memory", value=round(red, 3), ok=red >= 0.6))
    for case in ("swin_stem", "swin_stem_bf16x"):
        e, t = row(case, "eager"), row(case, "triton")
        if e and t:
            out.append(dict(target=f"{case} (10 bands, 224 px, B 64, +LN): >= 3x eager", value=round(e["ms"] / t["ms"],
                2), ok=e["ms"] / t["ms"] >= 3))
    e, t = row("vit_stem", "eager"), row("vit_stem", "triton")
    if e and t:
        out.append(dict(target="vit_stem: impl='auto' runs cuDNN here (AUTO_GEMM_STEM off); Triton / cuDNN time",
                        value=round(t["ms"] / e["ms"], 2),
                        ok=True,
                        note="auto is never slower than cuDNN because it picks cuDNN; value > 1 confirms that choice"))
    sf, opt = steps.get("step_straightforward"), steps.get("step_optimised")
    if sf and opt:
        r = opt["images_per_s"] / sf["images_per_s"]
        out.append(dict(target="Swin-B step, 64 images, bf16: optimised >= 1.5x straightforward", value=round(r, 2),
                        ok=r >= 1.5,
                        peak_gpu_gib=dict(straightforward=sf.get("peak_gpu_gib"), optimised=opt.get("peak_gpu_gib"))))
    return out


def cmd_merge(a):
    parts, out = Path(a.parts), Path(a.out)
    load = lambda n: json.loads((parts / n).read_text()) if (parts / n).is_file() else {}  # noqa: E731
    env, kernels, method = load("env.json"), load("kernels.json"), load("method.json")
    steps = {p.stem: json.loads(p.read_text()) for p in parts.glob("step_*.json")}
    log = [json.loads(line)
           for line in (parts / "steps.jsonl").read_text().splitlines()] if (parts / "steps.jsonl").is_file() else []
    tests = junit_summary(out / "kernels_cuda.xml", parts / "tests.jsonl")
    result = dict(dry_run=a.dry_run, **{k: env.get(k) for k in ("device", "capability", "sms", "memory_gib",
                                                                "hbm_copy_tbs")},
                  versions={k: env.get(k) for k in ("python", "torch", "cuda", "triton", "timm", "torchvision", "numpy",
                                                    "sklearn", "rasterio")},
                  kernels_from=env.get("kernels_from"), steps=log, cuda_tests=tests, kernel_bench=kernels,
                  step_bench=steps, method=method,
                  targets=[] if a.dry_run else targets(kernels, steps, env),  # tiny CPU shapes: no target applies
                  wall_seconds=a.wall)
    result["ok"] = all(s["status"] in ("pass",
                                       "skipped") for s in log) and tests["failed"] == 0 and tests["errors"] == 0
    _write(out / "gpu_check.json", result)
    print(summary(result))
    return 0 if result["ok"] else 1


def summary(r: dict) -> str:
    v = r["versions"]
    L = [f"== gpu_check {'(DRY RUN, CPU) ' if r['dry_run'] else ''}on {r['device']} | torch {v['torch']} | triton "
         f"{v['triton']} | "
         f"python {v['python']} | {r['wall_seconds']} s | {'OK' if r['ok'] else 'FAILED'}"]
    L.append("steps: " + ", ".join(f"{s['step']} {s['status']} ({s['seconds']} s)" for s in r["steps"]))
    t = r["cuda_tests"]
    L.append(f"cuda tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped")
    L += [f"  FAILED {c['name']}: {c['message'][:120]}" for c in t["cases"] if c["outcome"] in ("failed", "errors")][:8]
    for row in r["kernel_bench"].get("rows", []):
        mem = "-" if row.get("mem_mib") is None else f"{row['mem_mib']:.0f} MiB"
        L.append(f"  {row['case']:<16}{row['impl']:<8}{row['ms']:>9.3f} ms {row['speedup']:>6.2f}x eager  peak {mem}")
    for k, s in sorted(r["step_bench"].items()):
        g = "" if s.get("peak_gpu_gib") is None else f", peak {s['peak_gpu_gib']:.1f} GiB"
        L.append(f"  {k:<22}{s['images_per_s']:>9.1f} images/s, {s['median_s']:.3f} s/it{g}; fallbacks: "
                 f"{s.get('fallbacks') or 'none'}")
    m = r["method"]
    if m:
        L.append(f"method: {m['steps']} steps in {m['train_seconds']} s ({m['images_per_s']} images/s), loss "
                 f"{m['loss_first_last']}")
        L += [f"  probe {p['encoder']:<24}{p['metric']} {p['mean']:.3f} ± {p['std']:.3f}" for p in m["probes"]]
    L += [f"target {'met ' if x['ok'] else 'MISSED'} {x['target']}: {x['value']}" for x in r["targets"]]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("env", "kernels", "method", "merge"))
    ap.add_argument("--parts", required=True, help="folder of the steps' JSON parts")
    ap.add_argument("--out", default=None, help="merge: the folder that receives gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny settings, torch paths")
    ap.add_argument("--train-seconds", type=float, default=100.0, help="method: pretraining time budget")
    ap.add_argument("--steps", type=int, default=None, help="method: fixed number of steps (default: fit the budget)")
    ap.add_argument("--wall", type=int, default=None, help="merge: the script's wall time so far")
    a = ap.parse_args(argv)
    return dict(env=cmd_env, kernels=cmd_kernels, method=cmd_method, merge=cmd_merge)[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
