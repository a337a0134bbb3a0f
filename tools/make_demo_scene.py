"""Cut the embedded demo scene shipped in deo_kit/assets/s2_demo from the shared Sentinel-2 L1C scene.

Each band is cut at its native resolution (10/20/60 m) over the same ground box, whose edges lie on
every band's pixel grid, so nothing is resampled: the package carries the original pixel values.

    python tools/make_demo_scene.py ../shared/data/s2_l1c_scene deo_kit/assets/s2_demo \
        --left 439920 --top 4176480 --size 9600
"""
import argparse
import hashlib
from pathlib import Path

import rasterio
from rasterio.windows import from_bounds


def cut(src_dir: Path, out_dir: Path, left: float, top: float, size_m: float):
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in sorted(src_dir.glob("s2_*.tif")):
        with rasterio.open(f) as ds:
            win = from_bounds(left, top - size_m, left + size_m, top, ds.transform)
            if any(abs(v - round(v)) > 1e-6 for v in (win.col_off, win.row_off, win.width, win.height)):
                raise ValueError(f"{f.name}: the box does not lie on its {ds.res[0]} m pixel grid ({win})")
            win = win.round_offsets().round_lengths()
            data = ds.read(window=win)
            prof = ds.profile | dict(driver="GTiff", width=win.width, height=win.height,
                                     transform=ds.window_transform(win),
                                     compress="deflate", predictor=2, zlevel=9, tiled=False)
            with rasterio.open(out_dir / f.name, "w", **prof) as out:
                out.write(data)
                out.set_band_description(1, f.stem.split("_")[-1])
        rows.append((f.name, ds.res[0], win.height, win.width,
                     hashlib.sha256((out_dir / f.name).read_bytes()).hexdigest()[:16]))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--left", type=float, required=True, help="west edge, metres in the scene's CRS")
    p.add_argument("--top", type=float, required=True, help="north edge, metres in the scene's CRS")
    p.add_argument("--size", type=float, default=9600, help="box edge in metres (a multiple of 60)")
    a = p.parse_args()
    for r in cut(a.src, a.out, a.left, a.top, a.size):
        print(*r)
