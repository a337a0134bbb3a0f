"""Helpers shared by the kernel files: interpreter detection, block sizes, output allocation, input checks,
device guards, distributed reductions."""
import contextlib
import os

import torch
import torch.distributed as dist
import triton

LOG2E = 1.4426950408889634  # kernels work in base 2 (exp2 is the fast hardware exp)
LN2 = 0.6931471805599453
NEG = -1e30  # finite "minus infinity": keeps online max/sum free of inf - inf


def interpreting() -> bool:
    "True when Triton runs kernels in its CPU interpreter."
    return os.environ.get("TRITON_INTERPRET") == "1"


def poison() -> bool:
    ("NaN-fill kernel outputs before launch (an unwritten element then shows): `$DEO_KIT_POISON`, else in the "
     "interpreter.")
    env = os.environ.get("DEO_KIT_POISON")
    return env == "1" if env in ("0", "1") else interpreting()


def new_out(shape, device, dtype=torch.float32) -> torch.Tensor:
    "Output buffer: `torch.empty` on the fast path (no extra pass), NaN-filled when `poison()`."
    if poison():
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def device_guard(t: torch.Tensor):
    "Launch on `t`'s GPU even when another one is current (Triton launches on the current device)."
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_kernel_tensors(named: dict, device: torch.device, dtypes: dict | None = None):
    """Clear errors for what the kernels cannot take: a tensor on another device than the first one (the error names
    it), or a dtype outside `dtypes[name]`."""
    for name, t in named.items():
        if t is None:
            continue
        if t.device != device:
            raise ValueError(f"{name} {tuple(t.shape)} is on {t.device}, but the Triton kernel runs on {device}: "
                             "move every input to one device")
        ok = (dtypes or {}).get(name)
        if ok is not None and t.dtype not in ok:
            raise ValueError(f"{name} dtype {t.dtype} is not supported by the Triton kernel (use one of "
                             f"{', '.join(str(d).replace('torch.', '') for d in ok)})")


def block_size(n: int, cap: int, floor: int = 16) -> int:
    "Power-of-two block covering `n`, between `floor` and `cap`."
    return max(floor, min(cap, triton.next_power_of_2(n)))


def num_warps(block: int) -> int:
    "Warps for a 1-D block of `block` fp32 elements (ignored by the interpreter)."
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    "In-place all-reduce when a process group is up."
    if dist_on():
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x


def all_logsumexp2_(x: torch.Tensor) -> torch.Tensor:
    "Combine per-rank base-2 log-sum-exps elementwise across ranks (max, then sum of shifted exp2)."
    if not dist_on():
        return x
    m = all_reduce_(x.clone(), "max")
    s = all_reduce_(torch.exp2(x - m))
    return m + torch.log2(s)


def check_cuda_or_interpret(*tensors):
    "Kernels run on CUDA tensors, or on CPU tensors only in the interpreter."
    for t in tensors:
        if t is not None and not (t.is_cuda or interpreting()):
            raise RuntimeError(f"Triton kernels need CUDA tensors (got {t.device}, shape {tuple(t.shape)}); "
                               "set TRITON_INTERPRET=1 before importing triton to run them on CPU")
