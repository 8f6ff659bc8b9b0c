"""Training and evaluation batches for MagNet: processor inputs, resized masks and Mask Grounding inputs.

Randomness is keyed, not streamed: the sentence of a ref and its masked tokens come from a NumPy
generator seeded with ``(seed, epoch, ref_id, sentence index)``. A batch is therefore identical
whichever worker builds it and in whatever order, and changes from epoch to epoch through
:meth:`DataCollatorForReferringSegmentation.set_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

IGNORE_INDEX = -100
_UINT64 = (1 << 64) - 1
# Separate random streams per decision, so e.g. turning augmentation on does not change the masking.
_PURPOSE_SENTENCE, _PURPOSE_MASKING, _PURPOSE_AUGMENT = 0, 1, 2

Augment = Callable[[Image.Image, Image.Image, np.random.Generator], tuple[Image.Image, Image.Image]]


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_token_id: int,
    special_ids: Iterable[int],
    generators: Sequence[np.random.Generator],
    ratio: float = 0.15,
    replace_prob: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token masking for Mask Grounding, by the rule the MagNet authors point to (OVR-CNN's).

    Every maskable token (attended, ``attention_mask == 1``, and not a special token) is chosen
    independently with probability ``ratio``; a chosen token becomes ``mask_token_id`` with
    probability ``replace_prob`` and keeps its id otherwise. A sentence may draw no token at all
    (``(1 - ratio) ** n`` of the time): its labels are all :data:`IGNORE_INDEX`, and it adds no
    Mask Grounding loss.

    Args:
        input_ids: ``(B, L)`` token ids.
        attention_mask: ``(B, L)``, 0 on padding.
        mask_token_id: id of ``[MASK]``.
        special_ids: ids never masked (``[CLS]``, ``[SEP]``, ``[PAD]``, ...).
        generators: one NumPy generator per row (decides which tokens and how).
        ratio: probability that a maskable token is chosen, in ``[0, 1]``.
        replace_prob: probability that a chosen token is replaced by ``[MASK]``, in ``[0, 1]``.

    Returns:
        ``(masked_input_ids, mlm_labels)``, both ``(B, L)`` long: the masked ids, and the original id
        on chosen positions with :data:`IGNORE_INDEX` (-100) elsewhere.
    """
    if not 0.0 <= ratio <= 1.0 or not 0.0 <= replace_prob <= 1.0:
        raise ValueError(f"ratio and replace_prob must be in [0, 1], got {ratio} and {replace_prob}.")
    if len(generators) != input_ids.shape[0]:
        raise ValueError(f"need one generator per row: {len(generators)} for {input_ids.shape[0]} rows.")
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype)
    maskable = (attention_mask.bool() & ~torch.isin(input_ids, special)).numpy()
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, rng in enumerate(generators):
        # Both draws cover the whole row, so a token's fate does not depend on its neighbours' padding.
        chosen = maskable[row] & (rng.random(maskable.shape[1]) < ratio)
        replace = chosen & (rng.random(maskable.shape[1]) < replace_prob)
        labels[row, chosen] = input_ids[row, chosen]
        masked[row, replace] = mask_token_id
    return masked, labels


def _height_width(size: Any) -> tuple[int, int]:
    # A plain dict or transformers' SizeDict (which image processors hold after loading).
    try:
        height, width = int(size["height"]), int(size["width"])
    except (TypeError, KeyError, ValueError):
        height, width = getattr(size, "height", None), getattr(size, "width", None)
    if not isinstance(height, int) or not isinstance(width, int) or height <= 0 or width <= 0:
        raise ValueError(f"processor.image_processor.size must give a positive 'height' and 'width', got {size!r}.")
    return height, width


class PhotometricAugment:
    """Random brightness, contrast and saturation; geometry is untouched.

    Flips and crops are left out on purpose: they change the meaning of spatial expressions
    ("left of", "the second from the left") or may cut the referred object away.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        self.factors = {ImageEnhance.Brightness: brightness, ImageEnhance.Contrast: contrast, ImageEnhance.Color: saturation}

    def __call__(self, image: Image.Image, mask: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
        for enhancer, strength in self.factors.items():
            if strength:
                image = enhancer(image).enhance(float(rng.uniform(1 - strength, 1 + strength)))
        return image, mask


class DataCollatorForReferringSegmentation:
    """Turn referring rows (:data:`~magnet_hf.data.schema.REFER_FEATURES`) into MagNet batches.

    Use it as a ``collate_fn`` (``collator(list_of_rows)``) or as a ``datasets`` transform
    (``dataset.with_transform(collator.transform)`` with PyTorch's default collate). Both give:

    - ``pixel_values`` ``(B, 3, S, S)`` float, ``input_ids`` and ``attention_mask`` ``(B, L)`` long,
      from ``processor(images=..., text=..., return_tensors="pt")``;
    - ``labels`` ``(B, S, S)`` float in {0, 1}: the mask resized with nearest neighbour to
      ``processor.image_processor.size``;
    - with Mask Grounding on: ``masked_input_ids`` and ``mlm_labels`` ``(B, L)`` long (see :func:`mask_tokens`).

    Sentences: in training one sentence per ref, drawn per epoch; in evaluation the first one, so
    evaluate on :func:`~magnet_hf.data.explode.explode_sentences` output (one sentence per row).
    Rows carrying ``sentence_index`` (exploded rows) use their single sentence.

    Args:
        processor: a ``MagNetProcessor`` (or anything with the same call and ``image_processor.size``
            and ``tokenizer`` attributes).
        train: training mode (random sentence, augmentation) or evaluation mode.
        mask_grounding: produce ``masked_input_ids``/``mlm_labels``; defaults to ``train``.
        mask_ratio: probability that each maskable token is chosen for Mask Grounding (default 0.15,
            ``MagNetConfig.mask_grounding_mask_probability``).
        mask_replace_prob: probability a chosen token becomes ``[MASK]`` (default 0.9,
            ``mask_grounding_replace_probability``); the others keep their id.
        seed: base seed of every random choice.
        augment: optional ``(image, mask, rng) -> (image, mask)`` applied in training only
            (e.g. :class:`PhotometricAugment`); off by default.

    With a multi-worker ``DataLoader``, call :meth:`set_epoch` before creating each epoch's iterator
    and keep ``persistent_workers=False`` so workers receive the new epoch.
    """

    def __init__(
        self,
        processor: Any,
        *,
        train: bool = True,
        mask_grounding: bool | None = None,
        mask_ratio: float = 0.15,
        mask_replace_prob: float = 0.9,
        seed: int = 0,
        augment: Augment | None = None,
    ):
        size = _height_width(getattr(getattr(processor, "image_processor", None), "size", None))
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or tokenizer.mask_token_id is None:
            raise ValueError("processor.tokenizer must define a [MASK] token (mask_token_id).")
        if not 0.0 <= mask_ratio <= 1.0 or not 0.0 <= mask_replace_prob <= 1.0:
            raise ValueError(f"mask_ratio and mask_replace_prob must be in [0, 1], got {mask_ratio}, {mask_replace_prob}.")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        self.processor = processor
        self.size = size
        self.train = train
        self.mask_grounding = train if mask_grounding is None else mask_grounding
        self.mask_ratio = mask_ratio
        self.mask_replace_prob = mask_replace_prob
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sentence and token choices the next batches use."""
        self.epoch = int(epoch)

    def _rng(self, ref_id: int, sentence_index: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(ref_id) & _UINT64, sentence_index, purpose])

    def _sentence(self, row: dict[str, Any]) -> tuple[str, int]:
        sentences = row["sentences"]
        if not sentences:
            raise ValueError(f"ref_id {row.get('ref_id')} has no sentence.")
        if "sentence_index" in row and row["sentence_index"] is not None and len(sentences) == 1:
            return sentences[0], int(row["sentence_index"])
        if not self.train:
            return sentences[0], 0
        index = int(self._rng(row["ref_id"], 0, _PURPOSE_SENTENCE).integers(len(sentences)))
        return sentences[index], index

    def _encode(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, texts, labels, keys = [], [], [], []
        for row in rows:
            text, index = self._sentence(row)
            image, mask = row["image"].convert("RGB"), row["mask"]
            if self.train and self.augment is not None:
                image, mask = self.augment(image, mask, self._rng(row["ref_id"], index, _PURPOSE_AUGMENT))
            resized = np.asarray(mask.convert("L").resize(self.size[::-1], Image.NEAREST))
            labels.append(torch.from_numpy((resized > 0).astype(np.float32)))
            images.append(image)
            texts.append(text)
            keys.append((row["ref_id"], index))
        batch = self.processor(images=images, text=texts, return_tensors="pt")
        out = {
            "pixel_values": batch["pixel_values"].float(),
            "input_ids": batch["input_ids"].long(),
            "attention_mask": batch["attention_mask"].long(),
            "labels": torch.stack(labels),
        }
        if self.mask_grounding:
            tokenizer = self.processor.tokenizer
            out["masked_input_ids"], out["mlm_labels"] = mask_tokens(
                out["input_ids"],
                out["attention_mask"],
                mask_token_id=tokenizer.mask_token_id,
                special_ids=tokenizer.all_special_ids,
                generators=[self._rng(ref_id, index, _PURPOSE_MASKING) for ref_id, index in keys],
                ratio=self.mask_ratio,
                replace_prob=self.mask_replace_prob,
            )
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``collate_fn``: a list of rows to one batch of tensors."""
        return self._encode(list(features))

    def transform(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        """``datasets`` transform: a batch of columns to the same tensors (first dimension = rows)."""
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[name] for name in names))]
        return self._encode(rows)
