"""Decoding of COCO segmentations into binary masks with pycocotools."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .errors import ReferDataError


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
    try:
        if isinstance(segmentation, dict):
            if "counts" not in segmentation or "size" not in segmentation:
                raise ReferDataError(f"{where}: RLE segmentation needs 'counts' and 'size' keys, got {sorted(segmentation)}.")
            if isinstance(segmentation["counts"], (list, tuple)):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                counts = segmentation["counts"]
                rle = {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
            if tuple(rle["size"]) != (height, width):
                raise ReferDataError(f"{where}: RLE size {list(rle['size'])} does not match the image size {[height, width]}.")
        elif isinstance(segmentation, (list, tuple)):
            polygons = [segmentation] if not isinstance(segmentation[0], (list, tuple)) else segmentation
            polygons = [list(map(float, polygon)) for polygon in polygons]
            if any(len(polygon) < 6 or len(polygon) % 2 for polygon in polygons):
                raise ReferDataError(f"{where}: every polygon needs an even number (>= 6) of coordinates.")
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
