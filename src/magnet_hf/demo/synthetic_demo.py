# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The offline demo: synthetic scenes segmented by the embedded model, each mask scored against the object its
expression names, and a contact sheet of the results.

Library side of the `magnet-hf demo` command (`magnet_hf.commands.demo`). Importing this module is cheap: torch and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .segmentation import (
    DEMO_SCENE_SEED,
    SegmentationCommandError,
    load_segmenter,
    prediction_file_names,
    save_png_atomically,
    segment_to_files,
)

#: The demo's record of the files it wrote in its output folder: on a re-run it replaces those and nothing else.
DEMO_MANIFEST = ".magnet-demo.json"
CONTACT_SHEET = "contact_sheet.png"
# Four expressions on each of four scenes: over 8 expressions the printed mean IoU of one model moved from 0.55 to
# 0.84 between scene windows (30 windows of seed 1), over 16 from 0.63 to 0.79 (15 windows).
DEMO_NUM_SCENES = 4
DEMO_NUM_EXPRESSIONS = 16
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
    from ..data.synthetic import expression_kind

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
    from ..data.synthetic import EXPRESSION_KINDS, generate_scene

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

    from ..files import write_text_atomically

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
    from ..evaluation.metrics import intersection_and_union
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
    "DEMO_NUM_EXPRESSIONS",
    "DEMO_NUM_SCENES",
    "DemoResult",
    "DemoRow",
    "claim_demo_folder",
    "format_demo_table",
    "pick_demo_scenes",
    "run_demo",
]
