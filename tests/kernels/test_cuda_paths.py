"""GPU-only checks of the compiled kernels (run by tools/gpu_check.sh with DEO_KIT_GPU_CHECK=1; skipped elsewhere).

What the interpreter cannot show: TF32 vs IEEE GEMMs with fp32 input (training's case: normalised fp32 crops, no
mean/std, all bands), bf16 on the device, fp16 gradients under GradScaler's 2^16, LayerNorm up to D = 768,
Sinkhorn-Knopp at K = 65,536, odd batch sizes, determinism, and 20 bf16 training steps with the fused paths on vs off.
Tolerances: `GPU_TOLERANCES` and `TOLERANCES` in tests/conftest.py."""
import pytest
import torch
import torch.nn.functional as F
import torch.testing as tt

from conftest import GPU_TOLERANCES, TOLERANCES
from deo_kit.layers.patch_embed import ms_patch_embed
from deo_kit.loss.dino import dino_loss

pytestmark = pytest.mark.cuda
KW = dict(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)


def _relerr(a, ref):
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _stem64(x, w, b, mean, std, p, lnw, lnb, pos):
    "fp64 reference of the stem: normalise, Conv2d(stride=p), LayerNorm (NHWC) or + pos-embed (B N D)."
    xf = x.double()
    if mean is not None:
        xf = (xf - mean.double()[:, None, None]) / std.double()[:, None, None]
    y = F.conv2d(xf, w.double(), None if b is None else b.double(), stride=p)
    if lnw is not None:
        return F.layer_norm(y.permute(0, 2, 3, 1), (w.shape[0],), lnw.double(), lnb.double(), 1e-5)
    y = y.flatten(2).transpose(1, 2)
    return y + pos.double() if pos is not None else y


# (name, B, C, px, p, D, head, x dtype, param dtype, precision): odd batches, Swin-T/B and ViT widths, LN to D = 768
STEMS = [
    ("swinT_fp32x_tf32", 3, 10, 64, 4, 96, "ln", torch.float32, torch.float32, "tf32"),
    ("swinT_fp32x_ieee", 3, 10, 64, 4, 96, "ln", torch.float32, torch.float32, "ieee"),
    ("swinB_bf16x_tf32", 5, 10, 96, 4, 128, "ln", torch.bfloat16, torch.float32, "tf32"),
    ("swinB_u16_ieee", 5, 10, 96, 4, 128, "ln", torch.uint16, torch.float32, "ieee"),
    ("swinB_bf16params", 7, 10, 64, 4, 128, "ln", torch.float32, torch.bfloat16, "tf32"),
    ("ln384_p8", 3, 13, 64, 8, 384, "ln", torch.float32, torch.float32, "tf32"),
    ("ln768_p16_tf32", 3, 13, 224, 16, 768, "ln", torch.float32, torch.float32, "tf32"),
    ("ln768_p16_ieee", 3, 13, 224, 16, 768, "ln", torch.float32, torch.float32, "ieee"),
    ("vitS_p14_pos", 3, 3, 224, 14, 384, "pos", torch.float32, torch.float32, "tf32"),
    ("vitB_p16_pos_bf16x", 5, 13, 224, 16, 768, "pos", torch.bfloat16, torch.float32, "tf32"),
]


@pytest.mark.parametrize("case", STEMS, ids=lambda c: c[0])
def test_cuda_stem_vs_fp64(seed, monkeypatch, case):
    _, B, C, px, p, D, head, xdt, wdt, prec = case
    if hasattr(torch.backends.cudnn, "conv"):
        monkeypatch.setattr(torch.backends.cudnn.conv, "fp32_precision", prec)
    else:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", prec == "tf32")
    dev = "cuda"
    if xdt == torch.uint16:
        x = torch.randint(0, 12000, (B, C, px, px), device=dev).to(torch.uint16)
        mean, std = torch.rand(C, device=dev) * 2000, torch.rand(C, device=dev) * 1000 + 200
    else:  # training's input: normalised crops, no statistics in the stem
        x, mean, std = torch.randn(B, C, px, px, device=dev).to(xdt), None, None
    w = (torch.randn(D, C, p, p, device=dev) / (C * p * p) ** 0.5).to(wdt).requires_grad_()
    b = (torch.randn(D, device=dev) * 0.1).to(wdt).requires_grad_()
    lnw = (torch.rand(D, device=dev) + 0.5).to(wdt).requires_grad_() if head == "ln" else None
    lnb = (torch.randn(D, device=dev) * 0.1).to(wdt).requires_grad_() if head == "ln" else None
    pos = (torch.randn(1, (px // p) ** 2, D, device=dev) * 0.1).to(wdt).requires_grad_() if head == "pos" else None
    y = ms_patch_embed(x, w, b, mean=mean, std=std, patch_size=p, ln_weight=lnw, ln_bias=lnb, pos_embed=pos,
                       impl="triton")
    params = [t for t in (w, b, lnw, lnb, pos) if t is not None]
    leaves = [t.detach().double().requires_grad_() for t in params]
    ref = _stem64(x, *leaves[:2], mean, std, p, *(leaves[2:4] if head == "ln" else (None, None)),
                  leaves[2] if head == "pos" else None)
    tol = GPU_TOLERANCES[str(wdt)[6:] if wdt != torch.float32 else prec]
    assert torch.isfinite(y).all()
    assert _relerr(y, ref) <= tol, f"output rel. error {_relerr(y, ref):.2e} > {tol}"
    dy = torch.randn(y.shape, device=dev, dtype=torch.float64)
    grads = torch.autograd.grad(y, params, dy.to(y.dtype))
    refs = torch.autograd.grad(ref, leaves, dy)
    for name, g, r in zip(("weight", "bias", "ln_weight/pos", "ln_bias"), grads, refs):
        assert _relerr(g, r) <= 2 * tol, f"{name} grad rel. error {_relerr(g, r):.2e} > {2 * tol}"


@pytest.mark.parametrize("B", [64, 37], ids=["B64", "B37"])
def test_cuda_dino_fp16_grad_scaler(seed, B):
    "fp16 logits at DINOv2 size with GradScaler's 2^16 (the step DINOv2's fp16 recipe takes every time)."
    torch.manual_seed(seed)
    s = (torch.randn(12, B, 65536, device="cuda") * 3).half().requires_grad_()
    t = (torch.randn(2, B, 65536, device="cuda") * 3).half()
    c = torch.randn(65536, device="cuda") * 0.1
    out = []
    for impl in ("triton", "torch"):
        loss, _ = dino_loss(s, t, c, impl=impl, **KW)
        out.append(torch.autograd.grad(loss * 65536.0, s)[0])
    g1, g2 = out
    assert torch.isfinite(g1).all() == torch.isfinite(g2).all()
    rtol, atol = TOLERANCES["float16"]
    tt.assert_close(g1.float(), g2.float(), rtol=rtol, atol=atol * g2.float().abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_sinkhorn_k65536_odd_batch_masked(seed, dtype):
    torch.manual_seed(seed)
    s = (torch.randn(12, 63, 65536, device="cuda") * 3).to(dtype).requires_grad_()
    t = (torch.randn(2, 63, 65536, device="cuda") * 3).to(dtype)
    mask = torch.rand(63, device="cuda") > 0.2
    res = []
    for impl in ("triton", "torch"):
        loss, _ = dino_loss(s, t, None, impl=impl, centering="sinkhorn_knopp", row_mask=mask, **KW)
        res.append((loss.detach(), torch.autograd.grad(loss, s)[0]))
    (l1, g1), (l2, g2) = res
    tt.assert_close(l1, l2, rtol=TOLERANCES["float32_long"][0], atol=TOLERANCES["float32_long"][1])
    rtol, atol = TOLERANCES["float32_long" if dtype == torch.float32 else "bfloat16"]
    tt.assert_close(g1.float(), g2.float(), rtol=rtol, atol=(2e-5 if dtype == torch.float32 else atol) * g2.float().abs().max().item())
    assert (g1[:, ~mask] == 0).all()


def test_cuda_dino_eval_path_and_determinism(seed):
    "The no-grad (evaluation) path equals the training loss, and two runs are bitwise equal (no atomics)."
    torch.manual_seed(seed)
    s = torch.randn(12, 33, 65536, device="cuda", requires_grad=True)
    t, c = torch.randn(2, 33, 65536, device="cuda"), torch.randn(65536, device="cuda") * 0.1
    runs = []
    for _ in range(2):
        loss, center = dino_loss(s, t, c, impl="triton", **KW)
        runs.append((loss.detach(), torch.autograd.grad(loss, s)[0], center))
    with torch.no_grad():
        l_eval, _ = dino_loss(s, t, c, impl="triton", **KW)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    tt.assert_close(l_eval, runs[0][0], rtol=1e-6, atol=0)
    l_ref, _ = dino_loss(s, t, c, impl="torch", **KW)
    tt.assert_close(l_eval, l_ref.detach(), rtol=TOLERANCES["float32_long"][0], atol=TOLERANCES["float32_long"][1])


def test_cuda_train_swin_b_fused_on_off(seed):
    "20 bf16 steps of deo-swin-b at 16 images: the fused kernels (impl='triton') give the torch path's losses."
    from deo_kit.bench.step import StepBench
    from deo_kit.config import load_config
    from deo_kit.config import validate_config
    import timm
    teacher = next(n for n in ("vit_base_patch16_dinov3", "vit_base_patch14_dinov2") if timm.list_models(n))  # older timm
    cfg = validate_config(load_config("deo-swin-b", overrides={
        "teacher": {"path": f"random:{teacher}", "arch": None}, "optim": {"batch_size": 16},
        "train": {"precision": "bf16", "steps": 100}}))
    losses = {}
    for impl in ("torch", "triton"):
        sb = StepBench(cfg, "cuda", impl=impl, seed=0)
        losses[impl] = torch.stack([sb.step()["total"].detach().float() for _ in range(20)]).cpu()
        del sb
        torch.cuda.empty_cache()
    a, b = losses["triton"], losses["torch"]
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    tol = GPU_TOLERANCES["bf16_train_loss"]
    assert ((a - b).abs() <= tol * b.abs()).all(), f"fused {a.tolist()}\ntorch {b.tolist()}"
