"""Hand-written Triton kernels, installed as `deo_kit.kernels`.

One file per op: private `@triton.jit` kernels, their launchers and one `torch.autograd.Function`.
The plain-torch references that define each op live in the exported modules (`deo_kit.loss.dino`,
`deo_kit.layers.patch_embed`); `impl="auto"|"torch"|"triton"` picks between them.
"""
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # Triton is Linux-only and an optional extra
    HAS_TRITON = False
