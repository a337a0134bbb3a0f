"""Issue 20's kernel findings, one test each, in Triton's interpreter (small shapes): each failed before its fix.

Wide LayerNorm (D not a power of two), fp16 gradients under GradScaler, no NaN pre-fill / no backward pass at scale 1,
the Sinkhorn-Knopp column grid, cached stem statistics, no per-batch-size constexpr, the device guard, the new TF32
flag API, the one-time `impl='auto'` fallback warning, bad-input errors that name the tensor, non-contiguous inputs."""
import contextlib
import inspect
import types
import warnings

import pytest
import torch
import torch.testing as tt
import triton.language as tl
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TOLERANCES
import deo_kit.core as core
from deo_kit.core import has_triton
from deo_kit.layers.patch_embed import MSPatchEmbed, ms_patch_embed
from deo_kit.loss.dino import dino_loss

pytestmark = pytest.mark.skipif(not has_triton(), reason="needs Triton")
KW = dict(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)


@pytest.fixture
def kd():
    import deo_kit.kernels.dino_loss as kd
    return kd


@pytest.fixture
def kp():
    import deo_kit.kernels.ms_patch_embed as kp
    getattr(kp, "_STATS", {}).clear()  # cached band statistics: each test starts cold
    return kp


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(core, "_warned", set(), raising=False)


def _loss_and_grad(s, t, c, impl, scale=1.0, **kw):
    loss, _ = dino_loss(s, t, c, impl=impl, **{**KW, **kw})
    g, = torch.autograd.grad(loss * scale, s)
    return loss.detach(), g


# ---- finding 4: LayerNorm with D not a power of two ----

@pytest.mark.parametrize("D", [192, 768])
def test_layernorm_wide_d(kp, seed, D):
    "MSPatchEmbed(C, D, p) with its default LayerNorm at D = 192 / 768: block width next_power_of_2(D), masked."
    torch.manual_seed(seed)
    m1 = MSPatchEmbed(3, D, 4, mean=[100.0] * 3, std=[50.0] * 3, impl="triton")
    m2 = MSPatchEmbed(3, D, 4, mean=[100.0] * 3, std=[50.0] * 3, impl="torch")
    with torch.no_grad():
        m1.norm.weight.uniform_(0.5, 1.5)
        m1.norm.bias.normal_()
    m2.load_state_dict(m1.state_dict())
    x = torch.randint(0, 1000, (1, 3, 8, 8)).to(torch.uint16)
    y1, y2 = m1(x), m2(x)
    tt.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    dy = torch.randn_like(y2)
    (y1 * dy).sum().backward()
    (y2 * dy).sum().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        tt.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4 * max(1.0, p2.grad.abs().max().item()), msg=n)


# ---- finding 5: fp16 logits + GradScaler's 65,536 ----

def test_fp16_grad_scaler(kd, monkeypatch, seed):
    "The backward scale is applied in fp32: 65,536 is inf in fp16, which made every gradient inf/NaN."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    torch.manual_seed(seed)
    s = (torch.randn(4, 16, 64) * 3).half().requires_grad_()
    t = (torch.randn(2, 16, 64) * 3).half()
    c = torch.randn(64) * 0.1
    _, g1 = _loss_and_grad(s, t, c, "triton", scale=65536.0)
    _, g2 = _loss_and_grad(s, t, c, "torch", scale=65536.0)
    assert g1.dtype == torch.float16 and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    rtol, atol = TOLERANCES["float16"]
    tt.assert_close(g1.float(), g2.float(), rtol=rtol, atol=atol * g2.float().abs().max().item())


def test_fp16_small_gradients_survive_the_scale(kd, monkeypatch, seed):
    "Unscaled fp16 gradients underflow (entries < 6e-8): the forward keeps them in fp32 until backward applies the scale."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 4096)
    torch.manual_seed(seed)
    s = (torch.randn(3, 4, 4096) * 4).half().requires_grad_()
    t = (torch.randn(2, 4, 4096) * 4).half()
    c = torch.zeros(4096)
    _, g1 = _loss_and_grad(s, t, c, "triton", scale=65536.0)
    _, g2 = _loss_and_grad(s, t, c, "torch", scale=65536.0)
    a, r = g1.float(), g2.float()
    nz = (r != 0) & torch.isfinite(r)
    off = ((a[nz] - r[nz]).abs() > 1e-2 * r[nz].abs()).float().mean().item()
    assert off < 1e-3, f"{off:.1%} of the gradient entries are off by > 1% (fp16 subnormals before scaling; was 64%)"


# ---- finding 6: no extra passes on the fast path ----

class _OpLog(TorchDispatchMode):
    "Records the aten ops (and their first argument's size) that run inside the block."

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.ops.append((str(func), None if first is None else first.numel()))
        return func(*args, **(kwargs or {}))


def test_no_nan_prefill_and_no_backward_pass_at_scale_one(kd, kp, monkeypatch, seed):
    "Outside the interpreter (DEO_KIT_POISON=0) outputs are torch.empty, and backward at dloss = 1 runs no aten op on the gradient."
    monkeypatch.setenv("DEO_KIT_POISON", "0")
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    fills = []
    real_full, real_full_like = torch.full, torch.full_like

    def full(size, fill_value, *a, **k):
        fills.append(fill_value)
        return real_full(size, fill_value, *a, **k)

    def full_like(x, fill_value, *a, **k):
        fills.append(fill_value)
        return real_full_like(x, fill_value, *a, **k)

    monkeypatch.setattr(torch, "full", full)
    monkeypatch.setattr(torch, "full_like", full_like)
    s = (torch.randn(3, 2, 100) * 3).requires_grad_()
    t, c = torch.randn(2, 2, 100) * 3, torch.zeros(100)
    loss, _ = dino_loss(s, t, c, impl="triton", **KW)
    with _OpLog() as log:
        g, = torch.autograd.grad(loss, s)
    assert not [op for op, n in log.ops if n == s.numel() and ("mul" in op or "copy" in op)], log.ops
    x = torch.randint(0, 100, (2, 3, 8, 8)).to(torch.uint16)
    w = torch.randn(16, 3, 4, 4, requires_grad=True)
    y = ms_patch_embed(x, w, None, mean=None, std=None, patch_size=4, ln_weight=torch.ones(16),
                       ln_bias=torch.zeros(16), impl="triton")
    y.sum().backward()
    assert not [f for f in fills if f != f], "a kernel output was NaN-filled outside the test/poison mode"
    _, g2 = _loss_and_grad(s, t, c, "torch")
    tt.assert_close(g, g2, rtol=1e-4, atol=2e-5 * g2.abs().max().item())  # and torch.empty buffers are fully written


def test_poison_in_the_interpreter(kd):
    "The interpreter (and DEO_KIT_POISON=1 in gpu_check's test phase) still NaN-fills, so unwritten elements show."
    from deo_kit.kernels._utils import new_out
    assert torch.isnan(new_out((3,), "cpu")).all()


def test_sk_column_grid(kd, monkeypatch):
    "At K = 65,536 and 128 teacher rows the SK column kernel fills an H100 (it had 64 programs walking all rows)."
    monkeypatch.setattr(kd, "interpreting", lambda: False)
    bk, splits = kd.sk_grid(128, 65536)
    assert -(-65536 // bk) * splits >= 4 * 132
    assert kd.sk_grid(1, 65536)[1] == 1


def test_sk_row_splits_with_a_ragged_tail(kd, monkeypatch, seed):
    "Three row splits over 10 rows (4 + 4 + 2): the tail rereads the last row with log_c = NEG and adds nothing."
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    monkeypatch.setattr(kd, "SK_ROW_SPLITS", 3)
    s = (torch.randn(3, 5, 150) * 3).requires_grad_()
    t, c = torch.randn(2, 5, 150) * 3, torch.zeros(150)
    mask = torch.tensor([True, True, False, True, True])
    l1, g1 = _loss_and_grad(s, t, c, "triton", centering="sinkhorn_knopp", row_mask=mask)
    l2, g2 = _loss_and_grad(s, t, c, "torch", centering="sinkhorn_knopp", row_mask=mask)
    tt.assert_close(l1, l2, rtol=1e-4, atol=1e-5)
    tt.assert_close(g1, g2, rtol=1e-4, atol=2e-5 * g2.abs().max().item())


def test_stem_statistics_cached(kp, monkeypatch, seed):
    "No torch.tensor(list) per stem call (a blocking H2D copy on CUDA): band indices and statistics are cached."
    calls = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = torch.randint(0, 1000, (1, 4, 8, 8)).to(torch.uint16)
    w, b = torch.randn(8, 2, 4, 4), torch.randn(8)
    mean, std = torch.rand(4) * 100, torch.rand(4) * 50 + 10
    kw = dict(mean=mean, std=std, patch_size=4, bands=[3, 1])
    ms_patch_embed(x, w, b, impl="triton", **kw)
    n_first = len(calls)
    y = ms_patch_embed(x, w, b, impl="triton", **kw)
    assert len(calls) == n_first, "second call rebuilt the band tensor"
    ms_patch_embed(x[:, :2], w, b, mean=None, std=None, patch_size=4, impl="triton")
    assert len(calls) == n_first, "bands=None needs no list -> tensor copy"
    with torch.no_grad():
        mean.add_(10.0)  # an in-place change of the statistics must not be served stale
    tt.assert_close(ms_patch_embed(x, w, b, impl="triton", **kw), ms_patch_embed(x, w, b, impl="torch", **kw),
                    rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y, ms_patch_embed(x, w, b, impl="torch", **kw))


def test_no_batch_size_constexpr(kd):
    "The loss kernel's compile-time constants do not depend on the batch size (a new B recompiled it)."
    fn = getattr(kd._dino_loss_fwd_kernel, "fn", kd._dino_loss_fwd_kernel)
    const = {n for n, p in inspect.signature(fn).parameters.items() if p.annotation is tl.constexpr}
    assert const == {"HAS_CENTER", "HAS_GRAD", "BLOCK_K"}
    assert kd.loss_chunks(65536, 64)[0] == kd.loss_chunks(65536, 63)[0]


def test_device_guard(kd, kp, monkeypatch):
    "Every launcher runs under torch.cuda.device(x.device), so inputs on cuda:1 launch there with cuda:0 current."
    seen = []

    @contextlib.contextmanager
    def guard(t):
        seen.append(t.device)
        yield

    monkeypatch.setattr(kd, "device_guard", guard)
    monkeypatch.setattr(kp, "device_guard", guard)
    s = torch.randn(3, 2, 50, requires_grad=True)
    loss, _ = dino_loss(s, torch.randn(2, 2, 50), torch.zeros(50), impl="triton", **KW)
    loss.backward()
    assert len(seen) == 2  # forward launches, backward scale
    x, w = torch.randn(1, 2, 8, 8), torch.randn(8, 2, 4, 4, requires_grad=True)
    ms_patch_embed(x, w, None, mean=None, std=None, patch_size=4, impl="triton").sum().backward()
    assert len(seen) == 4 and all(d == torch.device("cpu") for d in seen)


def test_tf32_flag_new_api(kp):
    "Reading the TF32 setting never raises under torch's fp32_precision API (the legacy getter does once it is set)."
    fake_cuda = types.SimpleNamespace(is_cuda=True)
    old = torch.backends.fp32_precision
    try:
        torch.backends.fp32_precision = "ieee"
        assert kp._precision(fake_cuda) == "ieee"
        if hasattr(torch.backends.cudnn, "conv"):
            torch.backends.cudnn.conv.fp32_precision = "tf32"
            assert kp._precision(fake_cuda) == "tf32"
    finally:
        torch.backends.fp32_precision = old
        if hasattr(torch.backends.cudnn, "conv"):
            torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's default on this flag
    assert kp._precision(torch.zeros(1)) == "ieee"  # CPU tensors (the interpreter) always compute in fp32


# ---- impl='auto': one-time warning that says why ----

def test_auto_fallback_warns_once(kp, monkeypatch, fresh_warnings, seed):
    "A stem the kernel cannot take (LayerNorm D over its limit) or should not (GEMM-bound ViT) falls back, warning once."
    import deo_kit.layers.patch_embed as pe
    monkeypatch.setattr(pe, "resolve_impl", lambda impl, x: "triton")  # as on a CUDA machine
    x = torch.randn(1, 2, 8, 8)
    w, b = torch.randn(2048, 2, 4, 4), torch.zeros(2048)
    kw = dict(mean=None, std=None, patch_size=4, ln_weight=torch.ones(2048), ln_bias=torch.zeros(2048))
    with pytest.warns(UserWarning, match=r"ms_patch_embed: impl='auto' uses the torch reference.*LayerNorm width D = 2048"):
        y = ms_patch_embed(x, w, b, impl="auto", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.assert_close(ms_patch_embed(x, w, b, impl="auto", **kw), y)  # second call: silent
    with pytest.warns(UserWarning, match="GEMM-bound"):
        ms_patch_embed(torch.randn(1, 2, 16, 16), torch.randn(8, 2, 16, 16), None, mean=None, std=None,
                       patch_size=16, impl="auto")


def test_auto_without_triton_warns(monkeypatch, fresh_warnings):
    monkeypatch.setattr(core, "has_triton", lambda: False)
    fake_cuda = types.SimpleNamespace(is_cuda=True, device="cuda:0")
    with pytest.warns(UserWarning, match="Triton does not import"):
        assert core.resolve_impl("auto", fake_cuda) == "torch"


def test_auto_dino_unsupported_dtype_warns(monkeypatch, fresh_warnings):
    import deo_kit.loss.dino as ld
    monkeypatch.setattr(ld, "resolve_impl", lambda impl, x: "triton")
    s, t, c = torch.randn(3, 2, 20, dtype=torch.float64), torch.randn(2, 2, 20, dtype=torch.float64), torch.zeros(20)
    with pytest.warns(UserWarning, match=r"dino_loss: .*student_logits dtype torch.float64 is not supported"):
        dino_loss(s, t, c, impl="auto", **KW)


# ---- bad input: clear errors naming the tensor ----

def test_kernel_errors_name_the_tensor(kd, kp):
    from deo_kit.kernels.dino_loss import dino_loss_triton
    from deo_kit.kernels.ms_patch_embed import ms_patch_embed_triton
    x, w, b = torch.randn(1, 2, 8, 8), torch.randn(8, 2, 4, 4), torch.zeros(8)
    with pytest.raises(ValueError, match=r"mean \(2,\) is on meta, but the Triton kernel runs on cpu"):
        ms_patch_embed_triton(x, w, b, mean=torch.zeros(2, device="meta"), std=None, patch_size=4)
    with pytest.raises(ValueError, match=r"x dtype torch.float64 is not supported by the Triton kernel"):
        ms_patch_embed_triton(x.double(), w, b, mean=None, std=None, patch_size=4)
    with pytest.raises(ValueError, match=r"bias dtype torch.int64 is not supported"):
        ms_patch_embed_triton(x, w, torch.zeros(8, dtype=torch.long), mean=None, std=None, patch_size=4)
    with pytest.raises(ValueError, match=r"ln_weight \(2048,\): LayerNorm width D = 2048 is over the kernel's limit 1024"):
        ms_patch_embed(x, torch.randn(2048, 2, 4, 4), None, mean=None, std=None, patch_size=4,
                       ln_weight=torch.ones(2048), ln_bias=torch.zeros(2048), impl="triton")
    s, t = torch.randn(3, 2, 10), torch.randn(2, 2, 10)
    with pytest.raises(ValueError, match=r"student_logits dtype torch.float64 is not supported by the Triton kernel"):
        dino_loss(s.double(), t.double(), torch.zeros(10), impl="triton", **KW)
    with pytest.raises(ValueError, match=r"row_mask \(2,\) is on meta"):
        dino_loss_triton(s, t, torch.zeros(10), student_temp=0.1, teacher_temp=0.04,
                         row_mask=torch.ones(2, dtype=torch.bool, device="meta"))


# ---- non-contiguous inputs: copied inside the Triton path, accepted by the torch path ----

def test_non_contiguous_inputs(kd, monkeypatch, seed):
    monkeypatch.setattr(kd, "MAX_BLOCK_K", 64)
    s = (torch.randn(3, 20, 2) * 3).transpose(1, 2).requires_grad_()  # (3, 2, 20), not contiguous
    t = (torch.randn(2, 20, 2) * 3).transpose(1, 2)
    c = torch.zeros(20)
    assert not s.is_contiguous()
    l1, g1 = _loss_and_grad(s, t, c, "triton")
    l2, g2 = _loss_and_grad(s, t, c, "torch")
    tt.assert_close(l1, l2, rtol=1e-4, atol=1e-5)
    tt.assert_close(g1, g2, rtol=1e-4, atol=2e-5 * g2.abs().max().item())
    x = torch.randn(2, 8, 8, 3).permute(0, 3, 1, 2)  # channels-last view
    w = torch.randn(8, 3, 4, 4)
    kw = dict(mean=None, std=None, patch_size=4, ln_weight=torch.ones(8), ln_bias=torch.zeros(8))
    tt.assert_close(ms_patch_embed(x, w, None, impl="triton", **kw), ms_patch_embed(x, w, None, impl="torch", **kw),
                    rtol=1e-4, atol=1e-4)
