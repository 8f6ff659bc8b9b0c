# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Image processors for MagNet (torchvision and PIL backends): square bilinear resize and ImageNet normalisation, as
the released evaluation did."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ChannelDimension, PILImageResampling

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
        image = _open_image(image, index)
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


def _normalisation(mean, std, channels: int | None = 3) -> tuple[np.ndarray, np.ndarray]:
    """Checked mean and std: `channels` values each (any number, the same for both, when `None`)."""
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if channels is not None and (mean.shape != (channels,) or std.shape != (channels,)):
        raise ValueError(f"image_mean and image_std need three values (RGB), got {mean.tolist()} and {std.tolist()}.")
    if mean.ndim > 1 or std.ndim > 1 or (mean.ndim == std.ndim == 1 and mean.shape != std.shape):
        raise ValueError(f"image_mean and image_std need one value per channel, got {mean.tolist()} and {std.tolist()}.")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        shown = [[float(f"{value:.6g}") for value in values] for values in (mean, std)]
        raise ValueError(f"image_mean must be finite and image_std finite and positive, got {shown[0]} and {shown[1]}.")
    return mean, std


class _MagNetImageProcessingMixin:
    r"""
    What both backends share: MagNet's defaults (square bilinear resize to the config size, scale to [0, 1],
    ImageNet mean and standard deviation), the image loading of [`load_image_as_rgb`] (any PIL mode, NumPy, torch,
    file paths), `original_sizes` in the output, channel-order output control and the post-processing.

    Returns `pixel_values` `(batch, 3, height, width)` and `original_sizes` `(batch, 2)` (height, width), which
    [`~MagNetImageProcessor.post_process_referring_segmentation`] uses to bring masks back to each image.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 480, "width": 480}
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    return_tensors = "pt"  # MagNet's processors have always returned a batch tensor by default

    def to_dict(self) -> dict:
        output = super().to_dict()
        if self._auto_class is not None:
            # Hub remote code: both backends, so that AutoImageProcessor picks one at load time as it does for local
            # classes (`backend=`). Written whether or not this object was saved or loaded, so that the dict survives a
            # round trip unchanged and is the same for both backends.
            module = type(self).__module__.split(".")[-1]
            output["auto_map"] = {
                self._auto_class: {"torchvision": f"{module}.MagNetImageProcessor", "pil": f"{module}.MagNetImageProcessorPil"}
            }
        return output

    def check_settings(self) -> None:
        """Refuses settings (from a model folder's config) that cannot give sane pixels: a size above
        `MAX_MODEL_INPUT_SIZE`, a zero, negative or non-finite `image_std`, a non-finite `image_mean`.

        Raises:
            ValueError: naming the setting.
        """
        _size_of(self.size)
        _normalisation(self.image_mean, self.image_std)

    def _validate_preprocess_kwargs(
        self, size=None, do_resize=None, image_mean=None, image_std=None, do_normalize=None, **kwargs
    ):
        super()._validate_preprocess_kwargs(
            size=size, do_resize=do_resize, image_mean=image_mean, image_std=image_std, do_normalize=do_normalize, **kwargs
        )
        if do_resize:
            _size_of(size)
        if do_normalize:
            # One value per channel of the images: three after RGB conversion, the image's own without it.
            _normalisation(image_mean, image_std, channels=3 if kwargs.get("do_convert_rgb", True) else None)
        data_format = kwargs.get("data_format")
        if data_format is not None and ChannelDimension(data_format) not in (ChannelDimension.FIRST, ChannelDimension.LAST):
            raise ValueError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}.")

    def _preprocess_image_like_inputs(self, images, *args, **kwargs) -> BatchFeature:
        if isinstance(images, (list, tuple)):
            if not images:
                raise MagNetImageError("No images were given.")
            batch = list(images)
        else:
            batch = [images]
        input_data_format = kwargs.pop("input_data_format", None)
        do_convert_rgb = kwargs.pop("do_convert_rgb", True)
        prepared, original_sizes = [], []
        for index, image in enumerate(batch):
            if do_convert_rgb:
                if input_data_format is not None and isinstance(image, (np.ndarray, torch.Tensor)):
                    if ChannelDimension(input_data_format) == ChannelDimension.FIRST and image.ndim == 3:
                        image = image.permute(1, 2, 0) if isinstance(image, torch.Tensor) else np.moveaxis(image, 0, -1)
                # The released transform ran on PIL RGB images: every input goes through one first.
                image = load_image_as_rgb(image, index)
                array = self.process_image(image, do_convert_rgb=False, **kwargs)
            else:
                if isinstance(image, (str, os.PathLike)):
                    image = _open_image(image, index)
                if isinstance(image, Image.Image) and image.width * image.height > MAX_IMAGE_PIXELS:
                    raise MagNetImageError(f"Image {index} has {image.width}x{image.height} pixels, more than MagNet accepts.")
                array = self.process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
            prepared.append(array)
            original_sizes.append(tuple(int(v) for v in array.shape[-2:]))
            if not kwargs.get("do_resize") and max(original_sizes[-1]) > MAX_MODEL_INPUT_SIZE:
                height, width = original_sizes[-1]
                raise MagNetImageError(
                    f"Image {index} is {width}x{height}; with do_resize=False the model would run at that size "
                    f"(at most {MAX_MODEL_INPUT_SIZE} accepted)."
                )
        return_tensors = kwargs.get("return_tensors")
        if return_tensors is not None and not kwargs.get("do_resize") and len(set(original_sizes)) > 1:
            raise MagNetImageError("Images of different sizes cannot be batched with do_resize=False.")
        outputs = self._preprocess(prepared, *args, **kwargs)
        pixel_values = outputs["pixel_values"]
        if kwargs.get("data_format") is not None and ChannelDimension(kwargs["data_format"]) == ChannelDimension.LAST:
            if isinstance(pixel_values, torch.Tensor):
                pixel_values = pixel_values.permute(0, 2, 3, 1)
            elif isinstance(pixel_values, np.ndarray):
                pixel_values = pixel_values.transpose(0, 2, 3, 1)
            else:
                pixel_values = [
                    value.permute(1, 2, 0) if isinstance(value, torch.Tensor) else value.transpose(1, 2, 0)
                    for value in pixel_values
                ]
        data = {"pixel_values": pixel_values, "original_sizes": np.asarray(original_sizes, dtype=np.int64)}
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


class MagNetImageProcessor(_MagNetImageProcessingMixin, TorchvisionBackend):
    r"""
    MagNet's image processor on the torchvision backend (transformers' default): the square resize runs with
    torchvision's antialiased bilinear filter on uint8 tensors, in batches and on any device (`device=`).

    Its pixels differ slightly from the released evaluation transform, which resized PIL images with PIL's filter:
    use [`MagNetImageProcessorPil`] to reproduce the released numbers exactly (converted checkpoints save it, so
    their processors load with it). On the released MagNet-B the difference is stated in the README ("Image
    processing backends").
    """


class MagNetImageProcessorPil(_MagNetImageProcessingMixin, PilBackend):
    r"""
    MagNet's image processor on the PIL backend: resize with PIL's bilinear filter, then divide by 255 and normalise
    in float32, which is exactly the released evaluation transform (PIL resize, `ToTensor`, `Normalize`).
    """

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        # Dividing by 255 (not multiplying by 1/255) rounds like torchvision's ToTensor in the released pipeline.
        return image.astype(np.float32) / np.float32(1.0 / scale)


def _open_image(path, index: int) -> Image.Image:
    """A file as a PIL image in its own mode, its pixels in memory and the file closed."""
    try:
        with warnings.catch_warnings():
            # MAX_IMAGE_PIXELS is the bound (checked on the way to RGB); PIL's own warning at 89 M pixels is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            opened.load()  # leaving the block closes only the file
        return opened
    except FileNotFoundError:
        raise MagNetImageError(f"Image {index}: file {os.fspath(path)!r} does not exist.") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise MagNetImageError(f"Image {index}: {os.fspath(path)!r} is not a readable image ({error}).") from None


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


__all__ = ["MagNetImageProcessor", "MagNetImageProcessorPil", "MagNetImageError", "load_image_as_rgb"]
