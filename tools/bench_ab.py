"""Optimised vs straightforward training step, interleaved in one process:
`python tools/bench_ab.py [--arch swin_t] [--images 2] [--iters 6]`.

On a shared machine the same work drifts by 10-20 % between runs, so comparing two `deo bench step` processes mixes
the change with the drift. Here one model is switched between its fast paths and torchvision's blocks
(`use_fast_paths(model, on)`, in place, same weights) at alternate iterations, and the per-iteration differences are
paired. A benchmark, not a test: nothing is asserted."""
import argparse, statistics
import torch
from deo_kit.bench.step import StepBench, bench_config, timed_step
from deo_kit.models.fast import use_fast_paths


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="swin_t")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--iters", type=int, default=6, help="timed iterations per mode")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sb = StepBench(bench_config(a.arch, a.images), "cpu")
    for _ in range(2): timed_step(sb)  # warm-up
    walls = {True: [], False: []}
    for i in range(a.iters):
        for on in ((True, False) if i % 2 == 0 else (False, True)):  # alternate which mode goes first
            use_fast_paths(sb.model, on)
            walls[on].append(timed_step(sb)[0])
    for on, name in ((False, "straightforward"), (True, "optimised")):
        w = walls[on]
        print(f"{name:<16} median {statistics.median(w):.3f} s/it (min {min(w):.3f}, max {max(w):.3f})")
    d = [f - s for f, s in zip(walls[True], walls[False])]
    print(f"optimised - straightforward, paired: {statistics.mean(d):+.3f} ± {statistics.stdev(d) / len(d) ** 0.5:.3f} "
          f"s (mean ± SE, n={len(d)}); "
          f"ratio of medians {statistics.median(walls[True]) / statistics.median(walls[False]):.3f}")


if __name__ == "__main__":
    main()
