"""Decoding of COCO segmentations into binary masks with pycocotools."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .errors import ReferDataError

#: Largest mask decoded, in pixels (PIL's decompression-bomb error threshold is of the same order): every size read
#: from a file is checked against it before pycocotools allocates anything.
MAX_MASK_PIXELS = 20_000 * 20_000


def compressed_rle_counts(counts: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' `rleFrString`, re-implemented to check them).

    pycocotools decodes whatever it is given, reading past the runs into uninitialised memory when they do not
    cover the mask; reading the runs here first lets `decode_segmentation` refuse such input.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the string ends inside a run length")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise ValueError(f"byte {counts[position]!r} at {position} is not an RLE character")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_runs(runs: list[int], height: int, width: int, where: str) -> None:
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ReferDataError(
            f"{where}: RLE run lengths must be non-negative and cover the {height}x{width} mask exactly "
            f"(they sum to {sum(runs)})."
        )


def decode_segmentation(segmentation: Any, height: int, width: int, *, where: str = "segmentation") -> np.ndarray:
    """Decode a COCO segmentation into a 0/1 mask, as the refer toolkit's ``getMask`` does.

    Args:
        segmentation: one of
            - a list of polygons, each a flat ``[x0, y0, x1, y1, ...]`` list (all polygons are merged);
            - a flat polygon (a list of numbers), as ``lmms-lab/RefCOCO*`` stores it;
            - an uncompressed RLE dict ``{"size": [h, w], "counts": [int, ...]}``;
            - a compressed RLE dict ``{"size": [h, w], "counts": str | bytes}``.
        height: image height in pixels.
        width: image width in pixels.
        where: description of the source (file and annotation id) used in error messages.

    Returns:
        ``np.uint8`` array of shape ``(height, width)`` with values in ``{0, 1}``.

    Raises:
        ReferDataError: the segmentation is missing, empty or malformed.
    """
    if segmentation is None or (isinstance(segmentation, (list, tuple)) and len(segmentation) == 0):
        raise ReferDataError(f"{where}: annotation has no segmentation; it cannot be turned into a mask.")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise ReferDataError(f"{where}: the image size must be positive integers, got {height!r} x {width!r}.")
    height, width = int(height), int(width)
    if height * width > MAX_MASK_PIXELS:
        raise ReferDataError(f"{where}: a {width}x{height} mask is larger than the {MAX_MASK_PIXELS} pixels accepted.")
    try:
        if isinstance(segmentation, dict):
            if "counts" not in segmentation or "size" not in segmentation:
                raise ReferDataError(f"{where}: RLE segmentation needs 'counts' and 'size' keys, got {sorted(segmentation)}.")
            size = segmentation["size"]
            if not isinstance(size, (list, tuple)) or [*size] != [height, width]:
                raise ReferDataError(f"{where}: RLE size {size!r} does not match the image size {[height, width]}.")
            counts = segmentation["counts"]
            if isinstance(counts, (list, tuple)):
                if not all(isinstance(run, (int, np.integer)) and not isinstance(run, bool) for run in counts):
                    raise ReferDataError(f"{where}: uncompressed RLE counts must be integers.")
                _check_runs([int(run) for run in counts], height, width, where)
                rle = mask_utils.frPyObjects(segmentation, height, width)
            elif isinstance(counts, (str, bytes)):
                counts = counts.encode("ascii", errors="replace") if isinstance(counts, str) else counts
                try:
                    runs = compressed_rle_counts(counts)
                except ValueError as error:
                    raise ReferDataError(f"{where}: malformed compressed RLE ({error}).") from None
                _check_runs(runs, height, width, where)
                rle = {"size": [height, width], "counts": counts}
            else:
                raise ReferDataError(f"{where}: RLE counts must be a list of integers or a string, got {type(counts).__name__}.")
        elif isinstance(segmentation, (list, tuple)):
            polygons = [segmentation] if not isinstance(segmentation[0], (list, tuple)) else segmentation
            polygons = [list(map(float, polygon)) for polygon in polygons]
            if any(len(polygon) < 6 or len(polygon) % 2 for polygon in polygons):
                raise ReferDataError(f"{where}: every polygon needs an even number (>= 6) of coordinates.")
            # pycocotools rasterises the outline at 5x: a coordinate of 1e12 asks for terabytes (and 1e8 crashes it).
            for polygon in polygons:
                xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
                if not (np.isfinite(polygon).all() and (np.abs(xs - width / 2) <= 1.5 * width).all()
                        and (np.abs(ys - height / 2) <= 1.5 * height).all()):
                    raise ReferDataError(
                        f"{where}: polygon coordinates must be finite and near the {width}x{height} image "
                        f"(got x in [{xs.min():.6g}, {xs.max():.6g}], y in [{ys.min():.6g}, {ys.max():.6g}])."
                    )
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        else:
            raise ReferDataError(f"{where}: unsupported segmentation type {type(segmentation).__name__}.")
        with warnings.catch_warnings():
            # pycocotools passes copy=False to numpy 2 and warns on every decode; nothing to act on.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            decoded = mask_utils.decode(rle)
    except ReferDataError:
        raise
    except Exception as error:  # pycocotools raises bare exceptions on malformed input
        raise ReferDataError(f"{where}: cannot decode segmentation ({type(error).__name__}: {error}).") from None
    return (decoded > 0).astype(np.uint8)
