#!/usr/bin/env python3
"""Make the git-ignored folder that travels to the GPU machine with the checkout (`carry: [".gpu_pack"]`).

It holds the demo teacher (DINOv2 ViT-S/14, `../shared/weights/dinov2_vits14_imgfocus.safetensors`, 88 MB in fp32)
in half precision (44 MB): the GPU machine cannot fetch it, and the working tree plus carried paths must stay under
64 MiB. `load_optical_teacher` reads it as it reads the fp32 file (tensors are cast into the fp32 model on load).
Usage: python tools/make_gpu_pack.py [--src FILE] [--out DIR]"""
import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "weights" / "dinov2_vits14_imgfocus.safetensors"
TEACHER_NAME = "dinov2_vits14_imgfocus_fp16.safetensors"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def make_fp16_teacher(src: Path, dst: Path) -> Path:
    "Every floating tensor of `src` as fp16 (others unchanged), its metadata kept plus the source's sha256."
    from safetensors import safe_open
    from safetensors.torch import save_file
    if not src.is_file():
        raise FileNotFoundError(f"{src}: teacher weights not found (pass --src)")
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys()}
    big = [k for k, v in sd.items() if v.is_floating_point() and v.abs().max() > 65504]
    if big:
        raise ValueError(f"{src}: tensors {big[:5]} exceed the fp16 range; keep this teacher in fp32")
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    meta.update(dtype="float16 (converted by tools/make_gpu_pack.py)", fp32_source_sha256=sha256(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dst), metadata=meta)
    return dst


def travel_bytes(pack: Path) -> int:
    "What a device call sends: tracked and untracked-not-ignored files of the checkout, plus the pack."
    import subprocess
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    files = [ROOT / n.decode() for n in names if n]
    return sum(f.stat().st_size for f in files if f.is_file()) + sum(f.stat().st_size for f in pack.glob("*"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="fp32 teacher weights (safetensors)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu_pack", help="the pack folder (git-ignored)")
    a = ap.parse_args(argv)
    dst = make_fp16_teacher(a.src, a.out / TEACHER_NAME)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB) from {a.src}")
    try:
        n = travel_bytes(a.out)
    except Exception as e:  # not a git checkout: nothing to estimate
        print(f"travel size not estimated ({e})")
        return 0
    limit = 64 * 2**20
    print(f"checkout + pack: {n / 2**20:.1f} MiB of the {limit / 2**20:.0f} MiB a device call may carry")
    if n > limit:
        print("too large for a device call: carry less, or leave untracked files out")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
