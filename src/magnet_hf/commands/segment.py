# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`magnet-hf segment`: the objects that expressions refer to in an image, written as mask and overlay PNGs
(`magnet_hf.demo.segmentation`)."""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path

from .arguments import option

HELP = "segment the objects that expressions refer to in an image; writes mask and overlay PNGs"
DESCRIPTION = (
    "Segment the object each --text refers to in --image. Writes, per expression, <image>_<NN>_<expression>_mask.png "
    "(0/255, the image's size) and ..._overlay.png (mask tinted over the image, expression written on it) into "
    "--output."
)


def expression(text: str) -> str:
    """A referring expression: anything with a visible character (`ValueError` otherwise)."""
    # Control and zero-width (format) characters alone tokenise to nothing, like whitespace.
    if not any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text):
        raise ValueError("an expression must have words in it")
    return text


@dataclasses.dataclass
class SegmentArguments:
    image: str = option(help="image file (any format PIL reads)")
    text: list[str] = option(
        help="referring expression; repeat for several", action="append", parse=expression, metavar="EXPRESSION"
    )
    output: str = option(help="folder for the PNGs (created if missing)")
    model: str | None = option(
        None, "saved MagNet folder (with its processor) or Hub id; default: the embedded demo model, which knows "
        "synthetic scenes of coloured shapes only",
    )  # fmt: skip
    threshold: float = option(0.5, "mask probability threshold (default 0.5)", minimum=0, maximum=1)
    batch_size: int = option(4, "expressions per forward pass", minimum=1)
    device: str | None = option(None, "cpu, cuda, cuda:1... (default: a GPU if there is one)")
    dtype: str = option(
        "float32", "compute precision (reduced precision runs under autocast)", choices=("float32", "bfloat16", "float16")
    )
    overwrite: bool = option(False, "replace existing output files")
    verbose: bool = option(False, "show transformers' progress bars and warnings")


def run(args: SegmentArguments) -> int:
    from ..demo.segmentation import DEMO_MODEL_NOTE, load_segmenter, segment_to_files
    from ..image_processing_magnet import load_image_as_rgb

    image = load_image_as_rgb(args.image)  # a bad path or file fails here, before the model is loaded
    if args.model is None:
        print(f"Using {DEMO_MODEL_NOTE}; pass --model for a real checkpoint.")
    segmenter = load_segmenter(args.model, device=args.device, dtype=args.dtype, verbose=args.verbose)
    saved = segment_to_files(
        segmenter, image, args.text, args.output, stem=Path(args.image).stem or "image", overwrite=args.overwrite,
        batch_size=args.batch_size,
    )  # fmt: skip
    for prediction in saved:
        print(
            f"{prediction.expression!r}: {int(prediction.mask.sum())} pixels, score {prediction.score:.3f}\n"
            f"  mask    {prediction.mask_file}\n  overlay {prediction.overlay_file}"
        )
    return 0
