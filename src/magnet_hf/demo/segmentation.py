# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The embedded demo model, loading a segmenter and writing its predictions as mask and overlay PNGs.

Library side of the `magnet-hf segment` command (`magnet_hf.commands.segment`). Importing this module is cheap: torch and
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
    The folder of the embedded demo model (`magnet_hf/demo/demo_model`: config, weights, tokenizer, image processor and
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


def load_segmenter(
    model: str | os.PathLike | None = None, device: str | None = None, dtype: Any = None, verbose: bool = False
):
    """
    A `referring-image-segmentation` pipeline over a saved MagNet folder (or Hub id), or over the embedded demo model
    when `model` is `None`.

    Args:
        model: folder holding the model and its processor, or a Hub id; `None` for the embedded demo model.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`...; `None` picks the first GPU when there is one.
        dtype: compute precision (`torch.bfloat16` / `"bfloat16"` run under autocast); `None` for fp32.
        verbose: keep transformers' loading warnings and progress bars (silenced by default).

    Raises:
        SegmentationCommandError: the folder does not exist, is not a MagNet folder, lacks weights or a processor.
        DemoModelMissingError: `model` is `None` and the embedded model is not installed.
    """
    import torch
    from transformers.utils import logging as transformers_logging

    from ..modeling_magnet import MagNetModel
    from ..pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline

    source = str(demo_model_path() if model is None else model)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SegmentationCommandError(f"--model {source!r} is a file; give the folder a model was saved to.")
        if not (path / "config.json").is_file():
            raise SegmentationCommandError(f"--model {source!r} is not a saved model folder (it has no config.json).")
        if not any((path / name).is_file() for name in ("processor_config.json", "tokenizer_config.json", "vocab.txt")):
            raise SegmentationCommandError(
                f"--model {source!r} holds a model but no processor (no processor_config.json or tokenizer files). "
                "Convert it again without --no-processor (`magnet-hf convert` writes one; --tokenizer picks the "
                "tokenizer), or save a MagNetProcessor into the folder."
            )
        source = str(path)
    elif _looks_like_a_path(source):
        raise SegmentationCommandError(f"Model folder {source!r} does not exist.")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    verbosity, progress_bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    if not verbose:
        transformers_logging.set_verbosity_error()  # training-only heads of full checkpoints are expected to go unused
        transformers_logging.disable_progress_bar()
    from ..model_folder import ModelFolderError, check_loading_info, load_pretrained, load_processor

    try:
        network, info = load_pretrained(MagNetModel, source, dtype=torch.float32)
        check_loading_info(source, {"mismatched_keys": info.get("mismatched_keys")})
        processor = load_processor(source)
    except ModelFolderError as error:
        raise SegmentationCommandError(str(error)) from None
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
    existing = [name for name in file_names if (folder / name).exists() or (folder / name).is_symlink()]
    if existing and not overwrite:
        raise SegmentationCommandError(
            f"{len(existing)} output file(s) already exist in {folder} (e.g. {existing[0]}); pass --overwrite to "
            "replace them or choose another --output."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A read-only folder or a full disk must show before the model runs, not after.
        from ..files import probe_writable

        probe_writable(folder)
    except OSError as error:
        raise SegmentationCommandError(f"Cannot write to the output folder {folder}: {error.strerror}.") from None
    return folder


def save_png_atomically(image: Image.Image, path: Path) -> Path:
    """Writes `image` as PNG through a temporary sibling renamed into place, so no half-written file is ever left;
    the file gets the umask's mode."""
    from ..files import write_atomically

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
    from ..image_processing_magnet import load_image_as_rgb

    from .overlay import overlay_mask

    rgb = load_image_as_rgb(image)
    names = prediction_file_names(stem, expressions)
    folder = prepare_output_folder(output, [name for pair in names for name in pair], overwrite)
    results = segmenter(rgb, text=expressions, batch_size=batch_size)
    saved = []
    for (mask_name, overlay_name), result in zip(names, results):
        mask_file = save_png_atomically(result["mask"], folder / mask_name)
        mask = np.asarray(result.pop("mask")) > 127  # the PIL copy goes: masks of a big image are 100 MB each
        overlay_file = save_png_atomically(
            overlay_mask(rgb, mask, f"{result['label']} ({result['score']:.2f})", scale=overlay_scale),
            folder / overlay_name,
        )
        saved.append(SavedPrediction(result["label"], result["score"], mask, mask_file, overlay_file))
    return saved


__all__ = [
    "DEMO_MODEL_DIR",
    "DEMO_SCENE_SEED",
    "DemoModelMissingError",
    "SavedPrediction",
    "SegmentationCommandError",
    "demo_model_path",
    "expression_slug",
    "load_segmenter",
    "prediction_file_names",
    "segment_to_files",
]
