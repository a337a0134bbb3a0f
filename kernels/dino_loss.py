"""Fused DINO loss: centred (or Sinkhorn-Knopp) teacher softmax + student cross-entropy over cross-view pairs.

The reference that defines the op is `deo_kit.loss.dino.dino_loss_ref`. Here K is streamed in blocks with an online
max/sum (base 2), so no S x B x K or per-pair intermediate is ever built; the only K-sized outputs are the gradient
(written in the forward pass, Liger style, only when the student needs one) and K-vectors for the centre/SK.

Kernels:
- `_dino_row_lse_fwd_kernel`: per row, log2-sum-exp2 of (x - c) * scale.
- `_dino_sk_col_fwd_kernel`: per (K block, row split), column log2-sum-exp2 of x * scale + log_c over that split's
  rows (SK half-step); the splits are merged in torch (a (splits, K) array).
- `_dino_loss_fwd_kernel`: per (image, K chunk), teacher probabilities once, then every student view's
  cross-entropy contribution and gradient.
- `_dino_grad_scale_kernel`: backward's `grad * dloss` in fp32 (fp16 cannot hold GradScaler's 65,536), read from a
  device pointer (no host sync); in place and skipped when dloss is exactly 1. fp16 logits keep their gradient in fp32
  until then: unscaled, most of its entries are below fp16's smallest subnormal, which is what GradScaler is for.
"""
import math

import torch
import triton
import triton.language as tl

from ._utils import (LN2, LOG2E, NEG, all_logsumexp2_, all_reduce_, block_size, check_cuda_or_interpret,
                     check_kernel_tensors, device_guard, interpreting, new_out, num_warps)

MAX_BLOCK_K = 4096  # tests lower it to force the multi-block path
BLOCKS_PER_PROG = None  # K blocks per loss program; None: sized for the GPU (tests set it to force several chunks)
SK_ITERATIONS = 3
SK_BLOCK_K = 512  # Sinkhorn-Knopp column kernel: K block per program
SK_ROW_SPLITS = None  # row splits of the SK column kernel; None: enough programs to fill the GPU (2 in the interpreter)
SM_TARGET = 528  # programs to aim for: 4 per SM of an H100 (132 SMs)
GRAD_BLOCK = 4096  # elements per program of the backward scale kernel
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_K = 2**31 - 2**16  # int32 column offsets inside the kernels
_NEG = tl.constexpr(NEG)  # jit code may only read constexpr globals
_LN2 = tl.constexpr(LN2)


@triton.jit
def _dino_row_lse_fwd_kernel(X, C, LSE, K, scale, HAS_CENTER: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = X + row * K
    offs = tl.arange(0, BLOCK_K)
    m = tl.full([BLOCK_K], _NEG, tl.float32)  # elementwise online max/sum, reduced once at the end
    acc = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs
        mask = k < K
        x = tl.load(base + k, mask=mask, other=0.0).to(tl.float32)  # upcast first: bf16 math breaks the interpreter
        if HAS_CENTER:
            x = x - tl.load(C + k, mask=mask, other=0.0).to(tl.float32)
        v = tl.where(mask, x * scale, _NEG)
        m_new = tl.maximum(m, v)
        acc = acc * tl.exp2(m - m_new) + tl.exp2(v - m_new)
        m = m_new
    mx = tl.max(m, 0)
    tl.store(LSE + row, mx + tl.log2(tl.sum(acc * tl.exp2(m - mx), 0)))


@triton.jit
def _dino_sk_col_fwd_kernel(X, LOGC, OUT, N, K, rows_per_split, scale, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    zero64 = pid.to(tl.int64) * 0
    k = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = k < K
    m = tl.full([BLOCK_K], _NEG, tl.float32)
    acc = tl.zeros([BLOCK_K], tl.float32)
    n0 = split * rows_per_split
    for i in range(0, rows_per_split):
        n = tl.minimum(n0 + i, N - 1)  # the last split's tail rereads row N-1 with log_c = NEG (no contribution)
        x = tl.load(X + (n + zero64) * K + k, mask=mask, other=0.0).to(tl.float32)
        lc = tl.where(n0 + i < N, tl.load(LOGC + n), _NEG)  # dropped rows carry log_c = NEG
        lc = tl.zeros([BLOCK_K], tl.float32) + lc
        v = tl.where(mask & (lc > _NEG * 0.5), x * scale + lc, _NEG)  # and may hold garbage (NaN) logits
        m_new = tl.maximum(m, v)
        acc = acc * tl.exp2(m - m_new) + tl.exp2(v - m_new)
        m = m_new
    tl.store(OUT + split.to(tl.int64) * K + k, m + tl.log2(acc), mask=mask)


@triton.jit
def _dino_loss_fwd_kernel(S_ptr, T_ptr, C, LSE_S, LSE_T, ROW_W, GRAD, PART,
                          S, T, B, K, scale_s, scale_t, inv_temp_s, n_chunks, blocks_per_prog,
                          HAS_CENTER: tl.constexpr, HAS_GRAD: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    w = tl.load(ROW_W + b)  # 1 / (pairs * kept rows), 0 for a dropped row
    keep = w > 0
    offs = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_K], tl.float32)
    for i in range(0, blocks_per_prog):  # a runtime bound: a new batch size compiles nothing new
        k = (j * blocks_per_prog + i) * BLOCK_K + offs
        mask = k < K
        c = tl.zeros([BLOCK_K], tl.float32)
        if HAS_CENTER:
            c = tl.load(C + k, mask=mask, other=0.0).to(tl.float32)
        psum = tl.zeros([BLOCK_K], tl.float32)  # teacher probabilities summed over views, computed once per image
        for t in range(0, T):
            x = tl.load(T_ptr + (t * B + b) * K + k, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp2((x - c) * scale_t - tl.load(LSE_T + t * B + b))
            psum += tl.where(mask, p, 0.0)
        for v in range(0, S):
            own = v < T  # teacher view v is student view v: that pair is skipped
            xt = tl.load(T_ptr + (v * B + b) * K + k, mask=mask & own, other=0.0).to(tl.float32)
            lse_t = tl.load(LSE_T + v * B + b, mask=own, other=-_NEG)  # huge: exp2 of a skipped view is 0, not inf
            q = psum - tl.where(mask & own, tl.exp2((xt - c) * scale_t - lse_t), 0.0)
            xs = tl.load(S_ptr + (v * B + b) * K + k, mask=mask, other=0.0).to(tl.float32)
            z = xs * scale_s - tl.load(LSE_S + v * B + b)  # log2 softmax
            acc += tl.where(mask, -q * z, 0.0)
            if HAS_GRAD:
                n_pairs = T - own.to(tl.float32)
                g = tl.where(keep, w * (n_pairs * tl.exp2(z) - q) * inv_temp_s, 0.0)
                tl.store(GRAD + (v * B + b) * K + k, g.to(GRAD.dtype.element_ty), mask=mask)
    total = tl.where(keep, tl.sum(acc, 0) * _LN2 * w, 0.0)
    tl.store(PART + b * n_chunks + j, total)


@triton.jit
def _dino_grad_scale_kernel(G, OUT, DLOSS, n, IN_PLACE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    d = tl.load(DLOSS)
    if IN_PLACE:
        mask = offs < tl.where(d != 1.0, n, 0)  # scale 1: every access masked off, so no pass over the gradient
    else:
        mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (g * d).to(OUT.dtype.element_ty), mask=mask)


def row_lse(x: torch.Tensor, center, temp: float) -> torch.Tensor:
    "Base-2 log-sum-exp2 per row of `(x - center) * log2(e) / temp`; x is (rows, K)."
    rows, K = x.shape
    out = new_out((rows,), x.device)
    bk = block_size(K, MAX_BLOCK_K)
    _dino_row_lse_fwd_kernel[(rows,)](x, center if center is not None else x, out, K, LOG2E / temp,
                                      HAS_CENTER=center is not None, BLOCK_K=bk, num_warps=num_warps(bk))
    return out


def sinkhorn_knopp_center(teacher: torch.Tensor, keep: torch.Tensor, teacher_temp: float,
                          n_iterations: int = SK_ITERATIONS):
    """Log-domain Sinkhorn-Knopp over the kept rows of `teacher` (N, K), all ranks.

    Returns an effective centre c (K,) such that the SK targets are softmax((t - c) / teacher_temp), and the teacher
    rows' base-2 LSE under it. Same iteration as `deo_kit.loss.dino.sinkhorn_knopp_log_r`."""
    N, K = teacher.shape
    scale = LOG2E / teacher_temp
    n_total = all_reduce_(keep.to(torch.float32).sum())
    log_c = torch.zeros(N, device=teacher.device, dtype=torch.float32)
    drop = torch.full_like(log_c, NEG)
    bk, splits = sk_grid(N, K)
    per = triton.cdiv(N, splits)
    for _ in range(n_iterations):
        part = new_out((splits, K), teacher.device)
        _dino_sk_col_fwd_kernel[(triton.cdiv(K, bk), splits)](teacher, torch.where(keep, log_c, drop), part, N, K, per,
                                                              scale, BLOCK_K=bk, num_warps=num_warps(bk))
        col = _merge_log2(part) if splits > 1 else part[0]
        log_r = -math.log2(K) - all_logsumexp2_(col)  # prototypes sum to 1/K
        center = -log_r / scale
        lse = row_lse(teacher, center, teacher_temp)
        log_c = -torch.log2(n_total.clamp_min(1)) - lse  # samples sum to 1/N
    return center, lse


def sk_grid(N: int, K: int) -> tuple[int, int]:
    """(K block, row splits) of the SK column kernel: K / 512 blocks alone give only 128 programs at K = 65,536, each
    walking all N rows; splitting the rows fills the GPU (~4 programs per SM) at the cost of a (splits, K) merge."""
    bk = block_size(K, min(MAX_BLOCK_K, SK_BLOCK_K))
    if SK_ROW_SPLITS is not None:
        return bk, max(1, min(SK_ROW_SPLITS, N))
    if interpreting():
        return bk, min(2, N)  # keep the split path under test on CPU
    return bk, max(1, min(triton.cdiv(SM_TARGET, triton.cdiv(K, bk)), triton.cdiv(N, 8), 64))


def _merge_log2(part: torch.Tensor) -> torch.Tensor:
    "Base-2 log-sum-exp2 over dim 0 of (splits, K) partials."
    m = part.amax(0)
    return m + torch.log2(torch.exp2(part - m).sum(0))


def loss_chunks(K: int, B: int) -> tuple[int, int, int]:
    "(BLOCK_K, K blocks per program, chunks) of the loss kernel: about 1024 programs over (image, K chunk)."
    bk = block_size(K, min(MAX_BLOCK_K, 2048))
    n_blocks = triton.cdiv(K, bk)
    per_prog = BLOCKS_PER_PROG or (n_blocks if interpreting() else max(1, n_blocks * B // 1024))
    return bk, per_prog, triton.cdiv(n_blocks, per_prog)


def dino_loss_fwd(student, teacher, center, row_w, student_temp, teacher_temp, sinkhorn, keep, need_grad):
    "Launch the kernels; returns (loss, grad or None). `row_w` (B,) fp32 holds 1/(pairs*kept) or 0."
    S, B, K = student.shape
    T = teacher.shape[0]
    t2 = teacher.view(T * B, K)
    if sinkhorn:
        center, lse_t = sinkhorn_knopp_center(t2, keep.repeat(T), teacher_temp)
    else:
        lse_t = row_lse(t2, center, teacher_temp)
    lse_s = row_lse(student.view(S * B, K), None, student_temp)
    bk, per_prog, n_chunks = loss_chunks(K, B)
    part = new_out((B, n_chunks), student.device)
    grad = new_out(student.shape, student.device, grad_dtype(student.dtype)) if need_grad else None
    _dino_loss_fwd_kernel[(B, n_chunks)](
        student, teacher, center if center is not None else lse_t, lse_s, lse_t, row_w,
        grad if need_grad else part, part, S, T, B, K, LOG2E / student_temp, LOG2E / teacher_temp,
        1.0 / student_temp, n_chunks, per_prog, HAS_CENTER=center is not None, HAS_GRAD=need_grad,
        BLOCK_K=bk, num_warps=num_warps(bk))
    return part.sum(), grad


def grad_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    "The forward pass's gradient buffer: the logits' dtype, but fp32 for fp16 (its range underflows before scaling)."
    return torch.float32 if logits_dtype == torch.float16 else logits_dtype


def scale_grad_(grad: torch.Tensor, dloss: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`grad * dloss` computed in fp32 and cast to `out_dtype` (default grad's): in place, with no memory traffic when
    dloss == 1, if the dtypes agree. dloss is read on the device (no host sync)."""
    d = dloss.detach().to(device=grad.device, dtype=torch.float32).reshape(1)
    out = grad if out_dtype in (None, grad.dtype) else torch.empty_like(grad, dtype=out_dtype)
    n = grad.numel()
    with device_guard(grad):
        _dino_grad_scale_kernel[(triton.cdiv(n, GRAD_BLOCK),)](grad, out, d, n, IN_PLACE=out is grad, BLOCK=GRAD_BLOCK,
                                                              num_warps=8)
    return out


class DINOLossFn(torch.autograd.Function):
    "Loss in forward; the gradient w.r.t. the student logits is computed there too and scaled in backward."

    @staticmethod
    def forward(ctx, student, teacher, center, row_w, keep, student_temp, teacher_temp, sinkhorn):
        loss, grad = dino_loss_fwd(student, teacher, center, row_w, student_temp, teacher_temp, sinkhorn, keep, True)
        ctx.grad, ctx.dtype = grad, student.dtype
        return loss

    @staticmethod
    def backward(ctx, dloss):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("dino_loss (Triton) supports one backward pass per forward")
        ctx.grad = None  # scaled in place below; a second backward would see wrong values
        return scale_grad_(grad, dloss, ctx.dtype), None, None, None, None, None, None, None


def unsupported_reason(student_logits, teacher_logits) -> str | None:
    "Why the kernels cannot take these logits (dtype, size), or None; `impl='auto'` then falls back to torch."
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if t.dtype not in LOGIT_DTYPES:
            return (f"{name} dtype {t.dtype} is not supported by the Triton kernel "
                    f"(use one of {', '.join(str(d)[6:] for d in LOGIT_DTYPES)})")
    if student_logits.shape[-1] > MAX_K:
        return (f"student_logits {tuple(student_logits.shape)}: K = {student_logits.shape[-1]} is over the kernel's "
                f"limit {MAX_K}")
    return None


@torch.compiler.disable  # launches and a Python autograd.Function: keep them out of dynamo graphs
def dino_loss_triton(student_logits, teacher_logits, center, *, student_temp, teacher_temp, centering="center",
                     row_mask=None):
    """Fused DINO loss (scalar). Inputs are validated by `deo_kit.loss.dino.dino_loss`; the centre update lives
    there too (a plain reduction shared with the reference). Non-contiguous inputs are copied here."""
    check_cuda_or_interpret(student_logits, teacher_logits, center)
    reason = unsupported_reason(student_logits, teacher_logits)
    if reason:
        raise ValueError(reason)
    check_kernel_tensors({"student_logits": student_logits, "teacher_logits": teacher_logits, "center": center,
                          "row_mask": row_mask}, student_logits.device)
    with device_guard(student_logits):
        return _dino_loss_triton(student_logits.contiguous(), teacher_logits.contiguous(),
                                 None if center is None else center.contiguous(), student_temp, teacher_temp,
                                 centering, row_mask)


def _dino_loss_triton(student_logits, teacher_logits, center, student_temp, teacher_temp, centering, row_mask):
    S, B, K = student_logits.shape
    T = teacher_logits.shape[0]
    dev = student_logits.device
    keep = torch.ones(B, device=dev, dtype=torch.bool) if row_mask is None else row_mask
    keep_f = keep.to(torch.float32)
    row_w = keep_f / (keep_f.sum().clamp_min(1) * (T * S - T))  # device-side: no host sync
    sinkhorn = centering == "sinkhorn_knopp"
    c = None if sinkhorn else center
    teacher = teacher_logits.detach()
    if student_logits.requires_grad and torch.is_grad_enabled():
        return DINOLossFn.apply(student_logits, teacher, c, row_w, keep, student_temp, teacher_temp, sinkhorn)
    return dino_loss_fwd(student_logits, teacher, c, row_w, student_temp, teacher_temp, sinkhorn, keep, False)[0]
