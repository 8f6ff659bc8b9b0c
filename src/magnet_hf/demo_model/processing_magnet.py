# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Processor for MagNet: a BERT tokenizer and [`MagNetImageProcessor`] in one object."""

from __future__ import annotations

import torch
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import logging

logger = logging.get_logger(__name__)


class MagNetProcessor(ProcessorMixin):
    r"""
    Prepares (image, expression) pairs for MagNet.

    Text follows the released recipe: BERT ids with [CLS] and [SEP], cut to `max_length` tokens (so a long expression
    loses its [SEP], exactly as in the release), padded with the pad id (0 for BERT) to exactly `max_length`. The
    released weights were trained at `max_length=20` and their language fusion normalises over padding, so the
    padded length matters.

    Args:
        image_processor ([`MagNetImageProcessor`]): resizes and normalises images.
        tokenizer (a BERT tokenizer): `bert-base-uncased` for the released weights.
        max_length (`int`, *optional*, defaults to 20): the padded token length.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 20, **kwargs):
        if not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an integer of at least 3 ([CLS], a word, [SEP]), got {max_length!r}.")
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def encode_text(self, text: str | list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask `(batch, max_length)` with the released cut-and-pad rule."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("No expression was given.")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(texts), self.max_length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), self.max_length), dtype=torch.long)
        for row, expression in enumerate(texts):
            if not isinstance(expression, str):
                raise TypeError(f"Expression {row} must be a string, got {type(expression).__name__}.")
            if not expression.strip():
                raise ValueError(f"Expression {row} is empty; MagNet needs words to know what to segment.")
            ids = self.tokenizer(expression, add_special_tokens=True, truncation=False)["input_ids"]
            if len(ids) > self.max_length:
                logger.warning(
                    f"Expression {row} has {len(ids)} tokens; cut to {self.max_length} as in the released model "
                    f"(the end of the sentence, [SEP] included, is dropped): {expression[:80]!r}"
                )
                ids = ids[: self.max_length]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt", **kwargs) -> BatchEncoding:
        """
        Prepares a batch. `images` (one or a list: PIL, NumPy, torch or paths) and `text` (one string or a list) pair
        up one to one; a single image with several expressions (or the reverse) is repeated to match.

        Returns a [`BatchEncoding`] with `pixel_values`, `original_sizes`, `input_ids` and `attention_mask`
        (whichever inputs were given).
        """
        if images is None and text is None:
            raise ValueError("Give images, text or both.")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"MagNetProcessor returns PyTorch tensors only; got return_tensors={return_tensors!r}.")
        data = {}
        if text is not None:
            data.update(self.encode_text(text))
        if images is not None:
            data.update(self.image_processor(images, return_tensors="pt", **kwargs))
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
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["MagNetProcessor"]
