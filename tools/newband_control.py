"""A control for `optim.ms_stem_train=new_bands` runs: `python tools/newband_control.py RUN --out DIR [--seed 0]`.

Copies the run's latest checkpoint with the MS stem's non-RGB band weights (student and EMA teacher) replaced by random
ones of the same per-band norm, so a probe can tell what the trained directions add from what any new-band weights of
that size do. The evaluation tutorial's rows c0 and c1 are seeds 0 and 1 of E19."""
import argparse, shutil
from pathlib import Path
import torch, yaml
from safetensors.torch import load_file, save_file
from deo_kit.data.bands import get_band_set, rgb_indices
from deo_kit.checkpoint import latest_checkpoint


def randomise_new_bands(state: dict, rgb_idx: list[int], seed: int) -> dict:
    "The state with every MS stem's non-RGB input columns redrawn at random, each keeping its norm."
    g, out = torch.Generator().manual_seed(seed), dict(state)
    for key in [k for k in state if k.endswith("ms_stem.proj.weight")]:
        w = state[key].clone()
        for i in [i for i in range(w.shape[1]) if i not in rgb_idx]:
            r = torch.randn(w[:, i].shape, generator=g); w[:, i] = r * (state[key][:, i].norm() / r.norm())
        out[key] = w.contiguous()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a `deo pretrain` run folder")
    p.add_argument("--out", type=Path, required=True, help="the control run folder to write")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    src = latest_checkpoint(a.run)
    dst = a.out / "checkpoints" / src.name
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(a.run / "config.yaml", a.out / "config.yaml")
    shutil.copy(a.run / "checkpoints" / "latest", a.out / "checkpoints" / "latest")
    shutil.copy(src / "state.json", dst / "state.json")
    bands = yaml.safe_load((a.run / "config.yaml").read_text())["data"]["bands"]
    state = randomise_new_bands(load_file(src / "model.safetensors"), rgb_indices(get_band_set(bands)), a.seed)
    save_file(state, dst / "model.safetensors")
    print(f"wrote {dst} (new-band weights of {a.run} redrawn, seed {a.seed})")


if __name__ == "__main__":
    main()
