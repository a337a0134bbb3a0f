"""Feature-map inspection: band composites, PCA and similarity maps, the `FeatureMapInspector` widget, run plots.

Hand-written (not exported by a notebook): re-exports the inspector lazily so `import deo_kit.viz` stays light."""


def __getattr__(name):
    if name in ("FeatureMapInspector", "InspectorError"):
        from . import inspector
        return getattr(inspector, name)
    raise AttributeError(f"module 'deo_kit.viz' has no attribute {name!r}")
