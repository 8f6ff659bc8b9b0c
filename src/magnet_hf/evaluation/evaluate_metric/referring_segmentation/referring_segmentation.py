# Copyright 2024 The magnet_hf Authors. Licensed under the Apache License, Version 2.0.
"""Referring image segmentation metrics (oIoU, mIoU, precision@t) as an `evaluate` module.

`evaluate.load` copies this file alone into its module cache, so it must not import `magnet_hf`; it re-implements
`magnet_hf.evaluation.metrics` with numpy only, and the package tests check that both give identical numbers.
"""

import math
import numbers

import datasets
import evaluate
import numpy as np


_CITATION = """\
@inproceedings{chng2024mask,
  title={Mask Grounding for Referring Image Segmentation},
  author={Chng, Yong Xien and Zheng, Henry and Han, Yizeng and Qiu, Xuchong and Huang, Gao},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2024}
}
@inproceedings{yang2022lavt,
  title={LAVT: Language-Aware Vision Transformer for Referring Image Segmentation},
  author={Yang, Zhao and Wang, Jiaqi and Tang, Yansong and Chen, Kai and Zhao, Hengshuang and Torr, Philip H.S.},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}
"""

_DESCRIPTION = """\
Referring image segmentation metrics as reported by LAVT and MagNet. Every (object, sentence) pair is one sample
with intersection I = |pred & gt| and union U = |pred | gt|. overall_iou (oIoU) is sum(I) / sum(U) (0 if the total
union is 0); mean_iou (mIoU) is the mean of I / U over samples, where U == 0 scores 0; precision@t is the share
of samples with IoU >= t. Only the two counts per sample are stored, so memory does not grow with mask size and
masks of different sizes can be mixed freely.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (sequence of 2-D masks, or a stacked (N, H, W) array/tensor):
        Predicted masks (numpy arrays, torch tensors or nested lists): bool, or numbers that are all 0 or 1.
    references (same as predictions):
        Ground-truth masks; the i-th reference must have the shape of the i-th prediction.
    intersections, unions (sequences of int, optional):
        Precomputed per-sample counts, instead of predictions/references (e.g. gathered from other processes).
    thresholds (sequence of float, optional, only in `compute`):
        IoU thresholds in [0, 1] for the precision@t entries; defaults to (0.5, 0.6, 0.7, 0.8, 0.9).
Returns:
    overall_iou, mean_iou, precision@0.5 ... precision@0.9: floats in [0, 1];
    num_samples: int.
Examples:
    >>> import numpy as np
    >>> metric = evaluate.load("path/to/referring_segmentation")
    >>> pred = np.array([[1, 1], [0, 0]], dtype=bool)
    >>> gt = np.array([[1, 0], [0, 0]], dtype=bool)
    >>> metric.compute(predictions=[pred], references=[gt])["overall_iou"]
    0.5
"""

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _validate_thresholds(thresholds):
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
        raise TypeError(f"`thresholds` must be a sequence of numbers, got {type(thresholds).__name__}.")
    thresholds = tuple(thresholds)
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"`thresholds` must contain numbers, got {t!r}.")
        if not (0.0 <= t <= 1.0):
            raise ValueError(f"`thresholds` must lie in [0, 1] (IoU fractions, not percent), got {t!r}.")
    if len(set(thresholds)) != len(thresholds):
        raise ValueError(f"`thresholds` contains duplicates: {tuple(thresholds)!r}.")
    return thresholds


def _to_numpy(value):
    # Duck-typed torch support: importing torch here would make it a hard requirement of the module.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16 has no numpy equivalent
        return value.numpy()
    return np.asarray(value)


def _binary(mask, name):
    mask = _to_numpy(mask)
    if mask.dtype == np.bool_:
        return mask
    is_float = np.issubdtype(mask.dtype, np.floating)
    if not (is_float or np.issubdtype(mask.dtype, np.integer)):
        raise TypeError(f"{name} must have a bool, integer or float dtype, got {mask.dtype}.")
    invalid = ~((mask == 0) | (mask == 1))
    if invalid.any():
        if is_float:
            hint = "threshold it first, e.g. `probabilities > 0.5` or `logits > 0`"
        else:
            hint = "convert it first, e.g. `label_map == object_id` or `mask > 0`"
        found = mask[invalid].flat[0].item()
        raise ValueError(
            f"{name} must be a binary mask (bool, or numbers in {{0, 1}}) but contains {found!r}; {hint}."
        )
    return mask.astype(bool)


def _split(masks, name):
    if hasattr(masks, "ndim") and hasattr(masks, "shape"):
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
    elif isinstance(masks, (str, bytes, dict)) or not hasattr(masks, "__len__"):
        raise TypeError(
            f"`{name}` must be a sequence of masks or a stacked (num_samples, height, width) array/tensor, "
            f"got {type(masks).__name__}."
        )
    return list(masks)


def _counts_from_masks(predictions, references):
    preds, refs = _split(predictions, "predictions"), _split(references, "references")
    if len(preds) != len(refs):
        raise ValueError(
            f"Got {len(preds)} predictions but {len(refs)} references; every sample needs exactly one of each."
        )
    intersections, unions = [], []
    for index, (pred, ref) in enumerate(zip(preds, refs)):
        pred, ref = _binary(pred, f"Prediction {index}"), _binary(ref, f"Reference {index}")
        for mask, kind in ((pred, "Prediction"), (ref, "Reference")):
            if mask.ndim != 2:
                raise ValueError(f"{kind} {index} must be a 2-D (height, width) mask, got shape {tuple(mask.shape)}.")
        if pred.shape != ref.shape:
            raise ValueError(
                f"Sample {index}: prediction shape {tuple(pred.shape)} does not match reference shape "
                f"{tuple(ref.shape)}; resize the prediction to the reference size before scoring."
            )
        intersections.append(int(np.count_nonzero(pred & ref)))
        unions.append(int(np.count_nonzero(pred | ref)))
    return intersections, unions


def _validated_counts(intersections, unions):
    inter = np.asarray(_to_numpy(intersections))
    union = np.asarray(_to_numpy(unions))
    if inter.ndim != 1 or union.ndim != 1 or inter.shape != union.shape:
        raise ValueError(
            f"`intersections` and `unions` must be 1-D with one count per sample, got shapes {inter.shape} and "
            f"{union.shape}."
        )
    if inter.size and not (np.issubdtype(inter.dtype, np.integer) and np.issubdtype(union.dtype, np.integer)):
        raise TypeError(f"Counts must be integers, got dtypes {inter.dtype} and {union.dtype}.")
    inter, union = inter.astype(np.int64), union.astype(np.int64)
    if (inter < 0).any() or (inter > union).any():
        raise ValueError("Counts must satisfy 0 <= intersection <= union for every sample.")
    return inter.tolist(), union.tolist()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReferringSegmentation(evaluate.Metric):
    """oIoU, mIoU and precision@t for referring image segmentation, stored as per-sample (I, U) counts."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Masks are reduced to counts in `add_batch`, so the cache never holds (or gathers) full masks.
            features=datasets.Features(
                {"intersections": datasets.Value("int64"), "unions": datasets.Value("int64")}
            ),
            format="numpy",
            reference_urls=["https://arxiv.org/abs/2312.12198", "https://arxiv.org/abs/2112.02244"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Adds a batch of masks (`predictions`, `references`) or of counts (`intersections`, `unions`)."""
        unknown = sorted(set(kwargs) - {"intersections", "unions"})
        if unknown:
            raise ValueError(f"Unexpected inputs {unknown}; pass `predictions` and `references`.")
        if predictions is not None or references is not None:
            if kwargs:
                raise ValueError("Pass either `predictions`/`references` or `intersections`/`unions`, not both.")
            if predictions is None or references is None:
                raise ValueError("Both `predictions` and `references` are required.")
            intersections, unions = _counts_from_masks(predictions, references)
        elif set(kwargs) == {"intersections", "unions"}:
            intersections, unions = _validated_counts(kwargs["intersections"], kwargs["unions"])
        else:
            raise ValueError("Pass `predictions` and `references` (or `intersections` and `unions`).")
        super().add_batch(intersections=intersections, unions=unions)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Adds one mask pair (`prediction`, `reference`) or one pair of counts (`intersections`, `unions`)."""
        if prediction is not None or reference is not None:
            if prediction is None or reference is None:
                raise ValueError("Both `prediction` and `reference` are required.")
            self.add_batch(predictions=[prediction], references=[reference], **kwargs)
        else:
            self.add_batch(**{key: [value] for key, value in kwargs.items()})

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Adds the given inputs, if any, then returns the metrics; `thresholds` may be passed as a keyword."""
        counts = {key: kwargs.pop(key) for key in ("intersections", "unions") if key in kwargs}
        if predictions is not None or references is not None or counts:
            self.add_batch(predictions=predictions, references=references, **counts)
        return super().compute(**kwargs)

    def _compute(self, intersections, unions, thresholds=DEFAULT_THRESHOLDS):
        thresholds = _validate_thresholds(thresholds)
        inter = np.asarray(intersections, dtype=np.int64)
        union = np.asarray(unions, dtype=np.int64)
        if inter.size == 0:
            raise ValueError("No samples to evaluate: got empty predictions and references.")
        total_union = int(union.sum())
        iou = np.zeros(inter.shape, dtype=np.float64)
        np.divide(inter, union, out=iou, where=union > 0)  # U == 0 scores 0, as in the released evaluation
        num_samples = int(inter.size)
        result = {
            "overall_iou": int(inter.sum()) / total_union if total_union > 0 else 0.0,
            "mean_iou": math.fsum(iou.tolist()) / num_samples,  # exact, so independent of sample order
        }
        for t in thresholds:
            result[f"precision@{t}"] = int(np.count_nonzero(iou >= t)) / num_samples
        result["num_samples"] = num_samples
        return result
