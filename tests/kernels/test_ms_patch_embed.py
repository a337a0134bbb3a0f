"""Fused multispectral patch embedding vs the torch reference (Triton interpreter on CPU, real kernels under -m cuda).

Every kernel output (tokens, LayerNorm statistics, dZ, partial gradient sums) is allocated NaN-filled before launch,
so an unwritten element shows up here as a non-finite value or a mismatch."""
import os

import pytest
import torch
import torch.testing as tt

from conftest import TOLERANCES
from deo_kit.core import has_triton
from deo_kit.layers.patch_embed import MSPatchEmbed, ms_patch_embed, ms_patch_embed_ref

pytestmark = pytest.mark.skipif(not has_triton(), reason="needs Triton")
DEV = "cuda" if os.environ.get("DEO_KIT_GPU_CHECK") and torch.cuda.is_available() else "cpu"


@pytest.fixture
def kp(monkeypatch):
    import deo_kit.kernels.ms_patch_embed as kp
    monkeypatch.setattr(kp, "MAX_BLOCK_M", 16)  # several M tiles and split-M weight gradients even at tiny sizes
    monkeypatch.setattr(kp, "DW_SPLIT", 2)
    if DEV == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare fp32 with fp32
    return kp


def _case(B, C, H, W, p, bands, D, head, xdtype, wdtype=torch.float32, device=DEV):
    "Random inputs; head is 'ln' (Swin stem), 'pos' (ViT stem) or None."
    if xdtype == torch.uint16:
        x = torch.randint(0, 12000, (B, C, H, W), device=device).to(torch.uint16)
        mean, std = torch.rand(C, device=device) * 2000, torch.rand(C, device=device) * 1000 + 200
    else:
        x = torch.randn(B, C, H, W, device=device).to(xdtype)
        mean, std = torch.randn(C, device=device) * 0.1, torch.rand(C, device=device) + 0.5
    nb = C if bands is None else len(bands)
    w = (torch.randn(D, nb, p, p, device=device) / (nb * p * p) ** 0.5).to(wdtype).requires_grad_()
    b = torch.randn(D, device=device).to(wdtype).requires_grad_()
    kw = dict(mean=mean, std=std, patch_size=p, bands=bands)
    if head == "ln":
        kw.update(ln_weight=(torch.rand(D, device=device) + 0.5).to(wdtype).requires_grad_(),
                  ln_bias=torch.randn(D, device=device).to(wdtype).requires_grad_())
    if head == "pos":
        kw["pos_embed"] = torch.randn(1, (H // p) * (W // p), D, device=device).to(wdtype).requires_grad_()
    return x, w, b, kw


def _run(x, w, b, kw, impl, dy):
    y = ms_patch_embed(x, w, b, impl=impl, **kw)
    params = [t for t in (x, w, b, kw.get("ln_weight"), kw.get("ln_bias"), kw.get("pos_embed"))
              if t is not None and t.requires_grad]
    return y.detach(), torch.autograd.grad(y, params, dy)


# (B, C, H, W, p, bands, D, head): band subsets in any order and repeated, non-power-of-two D, 1 and 32 bands,
# patches 4/8/14/16, rectangular images
GRID = [
    (2, 6, 16, 16, 4, (5, 0, 2, 3), 24, "ln"),
    (2, 5, 8, 12, 4, None, 20, "pos"),
    (1, 3, 16, 16, 8, (2, 2, 1), 48, "ln"),
    (1, 2, 28, 14, 14, None, 16, None),
    (1, 1, 16, 32, 16, None, 32, "pos"),
    (1, 32, 8, 8, 4, None, 16, "ln"),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: f"C{c[1]}p{c[4]}D{c[6]}{c[7]}")
@pytest.mark.parametrize("xdtype", [torch.uint16, torch.float32, torch.bfloat16], ids=str)
def test_grid(kp, seed, case, xdtype):
    B, C, H, W, p, bands, D, head = case
    x, w, b, kw = _case(B, C, H, W, p, bands, D, head, xdtype)
    if xdtype != torch.uint16:
        x.requires_grad_()  # optional input gradient
    dy = torch.randn(ms_patch_embed_ref(x, w, b, **kw).shape, device=DEV)
    y1, g1 = _run(x, w, b, kw, "triton", dy)
    y2, g2 = _run(x, w, b, kw, "torch", dy)
    assert torch.isfinite(y1).all()
    rtol, atol = TOLERANCES["float32_long"]  # inputs of any dtype are normalised and multiplied in fp32
    tt.assert_close(y1, y2, rtol=rtol, atol=atol * 10)
    for a, r in zip(g1, g2):  # a bf16 input's gradient is rounded to bf16
        assert torch.isfinite(a).all()
        grtol, gatol = (rtol, 1e-4) if r.dtype == torch.float32 else TOLERANCES[str(r.dtype)[6:]]
        tt.assert_close(a.float(), r.float(), rtol=grtol, atol=gatol * max(1.0, r.float().abs().max().item()))


def test_layernorm_rows(kp, seed):
    "With unit LayerNorm parameters every token is zero-mean, unit-variance, NHWC."
    x, w, b, kw = _case(2, 4, 16, 8, 4, None, 40, None, torch.uint16)
    y = ms_patch_embed(x, w, b, impl="triton", ln_weight=torch.ones(40, device=DEV), ln_bias=torch.zeros(40, device=DEV), **kw)
    assert y.shape == (2, 4, 2, 40)
    tt.assert_close(y.mean(-1), torch.zeros(2, 4, 2, device=DEV), atol=1e-5, rtol=0)
    tt.assert_close(y.var(-1, unbiased=False), torch.ones(2, 4, 2, device=DEV), atol=1e-3, rtol=0)


@pytest.mark.parametrize("wdtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_weights(kp, seed, wdtype):
    "Half-precision parameters: output in the weight dtype, fp32 inside the kernel."
    x, w, b, kw = _case(2, 4, 16, 16, 4, (3, 1), 32, "ln", torch.uint16, wdtype)
    dy = torch.randn(2, 4, 4, 32, device=DEV).to(wdtype)
    y1, g1 = _run(x, w, b, kw, "triton", dy)
    y2, g2 = _run(x, w, b, kw, "torch", dy)
    rtol, atol = TOLERANCES[str(wdtype).split(".")[1]]
    assert y1.dtype == wdtype
    tt.assert_close(y1.float(), y2.float(), rtol=rtol, atol=atol)
    for a, r in zip(g1, g2):
        tt.assert_close(a.float(), r.float(), rtol=rtol, atol=atol * max(1.0, r.float().abs().max().item()))


def test_module_drop_in(kp, seed):
    torch.manual_seed(seed)
    m1 = MSPatchEmbed(12, 24, 4, mean=[1000.0] * 12, std=[500.0] * 12, bands=range(10), impl="triton").to(DEV)
    m2 = MSPatchEmbed(12, 24, 4, mean=[1000.0] * 12, std=[500.0] * 12, bands=range(10), impl="torch").to(DEV)
    m2.load_state_dict(m1.state_dict())
    x = torch.randint(0, 10000, (2, 12, 16, 16), device=DEV).to(torch.uint16)
    y1, y2 = m1(x), m2(x)
    tt.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        tt.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4, msg=n)
    vit = MSPatchEmbed(13, 32, 16, norm=None, img_size=32, impl="triton").to(DEV)
    assert vit(torch.randn(2, 13, 32, 32, device=DEV)).shape == (2, 4, 32)


# ---- bad input ----

def test_bad_input():
    x, w, b = torch.zeros(1, 5, 16, 16), torch.zeros(8, 3, 4, 4), torch.zeros(8)
    kw = dict(mean=None, std=None, patch_size=4)
    with pytest.raises(ValueError, match=r"bands \[0, 5, 1\] out of range for x \(1, 5, 16, 16\)"):
        ms_patch_embed(x, w, b, bands=[0, 5, 1], **kw)
    with pytest.raises(ValueError, match=r"x \(1, 5, 18, 16\): H and W must be multiples of patch_size=4"):
        ms_patch_embed(torch.zeros(1, 5, 18, 16), w, b, bands=[0, 1, 2], **kw)
    with pytest.raises(ValueError, match=r"weight must be \(D, 5, 4, 4\).*got shape \(8, 3, 4, 4\)"):
        ms_patch_embed(x, w, b, **kw)
    with pytest.raises(ValueError, match=r"weight \(8, 3, 4, 4\) is on meta"):
        ms_patch_embed(x, torch.zeros(8, 3, 4, 4, device="meta"), b, bands=[0, 1, 2], **kw)
    with pytest.raises(ValueError, match=r"mean must be \(5,\), got shape \(3,\)"):
        ms_patch_embed(x, w, b, bands=[0, 1, 2], mean=torch.zeros(3), std=None, patch_size=4)
    with pytest.raises(ValueError, match="patch_size must be one of"):
        ms_patch_embed(x, torch.zeros(8, 3, 5, 5), b, bands=[0, 1, 2], mean=None, std=None, patch_size=5)
    with pytest.raises(ValueError, match=r"pos_embed must be \(16, 8\)"):
        ms_patch_embed(x, w, b, bands=[0, 1, 2], pos_embed=torch.zeros(15, 8), **kw)


def test_triton_needs_gpu_or_interpreter(monkeypatch):
    x, w, b = torch.zeros(1, 3, 8, 8), torch.zeros(8, 3, 4, 4), torch.zeros(8)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="impl='triton' needs a CUDA tensor"):
        ms_patch_embed(x, w, b, mean=None, std=None, patch_size=4, impl="triton")
    assert ms_patch_embed(x, w, b, mean=None, std=None, patch_size=4, impl="auto").shape == (1, 4, 8)


# ---- GPU-only: the benchmark shapes ----

@pytest.mark.cuda
@pytest.mark.parametrize("case", [(8, 10, 224, 224, 4, None, 128, "ln"), (8, 13, 224, 224, 16, None, 768, "pos")],
                         ids=["swin_stem", "vit_b16_stem"])
@pytest.mark.parametrize("xdtype", [torch.uint16, torch.bfloat16], ids=str)
def test_cuda_stems(seed, monkeypatch, case, xdtype):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, w, b, kw = _case(*case, xdtype, device="cuda")
    dy = torch.randn(ms_patch_embed_ref(x, w, b, **kw).shape, device="cuda")
    y1, g1 = _run(x, w, b, kw, "triton", dy)
    y2, g2 = _run(x, w, b, kw, "torch", dy)
    tt.assert_close(y1, y2, rtol=1e-3, atol=1e-3)
    for a, r in zip(g1, g2):
        tt.assert_close(a, r, rtol=1e-3, atol=1e-3 * max(1.0, r.abs().max().item()))
