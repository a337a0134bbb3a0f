"""Copy the small labelled EuroSAT-MS sample shipped in deo_kit/assets/eurosat_sample from the shared subset.

Per class: the first N_TRAIN files of train/ and the first N_TEST of test/ (sorted by name), bytes unchanged,
so each file's git blob sha1 still matches the source manifest. Writes manifest.csv beside the copies.

    python tools/make_eurosat_sample.py ../shared/data/eurosat_ms_subset deo_kit/assets/eurosat_sample
"""
import argparse
import csv
import hashlib
import shutil
from pathlib import Path

N_TRAIN, N_TEST = 8, 2


def blob_sha1(path: Path) -> str:
    "git's blob id of a file (what the source manifest records)."
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def copy_sample(src: Path, out: Path):
    rows = {(r["split"], r["class"], r["filename"]): r for r in csv.DictReader(open(src / "manifest.csv"))}
    picked = []
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for cls in sorted(d.name for d in (src / split).iterdir() if d.is_dir()):
            for f in sorted((src / split / cls).glob("*.tif"))[:n]:
                row = rows[(split, cls, f.name)]
                if blob_sha1(f) != row["git_blob_sha1"]: raise ValueError(f"{f}: sha1 differs from the source manifest")
                (out / split / cls).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / split / cls / f.name)
                picked.append(row)
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(picked[0]))
        w.writeheader(); w.writerows(picked)
    return picked


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path); ap.add_argument("out", type=Path)
    a = ap.parse_args()
    rows = copy_sample(a.src, a.out)
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"{len(rows)} files, {size / 1e6:.2f} MB in {a.out}")
