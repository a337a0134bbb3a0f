"""Fused multispectral patch embedding: per-band normalisation + band gather + patchify + GEMM + bias, with a LayerNorm
epilogue and NHWC store (Swin stem) or a position-embedding add (ViT stem).

The reference that defines the op is `deo_kit.layers.patch_embed.ms_patch_embed_ref` (normalise, gather,
Conv2d(stride=p), LayerNorm / + pos-embed). Pixels are read once, straight from the raw (uint16/fp32/bf16) tile: the
im2col gather and the normalisation happen in the GEMM's operand load.

Kernels:
- `_ms_patch_embed_fwd_kernel`: (M = B*h*w rows) x (D) tiles; LayerNorm needs the whole D row in one tile.
- `_ms_patch_embed_bwd_kernel`: recomputes the pre-LayerNorm rows, writes dZ and per-tile partial sums for the
  bias and LayerNorm gradients.
- `_ms_patch_embed_bwd_dw_kernel`: dW = dZ^T @ patches, split over M into partial sums (deterministic).
"""
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from ._utils import (block_size, check_cuda_or_interpret, check_kernel_tensors, device_guard, interpreting, new_out)

MAX_BLOCK_M = 64  # tests lower these to force several tiles
MAX_BLOCK_N = 128
MAX_BLOCK_K = 32
DW_SPLIT = None  # M splits of the weight-gradient reduction; None: sized for the GPU
MAX_LN_D = 1024  # LayerNorm needs a whole row per tile: 1024 fp32 columns x 16 rows (66 KB smem, no spill at D 768)
MAX_ELEMENTS = 2**31 - 1  # token-row offsets (M * D) are int32 inside the kernels
X_DTYPES = (torch.uint16, torch.float32, torch.float16, torch.bfloat16)  # as `deo_kit.layers.patch_embed.INPUT_DTYPES`
PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _load_patches(X, BANDS, MEAN, RSTD, row_base, m_mask, rk, KD, HW, W, P: tl.constexpr):
    "Normalised im2col tile (BLOCK_M, BLOCK_K): column k = (band, r, s) of patch row m; zeros outside."
    k_mask = rk < KD
    cb = rk // (P * P)
    rem = rk - cb * (P * P)
    r = rem // P
    s = rem - r * P
    ch = tl.load(BANDS + cb, mask=k_mask, other=0)
    mu = tl.load(MEAN + cb, mask=k_mask, other=0.0)
    rs = tl.load(RSTD + cb, mask=k_mask, other=0.0)
    off = ch.to(tl.int64) * HW + r * W + s
    msk = m_mask[:, None] & k_mask[None, :]
    a = tl.load(X + row_base[:, None] + off[None, :], mask=msk, other=0).to(tl.float32)  # upcast right after the load
    return tl.where(msk, (a - mu[None, :]) * rs[None, :], 0.0)


@triton.jit
def _patch_gemm(X, BANDS, MEAN, RSTD, Wt, rm, rn, M, D, KD, N, Wp, CHW, HW, W,
                P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
    "Pre-bias projection of the patch rows `rm` onto the output columns `rn`, fp32 (BLOCK_M, BLOCK_N)."
    m_mask = rm < M
    n_mask = rn < D
    bi = rm // N
    pr = rm - bi * N
    hp = pr // Wp
    wp = pr - hp * Wp
    row_base = bi.to(tl.int64) * CHW + (hp * P) * W + wp * P  # top-left pixel of each patch, channel 0
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = _load_patches(X, BANDS, MEAN, RSTD, row_base, m_mask, rk, KD, HW, W, P)
        wt = tl.load(Wt + rn[None, :] * KD + rk[:, None], mask=(rk[:, None] < KD) & n_mask[None, :], other=0.0)
        acc += tl.dot(a, wt.to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def _ms_patch_embed_fwd_kernel(X, BANDS, MEAN, RSTD, Wt, BIAS, LNW, LNB, POS, OUT, MU, RSIG,
                               M, D, KD, N, Wp, CHW, HW, W, eps,
                               P: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LN: tl.constexpr, HAS_POS: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               PRECISION: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < D
    acc = _patch_gemm(X, BANDS, MEAN, RSTD, Wt, rm, rn, M, D, KD, N, Wp, CHW, HW, W,
                      P, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)  # BLOCK_M BLOCK_N
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_LN:  # the tile holds whole rows (BLOCK_N >= D)
        mean = tl.sum(tl.where(n_mask[None, :], acc, 0.0), 1) / D
        diff = tl.where(n_mask[None, :], acc - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 1) / D + eps)
        lw = tl.load(LNW + rn, mask=n_mask, other=0.0).to(tl.float32)
        lb = tl.load(LNB + rn, mask=n_mask, other=0.0).to(tl.float32)
        acc = diff * rstd[:, None] * lw[None, :] + lb[None, :]
        tl.store(MU + rm, mean, mask=m_mask)
        tl.store(RSIG + rm, rstd, mask=m_mask)
    if HAS_POS:
        pr = rm % N
        pos = tl.load(POS + pr[:, None] * D + rn[None, :], mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        acc += pos.to(tl.float32)
    tl.store(OUT + rm[:, None] * D + rn[None, :], acc.to(OUT.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _ms_patch_embed_bwd_kernel(X, BANDS, MEAN, RSTD, Wt, BIAS, LNW, MU, RSIG, DY, DZ, DB_PART, DLNW_PART, DLNB_PART,
                               M, D, KD, N, Wp, CHW, HW, W,
                               P: tl.constexpr, HAS_BIAS: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               PRECISION: tl.constexpr):
    "LayerNorm backward on recomputed rows: dZ, and this tile's column sums for d(bias), d(ln_weight), d(ln_bias)."
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < D
    mask = m_mask[:, None] & n_mask[None, :]
    z = _patch_gemm(X, BANDS, MEAN, RSTD, Wt, rm, rn, M, D, KD, N, Wp, CHW, HW, W,
                    P, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    if HAS_BIAS:
        z += tl.load(BIAS + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    mu = tl.load(MU + rm, mask=m_mask, other=0.0)
    rstd = tl.load(RSIG + rm, mask=m_mask, other=0.0)
    xhat = tl.where(mask, (z - mu[:, None]) * rstd[:, None], 0.0)
    dy = tl.load(DY + rm[:, None] * D + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    lw = tl.load(LNW + rn, mask=n_mask, other=0.0).to(tl.float32)
    g = dy * lw[None, :]
    c1 = tl.sum(g, 1) / D
    c2 = tl.sum(g * xhat, 1) / D
    dz = tl.where(mask, (g - c1[:, None] - xhat * c2[:, None]) * rstd[:, None], 0.0)
    tl.store(DZ + rm[:, None] * D + rn[None, :], dz, mask=mask)
    tl.store(DB_PART + pid * D + rn, tl.sum(dz, 0), mask=n_mask)
    tl.store(DLNW_PART + pid * D + rn, tl.sum(dy * xhat, 0), mask=n_mask)
    tl.store(DLNB_PART + pid * D + rn, tl.sum(dy, 0), mask=n_mask)


@triton.jit
def _ms_patch_embed_bwd_dw_kernel(X, BANDS, MEAN, RSTD, DZ, DW_PART, M, D, KD, N, Wp, CHW, HW, W, m_blocks_per_split,
                                  P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                  BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    "Partial dW[n, k] = sum over this split's rows of dZ[m, n] * patches[m, k]."
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(2)
    n_mask = rn < D
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for i in range(0, m_blocks_per_split):
        rm = (split * m_blocks_per_split + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = rm < M
        bi = rm // N
        pr = rm - bi * N
        hp = pr // Wp
        wp = pr - hp * Wp
        row_base = bi.to(tl.int64) * CHW + (hp * P) * W + wp * P
        a = _load_patches(X, BANDS, MEAN, RSTD, row_base, m_mask, rk, KD, HW, W, P)  # BLOCK_M BLOCK_K
        dzt = tl.load(DZ + rm[None, :] * D + rn[:, None], mask=n_mask[:, None] & m_mask[None, :], other=0.0)
        acc += tl.dot(dzt, a, input_precision=PRECISION)  # BLOCK_N BLOCK_K
    out = DW_PART + split.to(tl.int64) * D * KD + rn[:, None] * KD + rk[None, :]
    tl.store(out, acc, mask=n_mask[:, None] & (rk[None, :] < KD))


def tf32_conv_enabled() -> bool:
    """torch's TF32 setting for convolutions. Reads the fp32_precision API (torch >= 2.9) first: there the legacy
    `cudnn.allow_tf32` getter raises once the new flags are set per backend."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv in ("tf32", "ieee"):
        return conv == "tf32"
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return False


def _precision(x: torch.Tensor) -> str:
    # fp32 GEMMs follow torch's conv setting (TF32 by default on Ampere+), so both paths agree on the same card
    return "tf32" if x.is_cuda and tf32_conv_enabled() else "ieee"


_STATS: OrderedDict = OrderedDict()  # (device, bands, mean, std) -> device tensors: no H2D copy per call
_STATS_MAX = 64


def _tensor_key(t):
    if t is None:
        return None
    try:
        return (t.data_ptr(), t._version, t.dtype, t.shape[0])
    except RuntimeError:  # inference tensors have no version counter: not cached
        return False


def band_stats(device, C: int, bands, mean, std):
    "Cached (bands int32, mean fp32, 1/std fp32) on `device`; a changed mean/std (new storage or in-place edit) misses."
    key = (str(device), C, None if bands is None else tuple(int(b) for b in bands), _tensor_key(mean), _tensor_key(std))
    hit = None if False in key else _STATS.get(key)
    if hit is not None:
        _STATS.move_to_end(key)
        return hit[:3]
    if bands is None:
        idx = torch.arange(C, device=device, dtype=torch.int32)
    else:
        idx = torch.tensor(key[2], dtype=torch.int32).to(device, non_blocking=True)  # once per band list
    n = idx.numel()
    mu = torch.zeros(n, device=device) if mean is None else mean.float()[idx.long()].contiguous()
    rstd = torch.ones(n, device=device) if std is None else (1.0 / std.float()[idx.long()]).contiguous()
    if False not in key:  # holding mean/std keeps their addresses from being reused by another tensor while cached
        _STATS[key] = (idx, mu, rstd, mean, std)
        if len(_STATS) > _STATS_MAX:
            _STATS.popitem(last=False)
    return idx, mu, rstd


class _Geometry:
    "Shapes, gathered per-band statistics and block sizes shared by the forward and backward launchers."

    def __init__(self, x, weight, mean, std, patch_size, bands, ln):
        B, C, H, W = x.shape
        p = patch_size
        self.bands, self.mean, self.rstd = band_stats(x.device, C, bands, mean, std)
        self.B, self.C, self.H, self.W, self.p = B, C, H, W, p
        self.Hp, self.Wp = H // p, W // p
        self.N = self.Hp * self.Wp
        self.M = B * self.N
        self.D = weight.shape[0]
        self.KD = weight[0].numel()
        self.block_m = block_size(self.M, MAX_BLOCK_M)
        self.block_k = block_size(self.KD, MAX_BLOCK_K)
        # LayerNorm needs the whole row in one tile; tl.arange needs a power of two, so mask the columns past D
        self.block_n = max(16, triton.next_power_of_2(self.D)) if ln else block_size(self.D, MAX_BLOCK_N)
        self.num_stages = None
        if ln and self.block_n > 256:
            self.block_m = min(self.block_m, 16)  # whole rows of a wide LayerNorm: keep the tile in registers
        if ln and self.block_n >= 512:
            self.block_k = min(self.block_k, 16)  # and the shared memory of the pipelined operands under 227 KB
            self.num_stages = 2
        self.precision = _precision(x)

    def args(self):
        return (self.M, self.D, self.KD, self.N, self.Wp, self.C * self.H * self.W, self.H * self.W, self.W)


def _stages(geo) -> dict:
    return {} if geo.num_stages is None else {"num_stages": geo.num_stages}


def ms_patch_embed_fwd(x, weight, bias, geo, ln_weight, ln_bias, pos_embed, ln_eps):
    "Launch the forward kernel; returns (out (M, D), mu, rstd) with mu/rstd None without LayerNorm."
    ln = ln_weight is not None
    out = new_out((geo.M, geo.D), x.device, weight.dtype)
    mu = new_out((geo.M,), x.device) if ln else None
    rsig = new_out((geo.M,), x.device) if ln else None
    grid = (triton.cdiv(geo.M, geo.block_m), triton.cdiv(geo.D, geo.block_n))
    dummy = geo.mean
    _ms_patch_embed_fwd_kernel[grid](
        x, geo.bands, geo.mean, geo.rstd, weight, bias if bias is not None else dummy,
        ln_weight if ln else dummy, ln_bias if ln else dummy, pos_embed if pos_embed is not None else dummy,
        out, mu if ln else dummy, rsig if ln else dummy, *geo.args(), ln_eps,
        P=geo.p, HAS_BIAS=bias is not None, HAS_LN=ln, HAS_POS=pos_embed is not None,
        BLOCK_M=geo.block_m, BLOCK_N=geo.block_n, BLOCK_K=geo.block_k, PRECISION=geo.precision,
        num_warps=8 if geo.block_n >= 128 else 4, **_stages(geo))
    return out, mu, rsig


def ms_patch_embed_bwd_ln(x, weight, bias, geo, ln_weight, mu, rsig, dy):
    "dZ (M, D) fp32 and the bias / LayerNorm gradients."
    n_mb = triton.cdiv(geo.M, geo.block_m)
    dz = new_out((geo.M, geo.D), x.device)
    parts = new_out((3, n_mb, geo.D), x.device)
    _ms_patch_embed_bwd_kernel[(n_mb,)](
        x, geo.bands, geo.mean, geo.rstd, weight, bias if bias is not None else geo.mean, ln_weight, mu, rsig, dy,
        dz, parts[0], parts[1], parts[2], *geo.args(),
        P=geo.p, HAS_BIAS=bias is not None, BLOCK_M=geo.block_m, BLOCK_N=geo.block_n, BLOCK_K=geo.block_k,
        PRECISION=geo.precision, num_warps=8, **_stages(geo))
    db, dlnw, dlnb = parts.sum(1)
    return dz, db, dlnw, dlnb


def ms_patch_embed_bwd_dw(x, geo, dz):
    "dW (D, KD) fp32 from dZ (M, D) fp32."
    bn, bk = block_size(geo.D, 64), geo.block_k
    n_mb = triton.cdiv(geo.M, geo.block_m)
    tiles = triton.cdiv(geo.D, bn) * triton.cdiv(geo.KD, bk)
    split = DW_SPLIT or (1 if interpreting() else max(1, min(n_mb, triton.cdiv(1024, tiles))))
    per = triton.cdiv(n_mb, split)
    split = triton.cdiv(n_mb, per)
    part = new_out((split, geo.D, geo.KD), x.device)
    _ms_patch_embed_bwd_dw_kernel[(triton.cdiv(geo.D, bn), triton.cdiv(geo.KD, bk), split)](
        x, geo.bands, geo.mean, geo.rstd, dz, part, *geo.args(), per,
        P=geo.p, BLOCK_M=geo.block_m, BLOCK_N=bn, BLOCK_K=bk, PRECISION=geo.precision, num_warps=4)
    return part.sum(0)


def _input_grad(x, weight, geo, dz):
    "d(loss)/dx for float inputs, in torch: dZ @ W, un-patchify, scale by 1/std, scatter-add into the bands."
    p, Cb = geo.p, weight.shape[1]
    da = (dz @ weight.reshape(geo.D, -1).float()).view(geo.B, geo.Hp, geo.Wp, Cb, p, p)
    da = da.permute(0, 3, 1, 4, 2, 5).reshape(geo.B, Cb, geo.H, geo.W) * geo.rstd[None, :, None, None]
    dx = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    dx.index_add_(1, geo.bands.long(), da)
    return dx.to(x.dtype)


class MSPatchEmbedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, ln_weight, ln_bias, pos_embed, geo, ln_eps):
        out, mu, rsig = ms_patch_embed_fwd(x, weight, bias, geo, ln_weight, ln_bias, pos_embed, ln_eps)
        ctx.save_for_backward(x, weight, bias, ln_weight, mu, rsig)
        ctx.geo = geo
        ctx.pos = None if pos_embed is None else (pos_embed.shape, pos_embed.dtype)
        return out

    @staticmethod
    def backward(ctx, dy):
        x = ctx.saved_tensors[0]
        with device_guard(x):
            return MSPatchEmbedFn._backward(ctx, dy.contiguous())

    @staticmethod
    def _backward(ctx, dy):
        x, weight, bias, ln_weight, mu, rsig = ctx.saved_tensors
        geo = ctx.geo
        db = dlnw = dlnb = dpos = None
        if ln_weight is not None:
            dz, db, dlnw, dlnb = ms_patch_embed_bwd_ln(x, weight, bias, geo, ln_weight, mu, rsig, dy)
            dlnw, dlnb = dlnw.to(ln_weight.dtype), dlnb.to(ln_weight.dtype)
        else:
            dz = dy.float()
            db = dz.sum(0)
            if ctx.pos is not None:
                dpos = dz.view(geo.B, geo.N, geo.D).sum(0).reshape(ctx.pos[0]).to(ctx.pos[1])
        dw = ms_patch_embed_bwd_dw(x, geo, dz).view_as(weight).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dx = _input_grad(x, weight, geo, dz) if ctx.needs_input_grad[0] else None
        db = db.to(bias.dtype) if bias is not None else None
        return dx, dw, db, dlnw, dlnb, dpos, None, None


def unsupported_reason(x, weight, ln_weight=None) -> str | None:
    "Why the kernels cannot take these inputs (dtype, size), or None; `impl='auto'` then falls back to torch."
    if x.dtype not in X_DTYPES:
        return (f"x dtype {x.dtype} is not supported by the Triton kernel (use one of "
                f"{', '.join(str(d)[6:] for d in X_DTYPES)})")
    if weight.dtype not in PARAM_DTYPES:
        return (f"weight dtype {weight.dtype} is not supported by the Triton kernel (use one of "
                f"{', '.join(str(d)[6:] for d in PARAM_DTYPES)})")
    D = weight.shape[0]
    if ln_weight is not None and D > MAX_LN_D:
        return f"ln_weight {tuple(ln_weight.shape)}: LayerNorm width D = {D} is over the kernel's limit {MAX_LN_D}"
    B, C, H, W = x.shape
    p = weight.shape[-1]
    if B * (H // p) * (W // p) * D > MAX_ELEMENTS:
        return (f"x {tuple(x.shape)} with weight {tuple(weight.shape)}: {B * (H // p) * (W // p)} tokens x D = {D} "
                f"is over the kernel's int32 limit of {MAX_ELEMENTS} elements (split the batch)")
    return None


@torch.compiler.disable  # a Python geometry object and launches: keep them out of dynamo graphs
def ms_patch_embed_triton(x, weight, bias, *, mean, std, patch_size, bands=None, ln_weight=None, ln_bias=None,
                          pos_embed=None, ln_eps=1e-5):
    """Fused patch embedding; inputs are validated by `deo_kit.layers.patch_embed.ms_patch_embed`.
    Returns (B, H/p, W/p, D) with LayerNorm parameters, else (B, N, D). Non-contiguous inputs are copied here."""
    check_cuda_or_interpret(x, weight)
    reason = unsupported_reason(x, weight, ln_weight)
    if reason:
        raise ValueError(reason)
    named = {"x": x, "weight": weight, "bias": bias, "mean": mean, "std": std, "ln_weight": ln_weight,
             "ln_bias": ln_bias, "pos_embed": pos_embed}
    check_kernel_tensors(named, x.device, {k: PARAM_DTYPES for k in ("bias", "ln_weight", "ln_bias", "pos_embed")})
    x, weight, bias, ln_weight, ln_bias, pos_embed = (None if t is None else t.contiguous()
                                                      for t in (x, weight, bias, ln_weight, ln_bias, pos_embed))
    with device_guard(x):
        geo = _Geometry(x, weight, mean, std, patch_size, bands, ln_weight is not None)
        out = MSPatchEmbedFn.apply(x, weight, bias, ln_weight, ln_bias, pos_embed, geo, ln_eps)
    if ln_weight is not None:
        return out.view(geo.B, geo.Hp, geo.Wp, geo.D)
    return out.view(geo.B, geo.N, geo.D)
