# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Does a trained Mask Grounding head read the image and the mask, or only the sentence?

Mask Grounding is meant to make the masked word depend on what the ground-truth mask covers. A predictor that has
learnt a language model instead (guessing "red" from "the [MASK] circle left of ...") gives the same loss whatever
scene it is shown, and then its gradient carries no visual grounding into the fused language features. The probe
masks one word of a chosen group (a colour, a shape, a position word) in every sentence that has one, and compares
the Mask Grounding cross-entropy on the sentence's own image and mask with the one on another sample's (the batch
rolled by one). A predictor that reads the scene pays more on the wrong one: the gap is the evidence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from ..losses_magnet import IGNORE_INDEX


def synthetic_word_groups() -> dict[str, tuple[str, ...]]:
    """The synthetic scenes' content words: what a predictor can only know from the image and the mask."""
    from ..data.synthetic import COLORS, ORDINALS, SHAPES

    positions = ("left", "right", "above", "below", "top", "bottom", *ORDINALS, "biggest", "smallest")
    return {"colour": tuple(COLORS), "shape": SHAPES, "position or rank": positions}


def _mask_first_word(input_ids: torch.Tensor, word_ids: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(masked_input_ids, mlm_labels)` with the first token of each row that is in `word_ids` replaced by [MASK]."""
    hits = torch.isin(input_ids, word_ids)
    first = hits & (hits.cumsum(1) == 1)
    masked = input_ids.masked_fill(first, mask_token_id)
    labels = torch.where(first, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mask_grounding_scene_dependence(
    model: Any,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    word_groups: Mapping[str, Collection[str]] | None = None,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """For each word group: the number of masked words, and the mean Mask Grounding cross-entropy with each
    sentence's own scene (`own_scene`) and with the scene of the next sample in its batch (`other_scene`).

    Args:
        model: a `MagNetForReferringSegmentation` with its Mask Grounding head (`use_mask_grounding=True`).
        processor: its `MagNetProcessor`.
        rows: evaluation rows (one sentence each, `explode_sentences`), at least two per batch.
        word_groups: group name -> words; defaults to `synthetic_word_groups()`. Words outside the tokenizer's
            vocabulary are left out.
        batch_size: rows per batch (the other scene comes from the same batch).
    """
    from ..data.collate import DataCollatorForReferringSegmentation

    if getattr(model, "mask_grounding", None) is None:
        raise ValueError("the model has no Mask Grounding head (use_mask_grounding=False); there is nothing to probe.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the other scene comes from the batch), got {batch_size}.")
    tokenizer = processor.tokenizer
    groups = synthetic_word_groups() if word_groups is None else word_groups
    group_ids = {}
    for name, words in groups.items():
        ids = {tokenizer.convert_tokens_to_ids(word) for word in words} - {tokenizer.unk_token_id, None}
        if ids:
            group_ids[name] = torch.tensor(sorted(ids))
    collate = DataCollatorForReferringSegmentation(processor, train=False, mask_grounding=False)
    totals = {name: [0, 0.0, 0.0] for name in group_ids}  # words, own-scene loss sum, other-scene loss sum
    model.eval()
    for start in range(0, len(rows) - 1, batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        if batch["input_ids"].shape[0] < 2:
            break
        for name, word_ids in group_ids.items():
            masked, labels = _mask_first_word(batch["input_ids"], word_ids, tokenizer.mask_token_id)
            count = int((labels != IGNORE_INDEX).sum())
            if count == 0:
                continue
            losses = []
            for shift in (0, 1):
                with torch.no_grad():
                    output = model(
                        pixel_values=batch["pixel_values"].roll(shift, 0), input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"], labels=batch["labels"].roll(shift, 0),
                        masked_input_ids=masked, mlm_labels=labels,
                    )  # fmt: skip
                losses.append(float(output.loss_dict["loss_mask_grounding"]))  # the mean over the masked words
            totals[name][0] += count
            totals[name][1] += losses[0] * count
            totals[name][2] += losses[1] * count
    return {
        name: {"words": count, "own_scene": own / count, "other_scene": other / count, "gap": (other - own) / count}
        for name, (count, own, other) in totals.items()
        if count
    }
