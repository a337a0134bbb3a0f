"""A small reader for the striped GeoTIFFs deo_kit ships (numpy + zlib only), for machines without rasterio.

The GPU machine's image has no raster stack, yet its check trains on the embedded scene and probes on the packaged
EuroSAT-MS sample. Those files are classic little/big-endian TIFFs in strips: uncompressed or deflate, predictor 1
or 2 (horizontal differencing), integer or float samples, one or several per pixel (chunky). Anything else raises
a clear error; georeferencing is not read (the check needs the pixels only)."""
import struct
import zlib
from pathlib import Path

import numpy as np

_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
_TAGS = dict(width=256, height=257, bits=258, compression=259, strip_offsets=273, spp=277, rows_per_strip=278,
             strip_counts=279, planar=284, predictor=317, sample_format=339)


def _ifd0(buf: bytes):
    "Tag number -> tuple of values of the first image file directory."
    end = {b"II": "<", b"MM": ">"}.get(buf[:2])
    if end is None or struct.unpack(end + "H", buf[2:4])[0] != 42:
        raise ValueError("not a classic TIFF (BigTIFF and other containers are not supported)")
    off = struct.unpack(end + "I", buf[4:8])[0]
    n = struct.unpack(end + "H", buf[off:off + 2])[0]
    tags = {}
    for i in range(n):
        tag, typ, count, val = struct.unpack(end + "HHI4s", buf[off + 2 + 12 * i: off + 14 + 12 * i])
        if typ not in _TYPES:
            continue  # ASCII / RATIONAL / DOUBLE tags (georeferencing) are not needed
        size = struct.calcsize(_TYPES[typ]) * count
        raw = val[:size] if size <= 4 else buf[struct.unpack(end + "I", val)[0]:][:size]
        tags[tag] = struct.unpack(end + _TYPES[typ] * count, raw)
    return end, tags


def read_tiff(path) -> np.ndarray:
    "Pixels of a striped TIFF as (bands, height, width) in the file's sample type."
    path = Path(path)
    buf = path.read_bytes()
    try:
        end, t = _ifd0(buf)
    except (ValueError, struct.error) as e:
        raise ValueError(f"{path}: {e}") from None
    get = lambda k, d=None: t.get(_TAGS[k], (d,))  # noqa: E731
    w, h, spp = get("width")[0], get("height")[0], get("spp", 1)[0]
    bits, fmt = get("bits", 8)[0], get("sample_format", 1)[0]
    comp, pred, planar = get("compression", 1)[0], get("predictor", 1)[0], get("planar", 1)[0]
    if comp not in (1, 8, 32946) or pred not in (1, 2) or (planar != 1 and spp > 1):
        raise ValueError(f"{path}: compression {comp}, predictor {pred}, planar {planar} not supported (deflate or "
                         "none, "
                         "predictor 1/2, chunky)")
    if _TAGS["strip_offsets"] not in t:
        raise ValueError(f"{path}: a tiled TIFF; only striped files are supported")
    kind = {1: "u", 2: "i", 3: "f"}[fmt]
    dtype = np.dtype(f"{end}{kind}{bits // 8}")
    data = b"".join(buf[o:o + c] if comp == 1 else zlib.decompress(buf[o:o + c])
                    for o, c in zip(t[_TAGS["strip_offsets"]], t[_TAGS["strip_counts"]]))
    px = np.frombuffer(data, dtype=dtype, count=h * w * spp).reshape(h, w, spp)
    if pred == 2:  # horizontal differencing: a running sum along each row, per sample, in the sample type
        px = np.cumsum(px, axis=1, dtype=dtype)
    return np.ascontiguousarray(px.transpose(2, 0, 1)).astype(dtype.newbyteorder("="))
