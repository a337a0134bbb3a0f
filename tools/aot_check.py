#!/usr/bin/env python3
"""Hopper compile check with no GPU: every deo_kit kernel, compiled for sm_90 by the installed Triton's real backend.

The launchers run on `meta` tensors with their kernels swapped for recorders, so the block sizes, warps, stages and
argument dtypes checked here are exactly the ones the code would launch, for the shapes the presets and benchmarks use
(Swin-T/B stems D 96/128, ViT stems D 384/768 with and without LayerNorm, C 3/10/13, patch 4/8/14/16,
K 4,096-262,144, fp32/bf16/fp16 inputs). Launches that give the same compiled kernel (same dtypes, constants, 16-byte
divisibility of the integer arguments, options) are compiled once: `triton.compile` with `GPUTarget("cuda", 90, 32)`
and the bundled ptxas; registers and spills come from the bundled cuobjdump.

Fails (exit 1) on a compile error, a spill in a hot kernel (the training / benchmark paths: TF32 stems up to D 128 and
the ViT pos-embed stems, every DINO-loss kernel), or shared memory above the 227 KB an H100 block may use.
Usage: python tools/aot_check.py [--jobs 2] [--json FILE] [--quick]"""
import os

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, never the interpreter (set before triton is imported)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on an H100 / H200
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int32": "i32", "int64": "i64", "uint16": "u16",
          "bool": "i1", "uint8": "u8", "int16": "i16"}


def _import_kernels():
    "deo_kit.kernels from the installed package, else from the checkout (the same mapping as setup.py)."
    sys.path.insert(0, str(ROOT / "tools" / "pyshim"))
    import sitecustomize  # noqa: F401  (registers the checkout finder if deo_kit.kernels is not installed)
    sys.path.insert(0, str(ROOT))
    import deo_kit.kernels.dino_loss as kd
    import deo_kit.kernels.ms_patch_embed as kp
    return kd, kp


class _Recorder:
    "Stands in for a @triton.jit kernel: `kernel[grid](*args, **kw)` records the launch instead of running it."

    def __init__(self, fn, log, label):
        self.fn, self.log, self.label = fn, log, label

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.log.append((self.fn, args, kw, self.label[0]))
        return launch


def _arg_type(v):
    import torch
    if isinstance(v, torch.Tensor):
        return "*" + DTYPES[str(v.dtype)[6:]], True  # allocations are 256-byte aligned
    if isinstance(v, bool):
        return "i1", False
    if isinstance(v, int):
        return ("i32" if -2**31 <= v < 2**31 else "i64"), v % 16 == 0
    if isinstance(v, float):
        return "fp32", False
    raise TypeError(f"unexpected kernel argument {type(v)}")


def spec_of(fn, args, kw):
    "(signature, constexprs, attrs, options) of one recorded launch, as Triton's JIT would specialise it."
    names = fn.arg_names
    sig, const, attrs = {}, {}, {}
    opts = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
    for i, name in enumerate(names):
        if i < len(args):
            ty, div = _arg_type(args[i])
            sig[name] = ty
            if div:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "constexpr"
            const[name] = kw[name]
    return sig, const, attrs, opts


def record(quick=False):
    "Run every launcher over the preset / benchmark shapes on meta tensors; returns [(label, hot, fn, args, kw)]."
    import torch
    kd, kp = _import_kernels()
    log, label = [], ["?"]
    kernels = {m: [n for n in dir(m) if n.startswith("_") and n.endswith("_kernel")] for m in (kd, kp)}
    saved = {(m, n): getattr(m, n) for m, names in kernels.items() for n in names}
    for (m, n), fn in saved.items():
        setattr(m, n, _Recorder(fn, log, label))
    precision = kp._precision
    meta = torch.device("meta")
    out = []
    try:
        for lab, hot, run in _cases(kd, kp, meta, quick):
            label[0] = lab
            start = len(log)
            run()
            out += [(lab, hot, fn, args, kw) for fn, args, kw, _ in log[start:]]
    finally:
        for (m, n), fn in saved.items():
            setattr(m, n, fn)
        kp._precision = precision
    return out


def _cases(kd, kp, meta, quick):
    "(label, hot, thunk) per launcher call: DINO loss over K and dtypes, stems over the preset / benchmark shapes."
    import torch
    f32, bf16, f16, u16 = torch.float32, torch.bfloat16, torch.float16, torch.uint16
    Ks = (65536,) if quick else (4096, 65536, 262144)
    for K in Ks:
        for dt in (f32, bf16, f16):
            for centering in ("center", "sinkhorn_knopp"):
                def dino(K=K, dt=dt, centering=centering):
                    S, T, B = 12, 2, 64
                    s, t = torch.empty(S, B, K, device=meta, dtype=dt), torch.empty(T, B, K, device=meta, dtype=dt)
                    c = None if centering != "center" else torch.empty(K, device=meta)
                    keep = torch.ones(B, device=meta, dtype=torch.bool)
                    row_w = torch.empty(B, device=meta)
                    _, g = kd.dino_loss_fwd(s, t, c, row_w, 0.1, 0.04, centering != "center", keep, True)
                    kd.dino_loss_fwd(s, t, c, row_w, 0.1, 0.04, centering != "center", keep, False)  # evaluation
                    kd.scale_grad_(g, torch.empty((), device=meta), dt)  # backward, as DINOLossFn calls it
                yield f"dino K{K} {str(dt)[6:]} {centering}", True, dino
    # stems: (name, B, C, px, p, D, head); the training / benchmark stems are hot
    stems = [("swinT", 64, 10, 224, 4, 96, "ln", True), ("swinB", 64, 10, 224, 4, 128, "ln", True),
             ("swinB_local96", 64, 10, 96, 4, 128, "ln", True), ("swinB_C3", 64, 3, 224, 4, 128, "ln", True),
             ("swinB_C13", 64, 13, 224, 4, 128, "ln", True),
             ("vitS14", 64, 13, 224, 14, 384, "pos", True), ("vitB16", 64, 13, 224, 16, 768, "pos", True),
             ("vitB8", 64, 10, 224, 8, 768, "pos", True), ("vitB16_C3", 64, 3, 224, 16, 768, "pos", True),
             ("ln384_p14", 64, 13, 224, 14, 384, "ln", False), ("ln768_p16", 64, 13, 224, 16, 768, "ln", False)]
    if quick:
        stems = [s for s in stems if s[0] in ("swinB", "vitB16", "ln768_p16")]
    for name, B, C, px, p, D, head, hot in stems:
        # input dtypes on the training stem and the benchmark's ViT stem, fp32 elsewhere (the load cast is all that
        # changes); IEEE where the CUDA tests use it; half-precision parameters on the Swin stem
        # (fp16 inputs load and cast exactly as bf16 ones; fp16 logits are compiled in the DINO kernels)
        variants = [(f32, f32, "tf32")]
        if name == "swinB":
            variants += [(bf16, f32, "tf32"), (u16, f32, "tf32"), (f32, f32, "ieee"), (f32, bf16, "tf32")]
        if name == "vitB16":
            variants += [(bf16, f32, "tf32")]
        if name == "ln768_p16":
            variants += [(f32, f32, "ieee")]
        for xdt, wdt, prec in variants:
            def stem(B=B, C=C, px=px, p=p, D=D, head=head, xdt=xdt, wdt=wdt, prec=prec):
                kp._precision = lambda x: prec
                x = torch.empty(B, C, px, px, device=meta, dtype=xdt)
                w = torch.empty(D, C, p, p, device=meta, dtype=wdt)
                b = torch.empty(D, device=meta, dtype=wdt)
                ln = head == "ln"
                lnw = torch.empty(D, device=meta, dtype=wdt) if ln else None
                pos = torch.empty(1, (px // p) ** 2, D, device=meta, dtype=wdt) if head == "pos" else None
                mean = torch.empty(C, device=meta) if xdt == u16 else None
                geo = kp._Geometry(x, w, mean, mean, p, None, ln)
                out, mu, rsig = kp.ms_patch_embed_fwd(x, w, b, geo, lnw, lnw, pos, 1e-5)
                dz = kp.ms_patch_embed_bwd_ln(x, w, b, geo, lnw, mu, rsig, out)[0] if ln else out.float()
                kp.ms_patch_embed_bwd_dw(x, geo, dz)
            # the IEEE path is the tests' (TF32 off): reported, but a spill there does not fail the check
            yield f"{name} x {str(xdt)[6:]} w {str(wdt)[6:]} {prec}", hot and prec == "tf32", stem


def _compile_one(job):
    "Worker: compile one spec for sm_90, return its resources (or the error)."
    mod, name, sig, const, attrs, opts = job
    os.environ.pop("TRITON_INTERPRET", None)
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    _import_kernels()
    fn = getattr(importlib.import_module(mod), name)
    t0 = time.time()
    try:
        k = triton.compile(ASTSource(fn, sig, const, {tuple(a): v for a, v in attrs}),
                           target=GPUTarget("cuda", 90, 32), options=opts)
    except Exception as e:  # a compile error is a result, reported per kernel
        return dict(error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300],
                    seconds=time.time() - t0)
    res = dict(shared=int(k.metadata.shared), seconds=time.time() - t0)
    res.update(_res_usage(k.asm["cubin"]))
    ptx = k.asm.get("ptx", "")
    res["wgmma"] = "wgmma" in ptx
    return res


def _res_usage(cubin: bytes) -> dict:
    "REG / LOCAL (spill) / STACK of the cubin, from Triton's bundled cuobjdump."
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        txt = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", txt)
    if not m:
        return dict(regs=None, spill=None)
    return dict(regs=int(m[1]), stack=int(m[2]), spill=int(m[4]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel compiles")
    ap.add_argument("--json", default=None, help="write the table as JSON")
    ap.add_argument("--quick", action="store_true", help="one K, three stems (a smoke run)")
    ap.add_argument("--cache", default=None,
                    help="Triton cache folder (default: a fresh temporary one, so every kernel "
                    "is really compiled and nothing is left behind)")
    a = ap.parse_args(argv)
    t0 = time.time()
    tmp = None
    if a.cache:
        os.environ["TRITON_CACHE_DIR"] = a.cache
    else:
        tmp = tempfile.TemporaryDirectory(prefix="aot_check_")
        os.environ["TRITON_CACHE_DIR"] = tmp.name
    import triton
    launches = record(a.quick)
    specs = {}
    for lab, hot, fn, args, kw in launches:
        sig, const, attrs, opts = spec_of(fn, args, kw)
        key = (fn.__name__, tuple(sig.items()), tuple(sorted(const.items())), tuple(attrs), tuple(sorted(opts.items())))
        entry = specs.setdefault(key, dict(kernel=fn.__name__, module=fn.__module__, labels=[], hot=False,
                                           job=(fn.__module__, fn.__name__, sig, const, [(list(k),
                                               v) for k, v in attrs.items()], opts),
                                           const=const, opts=opts))
        entry["labels"].append(lab)
        entry["hot"] |= hot
    print(f"aot_check: triton {triton.__version__}, target sm_90 (GPUTarget('cuda', 90, 32)); {len(launches)} launches "
          f"-> {len(specs)} distinct kernels; compiling with {a.jobs} jobs", flush=True)
    entries = list(specs.values())
    pool = ProcessPoolExecutor(a.jobs) if a.jobs > 1 else None
    with pool or contextlib.nullcontext():
        results = list(pool.map(_compile_one, [e["job"] for e in entries]) if pool else map(_compile_one,
            [e["job"] for e in entries]))
    rows, failures = [], []
    for e, r in zip(entries, results):
        row = dict(kernel=e["kernel"], hot=e["hot"], constants=e["const"], options=e["opts"], used_by=e["labels"], **r)
        if "error" in r:
            failures.append(f"{e['kernel']} ({e['labels'][0]}): compile error: {r['error']}")
        else:
            if r["shared"] > SMEM_LIMIT:
                failures.append(f"{e['kernel']} ({e['labels'][0]}): {r['shared']} B shared memory > {SMEM_LIMIT}")
            if e["hot"] and (r.get("spill") or 0) > 0:
                failures.append(f"{e['kernel']} ({e['labels'][0]}): {r['spill']} B register spill in a hot kernel")
        rows.append(row)
    _print_table(rows)
    status = "FAIL" if failures else "OK"
    for f in failures:
        print("FAIL:", f)
    print(f"aot_check {status}: {len(rows)} kernels compiled for sm_90 in {time.time() - t0:.0f} s "
          f"(triton {triton.__version__}); failures: {len(failures)}")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(triton=triton.__version__, target="sm_90", ok=not failures,
                                                failures=failures, kernels=rows), indent=1, default=str))
    return 1 if failures else 0


def _short(c: dict) -> str:
    keep = {k: v for k, v in c.items() if k.startswith(("BLOCK", "HAS_", "P", "PRECISION", "IN_PLACE"))}
    return " ".join(f"{k.replace('BLOCK_', 'B').replace('HAS_', '')}={int(v) if isinstance(v, bool) else v}"
                    for k, v in keep.items())


def _print_table(rows):
    print(f"{'kernel':<32}{'hot':>4}{'warps':>6}{'stg':>4}{'smem KB':>9}{'regs':>6}{'spill B':>8}{'s':>5}  constants | "
          "first user (+more)")
    for r in sorted(rows, key=lambda r: (r["kernel"], -(r.get("shared") or 0))):
        o = r["options"]
        if "error" in r:
            res = f"{'-':>9}{'-':>6}{'-':>8}  ERROR {r['error'][:80]}"
        else:
            regs = "?" if r.get("regs") is None else r["regs"]
            spill = "?" if r.get("spill") is None else r["spill"]
            res = f"{r['shared'] / 1024:>9.1f}{regs:>6}{spill:>8}{r['seconds']:>5.1f}"
        more = f" (+{len(r['used_by']) - 1})" if len(r["used_by"]) > 1 else ""
        print(f"{r['kernel']:<32}{'y' if r['hot'] else '':>4}{o.get('num_warps', 4):>6}"
              f"{o.get('num_stages', '-'):>4}{res}  {_short(r['constants'])} | {r['used_by'][0]}{more}")


if __name__ == "__main__":
    sys.exit(main())
