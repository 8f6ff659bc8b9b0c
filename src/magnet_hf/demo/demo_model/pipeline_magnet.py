# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The `referring-image-segmentation` pipeline: an image and one or more expressions give one mask per expression.

transformers has no text-prompted segmentation task, so this one mirrors `image-segmentation`'s output: per
expression `{"score": float, "label": expression, "mask": PIL "L" image (0/255) at the image's own size}`.

This file is Hub remote code: it is copied flat into saved model folders next to the MagNet modules and must only
import them relatively.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.pipelines.base import ChunkPipeline
from transformers.utils import ModelOutput

from .image_processing_magnet import load_image_as_rgb
from .processing_magnet import MagNetProcessor

#: The task name under which magnet_hf registers [`MagNetReferringSegmentationPipeline`].
REFERRING_SEGMENTATION_TASK = "referring-image-segmentation"

_REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def _as_expressions(text: Any, where: str) -> list[str]:
    """One expression or a list of them as a non-empty list of non-empty strings."""
    if text is None:
        raise ValueError(f"{where}: no expression given; pass text='...' (or a list of expressions).")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"{where}: text must be a string or a non-empty list of strings, got {text!r}.")
    for index, expression in enumerate(texts):
        if not isinstance(expression, str):
            raise TypeError(f"{where}: expression {index} must be a string, got {type(expression).__name__}.")
        if not expression.strip():
            raise ValueError(f"{where}: expression {index} is empty; say which object to segment.")
    return list(texts)


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'.")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__}.")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        # Anything else (int8, bool, complex64, float64...) would silently run in float32.
        raise ValueError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16.")
    return dtype


class MagNetReferringSegmentationPipeline(ChunkPipeline):
    r"""
    Referring image segmentation with MagNet: segments the object each expression refers to.

    Inputs, per call:

    - one image (PIL image, NumPy array, torch tensor or file path) with `text=` one expression or a list of them;
    - a list of images with `text=` (every image gets the same expressions);
    - a `{"image": ..., "text": ...}` dict, or a list of them (each image with its own expressions).

    Every (image, expression) pair is one model input; `batch_size` groups pairs (across images too) into forward
    passes, so one image with many expressions batches as well as many images do.

    Returns, per image, a list with one dict per expression, in the order given:
    `{"score": float, "label": str, "mask": PIL.Image}`. `mask` is an "L" image holding 0 and 255 at the image's own
    size; `score` is the mean predicted probability over the mask (0 for an empty mask); `label` is the expression.
    A list input gives a list of such lists.

    Construction arguments beyond the usual ones (`model`, `processor`, `device`, `batch_size`):

    - `dtype`: `torch.bfloat16` or `torch.float16` run the forward under autocast in that precision (MagNet keeps
      its language fusion in fp32, so weights stay fp32; weights loaded in reduced precision are cast back up).
    - `threshold` (call or construction): probability above which a pixel belongs to the mask (default 0.5).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> segmenter = pipeline(model="path/to/magnet", trust_remote_code=True)
    >>> results = segmenter("street.jpg", text=["the man in the red shirt", "the bus on the left"])
    >>> results[0]["label"], results[0]["mask"].size
    ('the man in the red shirt', (640, 480))
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, dtype: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            if self.tokenizer is None or self.image_processor is None:
                raise ValueError(
                    "The referring-image-segmentation pipeline needs a MagNetProcessor (or a tokenizer and an image "
                    "processor); save one with the model (processor.save_pretrained) or pass processor=."
                )
            self.processor = MagNetProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)
        if not hasattr(self.processor, "post_process_referring_segmentation"):
            raise TypeError(f"{type(self.processor).__name__} is not a MagNet processor.")
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        requested = _as_dtype(dtype)
        weights_dtype = next(self.model.parameters()).dtype
        # The network runs reduced precision only through autocast (its language fusion needs fp32 weights), so
        # reduced-precision weights, e.g. from pipeline(..., dtype=torch.bfloat16), are brought back to fp32.
        self.compute_dtype = requested if requested is not None else weights_dtype
        if weights_dtype in _REDUCED_PRECISION:
            self.model.float()
        self.model.eval()

    def _sanitize_parameters(self, text=None, threshold=None, timeout=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for referring-image-segmentation: {sorted(kwargs)}.")
        preprocess, postprocess = {}, {}
        if text is not None:
            preprocess["text"] = text
        if timeout is not None:
            preprocess["timeout"] = timeout
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}.")
            postprocess["threshold"] = float(threshold)
        return preprocess, {}, postprocess

    def __call__(self, inputs, **kwargs):
        """
        Segments the referred objects. See the class docstring for the accepted inputs and the output format.

        Args:
            inputs: an image, a `{"image", "text"}` dict, or a list of either.
            text (`str` or `list[str]`, *optional*): expression(s) for every image that does not carry its own.
            threshold (`float`, *optional*, defaults to 0.5): mask probability threshold.
            batch_size (`int`, *optional*): (image, expression) pairs per forward pass.
        """
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            raise ValueError("No images were given.")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, text=None, timeout=None):
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {"image", "text"}
            if unknown or "image" not in inputs:
                raise ValueError(
                    f"An input dict needs an 'image' and may have a 'text'; got keys {sorted(inputs)}."
                )
            image, text = inputs["image"], inputs.get("text", text)
        else:
            image = inputs
        expressions = _as_expressions(text, "referring-image-segmentation")
        if isinstance(image, (str, os.PathLike)) and str(image).startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            image = load_image(str(image), timeout=timeout)
        rgb = load_image_as_rgb(image)
        encoded = self.processor(images=rgb, text=expressions, return_tensors="pt")
        for index, expression in enumerate(expressions):
            yield {
                "pixel_values": encoded["pixel_values"][index : index + 1],
                "input_ids": encoded["input_ids"][index : index + 1],
                "attention_mask": encoded["attention_mask"][index : index + 1],
                "original_sizes": encoded["original_sizes"][index : index + 1],
                "label": expression,
                "is_last": index == len(expressions) - 1,
            }

    def _autocast(self):
        if self.compute_dtype not in _REDUCED_PRECISION:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def _forward(self, model_inputs):
        labels, is_last = model_inputs.pop("label"), model_inputs.pop("is_last")
        original_sizes = model_inputs.pop("original_sizes")
        pixel_values = model_inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        with self._autocast():
            outputs = self.model(
                pixel_values=pixel_values,
                input_ids=model_inputs["input_ids"],
                attention_mask=model_inputs["attention_mask"],
            )
        return {
            "pred_masks": outputs.pred_masks.float(),
            "pred_logits": outputs.pred_logits.float(),
            "original_sizes": original_sizes,
            "label": labels,
            "is_last": is_last,
        }

    def postprocess(self, model_outputs, threshold: float = 0.5):
        outputs = ModelOutput(
            pred_masks=torch.cat([output["pred_masks"] for output in model_outputs]),
            pred_logits=torch.cat([output["pred_logits"] for output in model_outputs]),
        )
        target_sizes = torch.cat([output["original_sizes"] for output in model_outputs]).tolist()
        results = self.processor.post_process_referring_segmentation(outputs, target_sizes, threshold)
        return [
            {
                "score": float(result["score"]),
                "label": output["label"],
                # bool viewed as 0/1 bytes, times 255 in place of a float or int detour: one byte per pixel in total.
                "mask": Image.fromarray(result["mask"].cpu().numpy().view(np.uint8) * np.uint8(255)),
            }
            for output, result in zip(model_outputs, results)
        ]

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the model, this pipeline's code (`custom_pipelines` in the config) and the processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


__all__ = ["MagNetReferringSegmentationPipeline", "REFERRING_SEGMENTATION_TASK"]
