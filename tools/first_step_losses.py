"""Every shipped preset's first-step loss terms, to check that a config refactor changes no numbers.

Each preset is built as users build it (`load_config(preset)`), given a random optical teacher and CPU-sized
overrides (batch 2, 2 local crops, small crops where the preset's are 224 px, a shallow Swin), seeded, and trained
for two steps through `pretrain` on the embedded demo scene (the second step's terms see the optimiser settings:
learning rates, frozen parts). The script prints every logged term of both steps with full float precision; run it
before and after a change and `diff` the outputs.

    python tools/first_step_losses.py > before.txt   # ... change ...
    python tools/first_step_losses.py > after.txt && diff before.txt after.txt
"""
import csv, os, sys, tempfile, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deo_kit.config import load_config, merge
from deo_kit.train.loop import pretrain

TINY = {"optim": {"batch_size": 2, "warmup_epochs": None},  # epochs off: the paper presets run in epochs (train.epochs)
        "train": {"steps": 2, "epochs": None, "checkpoint_every": 1, "log_every": 1, "device": "cpu"}}
# per preset: a random teacher of the preset's architecture, and crops / trunk small enough for a 2-core CPU
PRESETS = {
    "demo": {"teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None}, "crops": {"n_local": 2}},
    "small": {"teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None}, "crops": {"n_local": 2}},
    "small-spectral": {"teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None}, "crops": {"n_local": 2}},
    "dino-vit-s": {"teacher": {"path": "random:vit_small_patch14_dinov2", "arch": None, "img_size": 56},
                   "crops": {"global_size": 64, "local_size": 32, "n_local": 2}},
    # the paper's presets: architecture kept, trunk shrunk (the 224 px / 88M-parameter run does not fit this check)
    "deo-swin-b": {"teacher": {"path": "random:vit_base_patch16_dinov3", "arch": None, "img_size": 64},
                   "crops": {"global_size": 64, "local_size": 32, "n_local": 2},
                   "student": {"kwargs": {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 2]}}},
    "deo-vit-b": {"teacher": {"path": "random:vit_base_patch16_dinov3", "arch": None, "img_size": 64},
                  "crops": {"global_size": 64, "local_size": 32, "n_local": 2},
                  "student": {"kwargs": {"embed_dim": 64}}},  # 12 blocks: vit_layers 'reference' reads 5 and 11
}
SKIP = {"images_per_s", "step"}  # wall-clock, not a loss


def first_steps(preset: str) -> list[dict]:
    "The metrics rows of steps 0 and 1 for `preset` with its CPU overrides."
    cfg = merge(merge(load_config(preset), TINY), PRESETS[preset])
    with tempfile.TemporaryDirectory() as d:
        pretrain(cfg, out_dir=os.path.join(d, "run"), progress=False)
        with open(os.path.join(d, "run", "metrics.csv")) as f: return list(csv.DictReader(f))


if __name__ == "__main__":
    for name in sys.argv[1:] or PRESETS:
        t0 = time.perf_counter()
        for row in first_steps(name):
            print(f"[{name} step {row['step']}]")
            for k in sorted(set(row) - SKIP): print(f"  {k} = {row[k]}")
        print(f"  # {time.perf_counter() - t0:.0f} s", file=sys.stderr)
