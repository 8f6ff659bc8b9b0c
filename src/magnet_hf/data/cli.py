"""Command line entry point behind ``scripts/prepare_refcoco.py``."""

from __future__ import annotations

import argparse
import logging

from .. import exit_status
from .errors import ReferDataError
from .refer import prepare_refer_dataset
from .schema import PARTITIONS

_SPLIT_BYS = sorted({split_by for partitions in PARTITIONS.values() for split_by in partitions})


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Argument parser of ``prepare_refcoco.py`` (and ``magnet-hf prepare-data``, which passes its ``prog``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert the official refer-toolkit files of RefCOCO/RefCOCO+/RefCOCOg into a "
        "datasets.DatasetDict saved with save_to_disk (one row per referred object).",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(PARTITIONS))
    parser.add_argument("--split-by", required=True, choices=_SPLIT_BYS, help="unc (RefCOCO/+), umd or google (RefCOCOg)")
    parser.add_argument("--refer-root", required=True, help="folder holding <dataset>/refs(<split-by>).p and instances.json")
    parser.add_argument("--coco-images", required=True, help="folder of the COCO train2014 images")
    parser.add_argument("--output", required=True, help="folder to create (save_to_disk layout)")
    parser.add_argument("--skip-missing", action="store_true", help="leave out refs whose image file is missing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also push the result to this Hub dataset repo")
    parser.add_argument("--num-proc", type=int, default=None, help="processes used to generate each split")
    return parser


@exit_status.guard_resources
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the conversion; returns the process exit status (0 ok, 2 bad input, 3 push failed)."""
    args = build_parser(prog).parse_args(argv)
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
