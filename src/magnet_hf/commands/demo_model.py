# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/pack_demo_model.py` and `scripts/refresh_demo_model_code.py`: the embedded demo model packed from a
training run, or its config, processor and remote code rewritten from the current source
(`magnet_hf.demo.packing`)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from .. import exit_status
from ..demo.segmentation import DEMO_MODEL_DIR
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class PackArguments:
    source: str = option(help="trained MagNet folder (model and processor), e.g. a run's best/")
    destination: str = option(str(DEMO_MODEL_DIR), "folder to write (default: the embedded demo model's)")
    overwrite: bool = option(False, "replace an existing --destination (its card and pictures are kept)")


@dataclasses.dataclass
class RefreshArguments:
    folder: str = option(str(DEMO_MODEL_DIR), "folder to refresh (default: the embedded demo model's)")


@exit_status.guard_resources
def pack_main(argv: Sequence[str] | None = None) -> int:
    """Packs a trained folder as the demo model; returns the exit status (0 done, 2 bad input)."""
    parser = build_parser(PackArguments, prog="pack_demo_model.py", description=pack_main.__doc__.split(";")[0] + ".")
    (args,) = parse_dataclasses(parser, [PackArguments], argv)
    from ..demo.packing import DemoPackingError, pack_demo_model

    try:
        packed = pack_demo_model(args.source, args.destination, overwrite=args.overwrite)
    except DemoPackingError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    print(
        f"Packed {args.source} -> {args.destination}: float16 weights, {packed['dropped_tensors']} Mask Grounding "
        f"tensors left out, {packed['bytes'] / 1e6:.1f} MB."
    )
    return exit_status.OK


@exit_status.guard_resources
def refresh_main(argv: Sequence[str] | None = None) -> int:
    """Rewrites a demo model folder's config, processor files and remote code; returns the exit status."""
    parser = build_parser(
        RefreshArguments, prog="refresh_demo_model_code.py", description=refresh_main.__doc__.split(";")[0] + "."
    )
    (args,) = parse_dataclasses(parser, [RefreshArguments], argv)
    from ..demo.packing import DemoPackingError, refresh_remote_code

    try:
        written = refresh_remote_code(args.folder)
    except DemoPackingError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    print(f"Wrote {', '.join(written)} to {args.folder}; weights unchanged.")
    return exit_status.OK


if __name__ == "__main__":
    sys.exit(pack_main())
