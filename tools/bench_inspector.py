"""Build time of the feature-map inspector: 4 images x 2 encoders (teacher, init:small) on the packaged EuroSAT-MS
sample, after the models are loaded; the state alone, then with the Bokeh view rendered (issue 19's <= 5 s target).

Usage: HF_HUB_OFFLINE=1 python tools/bench_inspector.py
"""
import time

import holoviews as hv
import torch

from deo_kit.data.datasets import sample_eurosat
from deo_kit.eval.encoders import load_encoder
from deo_kit.viz.inspector import FeatureMapInspector


def main(reps: int = 3):
    print("torch threads", torch.get_num_threads())
    encoders = {"teacher": load_encoder("teacher"), "init:small": load_encoder("init:small")}
    data = sample_eurosat(split="test")
    for rep in range(reps):
        t0 = time.perf_counter()
        inspector = FeatureMapInspector(encoders, data, index=4 * rep, count=4)
        t1 = time.perf_counter()
        hv.render(inspector.view(), backend="bokeh")
        t2 = time.perf_counter()
        print(f"run {rep}: state {t1 - t0:.2f} s, + bokeh view {t2 - t0:.2f} s")


if __name__ == "__main__":
    main()
