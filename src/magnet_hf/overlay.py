# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Pictures of predictions: a mask tinted over its image with the expression written on it."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Tint of predicted mask pixels (magenta: rare in photos and absent from the synthetic scenes' palette).
MASK_TINT: tuple[int, int, int] = (255, 0, 255)
MASK_ALPHA = 0.55
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


__all__ = ["MASK_ALPHA", "MASK_TINT", "caption_box", "overlay_mask"]
