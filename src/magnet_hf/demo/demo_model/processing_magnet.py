# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Processor for MagNet: a BERT tokenizer and a MagNet image processor in one object."""

from __future__ import annotations

import torch
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import logging

from .image_processing_magnet import MagNetImageProcessor, MagNetImageProcessorPil

logger = logging.get_logger(__name__)


class MagNetProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {"common_kwargs": {"return_tensors": "pt"}}


class MagNetProcessor(ProcessorMixin):
    r"""
    Prepares (image, expression) pairs for MagNet.

    Text follows the released recipe by default: BERT ids with [CLS] and [SEP], cut to `max_length` tokens (so a long
    expression loses its [SEP], exactly as in the release), padded with the pad id (0 for BERT) to exactly
    `max_length`. The released weights were trained at `max_length=20` and their language fusion normalises over
    padding, so the padded length matters. The standard text keywords (`padding`, `truncation`, `max_length`,
    `pad_to_multiple_of`) and image keywords (see [`MagNetImageProcessor`]) are accepted per call, flat or as
    `text_kwargs` / `images_kwargs`, as in transformers' processors; `truncation` cuts the released way.

    The image processor's backend is saved with the processor (`image_processor_backend` in
    `processor_config.json`) and `from_pretrained` loads the same one unless `backend=` says otherwise: a converted
    released checkpoint, saved with [`MagNetImageProcessorPil`], reproduces the released transform exactly. A folder
    that records no backend was written when PIL was MagNet's only one, and loads with it.

    Args:
        image_processor ([`MagNetImageProcessor`] or [`MagNetImageProcessorPil`]): resizes and normalises images.
        tokenizer (a BERT tokenizer): `bert-base-uncased` for the released weights.
        max_length (`int`, *optional*, defaults to 20): the padded token length (a keyword; saved with the processor).
    """

    valid_processor_kwargs = MagNetProcessorKwargs
    # The released text rule; `max_length` is the processor's own setting (saved in processor_config.json).
    text_kwargs = {"padding": "max_length", "truncation": True, "max_length": 20}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        kwargs.pop("image_processor_backend", None)  # read by from_pretrained; recorded from the image processor
        max_length = kwargs.pop("max_length", None)
        super().__init__(image_processor, tokenizer, **kwargs)
        if max_length is not None:
            self.max_length = max_length

    @property
    def max_length(self) -> int:
        """The padded token length of the released text rule (20 for the released weights)."""
        return self.text_kwargs["max_length"]

    @max_length.setter
    def max_length(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 3:
            raise ValueError(f"max_length must be an integer of at least 3 ([CLS], a word, [SEP]), got {value!r}.")
        self.text_kwargs = {**type(self).text_kwargs, "max_length": value}

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["max_length"] = self.max_length
        backend = getattr(self.image_processor, "backend", None)
        if backend in IMAGE_PROCESSOR_BACKENDS:
            output["image_processor_backend"] = backend
        if self._auto_class is not None:
            # What save_pretrained's remote-code step records, whether or not this object was saved or loaded, so that
            # the dict survives a round trip unchanged.
            output["auto_map"] = {self._auto_class: f"{_module_name(type(self))}.{type(self).__name__}"}
            image_processor = output.get("image_processor")
            if isinstance(image_processor, dict) and "auto_map" in image_processor:  # as transformers records it
                image_processor["auto_map"] = {**image_processor["auto_map"], **output["auto_map"]}
        return output

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, backend: str | None = None, **kwargs):
        """As in transformers; the image processor gets `backend` ("torchvision" or "pil") if given, else the one it
        was saved with (PIL for folders that do not say: they come from magnet_hf versions that had no other)."""
        if backend is not None and backend not in IMAGE_PROCESSOR_BACKENDS:
            raise ValueError(f"backend must be one of {sorted(IMAGE_PROCESSOR_BACKENDS)}, got {backend!r}.")
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if backend is None:
            processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
            backend = processor_dict.get("image_processor_backend", LEGACY_IMAGE_PROCESSOR_BACKEND)
        wanted = IMAGE_PROCESSOR_BACKENDS.get(backend)
        current = processor.image_processor
        if wanted is not None and getattr(current, "backend", None) != backend:
            # Same settings, other backend: the saved settings are the image processor's own dict.
            settings = {k: v for k, v in current.to_dict().items() if k not in ("image_processor_type", "auto_map")}
            processor.image_processor = wanted(**settings)
        return processor

    def encode_text(self, text: str | list[str], **text_kwargs) -> dict[str, torch.Tensor]:
        """
        Token ids and attention mask of one expression or a list. By default the released rule, `(batch, max_length)`;
        `padding` (`"max_length"`, `"longest"`/`True`, `False`), `truncation` (cut after `max_length` tokens, [SEP]
        included, as released) and `max_length` change it, as the tokenizer's keywords of the same names do.
        """
        options = {**self.text_kwargs, **text_kwargs}
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("No expression was given.")
        max_length = options.get("max_length") or self.max_length
        truncation = options.get("truncation", True) not in (False, "do_not_truncate")
        rows = []
        for row, expression in enumerate(texts):
            if not isinstance(expression, str):
                raise TypeError(f"Expression {row} must be a string, got {type(expression).__name__}.")
            if not expression.strip():
                raise ValueError(f"Expression {row} is empty; MagNet needs words to know what to segment.")
            ids = self.tokenizer(expression, add_special_tokens=True, truncation=False)["input_ids"]
            if truncation and len(ids) > max_length:
                logger.warning(
                    f"Expression {row} has {len(ids)} tokens; cut to {max_length} as in the released model "
                    f"(the end of the sentence, [SEP] included, is dropped): {expression[:80]!r}"
                )
                ids = ids[:max_length]
            rows.append(ids)
        padding = options.get("padding", "max_length")
        if padding in (True, "longest"):
            length = max(len(ids) for ids in rows)
        elif padding == "max_length":
            length = max(max_length, max(len(ids) for ids in rows))
        elif len({len(ids) for ids in rows}) == 1:  # no padding: only equal lengths make a batch tensor
            length = len(rows[0])
        else:
            raise ValueError("Expressions of different lengths need padding to be batched; pass padding='longest'.")
        multiple = options.get("pad_to_multiple_of")
        if multiple:
            length = -(-length // multiple) * multiple
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, images=None, text=None, **kwargs: Unpack[MagNetProcessorKwargs]) -> BatchEncoding:
        """
        Prepares a batch. `images` (one or a list: PIL, NumPy, torch or paths) and `text` (one string or a list) pair
        up one to one; a single image with several expressions (or the reverse) is repeated to match.

        Returns a [`BatchEncoding`] with `pixel_values`, `original_sizes`, `input_ids` and `attention_mask`
        (whichever inputs were given), PyTorch tensors.
        """
        if images is None and text is None:
            raise ValueError("Give images, text or both.")
        output_kwargs = self._merge_kwargs(MagNetProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = output_kwargs["text_kwargs"], output_kwargs["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.get("return_tensors") or "pt"
        if return_tensors != "pt":
            raise ValueError(f"MagNetProcessor returns PyTorch tensors only; got return_tensors={return_tensors!r}.")
        images_kwargs["return_tensors"] = "pt"
        data = {}
        if text is not None:
            data.update(self.encode_text(text, **text_kwargs))
        if images is not None:
            data.update(self.image_processor(images, **images_kwargs))
        if text is not None and images is not None:
            data = self._pair_up(data)
        return BatchEncoding(data=data)

    @staticmethod
    def _pair_up(data: dict) -> dict:
        num_images, num_texts = data["pixel_values"].shape[0], data["input_ids"].shape[0]
        if num_images == num_texts:
            return data
        if num_images == 1:
            for key in ("pixel_values", "original_sizes"):
                data[key] = data[key].expand(num_texts, *data[key].shape[1:])
            return data
        if num_texts == 1:
            for key in ("input_ids", "attention_mask"):
                data[key] = data[key].expand(num_images, -1)
            return data
        raise ValueError(f"Got {num_images} images and {num_texts} expressions; give one of each per pair.")

    def post_process_referring_segmentation(self, outputs, target_sizes=None, threshold: float = 0.5):
        """See [`MagNetImageProcessor.post_process_referring_segmentation`]."""
        return self.image_processor.post_process_referring_segmentation(outputs, target_sizes, threshold)

    @property
    def model_input_names(self) -> list[str]:
        # As SAM's processor: the image sizes come along for post-processing.
        return ["pixel_values", "original_sizes", "input_ids", "attention_mask"]


def _module_name(cls: type) -> str:
    return cls.__module__.split(".")[-1]


IMAGE_PROCESSOR_BACKENDS = {"torchvision": MagNetImageProcessor, "pil": MagNetImageProcessorPil}
# The backend of processor folders saved before the torchvision one existed (they record none).
LEGACY_IMAGE_PROCESSOR_BACKEND = "pil"

__all__ = ["MagNetProcessor"]
