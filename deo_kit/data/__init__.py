"""Data: band registry, readers, statistics, datasets, crops.

Hand-written (not exported by a notebook): the packaged sample is reachable as `deo_kit.data.sample_eurosat()`
without importing torch when only `deo_kit.data.bands` is wanted."""


def __getattr__(name):
    if name in ("sample_eurosat", "eurosat_sample_path", "resolve_data_name"):
        from . import datasets
        return getattr(datasets, name)
    raise AttributeError(f"module 'deo_kit.data' has no attribute {name!r}")
