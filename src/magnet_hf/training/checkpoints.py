# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Atomic training checkpoints: written to a hidden temporary folder, renamed into place when complete.

Layout of a run's `output_dir`::

    checkpoints/step-000200/   the training state in safetensors and JSON (`state.py`: model, optimizer,
                               scheduler, RNG of every process), the processor, `config.json`,
                               `training_args.json`, `trainer_state.json`
    checkpoints/.tmp-step-…/   a checkpoint being written; never resumed from, removed on the next save
    best/                      `save_pretrained` model and processor with the best validation oIoU
    config.json, model.safetensors, processor files, training_args.json, eval_results.json  (the final model)

A rename within one file system is atomic, so a kill at any moment leaves either the complete checkpoint or
none: `latest_checkpoint` only considers folders named `step-NNNNNN` that hold `trainer_state.json`, and
`latest_good_checkpoint` also reads every file of one (a corrupt or poisoned checkpoint is skipped with a warning).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import (
    make_staging_directory,
    move_into,
    replace_directory,
    replacing_directory,
    sync_tree,
    write_json_atomically,
)

from .trainer_state import TRAINER_STATE, TrainerState

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and foreign folders are ignored)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_DIR.match(path.name)) and path.is_dir() and (path / TRAINER_STATE).is_file()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or `None`."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def read_trainer_state(checkpoint: str | os.PathLike) -> TrainerState:
    """The loop state saved with a checkpoint (`TrainerState.load`; raises `TrainingError`)."""
    return TrainerState.load(checkpoint)


def check_checkpoint(checkpoint: str | os.PathLike) -> TrainerState:
    """Reads a checkpoint's trainer state and every file of its training state; returns the trainer state.

    Raises:
        TrainingError: anything that makes the checkpoint unusable (see `state.check_training_state`).
    """
    from .state import check_training_state

    state = read_trainer_state(checkpoint)
    check_training_state(Path(checkpoint), num_processes=state.num_processes)
    return state


def latest_good_checkpoint(output_dir: str | os.PathLike, warn: bool = True) -> Path | None:
    """The newest checkpoint that passes `check_checkpoint`; each newer one that fails is skipped with a warning."""
    from .arguments import TrainingError

    for checkpoint in reversed(list_checkpoints(output_dir)):
        try:
            check_checkpoint(checkpoint)
            return checkpoint
        except TrainingError as error:
            if warn:
                logger.warning(f"skipping checkpoint {checkpoint.name}: {error}")
    return None


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    trainer_state: TrainerState,
    write_extras: Callable[[Path], None],
    write_state: Callable[[Path], None],
    total_limit: int | None = None,
) -> Path:
    """Saves the full training state at `step` atomically; every process must call it.

    Args:
        accelerator: the run's `Accelerator` (for the process rank and the barriers).
        output_dir: the run's output folder.
        step: optimizer steps done.
        trainer_state: the loop state (step, epoch, best metric, log history); written last, so its presence
            marks a complete folder.
        write_extras: called on the main process with the temporary folder, to add the processor, config, ...
        write_state: called on every process with the temporary folder to write its part of the training state
            (`state.save_training_state`); an exception leaves only the temporary folder, removed here.
        total_limit: keep at most this many checkpoints (oldest removed after the new one is in place).

    Returns:
        The published folder `output_dir/checkpoints/step-NNNNNN`.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    # Every process writes its own RNG file into the folder, so they must agree on its name: no random suffix.
    temporary = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        temporary.mkdir()
    accelerator.wait_for_everyone()
    try:
        write_state(temporary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_extras(temporary)
            write_json_atomically(temporary / TRAINER_STATE, trainer_state.to_dict(), sync=True, sort_keys=True)
            # An existing `final` is the same step saved again (e.g. resumed at a checkpoint and stopped at once).
            replace_directory(temporary, final, sync=True)
    except BaseException:
        # A failed save (full disk, refused non-finite state) must not leave a large hidden folder behind; a kill
        # still can, and the next save removes it.
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_pretrained_atomic(
    model: Any,
    processor: Any,
    target: str | os.PathLike,
    extra_json: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """`save_pretrained` of model and processor into a temporary sibling of `target`, then swapped in.

    `extra_json` maps file names to JSON-able objects written beside the weights (e.g. `eval_results.json`);
    `state_dict` replaces the model's own (the gathered weights of a sharded model, `state.full_model_state`).
    A previous `target` is replaced only once the new folder is complete.
    """
    target = Path(target)
    with replacing_directory(target, sync=True) as temporary:
        _save_pretrained(model, processor, temporary, extra_json, state_dict)
    return target


def _save_pretrained(model: Any, processor: Any, folder: Path, extra_json: dict[str, Any] | None, state_dict) -> None:
    model.save_pretrained(str(folder), safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(str(folder))
    for name, data in (extra_json or {}).items():
        write_json_atomically(folder / name, data, sort_keys=True)


def save_final_model(
    model: Any,
    processor: Any,
    output_dir: str | os.PathLike,
    extra_json: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """`save_pretrained` of model and processor directly into `output_dir` (which also holds `checkpoints/`).

    Everything is written to a temporary folder first and then moved file by file with atomic renames,
    `config.json` last: a folder with a `config.json` holds complete weights and processor files.
    """
    output_dir = Path(output_dir)
    staging = make_staging_directory(output_dir / ".final")
    try:
        _save_pretrained(model, processor, staging, extra_json, state_dict)
        sync_tree(staging)
        move_into(staging, output_dir, last=["config.json"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
