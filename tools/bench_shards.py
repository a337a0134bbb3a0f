"""Shard write and read throughput (patches/s) on this machine:
`python tools/bench_shards.py SCENE [--size 64] [--workers 2]`.

Writes SCENE's patches into a temporary shard folder with `write_shards`, then streams them back through a
DataLoader over `ShardDataset` with the given number of workers. A benchmark, not a test: nothing is asserted."""
import argparse, tempfile, time
from pathlib import Path
import torch
from deo_kit.data.shards import ShardDataset, collate_patches, write_shards


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", help="a scene file, per-band folder, SAFE folder or STAC item")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ix = write_shards([a.scene], Path(tmp) / "shards", size=a.size, shard_size=a.shard_size, progress=False)
        w = time.perf_counter() - t0
        ds = ShardDataset(Path(tmp) / "shards", shuffle=True)
        dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=a.workers, collate_fn=collate_patches)
        t0, n = time.perf_counter(), 0
        for x, _ in dl: n += len(x)
        r = time.perf_counter() - t0
    print(f"{ix['count']} patches of {a.size} px, {len(ix['shards'])} shards")
    print(f"write: {w:.2f} s, {ix['count'] / w:.0f} patches/s (1 process)")
    print(f"read:  {r:.2f} s, {n / r:.0f} patches/s ({a.workers} workers, batch {a.batch}, shuffled, incl. worker "
          "start-up)")


if __name__ == "__main__":
    main()
