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

from . import exit_status
from .argtypes import non_negative_int, positive_int, probability
from .demo import DEMO_NUM_EXPRESSIONS, DEMO_NUM_SCENES, DEMO_SCENE_SEED

#: Subcommands that hand their arguments to an existing command line: name -> (module, help).
WRAPPED_COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("magnet_hf.conversion", "convert a released MagNet checkpoint (same options as scripts/convert_official_checkpoint.py)"),
    "evaluate": ("magnet_hf.evaluation", "evaluate a model on a referring segmentation split (same options as scripts/evaluate.py)"),
    "prepare-data": ("magnet_hf.data.cli", "build RefCOCO/RefCOCO+/RefCOCOg datasets (same options as scripts/prepare_refcoco.py)"),
}

EXIT_BAD_INPUT = exit_status.BAD_INPUT


def _expression(text: str) -> str:
    import unicodedata

    # Control and zero-width (format) characters alone tokenise to nothing, like whitespace.
    if not any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text):
        raise argparse.ArgumentTypeError("an expression must have words in it")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The `magnet-hf` argument parser (the wrapped subcommands are listed; their options are their own)."""
    parser = argparse.ArgumentParser(
        prog="magnet-hf",
        description="MagNet referring image segmentation: an image and an expression give the mask of the object "
        "the expression refers to.",
        epilog="Start with `magnet-hf demo` (offline, embedded model). `magnet-hf COMMAND --help` shows a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    segment = commands.add_parser(
        "segment",
        help="segment the objects that expressions refer to in an image; writes mask and overlay PNGs",
        description="Segment the object each --text refers to in --image. Writes, per expression, "
        "<image>_<NN>_<expression>_mask.png (0/255, the image's size) and ..._overlay.png (mask tinted over the "
        "image, expression written on it) into --output.",
    )
    segment.add_argument("--image", required=True, help="image file (any format PIL reads)")
    segment.add_argument(
        "--text", required=True, action="append", type=_expression, metavar="EXPRESSION",
        help="referring expression; repeat for several",
    )
    segment.add_argument(
        "--model", help="saved MagNet folder (with its processor) or Hub id; default: the embedded demo model, "
        "which knows synthetic scenes of coloured shapes only",
    )
    segment.add_argument("--output", required=True, help="folder for the PNGs (created if missing)")
    segment.add_argument("--threshold", type=probability, default=0.5, help="mask probability threshold (default 0.5)")
    segment.add_argument("--batch-size", type=positive_int, default=4, help="expressions per forward pass")
    segment.add_argument("--device", help="cpu, cuda, cuda:1... (default: a GPU if there is one)")
    segment.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
        help="compute precision (reduced precision runs under autocast)",
    )
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument("--verbose", action="store_true", help="show transformers' progress bars and warnings")

    demo = commands.add_parser(
        "demo",
        help="offline demo: segment synthetic scenes with the embedded model, print each expression's IoU and kind, "
        "write a contact sheet",
        description="Draw synthetic scenes of coloured shapes, segment expressions of every kind (attribute, relation, "
        "ordinal, superlative) with the embedded magnet-tiny (or --model), print each mask's IoU against the object "
        "the expression names, and write the scenes, masks, overlays and one contact sheet (captioned overlays with "
        "the named object outlined). Needs no network. Re-running it in the same --output replaces its own earlier "
        "files and leaves every other file alone.",
    )
    demo.add_argument("--output", default="magnet_demo", help="folder for the PNGs (default: ./magnet_demo)")
    demo.add_argument("--model", help="saved MagNet folder instead of the embedded demo model")
    demo.add_argument(
        "--seed",
        type=non_negative_int,
        default=DEMO_SCENE_SEED,
        help=f"synthetic scene seed (default {DEMO_SCENE_SEED}: scenes the embedded model, trained on seed 0, never saw)",
    )
    demo.add_argument("--scene", type=non_negative_int, default=0, help="first scene index to try (default 0)")
    demo.add_argument(
        "--scenes", type=positive_int, default=DEMO_NUM_SCENES, help=f"scenes to show (default {DEMO_NUM_SCENES})"
    )
    demo.add_argument(
        "--num-expressions", type=positive_int, default=DEMO_NUM_EXPRESSIONS,
        help=f"expressions in all, spread over the scenes, every kind among them (default {DEMO_NUM_EXPRESSIONS})",
    )
    demo.add_argument("--device", help="cpu, cuda... (default: a GPU if there is one)")
    demo.add_argument("--overwrite", action="store_true", help="also replace files of the same names the demo did not write")
    demo.add_argument("--verbose", action="store_true", help="show transformers' progress bars and warnings")

    for name, (_, help_text) in WRAPPED_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from .demo import DEMO_MODEL_NOTE, load_segmenter, segment_to_files
    from .image_processing_magnet import load_image_as_rgb

    image = load_image_as_rgb(args.image)  # a bad path or file fails here, before the model is loaded
    if args.model is None:
        print(f"Using {DEMO_MODEL_NOTE}; pass --model for a real checkpoint.")
    segmenter = load_segmenter(args.model, device=args.device, dtype=args.dtype, verbose=args.verbose)
    from pathlib import Path

    saved = segment_to_files(
        segmenter,
        image,
        args.text,
        args.output,
        stem=Path(args.image).stem or "image",
        overwrite=args.overwrite,
        batch_size=args.batch_size,
    )
    for prediction in saved:
        print(
            f"{prediction.expression!r}: {int(prediction.mask.sum())} pixels, score {prediction.score:.3f}\n"
            f"  mask    {prediction.mask_file}\n  overlay {prediction.overlay_file}"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_MODEL_NOTE, format_demo_table, run_demo

    print(f"Model: {DEMO_MODEL_NOTE if args.model is None else args.model}")
    result = run_demo(
        args.output,
        model=args.model,
        seed=args.seed,
        scene_index=args.scene,
        num_scenes=args.scenes,
        num_expressions=args.num_expressions,
        overwrite=args.overwrite,
        device=args.device,
        verbose=args.verbose,
    )
    print("Scenes: " + ", ".join(str(path) for path in result.scene_files))
    print(format_demo_table(result.rows))
    print(f"Masks and overlays written to {result.contact_sheet.parent}")
    print(f"Open the contact sheet: {result.contact_sheet}")
    return 0


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
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else EXIT_BAD_INPUT
    from .demo import DemoModelMissingError, SegmentationCommandError
    from .image_processing_magnet import MagNetImageError

    from .progress import command_progress

    try:
        with command_progress(args.verbose):
            return _segment(args) if args.command == "segment" else _demo(args)
    except (SegmentationCommandError, DemoModelMissingError, MagNetImageError) as error:
        exit_status.error(error)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
