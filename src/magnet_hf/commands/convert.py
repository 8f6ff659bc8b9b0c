# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/convert_official_checkpoint.py` and `magnet-hf convert`: a released checkpoint to a transformers folder
(`magnet_hf.hub.conversion`)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from .. import exit_status
from ..hub.conversion import DEFAULT_TOKENIZER, ConversionError, convert_official_checkpoint
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class ConvertArguments:
    checkpoint: str = option(
        help="released .pth (weights under 'model') or .safetensors, or a Hub file reference such as "
        "yxchng/magnet_weights:magnet_refcoco.pth (downloaded into the Hub cache)"
    )
    output: str = option(help="folder to create")
    official_config: str | None = option(
        None, "JSON whose 'official_build_arguments' describe a reduced architecture (default: MagNet-B)"
    )
    tokenizer: str = option(
        DEFAULT_TOKENIZER,
        f"BERT tokenizer folder or Hub id for the processor (default {DEFAULT_TOKENIZER}, the released weights' "
        "tokenizer, from the Hub cache)",
        exclusive="processor",
    )
    no_processor: bool = option(False, "write the model only, without a processor", exclusive="processor")
    overwrite: bool = option(False, "replace an existing output folder")
    verbose: bool = option(False, "show every progress bar of transformers")


def parser(prog: str | None = None):
    return build_parser(
        ConvertArguments, prog=prog, description="Convert a released MagNet checkpoint into a magnet_hf (transformers) folder."
    )


@exit_status.guard_resources
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Runs the conversion; returns the exit status (`exit_status`: 2 for a conversion error)."""
    (args,) = parse_dataclasses(parser(prog), [ConvertArguments], argv)
    from ..progress import command_progress

    try:
        with command_progress(args.verbose):
            output = convert_official_checkpoint(
                args.checkpoint,
                args.output,
                official_config=args.official_config,
                tokenizer=None if args.no_processor else args.tokenizer,
                overwrite=args.overwrite,
            )
    except ConversionError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    print(f"Converted {args.checkpoint} -> {output}")
    if args.no_processor:
        print(
            "--no-processor: the folder holds the model only; convert again with --tokenizer (or save a "
            "MagNetProcessor into it) before using pipelines or `magnet-hf segment`."
        )
    return exit_status.OK


if __name__ == "__main__":
    sys.exit(main())
