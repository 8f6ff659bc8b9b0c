# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The embedded demo model, loading a segmenter, writing its predictions, and the synthetic-scene demo.

Library side of the `magnet-hf segment` and `magnet-hf demo` commands. Importing this module is cheap: torch and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Folder of the embedded `magnet-tiny` (trained on synthetic scenes only), shipped inside the package.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
# The embedded model was trained on synthetic seed 0; the demo draws from another seed so its scenes are unseen.
DEMO_SCENE_SEED = 1
DEMO_MODEL_NOTE = "the embedded magnet-tiny demo model (it knows synthetic scenes of coloured shapes only)"


class DemoModelMissingError(FileNotFoundError):
    """The embedded demo model is not installed next to the package."""


class SegmentationCommandError(ValueError):
    """Bad input to `segment` or `demo` (paths, model folders, outputs); the message says what to change."""


def demo_model_path() -> Path:
    """
    The folder of the embedded demo model (`magnet_hf/demo_model`: config, weights, tokenizer, image processor and
    model card), loadable with `from_pretrained`.

    Raises:
        DemoModelMissingError: the folder or its weights are missing (a source checkout where the model has not been
            trained yet, or an install that left out package data).
    """
    required = ("config.json", "model.safetensors")
    missing = [name for name in required if not (DEMO_MODEL_DIR / name).is_file()]
    if missing:
        raise DemoModelMissingError(
            f"The embedded demo model is missing from {DEMO_MODEL_DIR} (no {', '.join(missing)}). Reinstall "
            "magnet-hf from a complete checkout or wheel, or pass --model with a saved MagNet folder."
        )
    return DEMO_MODEL_DIR


# ------------------------------------------------------------------------------------------------ loading


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else can only be a local folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def load_segmenter(model: str | os.PathLike | None = None, device: str | None = None, dtype: Any = None):
    """
    A `referring-image-segmentation` pipeline over a saved MagNet folder (or Hub id), or over the embedded demo model
    when `model` is `None`.

    Args:
        model: folder holding the model and its processor, or a Hub id; `None` for the embedded demo model.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`...; `None` picks the first GPU when there is one.
        dtype: compute precision (`torch.bfloat16` / `"bfloat16"` run under autocast); `None` for fp32.

    Raises:
        SegmentationCommandError: the folder does not exist, is not a MagNet folder, lacks weights or a processor.
        DemoModelMissingError: `model` is `None` and the embedded model is not installed.
    """
    import torch
    from transformers.utils import logging as transformers_logging

    from .modeling_magnet import MagNetModel
    from .pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline
    from .processing_magnet import MagNetProcessor

    source = str(demo_model_path() if model is None else model)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SegmentationCommandError(f"--model {source!r} is a file; give the folder a model was saved to.")
        if not (path / "config.json").is_file():
            raise SegmentationCommandError(f"--model {source!r} is not a saved model folder (it has no config.json).")
        source = str(path)
    elif _looks_like_a_path(source):
        raise SegmentationCommandError(f"Model folder {source!r} does not exist.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    verbosity, progress_bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()  # training-only heads of full checkpoints are expected to go unused
    transformers_logging.disable_progress_bar()
    try:
        network, info = MagNetModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
        processor = MagNetProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SegmentationCommandError(f"Could not load a MagNet model and processor from {source!r}: {error}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress_bars:
            transformers_logging.enable_progress_bar()
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise SegmentationCommandError(
            f"{source!r} lacks {len(missing)} weights of the network its config describes (first: {missing[:3]}); "
            "it is not a complete MagNet checkpoint."
        )
    try:
        return MagNetReferringSegmentationPipeline(
            model=network, processor=processor, device=device, dtype=dtype, task=REFERRING_SEGMENTATION_TASK
        )
    except (RuntimeError, ValueError, TypeError) as error:
        raise SegmentationCommandError(f"Could not set up the model on {device!r}: {error}") from None


# ------------------------------------------------------------------------------------------------ outputs


def expression_slug(text: str, max_length: int = 48) -> str:
    """A file-name-safe short form of an expression: `"the small red circle"` -> `"the-small-red-circle"`."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "expression"


def prediction_file_names(stem: str, expressions: list[str]) -> list[tuple[str, str]]:
    """`(mask file, overlay file)` per expression, numbered so that repeated or similar expressions never collide."""
    names = []
    for index, text in enumerate(expressions):
        base = f"{stem}_{index:02d}_{expression_slug(text)}"
        names.append((f"{base}_mask.png", f"{base}_overlay.png"))
    return names


def prepare_output_folder(output: str | os.PathLike, file_names: list[str], overwrite: bool) -> Path:
    """
    Creates `output` if needed and checks, before any work is done, that none of `file_names` would replace an
    existing file unless `overwrite` is set.
    """
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SegmentationCommandError(f"--output {str(output)!r} is a file; give a folder.")
    existing = [name for name in file_names if (folder / name).exists()]
    if existing and not overwrite:
        raise SegmentationCommandError(
            f"{len(existing)} output file(s) already exist in {folder} (e.g. {existing[0]}); pass --overwrite to "
            "replace them or choose another --output."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SegmentationCommandError(f"Cannot create the output folder {folder}: {error.strerror}.") from None
    return folder


def save_png_atomically(image: Image.Image, path: Path) -> Path:
    """Writes `image` as PNG through a temporary sibling renamed into place, so no half-written file is ever left;
    the file gets the umask's mode."""
    from .atomic import write_atomically

    return write_atomically(path, lambda temporary: image.save(temporary, format="PNG"))


@dataclass
class SavedPrediction:
    """One expression's prediction and the files written for it."""

    expression: str
    score: float
    mask: np.ndarray  # bool (height, width)
    mask_file: Path
    overlay_file: Path


def segment_to_files(
    segmenter,
    image,
    expressions: list[str],
    output: str | os.PathLike,
    *,
    stem: str = "image",
    overwrite: bool = False,
    batch_size: int = 4,
    overlay_scale: int = 1,
) -> list[SavedPrediction]:
    """
    Runs `segmenter` on one image and writes, per expression, the mask PNG ("L", 0/255, the image's size) and an
    overlay PNG (the mask tinted over the image with the expression written on it) into `output`.

    Existing files are refused unless `overwrite` (checked before the model runs).
    """
    from .image_processing_magnet import load_image_as_rgb

    from .overlay import overlay_mask

    rgb = load_image_as_rgb(image)
    names = prediction_file_names(stem, expressions)
    folder = prepare_output_folder(output, [name for pair in names for name in pair], overwrite)
    results = segmenter(rgb, text=expressions, batch_size=batch_size)
    saved = []
    for (mask_name, overlay_name), result in zip(names, results):
        mask = np.asarray(result["mask"]) > 127
        mask_file = save_png_atomically(result["mask"], folder / mask_name)
        overlay_file = save_png_atomically(
            overlay_mask(rgb, mask, f"{result['label']} ({result['score']:.2f})", scale=overlay_scale),
            folder / overlay_name,
        )
        saved.append(SavedPrediction(result["label"], result["score"], mask, mask_file, overlay_file))
    return saved


# ---------------------------------------------------------------------------------------------------- demo


@dataclass
class DemoRow:
    """One demo expression: its prediction against the known mask of the object it names."""

    expression: str
    intersection: int
    union: int
    score: float
    mask_file: Path
    overlay_file: Path

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 0.0


def pick_demo_expressions(scene, count: int) -> list[tuple[int, str]]:
    """
    Up to `count` `(object index, expression)` pairs of a synthetic scene, one per object, cycling through each
    object's expressions so that attributes, relations, ordinals and superlatives all appear.
    """
    picked = []
    for rank, index in enumerate(sorted(scene.expressions)[:count]):
        candidates = scene.expressions[index]
        picked.append((index, candidates[rank % len(candidates)]))
    return picked


def find_demo_scene(seed: int, first_index: int, image_size: int, count: int, search: int = 100):
    """The first synthetic scene from `first_index` on in which at least `count` objects can be named."""
    from .data.synthetic import generate_scene

    for index in range(first_index, first_index + search):
        scene = generate_scene(seed, index, image_size)
        if len(scene.expressions) >= count:
            return index, scene
    raise SegmentationCommandError(
        f"No synthetic scene from {first_index} to {first_index + search - 1} has {count} objects with an "
        "expression; ask for fewer expressions."
    )


def run_demo(
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    seed: int = DEMO_SCENE_SEED,
    scene_index: int = 0,
    num_expressions: int = 4,
    overwrite: bool = False,
    device: str | None = None,
    segmenter=None,
) -> tuple[list[DemoRow], Path]:
    """
    Draws a synthetic scene, segments a few of its expressions with `model` (default: the embedded demo model),
    writes the scene, masks and overlays to `output`, and scores each mask against the object the expression names.

    Returns:
        The rows (expression, intersection, union, score, files) and the path of the scene image.
    """
    from .metrics import intersection_and_union

    if num_expressions < 1:
        raise SegmentationCommandError(f"--num-expressions must be at least 1, got {num_expressions}.")
    if seed < 0 or scene_index < 0:
        raise SegmentationCommandError("--seed and --scene must be non-negative.")
    if segmenter is None:
        segmenter = load_segmenter(model, device=device)
    size = segmenter.image_processor.size
    image_size = int(size["height"] if isinstance(size, dict) else size.height)
    found_index, scene = find_demo_scene(seed, scene_index, max(image_size, 64), num_expressions)
    picked = pick_demo_expressions(scene, num_expressions)
    stem = f"scene{found_index:04d}"
    scene_file = prepare_output_folder(output, [f"{stem}.png"], overwrite) / f"{stem}.png"
    saved = segment_to_files(
        segmenter,
        scene.image,
        [text for _, text in picked],
        output,
        stem=stem,
        overwrite=overwrite,
        overlay_scale=max(1, 384 // scene.image.width),
    )
    save_png_atomically(scene.image, scene_file)
    rows = []
    for (object_index, _), prediction in zip(picked, saved):
        intersection, union = intersection_and_union(prediction.mask, scene.objects[object_index].mask)
        rows.append(
            DemoRow(prediction.expression, intersection, union, prediction.score, prediction.mask_file, prediction.overlay_file)
        )
    return rows, scene_file


def format_demo_table(rows: list[DemoRow]) -> str:
    """The demo's IoU table with a mean row."""
    width = max(len("expression"), *(len(row.expression) for row in rows))
    lines = [f"{'expression':<{width}}  {'IoU':>6}  {'score':>6}", f"{'-' * width}  {'-' * 6}  {'-' * 6}"]
    lines += [f"{row.expression:<{width}}  {row.iou:>6.3f}  {row.score:>6.3f}" for row in rows]
    mean = sum(row.iou for row in rows) / len(rows)
    lines.append(f"{'mean IoU':<{width}}  {mean:>6.3f}")
    return "\n".join(lines)


__all__ = [
    "DEMO_MODEL_DIR",
    "DEMO_SCENE_SEED",
    "DemoModelMissingError",
    "DemoRow",
    "SavedPrediction",
    "SegmentationCommandError",
    "demo_model_path",
    "expression_slug",
    "format_demo_table",
    "load_segmenter",
    "run_demo",
    "segment_to_files",
]
