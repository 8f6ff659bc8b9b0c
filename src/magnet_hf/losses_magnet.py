# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Segmentation losses of MagNet: one query and one target per sample, so no Hungarian matching is needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration_magnet import MagNetConfig

# Mask2Former's convention for the class head with one real class: index 0 is "object", the last is "no object".
OBJECT_CLASS_INDEX = 0


def dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of 1 - soft Dice; `mask_logits` and 0/1 `targets` are `(batch, pixels)`."""
    probabilities = mask_logits.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).mean()


def _prediction_losses(
    pred_masks: torch.Tensor, pred_logits: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """BCE, dice and class CE of one decoder prediction. `targets` are already at the mask logits' size."""
    mask_logits = pred_masks[:, 0].flatten(1).float()
    flat_targets = targets.flatten(1)
    class_targets = torch.full((pred_logits.shape[0],), OBJECT_CLASS_INDEX, device=pred_logits.device)
    return {
        "mask": F.binary_cross_entropy_with_logits(mask_logits, flat_targets),
        "dice": dice_loss(mask_logits, flat_targets),
        "class": F.cross_entropy(pred_logits[:, 0].float(), class_targets),
    }


def segmentation_losses(outputs, labels: torch.Tensor, config: MagNetConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    Deeply supervised segmentation loss: the mask BCE, dice and class cross-entropy of the final prediction and of
    every auxiliary one, weighted by `config.mask_loss_weight`, `config.dice_loss_weight` and
    `config.class_loss_weight`, summed over predictions.

    `labels` `(batch, height, width)` hold 0/1 masks at any size; they are resized to the mask logits' stride-4 size
    with bilinear interpolation (soft targets at object borders), as Mask2Former does for its point targets.
    Returns the total loss and a dict of the unweighted terms of the final prediction plus `loss_total_auxiliary`.
    """
    if labels.dim() != 3 or labels.shape[0] != outputs.pred_masks.shape[0]:
        raise ValueError(
            f"`labels` must be (batch, height, width) with batch {outputs.pred_masks.shape[0]}, got {tuple(labels.shape)}."
        )
    size = outputs.pred_masks.shape[-2:]
    targets = F.interpolate(labels[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    weights = {"mask": config.mask_loss_weight, "dice": config.dice_loss_weight, "class": config.class_loss_weight}
    predictions = list(outputs.auxiliary_predictions or ()) + [
        {"pred_masks": outputs.pred_masks, "pred_logits": outputs.pred_logits}
    ]
    total = torch.zeros((), device=labels.device)
    terms = {}
    for index, prediction in enumerate(predictions):
        terms = _prediction_losses(prediction["pred_masks"], prediction["pred_logits"], targets)
        weighted = sum(weights[name] * value for name, value in terms.items())
        total = total + weighted
        if index == len(predictions) - 2:
            auxiliary_total = total.detach().clone()
    loss_dict = {f"loss_{name}": value.detach() for name, value in terms.items()}
    loss_dict["loss_total_auxiliary"] = auxiliary_total if len(predictions) > 1 else torch.zeros(())
    return total, loss_dict
