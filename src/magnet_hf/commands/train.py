# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/train.py`: parse flags, train, report; one-line errors and meaningful exit codes.

The flags are the fields of `TrainingArguments` (`magnet_hf.training.arguments`), declared there once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import exit_status
from ..training.arguments import TrainingArguments, TrainingError
from ..training.trainer import NonFiniteLossError, PushFailedError, train
from .arguments import build_parser as parser_from_dataclasses
from .arguments import parse_dataclasses

#: Exit codes (`magnet_hf.exit_status`): 0 done (or stopped by SIGTERM after saving), 2 bad input, 3 --push-to-hub
#: failed after saving, 4 diverged (non-finite loss or weights), 5 out of memory or disk.
EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED = exit_status.OK, exit_status.BAD_INPUT, exit_status.DIVERGED


DESCRIPTION = (
    "Train or fine-tune MagNet for referring image segmentation. Run with `accelerate launch` (or torchrun) for "
    "several processes; see the README's Training section."
)


def build_parser(prog: str = "train.py", description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """Argument parser of `scripts/train.py`: one flag per field of `TrainingArguments`."""
    return parser_from_dataclasses(TrainingArguments, prog=prog, description=description)


def parse_args(argv: Sequence[str] | None = None) -> TrainingArguments:
    """Parses and validates the flags; argparse exits with status 2 on a malformed flag, `validate` raises
    `TrainingError` on values no flag type can check."""
    (args,) = parse_dataclasses(build_parser(), [TrainingArguments], argv)
    return args.validate()


@exit_status.guard_resources
def main(argv: Sequence[str] | None = None) -> int:
    """Runs the training CLI and returns its exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # argparse already printed the usage and the reason
        return int(exit.code or 0)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.progress:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    from ..progress import command_progress

    try:
        with command_progress():
            result = train(args)
    except NonFiniteLossError as error:
        exit_status.error(error)
        return EXIT_DIVERGED
    except PushFailedError as error:
        exit_status.error(error)
        return exit_status.UPLOAD_FAILED
    except TrainingError as error:
        exit_status.error(error)
        return EXIT_BAD_INPUT
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    if result.interrupted:
        print(f"Stopped by SIGTERM at step {result.global_step}/{result.total_steps}; checkpoint {result.last_checkpoint}. "
              f"Continue with --resume latest.")
        return EXIT_OK
    best = f"{100 * result.best_metric:.2f}" if result.best_metric is not None else "n/a"
    print(f"Trained {result.global_step} steps; best val oIoU {best}. Model and processor saved to {result.output_dir}")
    return EXIT_OK
