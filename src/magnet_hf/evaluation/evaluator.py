# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of MagNet on a referring segmentation split: oIoU, mIoU and precision@t.

Every sentence of every referred object is one sample. Two protocols are offered:

- `"released"`: the prediction is post-processed at the model's input size (square) and compared with the ground
  truth resized to that size with nearest neighbour. This is how the released code scored its published numbers.
- `"original"`: the prediction is resized to the image's own size and compared with the untouched ground truth.

The loop runs under `accelerate launch` as well as in one process: each process scores its shard, and only two
integers per sample (intersection and union) travel between processes.

Use [`evaluate_referring_segmentation`] from Python, or `scripts/evaluate.py` (`magnet_hf.commands.evaluate`) from the
shell.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

# torch and the metrics (which import torch) are imported where they are used, so that `evaluate --help` and
# argument errors answer without loading torch.
if TYPE_CHECKING:
    import torch

    from .metrics import ReferringSegmentationMetric

logger = logging.getLogger(__name__)

__all__ = [
    "REQUIRED_COLUMNS",
    "accelerator_if_launched",
    "check_dataset",
    "evaluation_samples",
    "load_model_and_processor",
    "metrics_by_expression_kind",
    "one_row_per_sentence",
    "RESOLUTIONS",
    "EvaluationError",
    "evaluate_referring_segmentation",
    "load_evaluation_split",
    "write_results",
]

RESOLUTIONS = ("released", "original")
REQUIRED_COLUMNS = ("image", "mask", "sentences")


class EvaluationError(ValueError):
    """Bad input to an evaluation (missing model, unknown split, unusable dataset, ...); the CLI prints it plainly."""


# ------------------------------------------------------------------------------------------------- batching


def _ground_truth(mask: Image.Image) -> np.ndarray:
    # `> 0` rather than `== 1` so that masks stored as 0/255 PNGs score the same as 0/1 ones, like the collator.
    return np.asarray(mask.convert("L")) > 0


class _EvaluationCollator:
    """Rows of an exploded split to model inputs plus boolean ground-truth masks at the protocol's resolution.

    Masks stay a list of arrays: at `"original"` resolution every image may have its own size, so they cannot be
    stacked, and they never need to leave the process that scores them.
    """

    def __init__(self, processor: Any, resolution: str):
        self.processor = processor
        self.resolution = resolution

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        images = [row["image"].convert("RGB") for row in rows]
        texts = [row["sentences"][0] for row in rows]
        batch = self.processor(images=images, text=texts, return_tensors="pt")
        height, width = batch["pixel_values"].shape[-2:]
        masks = []
        for row in rows:
            mask = row["mask"]
            if self.resolution == "released":
                mask = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
            masks.append(_ground_truth(mask))
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "original_sizes": batch["original_sizes"],
            "masks": masks,
        }


def check_dataset(dataset: Any) -> None:
    """Raises `EvaluationError` unless `dataset` is one split with the columns referring segmentation needs."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise EvaluationError(f"Expected one `datasets.Dataset` split, got {type(dataset).__name__}.")
    missing = [name for name in REQUIRED_COLUMNS if name not in dataset.column_names]
    if missing:
        raise EvaluationError(
            f"The dataset lacks the column(s) {missing}; referring segmentation needs {list(REQUIRED_COLUMNS)}, "
            f"found {dataset.column_names}."
        )


def one_row_per_sentence(dataset: Any) -> Any:
    """One row per (object, sentence) of a split with one row per object."""
    from ..data import explode_sentences

    # An already exploded split must not be exploded again: that would overwrite its sentence_index column.
    if "sentence_index" in dataset.column_names:
        return dataset
    return explode_sentences(dataset)


# ------------------------------------------------------------------------------------------------ evaluation


def _without_gradients(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return wrapper


@_without_gradients
def evaluate_referring_segmentation(
    model: torch.nn.Module,
    processor: Any,
    dataset: Any,
    *,
    batch_size: int = 8,
    resolution: str = "released",
    accelerator: Any = None,
    progress: bool = True,
    threshold: float = 0.5,
    thresholds: Sequence[float] | None = None,
    metric: ReferringSegmentationMetric | None = None,
) -> dict[str, float | int]:
    """Scores a MagNet model on one referring segmentation split.

    Args:
        model ([`MagNetForReferringSegmentation`]):
            The model; it is put in eval mode (and on the accelerator's device, when one is given).
        processor ([`MagNetProcessor`]):
            Prepares images and sentences and post-processes the predictions.
        dataset (`datasets.Dataset`):
            A split with at least the columns `image`, `mask` (0/1 or 0/255 "L" images) and `sentences`. One row
            per referred object is exploded to one row per sentence; an already exploded split (with a
            `sentence_index` column) is used as is.
        batch_size (`int`, *optional*, defaults to 8):
            Samples per forward pass (per process).
        resolution (`str`, *optional*, defaults to `"released"`):
            `"released"` scores at the model's input size with the ground truth resized by nearest neighbour (the
            published protocol); `"original"` scores at each image's own size against the untouched ground truth.
        accelerator (`accelerate.Accelerator`, *optional*):
            Shards the split across processes; counts are gathered on every process, so all return the same
            numbers. Without one, everything runs in this process on the model's device.
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar (on the main process only).
        threshold (`float`, *optional*, defaults to 0.5):
            Probability above which a pixel is predicted foreground (the released value).
        thresholds (`Sequence[float]`, *optional*, defaults to `(0.5, 0.6, 0.7, 0.8, 0.9)`):
            IoU thresholds of the `precision@t` entries.
        metric (`ReferringSegmentationMetric`, *optional*):
            Accumulate into this metric instead of a new one, e.g. to read the per-sample `intersections` and
            `unions` afterwards (in the split's exploded row order); its thresholds are used.

    Returns:
        `dict`: `overall_iou`, `mean_iou`, `precision@t` (fractions in [0, 1]) and `num_samples`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if resolution not in RESOLUTIONS:
        raise EvaluationError(f"resolution must be one of {list(RESOLUTIONS)}, got {resolution!r}.")
    check_dataset(dataset)
    samples = one_row_per_sentence(dataset)
    if len(samples) == 0:
        raise EvaluationError("The split has no (object, sentence) sample to evaluate.")

    import torch
    from tqdm.auto import tqdm

    from .metrics import DEFAULT_THRESHOLDS, ReferringSegmentationMetric

    loader = torch.utils.data.DataLoader(
        samples, batch_size=batch_size, shuffle=False, collate_fn=_EvaluationCollator(processor, resolution)
    )
    model.eval()
    if accelerator is not None:
        model = model.to(accelerator.device)
        # A prepared loader gives each process its shard and pads the last batches with repeated samples, which
        # `gather_for_metrics` then drops again, so no sample is counted twice.
        loader = accelerator.prepare(loader)
        device, is_main = accelerator.device, accelerator.is_main_process
    else:
        device, is_main = next(model.parameters()).device, True

    if metric is None:
        metric = ReferringSegmentationMetric(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    # disable=None: tqdm stays off when stderr is not a terminal (redirected logs get no carriage returns).
    for batch in tqdm(loader, desc=f"evaluate ({resolution})", disable=None if progress and is_main else True):
        outputs = model(
            pixel_values=batch["pixel_values"].to(device),
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        if resolution == "released":
            target_sizes = [tuple(batch["pixel_values"].shape[-2:])] * len(batch["masks"])
        else:
            target_sizes = batch["original_sizes"].tolist()
        predictions = processor.post_process_referring_segmentation(outputs, target_sizes, threshold=threshold)
        counts = torch.tensor(
            [_counts(result["mask"], gt) for result, gt in zip(predictions, batch["masks"])],
            dtype=torch.int64,
            device=device,
        ).reshape(-1, 2)
        if accelerator is not None:
            counts = accelerator.gather_for_metrics(counts)
        metric.add_counts(counts[:, 0].cpu(), counts[:, 1].cpu())
    return metric.compute()


def metrics_by_expression_kind(metric: ReferringSegmentationMetric, samples: Any) -> dict[str, dict[str, float | int]]:
    """The metrics of each expression kind of the synthetic generator (attribute, relation, ordinal, superlative).

    Args:
        metric ([`ReferringSegmentationMetric`]): Filled by [`evaluate_referring_segmentation`] on `samples`, so that
            its per-sample counts are in the samples' row order.
        samples (`datasets.Dataset`): One row per (object, sentence), as evaluated.

    Returns:
        `dict`: kind -> the `metrics_from_counts` entries of its samples (kinds without samples are left out).
    """
    from ..data import expression_kind
    from .metrics import metrics_from_counts

    kinds = np.asarray([expression_kind(sentences[0]) for sentences in samples["sentences"]])
    if kinds.size != metric.num_samples:
        raise EvaluationError(f"{metric.num_samples} scored samples for {kinds.size} expressions.")
    intersections, unions = metric.intersections, metric.unions
    return {
        kind: metrics_from_counts(intersections[kinds == kind], unions[kinds == kind], metric.thresholds)
        for kind in sorted(set(kinds.tolist()))
    }


def format_kind_table(by_kind: dict[str, dict[str, Any]]) -> str:
    """Markdown table of oIoU, mIoU and P@0.5 (percentages) and the sample count per expression kind."""
    lines = ["| kind | oIoU | mIoU | P@0.5 | samples |", "|---|---|---|---|---|"]
    for kind, entry in by_kind.items():
        lines.append(
            f"| {kind} | {100 * entry['overall_iou']:.2f} | {100 * entry['mean_iou']:.2f} | "
            f"{100 * entry['precision@0.5']:.2f} | {entry['num_samples']} |"
        )
    return "\n".join(lines)


def _counts(prediction: torch.Tensor, ground_truth: np.ndarray) -> tuple[int, int]:
    prediction = prediction.cpu().numpy()
    if prediction.shape != ground_truth.shape:  # a processor whose post-processing ignores target_sizes
        raise EvaluationError(
            f"Prediction of shape {prediction.shape} does not match ground truth of shape {ground_truth.shape}."
        )
    return int(np.count_nonzero(prediction & ground_truth)), int(np.count_nonzero(prediction | ground_truth))


# ------------------------------------------------------------------------------------------ loading inputs


def load_evaluation_split(
    dataset: str, split: str, *, synthetic_images: int = 10, synthetic_seed: int = 1, image_size: int = 128
) -> Any:
    """Loads one split from a `save_to_disk` folder, a Hub id / local dataset (`load_dataset`), or `"synthetic"`.

    Synthetic scenes default to seed 1: training defaults to seed 0, whose scenes an evaluation should not reuse.

    Raises:
        EvaluationError: the dataset cannot be loaded or has no such split (the message lists the available ones).
    """
    import datasets

    if dataset == "synthetic":
        from ..data import build_synthetic_dataset

        # All images go to the requested split: a synthetic evaluation should not waste most of its scenes.
        splits = build_synthetic_dataset({split: synthetic_images}, image_size=image_size, seed=synthetic_seed)
    elif Path(dataset).is_dir() and (
        (Path(dataset) / "dataset_dict.json").is_file() or (Path(dataset) / "dataset_info.json").is_file()
    ):
        splits = datasets.load_from_disk(dataset)
    else:
        try:
            splits = datasets.load_dataset(dataset)
        except Exception as error:  # datasets raises many types; the user only needs the reason
            raise EvaluationError(f"Could not load dataset {dataset!r}: {error}") from error
    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict({split: splits}) if split in (None, "", "train") else datasets.DatasetDict()
    if split not in splits:
        raise EvaluationError(f"Dataset {dataset!r} has no split {split!r}; available splits: {sorted(splits)}.")
    return splits[split]


def load_model_and_processor(model_path: str) -> tuple[Any, Any]:
    """The model and processor of a saved folder or Hub id, checked (`EvaluationError` names what is wrong)."""
    from ..modeling_magnet import MagNetForReferringSegmentation

    path = Path(model_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EvaluationError(f"{model_path!r} is not a saved model folder (no config.json).")
    elif model_path.startswith((".", "/", "~")) or model_path.count("/") > 1:
        # Not a Hub id either, so asking the Hub would only hide the real problem behind a network error.
        raise EvaluationError(f"Model folder {model_path!r} does not exist.")
    from ..model_folder import ModelFolderError, check_loading_info, load_pretrained, load_processor

    try:
        model, info = load_pretrained(MagNetForReferringSegmentation, model_path)
        check_loading_info(model_path, {"mismatched_keys": info.get("mismatched_keys")})
        processor = load_processor(model_path)
    except ModelFolderError as error:
        raise EvaluationError(str(error)) from None
    return model, processor


# ----------------------------------------------------------------------------------------------- outputs


def write_results(results: dict[str, Any], output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes `results` as JSON atomically: a temporary sibling file renamed into place, so a crash leaves no
    half-written file.

    Raises:
        EvaluationError: `output` exists and `overwrite` is false.
    """
    from ..files import refuse_existing_output, write_json_atomically

    output = refuse_existing_output(Path(output).expanduser().absolute(), overwrite, error=EvaluationError)
    if not output.parent.is_dir():
        raise EvaluationError(f"Folder of the output does not exist: {output.parent}")
    return write_json_atomically(output, results)


def evaluation_samples(split: Any, max_samples: int | None = None) -> Any:
    """The (object, sentence) samples of a checked split, the first `max_samples` of them when given."""
    check_dataset(split)
    samples = one_row_per_sentence(split)
    return samples if max_samples is None else samples.select(range(min(max_samples, len(samples))))


def accelerator_if_launched() -> Any:
    """An `Accelerator` under `accelerate launch` (or torchrun) with several processes, else `None`."""
    # Outside `accelerate launch` a plain loop is enough and avoids initialising accelerate's global state.
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import Accelerator

    # Without `cpu=True` accelerate does not set up gloo on a machine without GPUs and every process would evaluate
    # the whole split on its own.
    return Accelerator(cpu=not torch.cuda.is_available())
