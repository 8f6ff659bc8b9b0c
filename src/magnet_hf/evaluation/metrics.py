# Copyright 2024 The magnet_hf Authors. Licensed under the Apache License, Version 2.0.
"""Referring image segmentation metrics: overall IoU, mean IoU and precision@t.

The numbers follow the evaluation protocol of the released LAVT/MagNet code, so they are directly comparable
with published tables. Every (object, sentence) pair is one sample. For each sample the intersection
``I = |pred & gt|`` and union ``U = |pred | gt|`` of the boolean masks are counted, then

- ``overall_iou`` (oIoU) is ``sum(I) / sum(U)`` (0 when the total union is 0),
- ``mean_iou`` (mIoU) is the mean over samples of ``I / U``, where a sample with ``U == 0`` scores 0 (so a pair
  with both masks empty counts as a miss, as in the released code),
- ``precision@t`` is the share of samples whose IoU is at least ``t``.

All metrics only depend on the per-sample counts ``(I, U)``; this is what makes the streaming
[`ReferringSegmentationMetric`] cheap to merge across processes (two integers per sample, never masks).
Values are fractions in [0, 1]; [`format_metrics_table`] prints percentages the way papers do.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch


if TYPE_CHECKING:
    import evaluate


__all__ = [
    "DEFAULT_THRESHOLDS",
    "EVALUATE_METRIC_PATH",
    "ReferringSegmentationMetric",
    "batched_intersection_and_union",
    "format_metrics_table",
    "intersection_and_union",
    "load_evaluate_metric",
    "metrics_from_counts",
    "referring_segmentation_metrics",
]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

#: Folder of the packaged `evaluate` module; pass it to `evaluate.load` (or use [`load_evaluate_metric`]).
EVALUATE_METRIC_PATH = Path(__file__).resolve().parent / "evaluate_metric" / "referring_segmentation"

Mask = Union[np.ndarray, torch.Tensor]
Masks = Union[np.ndarray, torch.Tensor, Sequence[Mask]]


# --------------------------------------------------------------------------------------------- input checks


def _validate_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Iterable):
        raise TypeError(f"`thresholds` must be a sequence of numbers, got {type(thresholds).__name__}.")
    thresholds = tuple(thresholds)
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"`thresholds` must contain numbers, got {t!r}.")
        if not (0.0 <= t <= 1.0):  # also rejects NaN
            raise ValueError(f"`thresholds` must lie in [0, 1] (IoU fractions, not percent), got {t!r}.")
    if len(set(thresholds)) != len(thresholds):
        raise ValueError(f"`thresholds` contains duplicates: {tuple(thresholds)!r}.")
    return thresholds


def _non_binary_error(name: str, found: Any, is_float: bool) -> ValueError:
    if is_float:
        hint = "threshold it first, e.g. `probabilities > 0.5` or `logits > 0`"
    else:
        hint = "convert it first, e.g. `label_map == object_id` or `mask > 0`"
    return ValueError(f"{name} must be a binary mask (bool, or numbers in {{0, 1}}) but contains {found!r}; {hint}.")


def _binary_numpy(mask: np.ndarray, name: str) -> np.ndarray:
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise TypeError(f"{name} must have a bool, integer or float dtype, got {mask.dtype}.")
    # Silently treating e.g. 255-valued PNG masks or probabilities as "nonzero means foreground" would change the
    # published numbers without warning, so anything outside {0, 1} is an error.
    invalid = ~((mask == 0) | (mask == 1))
    if invalid.any():
        raise _non_binary_error(name, mask[invalid].flat[0].item(), np.issubdtype(mask.dtype, np.floating))
    return mask.astype(bool)


def _binary_tensor(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name} must have a bool, integer or float dtype, got {mask.dtype}.")
    invalid = ~((mask == 0) | (mask == 1))
    if invalid.any():  # one scalar sync; the mask itself stays on its device
        raise _non_binary_error(name, mask[invalid][0].item(), mask.is_floating_point())
    return mask.bool()


def _as_binary(mask: Any, name: str) -> Mask:
    if isinstance(mask, torch.Tensor):
        return _binary_tensor(mask.detach(), name)
    return _binary_numpy(np.asarray(mask), name)


def _split_masks(masks: Masks, name: str) -> list[Any]:
    """Turns a stacked (N, H, W) array/tensor or a sequence of masks into a list of per-sample masks."""
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        if masks.ndim == 2:
            raise ValueError(
                f"`{name}` is a single 2-D mask of shape {tuple(masks.shape)}; pass a list of masks or a stacked "
                "(num_samples, height, width) array."
            )
        if masks.ndim != 3:
            raise ValueError(
                f"`{name}` must be a sequence of 2-D masks or a stacked (num_samples, height, width) array, "
                f"got an array of shape {tuple(masks.shape)}."
            )
        return list(masks)
    if isinstance(masks, (str, bytes, dict)) or not isinstance(masks, Sequence):
        raise TypeError(
            f"`{name}` must be a sequence of masks or a stacked (num_samples, height, width) array/tensor, "
            f"got {type(masks).__name__}."
        )
    return list(masks)


def _pair_masks(predictions: Masks, references: Masks) -> list[tuple[Mask, Mask]]:
    preds = _split_masks(predictions, "predictions")
    refs = _split_masks(references, "references")
    if len(preds) != len(refs):
        raise ValueError(
            f"Got {len(preds)} predictions but {len(refs)} references; every sample needs exactly one of each."
        )
    pairs = []
    for index, (pred, ref) in enumerate(zip(preds, refs)):
        pred = _as_binary(pred, f"Prediction {index}")
        ref = _as_binary(ref, f"Reference {index}")
        for mask, kind in ((pred, "Prediction"), (ref, "Reference")):
            if mask.ndim != 2:
                raise ValueError(
                    f"{kind} {index} must be a 2-D (height, width) mask, got shape {tuple(mask.shape)}."
                )
        if tuple(pred.shape) != tuple(ref.shape):
            raise ValueError(
                f"Sample {index}: prediction shape {tuple(pred.shape)} does not match reference shape "
                f"{tuple(ref.shape)}; resize the prediction to the reference size before scoring."
            )
        pairs.append((pred, ref))
    return pairs


def _to_int64_vector(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be one count per sample (1-D), got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integer pixel counts, got dtype {array.dtype}.")
    return array.astype(np.int64)


# ------------------------------------------------------------------------------------------------- counting


def _count_pair(pred: Mask, ref: Mask) -> tuple[int, int]:
    if isinstance(pred, torch.Tensor) or isinstance(ref, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else ref.device
        pred, ref = torch.as_tensor(pred, device=device), torch.as_tensor(ref, device=device)
        return int((pred & ref).sum()), int((pred | ref).sum())
    return int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred | ref))


def intersection_and_union(prediction: Mask, reference: Mask) -> tuple[int, int]:
    """Intersection and union pixel counts of one predicted and one reference mask.

    Args:
        prediction (`np.ndarray` or `torch.Tensor` of shape `(height, width)`):
            Predicted mask: bool, or integers/floats that are all 0 or 1.
        reference (`np.ndarray` or `torch.Tensor` of shape `(height, width)`):
            Ground-truth mask, same shape and value rules as `prediction`.

    Returns:
        `tuple[int, int]`: `(|prediction & reference|, |prediction | reference|)`.
    """
    ((pred, ref),) = _pair_masks([prediction], [reference])
    return _count_pair(pred, ref)


def batched_intersection_and_union(
    predictions: torch.Tensor, references: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union counts of a batch of masks, computed on the masks' device.

    Nothing but (on non-bool input) one scalar validity check leaves the device, so this is the function to call
    inside a distributed evaluation loop before gathering the counts.

    Args:
        predictions (`torch.Tensor` of shape `(batch_size, height, width)`):
            Predicted masks: bool, or integers/floats that are all 0 or 1.
        references (`torch.Tensor` of shape `(batch_size, height, width)`):
            Ground-truth masks on the same device, same shape and value rules as `predictions`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: intersections and unions, each an int64 tensor of shape
        `(batch_size,)` on the input device.
    """
    if not isinstance(predictions, torch.Tensor) or not isinstance(references, torch.Tensor):
        raise TypeError(
            "`predictions` and `references` must both be torch tensors, got "
            f"{type(predictions).__name__} and {type(references).__name__}."
        )
    if predictions.ndim != 3 or references.ndim != 3:
        raise ValueError(
            "`predictions` and `references` must be (batch_size, height, width) tensors, got shapes "
            f"{tuple(predictions.shape)} and {tuple(references.shape)}."
        )
    if predictions.shape != references.shape:
        raise ValueError(
            f"Prediction shape {tuple(predictions.shape)} does not match reference shape {tuple(references.shape)}."
        )
    if predictions.device != references.device:
        raise ValueError(
            f"`predictions` are on {predictions.device} but `references` are on {references.device}."
        )
    pred = _binary_tensor(predictions.detach(), "`predictions`").flatten(1)
    ref = _binary_tensor(references.detach(), "`references`").flatten(1)
    return (pred & ref).sum(dim=1, dtype=torch.int64), (pred | ref).sum(dim=1, dtype=torch.int64)


def _counts_from_masks(predictions: Masks, references: Masks) -> tuple[np.ndarray, np.ndarray]:
    if (
        isinstance(predictions, torch.Tensor)
        and isinstance(references, torch.Tensor)
        and predictions.ndim == references.ndim == 3
        and predictions.shape == references.shape
        and predictions.device == references.device
    ):
        # Stacked tensors: count on the device and move only 2 * batch_size integers to the host.
        intersections, unions = batched_intersection_and_union(predictions, references)
        return intersections.cpu().numpy(), unions.cpu().numpy()
    pairs = _pair_masks(predictions, references)
    counts = np.array([_count_pair(pred, ref) for pred, ref in pairs], dtype=np.int64).reshape(-1, 2)
    return counts[:, 0].copy(), counts[:, 1].copy()


# -------------------------------------------------------------------------------------------------- metrics


def metrics_from_counts(
    intersections: Any, unions: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float | int]:
    """Computes the published metrics from per-sample intersection and union counts.

    Args:
        intersections (array-like of int, shape `(num_samples,)`):
            Intersection pixel count of every sample.
        unions (array-like of int, shape `(num_samples,)`):
            Union pixel count of every sample; must be at least the matching intersection.
        thresholds (`Sequence[float]`, *optional*, defaults to `(0.5, 0.6, 0.7, 0.8, 0.9)`):
            IoU thresholds in [0, 1] for the `precision@{t}` entries.

    Returns:
        `dict`: `overall_iou`, `mean_iou` and one `precision@{t}` per threshold (Python floats in [0, 1]), plus
        `num_samples` (int). The result does not depend on the order of the samples.
    """
    thresholds = _validate_thresholds(thresholds)
    inter = _to_int64_vector(intersections, "intersections")
    union = _to_int64_vector(unions, "unions")
    if inter.shape != union.shape:
        raise ValueError(f"Got {inter.size} intersections but {union.size} unions; pass one of each per sample.")
    if inter.size == 0:
        raise ValueError("No samples to evaluate: got empty predictions and references.")
    if (inter < 0).any() or (inter > union).any():
        raise ValueError("Counts must satisfy 0 <= intersection <= union for every sample.")

    total_union = int(union.sum())
    iou = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=iou, where=union > 0)  # U == 0 scores 0, as in the released evaluation
    num_samples = int(inter.size)
    metrics: dict[str, float | int] = {
        "overall_iou": int(inter.sum()) / total_union if total_union > 0 else 0.0,
        # fsum makes the mean exact, hence independent of how samples were split across processes or batches.
        "mean_iou": math.fsum(iou.tolist()) / num_samples,
    }
    for t in thresholds:
        metrics[f"precision@{t}"] = int(np.count_nonzero(iou >= t)) / num_samples
    metrics["num_samples"] = num_samples
    return metrics


def referring_segmentation_metrics(
    predictions: Masks, references: Masks, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float | int]:
    """Overall IoU, mean IoU and precision@t of predicted against reference masks.

    Args:
        predictions (sequence of masks, or a stacked `(num_samples, height, width)` array/tensor):
            One predicted mask per (object, sentence) sample, as `np.ndarray` or `torch.Tensor`: bool, or
            integers/floats that are all 0 or 1 (threshold probabilities first). Sizes may differ between samples.
        references (same as `predictions`):
            Ground-truth masks; the i-th reference must have the shape of the i-th prediction.
        thresholds (`Sequence[float]`, *optional*, defaults to `(0.5, 0.6, 0.7, 0.8, 0.9)`):
            IoU thresholds in [0, 1]; key `precision@{t}` prints each as given.

    Returns:
        `dict`: `overall_iou`, `mean_iou`, `precision@0.5` ... `precision@0.9` as Python floats in [0, 1], and
        `num_samples` (int).

    Example:

    ```python
    >>> import numpy as np
    >>> from magnet_hf.evaluation.metrics import referring_segmentation_metrics
    >>> pred = np.array([[1, 1], [0, 0]], dtype=bool)
    >>> gt = np.array([[1, 0], [0, 0]], dtype=bool)
    >>> referring_segmentation_metrics([pred], [gt])["overall_iou"]
    0.5

    ```
    """
    thresholds = _validate_thresholds(thresholds)
    intersections, unions = _counts_from_masks(predictions, references)
    return metrics_from_counts(intersections, unions, thresholds)


class ReferringSegmentationMetric:
    """Streaming form of [`referring_segmentation_metrics`] that keeps two int64 counts per sample.

    Call [`~ReferringSegmentationMetric.update`] with each batch, then [`~ReferringSegmentationMetric.compute`].
    In multi-process evaluation, count on each process with [`batched_intersection_and_union`], gather the two
    count tensors (e.g. `accelerator.gather_for_metrics`) and feed them to
    [`~ReferringSegmentationMetric.add_counts`] on the main process; the result is the same as scoring all
    masks in one call.

    Args:
        thresholds (`Sequence[float]`, *optional*, defaults to `(0.5, 0.6, 0.7, 0.8, 0.9)`):
            IoU thresholds in [0, 1] for the `precision@{t}` entries.

    Example:

    ```python
    >>> metric = ReferringSegmentationMetric()
    >>> for batch in dataloader:  # doctest: +SKIP
    ...     metric.update(model_masks(batch), batch["masks"])
    >>> metric.compute()  # doctest: +SKIP
    ```
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = _validate_thresholds(thresholds)
        self.reset()

    def reset(self) -> None:
        """Forgets every sample seen so far."""
        self._intersections: list[np.ndarray] = []
        self._unions: list[np.ndarray] = []

    def update(self, predictions: Masks, references: Masks) -> None:
        """Counts a batch of masks; accepts the same inputs as [`referring_segmentation_metrics`].

        An empty batch is allowed (e.g. an uneven last shard) and adds nothing.
        """
        intersections, unions = _counts_from_masks(predictions, references)
        if intersections.size == 0:
            return
        self._intersections.append(intersections)
        self._unions.append(unions)

    def add_counts(self, intersections: Any, unions: Any) -> None:
        """Adds precomputed per-sample counts, e.g. gathered from other processes.

        Args:
            intersections (array-like or `torch.Tensor` of int, shape `(num_samples,)`):
                Intersection pixel counts, one per sample.
            unions (array-like or `torch.Tensor` of int, shape `(num_samples,)`):
                Union pixel counts, one per sample, each at least the matching intersection.
        """
        inter = _to_int64_vector(intersections, "intersections")
        union = _to_int64_vector(unions, "unions")
        if inter.shape != union.shape:
            raise ValueError(f"Got {inter.size} intersections but {union.size} unions; pass one of each per sample.")
        if (inter < 0).any() or (inter > union).any():
            raise ValueError("Counts must satisfy 0 <= intersection <= union for every sample.")
        self._intersections.append(inter)
        self._unions.append(union)

    @property
    def intersections(self) -> np.ndarray:
        """Per-sample intersection counts accumulated so far (int64 copy, shape `(num_samples,)`)."""
        return np.concatenate([np.zeros(0, dtype=np.int64), *self._intersections])

    @property
    def unions(self) -> np.ndarray:
        """Per-sample union counts accumulated so far (int64 copy, shape `(num_samples,)`)."""
        return np.concatenate([np.zeros(0, dtype=np.int64), *self._unions])

    @property
    def num_samples(self) -> int:
        return sum(chunk.size for chunk in self._intersections)

    def __len__(self) -> int:
        return self.num_samples

    def compute(self) -> dict[str, float | int]:
        """Metrics over every sample added so far; same keys and numbers as [`referring_segmentation_metrics`]."""
        if self.num_samples == 0:
            raise ValueError("No samples to evaluate: call `update` or `add_counts` before `compute`.")
        return metrics_from_counts(self.intersections, self.unions, self.thresholds)


# ----------------------------------------------------------------------------------------- presentation / IO

_TABLE_COLUMNS = (("overall_iou", "oIoU"), ("mean_iou", "mIoU"))


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Formats metrics as a Markdown table of percentages with 2 decimals, in the order of published tables.

    Args:
        metrics (`dict`): Output of [`referring_segmentation_metrics`] or any `compute()` of this module.

    Returns:
        `str`: A three-line Markdown table with columns oIoU, mIoU, P@0.5 ... P@0.9 (whichever are present;
        precision columns sorted by threshold).
    """
    columns = [(key, title) for key, title in _TABLE_COLUMNS if key in metrics]
    precision_keys = [key for key in metrics if key.startswith("precision@")]
    columns += [(key, f"P@{key.split('@', 1)[1]}") for key in sorted(precision_keys, key=lambda k: float(k[10:]))]
    if not columns:
        raise ValueError(f"No metrics to format; expected keys such as 'overall_iou', got {sorted(metrics)}.")
    cells = [f"{100 * float(metrics[key]):.2f}" for key, _ in columns]
    widths = [max(len(title), len(cell)) for (_, title), cell in zip(columns, cells)]
    header = "| " + " | ".join(title.ljust(w) for (_, title), w in zip(columns, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(cell.rjust(w) for cell, w in zip(cells, widths)) + " |"
    return "\n".join((header, rule, row))


def load_evaluate_metric(**kwargs: Any) -> "evaluate.EvaluationModule":
    """Loads the packaged `evaluate` module offline; `kwargs` go to `evaluate.load` (e.g. `cache_dir`).

    Returns:
        `evaluate.EvaluationModule`: use `add_batch(predictions=..., references=...)` and `compute()`; the keys and
        numbers match [`referring_segmentation_metrics`].
    """
    import evaluate  # deferred: pulls in `datasets`, which plain metric users do not need

    return evaluate.load(str(EVALUATE_METRIC_PATH), **kwargs)
