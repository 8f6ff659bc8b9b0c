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


# --------------------------------------------------------------------------------------------------------------------
# Auxiliary losses (reconstructed from the paper; its exact formulation is unpublished)
# --------------------------------------------------------------------------------------------------------------------

IGNORE_INDEX = -100


def _no_contribution(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that keeps every input in the autograd graph (distributed training expects all heads to be used)."""
    return sum(tensor.sum() * 0.0 for tensor in tensors)


def mask_grounding_loss(token_logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """
    Mean cross-entropy of the Masked Token Predictor over the masked tokens of the batch.

    `token_logits` `(num_masked, vocab_size)` are the predictions at the masked positions and `token_labels`
    `(num_masked,)` the original ids there. Computed in fp32; a batch without any masked token gives a zero that is
    still connected to the graph.
    """
    if token_labels.numel() == 0:
        return _no_contribution(token_logits)
    return F.cross_entropy(token_logits.float(), token_labels)


def alignment_targets(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """
    Hard 0/1 targets `(batch, height * width)` on the pixel-embedding grid `size`: a cell is a target pixel when the
    ground-truth mask `labels` `(batch, H, W)` covers at least half of it (area averaging, so thin parts are judged by
    coverage rather than by whichever input pixel a nearest or bilinear sample happens to hit).
    """
    coverage = F.adaptive_avg_pool2d(labels[:, None].float(), size)
    return (coverage >= 0.5).flatten(1).float()


def pixel_text_alignment_loss(
    pixel_embeddings: torch.Tensor, text_embeddings: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    r"""
    Pixel-to-text contrastive loss. With L2-normalised pixel embeddings $z_i$, the normalised sentence embedding $t$
    of the same sample and $s_i = z_i \cdot t / \tau_t$, each target pixel $i \in P$ is a positive contrasted with all
    background pixels $N$ of its image:

    $$\mathcal{L}_{pt} = \frac{1}{|P|} \sum_{i \in P} -\log \frac{e^{s_i}}{e^{s_i} + \sum_{j \in N} e^{s_j}}
        = \frac{1}{|P|} \sum_{i \in P} \operatorname{softplus}\big(\operatorname{logsumexp}_{j \in N} s_j - s_i\big),$$

    averaged over the samples that have both target and background pixels (an empty or full mask contributes nothing;
    if no sample qualifies the loss is a graph-connected zero).

    Args:
        pixel_embeddings: `(batch, dim, height, width)` pixel embeddings (normalised here).
        text_embeddings: `(batch, dim)` sentence embeddings (normalised here).
        targets: `(batch, height * width)` 0/1 target pixels (see [`alignment_targets`]).
        temperature: $\tau_t > 0$.
    """
    with torch.autocast(device_type=pixel_embeddings.device.type, enabled=False):
        pixels = F.normalize(pixel_embeddings.float().flatten(2), dim=1)  # (batch, dim, pixels)
        text = F.normalize(text_embeddings.float(), dim=-1)  # (batch, dim)
        scores = torch.einsum("bdp,bd->bp", pixels, text) / temperature  # (batch, pixels)
        positive = targets.bool()
        lowest = torch.finfo(scores.dtype).min  # finite, so all-target rows give no NaN gradient
        negative_logsumexp = scores.masked_fill(positive, lowest).logsumexp(dim=-1, keepdim=True)  # (batch, 1)
        per_pixel = F.softplus(negative_logsumexp - scores) * positive  # (batch, pixels)
        num_positive = positive.sum(-1)
        valid = (num_positive > 0) & (num_positive < positive.shape[-1])
        if not valid.any():
            return _no_contribution(pixel_embeddings, text_embeddings)
        per_sample = per_pixel.sum(-1) / num_positive.clamp(min=1)
        return per_sample[valid].mean()


# Seed of the pixel-to-pixel sampling outside training, so that an eval-mode loss depends on the inputs only.
EVALUATION_SAMPLING_SEED = 0


def evaluation_generator(device: torch.device | str) -> torch.Generator:
    """A fresh generator on `device` seeded with `EVALUATION_SAMPLING_SEED` (the same draws for every call)."""
    return torch.Generator(device=device).manual_seed(EVALUATION_SAMPLING_SEED)


def _sample_indices(candidates: torch.Tensor, count: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` random positions per row among the True entries of `candidates` `(batch, pixels)`: returns the
    indices `(batch, count)` and whether each slot holds a real candidate `(batch, count)`."""
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = keys.masked_fill(~candidates, -1.0)  # non-candidates sort last
    chosen_keys, indices = keys.topk(min(count, candidates.shape[-1]), dim=-1)
    return indices, chosen_keys >= 0


def pixel_pixel_alignment_loss(
    pixel_embeddings: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    max_pixels: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""
    Pixel-to-pixel contrastive loss (supervised-contrastive form): target pixels attract each other and repel the
    background. Per sample, at most `max_pixels` pixels are drawn at random: up to $\lceil M/2 \rceil$ target pixels
    $P$, and background pixels $N$ fill the remaining slots. With normalised embeddings and
    $s_{ab} = z_a \cdot z_b / \tau_p$,

    $$\mathcal{L}_{pp} = \frac{1}{|P|} \sum_{a \in P} \frac{1}{|P| - 1} \sum_{p \in P \setminus \{a\}}
        \operatorname{softplus}\big(\operatorname{logsumexp}_{n \in N} s_{an} - s_{ap}\big),$$

    i.e. $-\log \frac{e^{s_{ap}}}{e^{s_{ap}} + \sum_n e^{s_{an}}}$ averaged over anchor/positive pairs, then over the
    samples with at least two target and one background pixel (others contribute nothing; a graph-connected zero if
    none qualifies). Background pixels are not anchors: "everything else" is not one thing that should cluster.

    Args:
        pixel_embeddings: `(batch, dim, height, width)` pixel embeddings (normalised here).
        targets: `(batch, height * width)` 0/1 target pixels.
        temperature: $\tau_p > 0$.
        max_pixels: $M \geq 3$, the sampled pixels per sample (memory grows as $M^2$).
        generator: optional random generator for the sampling.
    """
    with torch.autocast(device_type=pixel_embeddings.device.type, enabled=False):
        pixels = F.normalize(pixel_embeddings.float().flatten(2), dim=1).transpose(1, 2)  # (batch, pixels, dim)
        positive = targets.bool()
        anchor_index, anchor_valid = _sample_indices(positive, (max_pixels + 1) // 2, generator)
        negative_index, negative_valid = _sample_indices(~positive, max_pixels, generator)
        # Background fills the slots the target pixels left free.
        negative_valid &= torch.arange(negative_index.shape[-1], device=pixels.device) < (
            max_pixels - anchor_valid.sum(-1, keepdim=True)
        )
        gather = lambda index: pixels.gather(1, index[..., None].expand(-1, -1, pixels.shape[-1]))  # noqa: E731
        anchors, negatives = gather(anchor_index), gather(negative_index)  # (batch, A, dim), (batch, N, dim)
        positive_scores = anchors @ anchors.transpose(1, 2) / temperature  # (batch, A, A)
        negative_scores = anchors @ negatives.transpose(1, 2) / temperature  # (batch, A, N)
        lowest = torch.finfo(negative_scores.dtype).min
        negative_logsumexp = negative_scores.masked_fill(~negative_valid[:, None, :], lowest).logsumexp(-1, keepdim=True)
        pair_valid = anchor_valid[:, :, None] & anchor_valid[:, None, :]
        pair_valid &= ~torch.eye(anchor_valid.shape[-1], dtype=torch.bool, device=pixels.device)
        per_pair = F.softplus(negative_logsumexp - positive_scores) * pair_valid  # (batch, A, A)
        num_anchors = anchor_valid.sum(-1)
        valid = (num_anchors >= 2) & negative_valid.any(-1)
        if not valid.any():
            return _no_contribution(pixel_embeddings)
        per_anchor = per_pair.sum(-1) / (num_anchors[:, None] - 1).clamp(min=1)  # (batch, A)
        per_sample = (per_anchor * anchor_valid).sum(-1) / num_anchors.clamp(min=1)
        return per_sample[valid].mean()
