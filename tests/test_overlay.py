"""Demo pictures: a tint that stands out on every scene colour, the named object's outline, captions above tiles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magnet_hf.data.synthetic import COLORS
from magnet_hf.demo.overlay import (
    MASK_ALPHA,
    MASK_TINT,
    OUTLINE_INNER,
    OUTLINE_OUTER,
    SheetTile,
    contact_sheet,
    outline_rings,
    overlay_mask,
    prediction_tile,
    tile_boxes,
)

# CIEDE2000 colour difference (Sharma, Wu and Dalal 2005), written out because the libraries that have it (scikit-image,
# colour-science) are not dependencies; checked below against two pairs of the paper's test data.


def srgb_to_lab(rgb):
    rgb = np.asarray(rgb, dtype=float) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def ciede2000(lab1, lab2):
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    mean_chroma = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(mean_chroma**7 / (mean_chroma**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1 = np.degrees(np.arctan2(b1, a1)) % 360 if c1 else 0.0
    h2 = np.degrees(np.arctan2(b2, a2)) % 360 if c2 else 0.0
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_hue = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh) / 2)
    mean_l, mean_c = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        mean_h = h1 + h2
    elif abs(h1 - h2) <= 180:
        mean_h = (h1 + h2) / 2
    else:
        mean_h = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (1 - 0.17 * np.cos(np.radians(mean_h - 30)) + 0.24 * np.cos(np.radians(2 * mean_h))
         + 0.32 * np.cos(np.radians(3 * mean_h + 6)) - 0.20 * np.cos(np.radians(4 * mean_h - 63)))
    rotation = -np.sin(np.radians(60 * np.exp(-(((mean_h - 275) / 25) ** 2)))) * 2 * np.sqrt(mean_c**7 / (mean_c**7 + 25**7))
    s_l = 1 + 0.015 * (mean_l - 50) ** 2 / np.sqrt(20 + (mean_l - 50) ** 2)
    s_c, s_h = 1 + 0.045 * mean_c, 1 + 0.015 * mean_c * t
    terms = ((l2 - l1) / s_l, (c2 - c1) / s_c, d_hue / s_h)
    return float(np.sqrt(terms[0] ** 2 + terms[1] ** 2 + terms[2] ** 2 + rotation * terms[1] * terms[2]))


def test_colour_difference_matches_published_test_data():
    assert ciede2000((50, 2.6772, -79.7751), (50, 0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000((50, -1.3802, -84.2814), (50, 0, -82.7485)) == pytest.approx(1.0, abs=1e-4)


def test_tinted_pixels_stand_out_from_every_scene_colour():
    # Object colours (each drawn within 12 of its nominal value) and the background's grey range.
    scene_colours = [np.array(rgb, dtype=float) for rgb in COLORS.values()] + [np.full(3, g, float) for g in (70, 110, 150, 185)]
    for colour in scene_colours:
        tinted = (1 - MASK_ALPHA) * colour + MASK_ALPHA * np.asarray(MASK_TINT, dtype=float)
        nearest = min(ciede2000(srgb_to_lab(tinted), srgb_to_lab(other)) for other in scene_colours)
        assert nearest >= 20, f"tinted {colour} is within {nearest:.1f} CIEDE2000 of an untinted scene colour"


def test_tile_tints_the_prediction_and_outlines_the_target():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(70, 186, size=(40, 50, 3), dtype=np.uint8))
    predicted = np.zeros((40, 50), bool)
    predicted[5:20, 5:25] = True
    target = np.zeros((40, 50), bool)
    target[15:35, 20:45] = True
    tile = np.asarray(prediction_tile(image, predicted, target, scale=3))
    plain = np.asarray(overlay_mask(image, predicted, scale=3))
    big_target = np.repeat(np.repeat(target, 3, axis=0), 3, axis=1)
    inner, outer = outline_rings(big_target, width=2)
    assert inner.sum() > 0 and outer.sum() > 0 and not (inner & outer).any()
    assert (tile[inner] == OUTLINE_INNER).all() and (tile[outer] == OUTLINE_OUTER).all()
    untouched = ~(inner | outer)
    assert np.array_equal(tile[untouched], plain[untouched])
    assert (inner <= big_target).all() and not (outer & big_target).any()


def test_contact_sheet_puts_each_caption_above_its_unchanged_picture():
    rng = np.random.default_rng(1)
    tiles = [
        SheetTile(Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)), [(f"the red circle {i}", (255, 255, 255)), ("ordinal | IoU 0.50", (120, 230, 120))])
        for i in range(5)
    ]
    sheet = np.asarray(contact_sheet(tiles, columns=3, title="legend"))
    boxes = tile_boxes(tiles, columns=3, title="legend")
    assert len({top for _, top, _, _ in boxes}) == 2  # two rows of three columns
    background = sheet[0, 0]
    for tile, (left, top, right, bottom) in zip(tiles, boxes):
        assert np.array_equal(sheet[top:bottom, left:right], np.asarray(tile.image))  # nothing drawn over it
        caption_band = sheet[max(0, top - 30) : top, left:right]
        assert (caption_band != background).any(axis=-1).sum() > 50  # the caption's text lies just above
