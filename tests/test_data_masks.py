"""decode_segmentation: every COCO encoding, and clear errors on malformed ones."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from magnet_hf.data import ReferDataError, decode_segmentation


def test_encodings_agree_on_the_same_shape():
    expected = np.zeros((12, 16), dtype=np.uint8)
    expected[2:9, 3:11] = 1
    compressed = mask_utils.encode(np.asfortranarray(expected))
    as_text = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    for segmentation in (compressed, as_text):
        np.testing.assert_array_equal(decode_segmentation(segmentation, 12, 16), expected)
    flat = expected.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    np.testing.assert_array_equal(decode_segmentation({"size": [12, 16], "counts": counts}, 12, 16), expected)
    polygon = [3.0, 2.0, 11.0, 2.0, 11.0, 9.0, 3.0, 9.0]
    nested = decode_segmentation([polygon], 12, 16)
    np.testing.assert_array_equal(decode_segmentation(polygon, 12, 16), nested)  # flat (lmms) form
    assert nested.dtype == np.uint8 and set(np.unique(nested)) == {0, 1}


def test_overlapping_polygons_stay_binary():
    square = [1.0, 1.0, 8.0, 1.0, 8.0, 8.0, 1.0, 8.0]
    merged = decode_segmentation([square, square], 10, 10)
    assert merged.max() == 1
    np.testing.assert_array_equal(merged, decode_segmentation([square], 10, 10))


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        (None, "no segmentation"),
        ([], "no segmentation"),
        ([[1.0, 1.0, 5.0, 5.0]], "even number"),
        ([[1.0, 1.0, 5.0, 5.0, 3.0]], "even number"),
        ({"counts": "abc"}, "needs 'counts' and 'size'"),
        ({"size": [5, 5], "counts": [25]}, r"RLE size \[5, 5\] does not match the image size \[10, 10\]"),
        ("polygon", "unsupported segmentation type str"),
    ],
)
def test_malformed_segmentations(segmentation, message):
    with pytest.raises(ReferDataError, match=f"ann 7: .*{message}"):
        decode_segmentation(segmentation, 10, 10, where="ann 7")
