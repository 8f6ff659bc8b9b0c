# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""``scripts/prepare_refcoco.py`` and ``magnet-hf prepare-data``: RefCOCO/RefCOCO+/RefCOCOg from the official refer
files as a ``datasets.DatasetDict`` (``magnet_hf.data.refer``)."""

from __future__ import annotations

import dataclasses
import logging
import sys

from .. import exit_status
from ..data.errors import ReferDataError
from ..data.refer import prepare_refer_dataset
from ..data.schema import PARTITIONS
from .arguments import build_parser, option, parse_dataclasses

_SPLIT_BYS = sorted({split_by for partitions in PARTITIONS.values() for split_by in partitions})


@dataclasses.dataclass
class PrepareDataArguments:
    dataset: str = option(choices=sorted(PARTITIONS))
    split_by: str = option(help="unc (RefCOCO/+), umd or google (RefCOCOg)", choices=_SPLIT_BYS)
    refer_root: str = option(help="folder holding <dataset>/refs(<split-by>).p and instances.json")
    coco_images: str = option(help="folder of the COCO train2014 images")
    output: str = option(help="folder to create (save_to_disk layout)")
    skip_missing: bool = option(False, "leave out refs whose image file is missing")
    overwrite: bool = option(False, "replace an existing --output")
    push_to_hub: str | None = option(None, "also push the result to this Hub dataset repo", metavar="REPO")
    num_proc: int | None = option(None, "processes used to generate each split", minimum=1)


def parser(prog: str | None = None):
    """Argument parser of ``prepare_refcoco.py`` (and ``magnet-hf prepare-data``, which passes its ``prog``)."""
    return build_parser(
        PrepareDataArguments,
        prog=prog,
        description="Convert the official refer-toolkit files of RefCOCO/RefCOCO+/RefCOCOg into a "
        "datasets.DatasetDict saved with save_to_disk (one row per referred object).",
    )


@exit_status.guard_resources
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the conversion; returns the process exit status (0 ok, 2 bad input, 3 push failed)."""
    (args,) = parse_dataclasses(parser(prog), [PrepareDataArguments], argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        dataset = prepare_refer_dataset(
            args.refer_root,
            args.coco_images,
            args.output,
            args.dataset,
            args.split_by,
            skip_missing=args.skip_missing,
            overwrite=args.overwrite,
            num_proc=args.num_proc,
        )
    except ReferDataError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    for split, split_dataset in dataset.items():
        print(f"{split}: {split_dataset.num_rows} refs")
    if args.push_to_hub:
        try:
            dataset.push_to_hub(args.push_to_hub)
        except Exception as error:  # network and authentication errors vary by backend
            exit_status.error(f"saved to {args.output}, but pushing to {args.push_to_hub} failed: {error}")
            return exit_status.UPLOAD_FAILED
        print(f"pushed to {args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
