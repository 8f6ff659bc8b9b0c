# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""The `magnet-hf` command: segment images, run the offline demo, and reach the conversion, evaluation and data
preparation tools under one name.

Heavy modules (torch, transformers, the model) are imported inside the subcommands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import exit_status
from . import demo, segment
from .arguments import add_dataclass_arguments, into_dataclasses

#: Subcommands that hand their arguments to the command line of a script: name -> (module, help).
WRAPPED_COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("magnet_hf.commands.convert", "convert a released MagNet checkpoint (same options as scripts/convert_official_checkpoint.py)"),
    "evaluate": ("magnet_hf.commands.evaluate", "evaluate a model on a referring segmentation split (same options as scripts/evaluate.py)"),
    "prepare-data": ("magnet_hf.commands.prepare_data", "build RefCOCO/RefCOCO+/RefCOCOg datasets (same options as scripts/prepare_refcoco.py)"),
}
#: Subcommands of this module: name -> (command module, its arguments dataclass).
COMMANDS = {"segment": (segment, segment.SegmentArguments), "demo": (demo, demo.DemoArguments)}

EXIT_BAD_INPUT = exit_status.BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    """The `magnet-hf` argument parser (the wrapped subcommands are listed; their options are their own)."""
    parser = argparse.ArgumentParser(
        prog="magnet-hf",
        description="MagNet referring image segmentation: an image and an expression give the mask of the object "
        "the expression refers to.",
        epilog="Start with `magnet-hf demo` (offline, embedded model). `magnet-hf COMMAND --help` shows a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, arguments) in COMMANDS.items():
        add_dataclass_arguments(commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION), arguments)
    for name, (_, help_text) in WRAPPED_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


@exit_status.guard_resources
def main(argv: Sequence[str] | None = None) -> int:
    """Runs `magnet-hf`; returns the exit status (`magnet_hf.exit_status`: 0 success, 2 bad input or arguments,
    3 upload failed, 4 training diverged, 5 out of memory or disk)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in WRAPPED_COMMANDS:
        module = importlib.import_module(WRAPPED_COMMANDS[argv[0]][0])
        try:
            return int(module.main(argv[1:], prog=f"magnet-hf {argv[0]}") or 0)
        except SystemExit as exit:  # argparse of the wrapped command: usage already printed
            return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    try:
        namespace = build_parser().parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    module, arguments = COMMANDS[namespace.command]
    del namespace.command
    (args,) = into_dataclasses(namespace, arguments)
    from ..demo.segmentation import DemoModelMissingError, SegmentationCommandError
    from ..image_processing_magnet import MagNetImageError
    from ..progress import command_progress

    try:
        with command_progress(args.verbose):
            return module.run(args)
    except (SegmentationCommandError, DemoModelMissingError, MagNetImageError) as error:
        exit_status.error(error)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
