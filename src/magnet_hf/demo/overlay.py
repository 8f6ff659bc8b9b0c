# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Pictures of predictions: a mask tinted over its image with the expression written on it, the outline of the object
an expression names, and a contact sheet of captioned tiles."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Tint of predicted mask pixels. Cyan at 65 %: of the saturated candidates it is the one whose tinted pixels differ
#: most (CIEDE2000 at least 20) from every untinted colour of the synthetic scenes (red, green, blue, yellow objects
#: on grey 70-185), itself included; magenta at 55 % tinted blue shapes into a purple close to blue (16.9).
MASK_TINT: tuple[int, int, int] = (0, 255, 255)
MASK_ALPHA = 0.65
#: Outline of the object an expression names: a white ring inside its mask and a black one just outside, which shows
#: on every background and under the tint.
OUTLINE_INNER: tuple[int, int, int] = (255, 255, 255)
OUTLINE_OUTER: tuple[int, int, int] = (0, 0, 0)
_CAPTION_BACKGROUND = (0, 0, 0)
_CAPTION_TEXT = (255, 255, 255)
_BAND_PIXELS = 1 << 20


def _font(image_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, image_width // 28)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow built without FreeType only has the fixed bitmap font
        return ImageFont.load_default()


def _as_bool_mask(mask, size: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, Image.Image):
        array = np.asarray(mask if mask.mode == "L" else mask.convert("L")) > 127
    else:
        array = np.asarray(mask)
        if array.dtype != np.bool_:
            array = array > (127 if array.dtype == np.uint8 and array.max() > 1 else 0.5)
    if array.shape != (size[1], size[0]):
        raise ValueError(f"The mask is {array.shape[1]}x{array.shape[0]} but the image is {size[0]}x{size[1]}.")
    return array


def caption_box(image_width: int, text: str) -> tuple[int, int, int, int]:
    """The `(left, top, right, bottom)` box that [`overlay_mask`] covers with the caption of `text`."""
    font = _font(image_width)
    lines = _wrap(text, font, image_width)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = draw.textbbox((0, 0), "Hg", font=font)[3] + 2
    width = max(draw.textlength(line, font=font) for line in lines)
    return 0, 0, min(image_width, int(width) + 8), len(lines) * line_height + 6


def _wrap(text: str, font, image_width: int) -> list[str]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    average = max(1.0, draw.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    return textwrap.wrap(text, width=max(8, int((image_width - 8) / average))) or [text]


def overlay_mask(image: Image.Image, mask, text: str | None = None, scale: int = 1) -> Image.Image:
    """
    Draws `mask` tinted over `image` and, if given, `text` in a dark box at the top left.

    Args:
        image: the RGB picture the mask belongs to.
        mask: boolean `(height, width)` array, or an "L"/"1" image (pixels above 127 are in the mask), at the
            image's size.
        text: caption, e.g. the expression; wrapped to the image's width.
        scale: integer enlargement (nearest neighbour) applied before drawing, so that small images get a readable
            caption.

    Returns:
        A new RGB image `scale` times the size of `image`.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    in_mask = _as_bool_mask(mask, rgb.size)
    if scale > 1:
        rgb = rgb.resize((rgb.width * scale, rgb.height * scale), Image.Resampling.NEAREST)
        in_mask = np.repeat(np.repeat(in_mask, scale, axis=0), scale, axis=1)
    result = rgb.copy()
    tint = np.asarray(MASK_TINT, dtype=np.float32)
    # Band by band: a float copy of a whole 10,000² picture would be 1.2 GB; a band is a few MB.
    band = max(1, _BAND_PIXELS // max(1, result.width))
    for top in range(0, result.height, band):
        bottom = min(result.height, top + band)
        inside = in_mask[top:bottom]
        if not inside.any():
            continue
        pixels = np.asarray(rgb.crop((0, top, result.width, bottom)), dtype=np.float32)
        pixels[inside] = (1 - MASK_ALPHA) * pixels[inside] + MASK_ALPHA * tint
        result.paste(Image.fromarray(np.round(pixels).astype(np.uint8)), (0, top))
    if text:
        font = _font(result.width)
        draw = ImageDraw.Draw(result)
        box = caption_box(result.width, text)
        draw.rectangle(box, fill=_CAPTION_BACKGROUND)
        line_height = draw.textbbox((0, 0), "Hg", font=font)[3] + 2
        for row, line in enumerate(_wrap(text, font, result.width)):
            draw.text((4, 3 + row * line_height), line, fill=_CAPTION_TEXT, font=font)
    return result


def _enlarge(mask: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1) if scale > 1 else mask


def _grow(mask: np.ndarray) -> np.ndarray:
    # One step of 4-neighbour dilation; numpy shifts instead of scipy, which is not a dependency.
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def outline_rings(mask: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The `(inner, outer)` rings of `mask`, each `width` pixels wide: inside the mask along its border, and just
    outside it."""
    mask = np.asarray(mask, dtype=bool)
    outer, inner_core = mask.copy(), ~mask
    for _ in range(width):
        outer, inner_core = _grow(outer), _grow(inner_core)
    return mask & inner_core, outer & ~mask


def draw_outline(image: Image.Image, mask, width: int = 1) -> Image.Image:
    """`image` with the outline of `mask` (at the image's size) drawn as [`OUTLINE_INNER`] / [`OUTLINE_OUTER`] rings."""
    rgb = image.convert("RGB")
    inner, outer = outline_rings(_as_bool_mask(mask, rgb.size), width)
    pixels = np.array(rgb)
    pixels[inner], pixels[outer] = OUTLINE_INNER, OUTLINE_OUTER
    return Image.fromarray(pixels)


def prediction_tile(image: Image.Image, predicted_mask, target_mask=None, scale: int = 1) -> Image.Image:
    """The predicted mask tinted over `image`, enlarged `scale` times, with the target object's outline when given
    (so a viewer sees whether the tint covers the right object)."""
    tile = overlay_mask(image, predicted_mask, scale=scale)
    if target_mask is None:
        return tile
    target = _enlarge(_as_bool_mask(target_mask, image.size), scale)
    return draw_outline(tile, target, width=max(1, round(2 * scale / 3)))


@dataclass
class SheetTile:
    """One tile of a contact sheet: the picture and the caption lines written above it (`(text, colour)` pairs)."""

    image: Image.Image
    lines: list[tuple[str, tuple[int, int, int]]]


_SHEET_BACKGROUND = (40, 40, 40)
_SHEET_GAP = 12


def _caption_lines(lines: list[tuple[str, tuple[int, int, int]]], font, width: int) -> list[tuple[str, tuple[int, int, int]]]:
    wrapped = []
    for text, colour in lines:
        wrapped += [(line, colour) for line in _wrap(text, font, width)]
    return wrapped


@dataclass
class _SheetLayout:
    font: object
    line_height: int
    title_lines: list[str]
    captions: list[list[tuple[str, tuple[int, int, int]]]]
    caption_height: int
    size: tuple[int, int]
    boxes: list[tuple[int, int, int, int]]  # each picture's (left, top, right, bottom)


def _sheet_layout(tiles: list[SheetTile], columns: int, title: str | None) -> _SheetLayout:
    if not tiles:
        raise ValueError("A contact sheet needs at least one tile.")
    columns = max(1, min(columns, len(tiles)))
    tile_width = max(tile.image.width for tile in tiles)
    font = _font(tile_width)
    line_height = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Hg", font=font)[3] + 3
    captions = [_caption_lines(tile.lines, font, tile_width) for tile in tiles]
    caption_height = max(len(lines) for lines in captions) * line_height + 6
    cell_height = caption_height + max(tile.image.height for tile in tiles)
    title_lines = _wrap(title, font, columns * (tile_width + _SHEET_GAP)) if title else []
    top = _SHEET_GAP + len(title_lines) * line_height
    boxes = []
    for index, tile in enumerate(tiles):
        left = _SHEET_GAP + (index % columns) * (tile_width + _SHEET_GAP)
        image_top = top + (index // columns) * (cell_height + _SHEET_GAP) + caption_height
        boxes.append((left, image_top, left + tile.image.width, image_top + tile.image.height))
    rows = -(-len(tiles) // columns)
    size = (columns * (tile_width + _SHEET_GAP) + _SHEET_GAP, top + rows * (cell_height + _SHEET_GAP))
    return _SheetLayout(font, line_height, title_lines, captions, caption_height, size, boxes)


def contact_sheet(tiles: list[SheetTile], columns: int = 4, title: str | None = None) -> Image.Image:
    """
    A grid of `tiles`, `columns` wide, each with its caption lines in a band above the picture (never over it),
    under an optional title.

    Returns:
        An RGB image; every picture is pasted unchanged at its [`tile_boxes`] box.
    """
    layout = _sheet_layout(tiles, columns, title)
    sheet = Image.new("RGB", layout.size, _SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, line in enumerate(layout.title_lines):
        draw.text((_SHEET_GAP, _SHEET_GAP // 2 + row * layout.line_height), line, fill=_CAPTION_TEXT, font=layout.font)
    for tile, lines, (left, image_top, _, _) in zip(tiles, layout.captions, layout.boxes):
        caption_top = image_top - layout.caption_height
        for row, (text, colour) in enumerate(lines):
            draw.text((left, caption_top + 3 + row * layout.line_height), text, fill=colour, font=layout.font)
        sheet.paste(tile.image.convert("RGB"), (left, image_top))
    return sheet


def tile_boxes(tiles: list[SheetTile], columns: int = 4, title: str | None = None) -> list[tuple[int, int, int, int]]:
    """The `(left, top, right, bottom)` box of each tile's picture in [`contact_sheet`]`(tiles, columns, title)`;
    its caption lies in the band of the same width just above."""
    return _sheet_layout(tiles, columns, title).boxes


__all__ = [
    "MASK_ALPHA",
    "MASK_TINT",
    "OUTLINE_INNER",
    "OUTLINE_OUTER",
    "SheetTile",
    "caption_box",
    "contact_sheet",
    "draw_outline",
    "outline_rings",
    "overlay_mask",
    "prediction_tile",
    "tile_boxes",
]
