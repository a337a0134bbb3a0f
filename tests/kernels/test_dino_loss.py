"""Fused DINO loss vs the torch reference (Triton interpreter on CPU, real kernels under -m cuda).

Kernel outputs (row LSEs, per-program partial losses, the gradient) are allocated NaN-filled before launch, so an
element a kernel forgets to write shows up as a non-finite value here."""
import os

import pytest
import torch
import torch.testing as tt

from conftest import TOLERANCES
from deo_kit.core import has_triton
from deo_kit.loss.dino import (DINOLoss, dino_loss, dino_loss_ref, sinkhorn_knopp_log_r, sinkhorn_knopp_teacher,
                               softmax_center_teacher, update_center)

pytestmark = pytest.mark.skipif(not has_triton(), reason="needs Triton")
DEV = "cuda" if os.environ.get("DEO_KIT_GPU_CHECK") and torch.cuda.is_available() else "cpu"
KW = dict(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)
LOSS_TOL = TOLERANCES["float32_long"]  # the loss is a sum over K of terms of size |logit|/tau


@pytest.fixture
def kd(monkeypatch):
    import deo_kit.kernels.dino_loss as kd
    return kd


def _inputs(S, T, B, K, dtype, scale=3.0, device=DEV):
    s = (torch.randn(S, B, K, device=device) * scale).to(dtype).requires_grad_()
    t = (torch.randn(T, B, K, device=device) * scale).to(dtype)
    c = torch.randn(K, device=device) * 0.1
    return s, t, c


def _grad_close(a, r):
    "Gradients: the exponent of softmax(x/tau) is rounded at ~1e-5 relative, so atol scales with the largest entry."
    rtol, atol = TOLERANCES["float32_long" if r.dtype == torch.float32 else str(r.dtype)[6:]]
    scale = r.float().abs().max().item()
    tt.assert_close(a.float(), r.float(), rtol=rtol, atol=(2e-5 if r.dtype == torch.float32 else atol) * max(scale, 1e-3))


def _both(s, t, c, **kw):
    "(loss, grad, centre) from the Triton path and from the reference, on the same inputs."
    out = []
    for impl in ("triton", "torch"):
        loss, center = dino_loss(s, t, c, impl=impl, **{**KW, **kw})
        g, = torch.autograd.grad(loss, s)
        out.append((loss.detach(), g, center))
    return out


# (S, T, B, K, MAX_BLOCK_K, BLOCKS_PER_PROG): single block, multi-block + multi-chunk, T=1, B=1 with K = 2^12 + 3
SHAPES = [(4, 2, 3, 100, 4096, None), (4, 2, 3, 1000, 128, 3), (3, 1, 2, 257, 64, None), (2, 2, 1, 4099, 1024, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_center_grid(kd, monkeypatch, seed, shape, dtype):
    S, T, B, K, blk, bpp = shape
    monkeypatch.setattr(kd, "MAX_BLOCK_K", blk)
    monkeypatch.setattr(kd, "BLOCKS_PER_PROG", bpp)
    s, t, c = _inputs(S, T, B, K, dtype)
    (l1, g1, c1), (l2, g2, c2) = _both(s, t, c)
    assert torch.isfinite(g1).all() and torch.isfinite(l1)  # every element written
    tt.assert_close(l1, l2, rtol=LOSS_TOL[0], atol=LOSS_TOL[1])  # fp32 compute for every input dtype
    _grad_close(g1, g2)
    tt.assert_close(c1, c2)
    assert g1.dtype == dtype and l1.item() >= 0
    # each row is w·(p − q) with Σp = Σq = 1, so its sum is 0 up to the rounding of w-sized terms, not of |p − q|
    # (tiny where student and teacher agree): the scale is the largest row mass Σ|g| (= 2w where p and q differ fully)
    g = g1.float()
    scale = g.abs().sum(-1).amax()
    assert (g.sum(-1).abs() <= (1e-5 if dtype == torch.float32 else 1e-2) * scale + 1e-7).all()


@pytest.mark.parametrize("shape", [(3, 2, 5, 300, 64, 2), (4, 2, 3, 1000, 256, None)], ids=["300", "1000"])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_sinkhorn_knopp(kd, monkeypatch, seed, shape, masked):
    S, T, B, K, blk, bpp = shape
    monkeypatch.setattr(kd, "MAX_BLOCK_K", blk)
    monkeypatch.setattr(kd, "BLOCKS_PER_PROG", bpp)
    s, t, c = _inputs(S, T, B, K, torch.float32)
    mask = (torch.arange(B, device=DEV) % 2 == 0) if masked else None
    (l1, g1, c1), (l2, g2, c2) = _both(s, t, c, centering="sinkhorn_knopp", row_mask=mask)
    assert c1 is c and c2 is c  # SK leaves the centre alone
    tt.assert_close(l1, l2, rtol=LOSS_TOL[0], atol=LOSS_TOL[1])
    _grad_close(g1, g2)


def test_sinkhorn_targets(kd, monkeypatch, seed):
    "The kernel's effective centre reproduces the reference SK targets, which sum to 1 per row."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    T, B, K = 2, 6, 200
    t = torch.randn(T, B, K, device=DEV) * 3
    keep = torch.ones(B, dtype=torch.bool, device=DEV)
    center, lse = kd.sinkhorn_knopp_center(t.view(-1, K), keep.repeat(T), 0.05)
    q = torch.softmax((t - center) / 0.05, -1)
    tt.assert_close(q, sinkhorn_knopp_teacher(t, 0.05), rtol=1e-4, atol=1e-6)
    tt.assert_close(q.sum(-1), torch.ones(T, B, device=DEV))
    tt.assert_close(torch.exp2((t.view(-1, K) - center) * kd.LOG2E / 0.05 - lse[:, None]).sum(-1), torch.ones(T * B, device=DEV))


def test_teacher_targets_sum_to_one(kd, monkeypatch, seed):
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 128)
    t, c = torch.randn(6, 1000, device=DEV) * 5, torch.randn(1000, device=DEV)
    lse = kd.row_lse(t, c, 0.04)
    p = torch.exp2((t - c) * kd.LOG2E / 0.04 - lse[:, None])
    tt.assert_close(p.sum(-1), torch.ones(6, device=DEV), rtol=1e-4, atol=0)  # lse ~ 700: fp32 exponent rounding
    tt.assert_close(p, softmax_center_teacher(t[None], c, 0.04)[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("centering", ["center", "sinkhorn_knopp"])
def test_masked_rows(kd, monkeypatch, seed, centering):
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    S, T, B, K = 4, 2, 5, 300
    s, t, c = _inputs(S, T, B, K, torch.float32)
    with torch.no_grad():
        t[:, 1] = float("nan")  # garbage in a dropped row must not leak
        s[:, 1] = float("nan")
    mask = torch.tensor([True, False, True, True, False], device=DEV)
    loss, center = dino_loss(s, t, c, impl="triton", centering=centering, row_mask=mask, **KW)
    g, = torch.autograd.grad(loss, s)
    keep = mask.nonzero().squeeze(1)
    s2 = s.detach()[:, keep].clone().requires_grad_()
    l2, c2 = dino_loss(s2, t[:, keep].contiguous(), c, impl="torch", centering=centering, **KW)
    g2, = torch.autograd.grad(l2, s2)
    tt.assert_close(loss, l2, rtol=LOSS_TOL[0], atol=LOSS_TOL[1])
    _grad_close(g[:, keep], g2)
    assert (g[:, ~mask] == 0).all()
    if centering == "center":
        tt.assert_close(center, c2)
    no_rows = torch.zeros(B, dtype=torch.bool, device=DEV)
    l0, c0 = dino_loss(s, t, c, impl="triton", centering=centering, row_mask=no_rows, **KW)
    assert l0.item() == 0 and torch.equal(c0, c)


def _loss64(s, t, c, centering):
    "fp64 reference: at |logit| = 1e4 and tau_t = 0.04 fp32 cannot resolve exponents finer than ~0.02."
    x = t.detach().double() / KW["teacher_temp"]
    if centering == "center":
        q = torch.softmax(x - c.double() / KW["teacher_temp"], -1)
    else:
        q = torch.softmax(x + sinkhorn_knopp_log_r(x.reshape(-1, x.shape[-1])), -1)
    s64 = s.detach().double().requires_grad_()
    lsm = torch.log_softmax(s64 / KW["student_temp"], -1)
    pairs = [-(q[i] * lsm[v]).sum(-1).mean() for i in range(q.shape[0]) for v in range(lsm.shape[0]) if v != i]
    loss = sum(pairs) / len(pairs)
    return loss.detach(), torch.autograd.grad(loss, s64)[0]


def test_extreme_logits(kd, monkeypatch, seed):
    "Logits of +-1e4 at tau_t = 0.04 (x/tau = 2.5e5): no overflow, and as close to fp64 as fp32 inputs allow."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 128)
    s, t, c = _inputs(4, 2, 3, 500, torch.float32, scale=1.0)
    with torch.no_grad():
        s.mul_(1e4).clamp_(-1e4, 1e4)
        t.mul_(1e4).clamp_(-1e4, 1e4)
    for centering in ("center", "sinkhorn_knopp"):
        loss, _ = dino_loss(s, t, c, impl="triton", centering=centering, **KW)
        g, = torch.autograd.grad(loss, s)
        l64, g64 = _loss64(s, t, c, centering)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        tt.assert_close(loss.double(), l64, rtol=1e-2, atol=0)
        tt.assert_close(g.double(), g64, rtol=0, atol=0.05 * g64.abs().max().item())


def test_large_k(kd, monkeypatch, seed):
    "K = 262,144 (DINOv3 7B head) in a handful of big blocks."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 65536)
    s, t, c = _inputs(2, 1, 1, 262144, torch.float32)
    (l1, g1, c1), (l2, g2, c2) = _both(s, t, c)
    tt.assert_close(l1, l2, rtol=TOLERANCES["float32_long"][0], atol=TOLERANCES["float32_long"][1])
    _grad_close(g1, g2)


def test_no_grad_and_grad_scale(kd, monkeypatch, seed):
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 128)
    s, t, c = _inputs(3, 2, 2, 200, torch.float32)
    with torch.no_grad():
        l0, _ = dino_loss(s, t, c, impl="triton", **KW)
    l1, _ = dino_loss(s, t, c, impl="triton", **KW)
    g1, = torch.autograd.grad(3.0 * l1, s)
    l2, _ = dino_loss(s, t, c, impl="torch", **KW)
    g2, = torch.autograd.grad(3.0 * l2, s)
    tt.assert_close(l0, l2, rtol=LOSS_TOL[0], atol=LOSS_TOL[1])
    _grad_close(g1, g2)


def test_module_triton_matches_torch(kd, monkeypatch, seed):
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 128)
    s, t, _ = _inputs(4, 2, 3, 300, torch.float32)
    m1, m2 = DINOLoss(300, impl="triton").to(DEV), DINOLoss(300, impl="torch").to(DEV)
    for temp in (0.04, 0.07):  # two steps: the second uses the updated centre
        l1, l2 = m1(s, t, teacher_temp=temp), m2(s, t, teacher_temp=temp)
        tt.assert_close(l1, l2, rtol=LOSS_TOL[0], atol=LOSS_TOL[1])
        tt.assert_close(m1.center, m2.center)
    tt.assert_close(m1.center, update_center(t, update_center(t, torch.zeros(300, device=DEV), 0.9), 0.9))


# ---- bad input ----

def test_bad_shapes():
    s, t, c = torch.zeros(4, 3, 10), torch.zeros(2, 3, 10), torch.zeros(10)
    with pytest.raises(ValueError, match=r"teacher_logits must be \(T, B, K\).*got shape \(2, 4, 10\)"):
        dino_loss(s, torch.zeros(2, 4, 10), c, **KW)
    with pytest.raises(ValueError, match=r"center must be \(10,\).*got shape \(9,\)"):
        dino_loss(s, t, torch.zeros(9), **KW)
    with pytest.raises(ValueError, match=r"center \(10,\) is on meta"):
        dino_loss(s, t, torch.zeros(10, device="meta"), **KW)
    with pytest.raises(ValueError, match=r"row_mask must be a bool \(3,\)"):
        dino_loss(s, t, c, row_mask=torch.ones(3), **KW)
    with pytest.raises(ValueError, match="teacher_logits has 5 views"):
        dino_loss(s, torch.zeros(5, 3, 10), c, **KW)


def test_triton_needs_gpu_or_interpreter(monkeypatch):
    s, t, c = torch.zeros(4, 3, 10), torch.zeros(2, 3, 10), torch.zeros(10)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' needs a CUDA tensor"):
        dino_loss(s, t, c, impl="triton", **KW)
    loss, _ = dino_loss(s, t, c, impl="auto", **KW)  # falls back to torch
    tt.assert_close(loss, dino_loss_ref(s, t, c, **KW))


# ---- GPU-only: realistic sizes, bf16 arithmetic on the device ----

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("centering", ["center", "sinkhorn_knopp"])
def test_cuda_dino_size(seed, dtype, centering):
    s, t, c = _inputs(12, 2, 64, 65536, dtype, device="cuda")
    (l1, g1, c1), (l2, g2, c2) = _both(s, t, c, centering=centering)
    assert torch.isfinite(g1).all()
    tt.assert_close(l1, l2, rtol=TOLERANCES["float32_long"][0], atol=TOLERANCES["float32_long"][1])
    _grad_close(g1, g2)
    tt.assert_close(c1, c2)


@pytest.mark.cuda
def test_cuda_large_k_small_batch(seed):
    s, t, c = _inputs(4, 2, 16, 262144, torch.bfloat16, device="cuda")
    (l1, g1, _), (l2, g2, _) = _both(s, t, c)
    tt.assert_close(l1, l2, rtol=1e-4, atol=1e-4)
    _grad_close(g1, g2)


# ---- torch.distributed: the op all-reduces the centre's batch mean and the SK sums ----

CONFIGS = [(impl, centering) for impl in ("torch", "triton") for centering in ("center", "sinkhorn_knopp")]


def _ddp_worker(rank, world, port, data, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        import deo_kit.kernels.dino_loss as kd
        kd.MAX_BLOCK_K = 64
        s, t = (x.chunk(world, dim=1)[rank].contiguous() for x in data[:2])
        s.requires_grad_()
        for impl, centering in CONFIGS:  # one process group for all four: spawning dominates the cost
            loss, center = dino_loss(s, t, data[2], impl=impl, centering=centering, **KW)
            g, = torch.autograd.grad(loss, s)
            out[(rank, impl, centering)] = (loss.detach(), g, center)
    finally:
        dist.destroy_process_group()


def test_distributed_matches_one_process(seed):
    "Two gloo ranks with half the batch each get the full batch's centre and SK targets (torch and Triton paths)."
    import socket
    import torch.multiprocessing as mp
    from deo_kit.loss.dino import dino_cross_entropy
    if DEV != "cpu":
        pytest.skip("gloo check runs on CPU")
    S, T, B, K = 3, 2, 4, 150
    data = (torch.randn(S, B, K) * 3, torch.randn(T, B, K) * 3, torch.randn(K) * 0.1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, data, out), nprocs=2)
    s, t, c = data  # one process, full batch: targets/centre over all rows; each rank's loss is over its own rows
    for impl, centering in CONFIGS:
        if centering == "center":
            targets = softmax_center_teacher(t, c, KW["teacher_temp"])
            for rank in (0, 1):
                tt.assert_close(out[(rank, impl, centering)][2], update_center(t, c, 0.9))
        else:
            targets = sinkhorn_knopp_teacher(t, KW["teacher_temp"])
        for rank, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
            s_r = s[:, rows].clone().requires_grad_()
            l_r = dino_cross_entropy(s_r, targets[:, rows], KW["student_temp"])
            loss, g, _ = out[(rank, impl, centering)]
            tt.assert_close(loss, l_r.detach(), rtol=LOSS_TOL[0], atol=LOSS_TOL[1], msg=f"{impl} {centering} rank {rank}")
            _grad_close(g, torch.autograd.grad(l_r, s_r)[0])
