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

    from .modeling_magnet import MagNetModel
    from .pipeline_magnet import REFERRING_SEGMENTATION_TASK, MagNetReferringSegmentationPipeline

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
    from .model_folder import ModelFolderError, check_loading_info, load_pretrained, load_processor

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
        from .atomic import probe_writable

        probe_writable(folder)
    except OSError as error:
        raise SegmentationCommandError(f"Cannot write to the output folder {folder}: {error.strerror}.") from None
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
        mask_file = save_png_atomically(result["mask"], folder / mask_name)
        mask = np.asarray(result.pop("mask")) > 127  # the PIL copy goes: masks of a big image are 100 MB each
        overlay_file = save_png_atomically(
            overlay_mask(rgb, mask, f"{result['label']} ({result['score']:.2f})", scale=overlay_scale),
            folder / overlay_name,
        )
        saved.append(SavedPrediction(result["label"], result["score"], mask, mask_file, overlay_file))
    return saved


# ---------------------------------------------------------------------------------------------------- demo

#: The demo's record of the files it wrote in its output folder: on a re-run it replaces those and nothing else.
DEMO_MANIFEST = ".magnet-demo.json"
CONTACT_SHEET = "contact_sheet.png"
DEMO_NUM_SCENES = 2
DEMO_NUM_EXPRESSIONS = 8
# IoU from which a tile's caption counts the mask as right (green) rather than wrong (red).
_RIGHT_IOU = 0.5
_RIGHT_COLOUR, _WRONG_COLOUR = (120, 230, 120), (255, 130, 120)


@dataclass
class DemoRow:
    """One demo expression: its prediction against the known mask of the object it names."""

    expression: str
    kind: str
    scene_index: int
    intersection: int
    union: int
    score: float
    mask_file: Path
    overlay_file: Path

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 0.0


@dataclass
class DemoResult:
    """What `run_demo` wrote and measured."""

    rows: list[DemoRow]
    scene_files: list[Path]
    contact_sheet: Path

    @property
    def mean_iou(self) -> float:
        return sum(row.iou for row in self.rows) / len(self.rows)


def _choose_expressions(scene, quota: int, covered: set[str]) -> list[tuple[int, str, str]]:
    # Greedy, deterministic: first kinds no scene has shown yet, then kinds new to this scene; one expression per
    # object while objects last.
    from .data.synthetic import expression_kind

    candidates = [(index, text, expression_kind(text)) for index in sorted(scene.expressions) for text in scene.expressions[index]]
    chosen: list[tuple[int, str, str]] = []
    while len(chosen) < quota:
        kinds, objects = {kind for _, _, kind in chosen}, {index for index, _, _ in chosen}
        remaining = [candidate for candidate in candidates if candidate not in chosen]
        if not remaining:
            break
        preference = [
            lambda c: c[2] not in covered | kinds and c[0] not in objects,
            lambda c: c[2] not in covered | kinds,
            lambda c: c[2] not in kinds and c[0] not in objects,
            lambda c: c[0] not in objects,
            lambda c: True,
        ]
        chosen.append(next(c for test in preference for c in remaining if test(c)))
    return chosen


def pick_demo_scenes(
    seed: int, first_index: int, image_size: int, num_scenes: int, num_expressions: int, search: int = 200
) -> list[tuple[int, object, list[tuple[int, str, str]]]]:
    """
    `num_scenes` synthetic scenes from `first_index` on, and `num_expressions` expressions spread over them, that
    together show every expression kind of the generator (when there are at least as many expressions as kinds).

    Returns:
        `(scene index, scene, [(object index, expression, kind), ...])` per scene.
    """
    from .data.synthetic import EXPRESSION_KINDS, generate_scene

    if num_scenes < 1 or num_expressions < num_scenes:
        raise SegmentationCommandError(
            f"--num-expressions ({num_expressions}) must be at least --scenes ({num_scenes}), which must be at least 1."
        )
    wanted_kinds = set(EXPRESSION_KINDS) if num_expressions >= len(EXPRESSION_KINDS) else set()
    picked: list[tuple[int, object, list[tuple[int, str, str]]]] = []
    covered: set[str] = set()
    for index in range(first_index, first_index + search):
        if len(picked) == num_scenes:
            break
        scenes_left = num_scenes - len(picked)
        done = sum(len(choice) for _, _, choice in picked)
        quota = -(-(num_expressions - done) // scenes_left)
        scene = generate_scene(seed, index, image_size)
        choice = _choose_expressions(scene, quota, covered)
        new_kinds = covered | {kind for _, _, kind in choice}
        later_quota = num_expressions - done - quota
        if len(choice) < quota or len(wanted_kinds - new_kinds) > later_quota:
            continue  # too few objects, or the scenes left could no longer show every kind
        picked.append((index, scene, choice))
        covered = new_kinds
    if len(picked) < num_scenes or not wanted_kinds <= covered:
        raise SegmentationCommandError(
            f"No {num_scenes} synthetic scenes from {first_index} to {first_index + search - 1} give {num_expressions} "
            "expressions of every kind; ask for fewer expressions or scenes."
        )
    return picked


def _read_manifest(folder: Path) -> set[str]:
    import json

    path = folder / DEMO_MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SegmentationCommandError(
            f"{path} is damaged, so the demo cannot tell which files in {folder} it wrote; delete it or choose "
            "another --output."
        ) from None
    # Only plain names inside the folder: a manifest must never make the demo delete anything elsewhere.
    return {name for name in names if isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")}


def claim_demo_folder(output: str | os.PathLike, file_names: list[str], overwrite: bool) -> tuple[Path, set[str]]:
    """
    Checks, before any work, that the demo may write `file_names` into `output`: files it wrote on an earlier run
    (listed in its manifest) are its own to replace; any other existing file of those names is refused unless
    `overwrite`, with the exact count. Files of other names are never touched.

    Returns:
        The folder (created if missing) and the names of the files the previous run wrote.
    """
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SegmentationCommandError(f"--output {str(output)!r} is a file; give a folder.")
    previous = _read_manifest(folder) if folder.is_dir() else set()
    foreign = [name for name in file_names if (folder / name).exists() and name not in previous]
    if foreign and not overwrite:
        raise SegmentationCommandError(
            f"{len(foreign)} of the demo's {len(file_names)} output files already exist in {folder} and were not "
            f"written by an earlier demo (e.g. {foreign[0]}); pass --overwrite to replace them or choose another "
            "--output."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SegmentationCommandError(f"Cannot create the output folder {folder}: {error.strerror}.") from None
    return folder, previous


def _finish_demo_folder(folder: Path, written: list[str], previous: set[str]) -> None:
    import json

    from .atomic import write_text_atomically

    write_text_atomically(folder / DEMO_MANIFEST, json.dumps({"files": sorted(written)}, indent=2) + "\n")
    for name in sorted(previous - set(written)):  # the earlier run's files that this run did not write again
        stale = folder / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()


def _demo_tile(scene, row: DemoRow, target_mask, predicted_mask, scale: int):
    from .overlay import SheetTile, prediction_tile

    colour = _RIGHT_COLOUR if row.iou >= _RIGHT_IOU else _WRONG_COLOUR
    return SheetTile(
        prediction_tile(scene.image, predicted_mask, target_mask, scale=scale),
        [(row.expression, (255, 255, 255)), (f"{row.kind} | scene {row.scene_index} | IoU {row.iou:.2f}", colour)],
    )


def run_demo(
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    seed: int = DEMO_SCENE_SEED,
    scene_index: int = 0,
    num_scenes: int = DEMO_NUM_SCENES,
    num_expressions: int = DEMO_NUM_EXPRESSIONS,
    overwrite: bool = False,
    device: str | None = None,
    segmenter=None,
    verbose: bool = False,
) -> DemoResult:
    """
    Draws `num_scenes` synthetic scenes, segments `num_expressions` of their expressions (every kind among them)
    with `model` (default: the embedded demo model), scores each mask against the object the expression names, and
    writes to `output` the scenes, each mask and overlay, and one contact sheet of captioned, outlined overlays.

    The demo owns what it writes: a re-run in the same folder replaces its own earlier files (listed in
    `.magnet-demo.json`) and leaves every other file alone; a file it did not write is replaced only with
    `overwrite`.
    """
    from .metrics import intersection_and_union
    from .overlay import contact_sheet

    if seed < 0 or scene_index < 0:
        raise SegmentationCommandError("--seed and --scene must be non-negative.")
    if segmenter is None:
        segmenter = load_segmenter(model, device=device, verbose=verbose)
    size = segmenter.image_processor.size
    image_size = int(size["height"] if isinstance(size, dict) else size.height)
    picked = pick_demo_scenes(seed, scene_index, max(image_size, 64), num_scenes, num_expressions)
    names: list[str] = [CONTACT_SHEET]
    for index, _, choice in picked:
        stem = f"scene{index:04d}"
        names += [f"{stem}.png"] + [name for pair in prediction_file_names(stem, [t for _, t, _ in choice]) for name in pair]
    folder, previous = claim_demo_folder(output, names, overwrite)

    scale = max(1, 384 // max(image_size, 64))
    rows, scene_files, tiles = [], [], []
    for index, scene, choice in picked:
        stem = f"scene{index:04d}"
        saved = segment_to_files(
            segmenter, scene.image, [text for _, text, _ in choice], folder, stem=stem, overwrite=True,
            overlay_scale=scale,
        )
        scene_files.append(save_png_atomically(scene.image, folder / f"{stem}.png"))
        for (object_index, _, kind), prediction in zip(choice, saved):
            target = scene.objects[object_index].mask
            intersection, union = intersection_and_union(prediction.mask, target)
            row = DemoRow(
                prediction.expression, kind, index, intersection, union, prediction.score,
                prediction.mask_file, prediction.overlay_file,
            )
            rows.append(row)
            tiles.append(_demo_tile(scene, row, target, prediction.mask, scale))
    title = (
        "magnet-hf demo: cyan tint = predicted mask, white/black outline = the object the expression names; "
        f"IoU >= {_RIGHT_IOU} in green. Mean IoU {sum(r.iou for r in rows) / len(rows):.3f} over {len(rows)} "
        f"expressions, {len(picked)} scenes of synthetic seed {seed}."
    )
    columns = -(-len(tiles) // len(picked))
    sheet = save_png_atomically(contact_sheet(tiles, columns=min(columns, 4), title=title), folder / CONTACT_SHEET)
    _finish_demo_folder(folder, names, previous)
    return DemoResult(rows, scene_files, sheet)


def format_demo_table(rows: list[DemoRow]) -> str:
    """The demo's table (expression, kind, IoU, score per row) with a mean row."""
    width = max(len("expression"), *(len(row.expression) for row in rows))
    kind_width = max(len("kind"), *(len(row.kind) for row in rows))
    lines = [
        f"{'expression':<{width}}  {'kind':<{kind_width}}  {'IoU':>6}  {'score':>6}",
        f"{'-' * width}  {'-' * kind_width}  {'-' * 6}  {'-' * 6}",
    ]
    lines += [f"{row.expression:<{width}}  {row.kind:<{kind_width}}  {row.iou:>6.3f}  {row.score:>6.3f}" for row in rows]
    mean = sum(row.iou for row in rows) / len(rows)
    lines.append(f"{'mean IoU':<{width}}  {'':<{kind_width}}  {mean:>6.3f}")
    return "\n".join(lines)


__all__ = [
    "CONTACT_SHEET",
    "DEMO_MANIFEST",
    "DEMO_MODEL_DIR",
    "DEMO_SCENE_SEED",
    "DemoModelMissingError",
    "DemoResult",
    "DemoRow",
    "SavedPrediction",
    "SegmentationCommandError",
    "claim_demo_folder",
    "demo_model_path",
    "expression_slug",
    "format_demo_table",
    "load_segmenter",
    "pick_demo_scenes",
    "run_demo",
    "segment_to_files",
]
