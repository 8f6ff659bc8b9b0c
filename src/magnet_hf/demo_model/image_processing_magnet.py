# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Image processor for MagNet: square bilinear resize and ImageNet normalisation, as the released evaluation did."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

# Above this many pixels PIL suspects a decompression bomb; MagNet never needs more, so refuse clearly instead.
MAX_IMAGE_PIXELS = 20_000 * 20_000
# The largest model input side accepted from a processor config (the released model runs at 480): memory grows with
# the square of it, and a crafted `size` of 60,000 would ask for tens of GB.
MAX_MODEL_INPUT_SIZE = 4096


class MagNetImageError(ValueError):
    """An image that cannot be turned into MagNet's input; the message names the image and the problem."""


def load_image_as_rgb(image, index: int = 0) -> Image.Image:
    """
    Any supported image input as an 8-bit RGB PIL image: a file path, a PIL image of any mode (grayscale, RGBA,
    palette, CMYK, 16-bit, bilevel...), a NumPy array or a torch tensor (`HxW`, `HxWxC` or `CxHxW` with 1, 3 or 4
    channels; integer arrays are read as 8- or 16-bit intensities, floating arrays as values in [0, 1]).
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            with warnings.catch_warnings():
                # MAX_IMAGE_PIXELS below is the bound; PIL's own warning at 89 M pixels would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(image)
            with opened:
                opened.load()  # the pixels are in memory from here on; leaving the block closes only the file
                image = opened
        except FileNotFoundError:
            raise MagNetImageError(f"Image {index}: file {os.fspath(image)!r} does not exist.") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise MagNetImageError(f"Image {index}: {os.fspath(image)!r} is not a readable image ({error}).") from None
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, index)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, index)
    raise MagNetImageError(
        f"Image {index}: unsupported type {type(image).__name__}; pass a PIL image, a NumPy array, a torch tensor or a path."
    )


def _pil_to_rgb(image: Image.Image, index: int) -> Image.Image:
    if image.width < 1 or image.height < 1:
        raise MagNetImageError(f"Image {index} is empty ({image.width}x{image.height}).")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise MagNetImageError(f"Image {index} has {image.width}x{image.height} pixels, more than MagNet accepts.")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own conversion clips 16-bit and float data at 255; rescale the real range instead.
        return _array_to_rgb(np.asarray(image), index)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels take a white background rather than whatever colour they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # An RGB image is returned as is: a copy of a 10,000² picture is 300 MB more for nothing (nothing here mutates it).
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_rgb(array: np.ndarray, index: int) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise MagNetImageError(f"Image {index}: an array of shape {array.shape} is not an image (HxW, HxWxC or CxHxW).")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise MagNetImageError(f"Image {index} is empty ({array.shape}).")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise MagNetImageError(f"Image {index} contains NaN or infinite values.")
        if array.min() < 0 or array.max() > 1:
            raise MagNetImageError(
                f"Image {index}: floating-point images must hold values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]."
            )
        array = np.round(array * 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            raise MagNetImageError(f"Image {index}: negative pixel values.")
        if array.max() > 255:  # 16-bit data
            array = np.round(array.astype(np.float64) / 65535 * 255).clip(0, 255).astype(np.uint8)
        array = array.astype(np.uint8)
    else:
        raise MagNetImageError(f"Image {index}: unsupported array dtype {array.dtype}.")
    if array.ndim == 3 and array.shape[-1] == 4:
        return _pil_to_rgb(Image.fromarray(array, mode="RGBA"), index)
    return Image.fromarray(array).convert("RGB")


def _size_of(size) -> tuple[int, int]:
    """(height, width) from a `{"height", "width"}` dict or transformers' `SizeDict`."""
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise ValueError(f"size must give a positive integer 'height' and 'width', got {size!r}.")
    if max(height, width) > MAX_MODEL_INPUT_SIZE:
        raise ValueError(f"size {height}x{width} is larger than the {MAX_MODEL_INPUT_SIZE} pixels a MagNet input may have.")
    return height, width


def _normalisation(mean, std) -> tuple[np.ndarray, np.ndarray]:
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"image_mean and image_std need three values (RGB), got {mean.tolist()} and {std.tolist()}.")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        shown = [[float(f"{value:.6g}") for value in values] for values in (mean, std)]
        raise ValueError(f"image_mean must be finite and image_std finite and positive, got {shown[0]} and {shown[1]}.")
    return mean, std


class MagNetImageProcessor(PilBackend):
    r"""
    Resizes images to a square `size` (no aspect kept) with PIL's bilinear filter, scales to [0, 1] and normalises
    with the ImageNet mean and standard deviation: exactly the released MagNet evaluation transform, which is why this
    processor works on PIL images rather than on tensors.

    Accepts PIL images of any mode, NumPy arrays, torch tensors and file paths, one or a list. Returns
    `pixel_values` `(batch, 3, height, width)` and `original_sizes` `(batch, 2)` (height, width), which
    [`~MagNetImageProcessor.post_process_referring_segmentation`] uses to bring masks back to each image.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 480, "width": 480}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def check_settings(self) -> None:
        """Refuses settings (from a model folder's config) that cannot give sane pixels: a size above
        `MAX_MODEL_INPUT_SIZE`, a zero, negative or non-finite `image_std`, a non-finite `image_mean`.

        Raises:
            ValueError: naming the setting.
        """
        _size_of(self.size)
        _normalisation(self.image_mean, self.image_std)

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        unknown = set(kwargs) - {"size", "image_mean", "image_std", "do_normalize", "do_resize"}
        if unknown:
            raise TypeError(f"MagNetImageProcessor got unexpected arguments {sorted(unknown)}.")
        size = kwargs.get("size", self.size)
        mean, std = _normalisation(kwargs.get("image_mean", self.image_mean), kwargs.get("image_std", self.image_std))
        height, width = _size_of(size)
        if isinstance(images, (list, tuple)):
            if not images:
                raise MagNetImageError("No images were given.")
            batch = list(images)
        else:
            batch = [images]
        pixel_values, original_sizes = [], []
        for index, image in enumerate(batch):
            rgb = load_image_as_rgb(image, index)
            original_sizes.append((rgb.height, rgb.width))
            if kwargs.get("do_resize", self.do_resize):
                rgb = rgb.resize((width, height), resample=Image.Resampling.BILINEAR)
            elif max(rgb.size) > MAX_MODEL_INPUT_SIZE:
                raise MagNetImageError(
                    f"Image {index} is {rgb.width}x{rgb.height}; with do_resize=False the model would run at that size "
                    f"(at most {MAX_MODEL_INPUT_SIZE} accepted)."
                )
            # Divide (not multiply by 1/255) to round exactly like torchvision's ToTensor in the released pipeline.
            array = np.asarray(rgb, dtype=np.float32) / np.float32(255)
            if kwargs.get("do_normalize", self.do_normalize):
                array = (array - mean) / std
            pixel_values.append(array.transpose(2, 0, 1))
        if len({value.shape for value in pixel_values}) > 1:
            raise MagNetImageError("Images of different sizes cannot be batched with do_resize=False.")
        data = {"pixel_values": np.stack(pixel_values), "original_sizes": np.asarray(original_sizes, dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_referring_segmentation(
        self,
        outputs,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
    ) -> list[dict[str, torch.Tensor | float]]:
        """
        Turns model outputs into one boolean mask per (image, expression) pair with the released post-processing:
        mask logits resized (bilinear, `align_corners=True`) to the target size, sigmoid, times the softmax of the
        class logits over the query axis (1 with MagNet's single query), then `> threshold`.

        Args:
            outputs: a [`MagNetModelOutput`] (or anything with `pred_masks` `(batch, 1, h, w)` and `pred_logits`
                `(batch, 1, 2)`).
            target_sizes: `(height, width)` per sample (e.g. the processor's `original_sizes`); `None` keeps the
                model's input size (4x the mask logits).
            threshold: probability above which a pixel belongs to the mask.

        Returns:
            A list with, per sample, `{"mask": bool tensor (height, width), "score": float}`; the score is the mean
            probability over the predicted mask (0 for an empty mask).
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
        pred_masks, pred_logits = outputs.pred_masks, outputs.pred_logits
        batch_size = pred_masks.shape[0]
        if target_sizes is None:
            target_sizes = [(pred_masks.shape[-2] * 4, pred_masks.shape[-1] * 4)] * batch_size
        if len(target_sizes) != batch_size:
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {batch_size}.")
        query_weights = pred_logits.float().softmax(dim=1)[..., 1:]  # (batch, queries, 1): the release's weighting
        results = []
        for index in range(batch_size):
            height, width = (int(v) for v in target_sizes[index])
            if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
                raise ValueError(f"target size {height}x{width} is empty or larger than {MAX_IMAGE_PIXELS} pixels.")
            mask, score = _threshold_upsampled(pred_masks[index].float(), query_weights[index, :, 0], height, width, threshold)
            results.append({"mask": mask, "score": score})
        return results


#: Float32 values of the full-resolution probability map computed at once: 1M (4 MB), so that post-processing memory
#: is bounded by this and the boolean mask (1 byte per pixel), not by the float maps of a 10,000² input (GBs).
_POST_PROCESS_TILE_ELEMENTS = 1 << 20


def _height_taps(input_size: int, output_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of linear interpolation with `align_corners=True`, in float32 as PyTorch's kernel
    computes them (scale `(in-1)/(out-1)`, index = floor of the source position, weight = its fraction)."""
    scale = torch.tensor(input_size - 1, dtype=torch.float32) / (output_size - 1) if output_size > 1 else torch.tensor(0.0)
    source = scale * torch.arange(output_size, dtype=torch.float32)
    low = source.to(torch.int64).clamp(max=input_size - 1)
    high = (low + 1).clamp(max=input_size - 1)
    fraction = (source - low.to(torch.float32)).clamp(0, 1)
    return low.to(device), high.to(device), fraction.to(device)


def _threshold_upsampled(logits: torch.Tensor, weights: torch.Tensor, height: int, width: int, threshold: float):
    """
    `(weights · sigmoid(bilinear(logits, (height, width), align_corners=True))) > threshold` with memory bounded by
    the boolean result plus `_POST_PROCESS_TILE_ELEMENTS` floats, whatever the target size.

    Bilinear interpolation is separable and PyTorch's kernel interpolates along the width first: that pass runs once
    at the logits' own height (`F.interpolate` to `(h, width)`, whose height weights are exactly 1 and 0), and the
    height pass runs tile by tile by hand, as `w1 * b` rounded to float32 plus `w0 * a` in one rounding (the kernel's
    fused multiply-add, emulated in float64), so that on CPU every value is bit-equal to the full `F.interpolate`.
    transformers and torch have no tiled resize; that is why this is written here.

    Args:
        logits: `(queries, h, w)` float32 mask logits at the model's resolution.
        weights: `(queries,)` query weights (the class softmax).

    Returns:
        The bool mask `(height, width)` and the mean probability over it (0 when empty).
    """
    queries, in_height, _ = logits.shape
    if queries * height * width <= _POST_PROCESS_TILE_ELEMENTS:
        upsampled = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=True)[0]
        probability = torch.einsum("q,qhw->hw", weights, upsampled.sigmoid())
        mask = probability > threshold
        return mask, (probability[mask].mean().item() if mask.any() else 0.0)
    rows = F.interpolate(logits[None], size=(in_height, width), mode="bilinear", align_corners=True)[0]
    low, high, fraction = _height_taps(in_height, height, logits.device)
    mask = torch.empty((height, width), dtype=torch.bool, device=logits.device)
    total, count = 0.0, 0
    step = max(1, _POST_PROCESS_TILE_ELEMENTS // (width * queries))
    for start in range(0, height, step):
        stop = min(height, start + step)
        weight = fraction[start:stop, None]
        tile = ((rows[:, high[start:stop]] * weight).double() + rows[:, low[start:stop]].double() * (1 - weight).double()).float()
        probability = torch.einsum("q,qhw->hw", weights, tile.sigmoid_())  # (tile, width)
        inside = probability > threshold
        mask[start:stop] = inside
        total += float(probability[inside].double().sum())
        count += int(inside.sum())
    return mask, (total / count if count else 0.0)


__all__ = ["MagNetImageProcessor", "MagNetImageError", "load_image_as_rgb"]
