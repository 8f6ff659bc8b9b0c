# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""Whether a trained model's Mask Grounding head reads the scene (`magnet_hf.training.grounding_probe`).

    python scripts/probe_mask_grounding.py --model runs/ablation/full-seed2/best [--heldout-seed 1] [--output FILE]

On held-out synthetic scenes, one content word (a colour, a shape, a position or rank word) of each sentence is
masked, and the Mask Grounding cross-entropy is printed with each sentence's own image and mask and with another
scene's; the gap is what the predictor takes from the scene. With `--output` the numbers are also written as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from .. import exit_status
from .arguments import build_parser, option, parse_dataclasses


@dataclasses.dataclass
class ProbeArguments:
    model: str = option(help="trained MagNet folder with its Mask Grounding head")
    heldout_seed: int = option(1, "synthetic seed of the scenes (default 1: never used for training)", minimum=0)
    heldout_images: int = option(300, "held-out scenes", minimum=1)
    max_sentences: int = option(512, "sentences probed (the first ones of the held-out split)", minimum=2)
    batch_size: int = option(32, "sentences per batch; the other scene comes from the same batch", minimum=2)
    output: str | None = option(None, "also write the numbers to this JSON file")
    overwrite: bool = option(False, "replace an existing --output")
    verbose: bool = option(False, "show transformers' progress bars")


def format_probe(result: dict) -> str:
    lines = ["| masked word | words | Mask Grounding loss, own scene | another scene | gap |", "|---|---|---|---|---|"]
    for name, entry in result.items():
        lines.append(
            f"| {name} | {entry['words']} | {entry['own_scene']:.4f} | {entry['other_scene']:.4f} | {entry['gap']:+.4f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(ProbeArguments, prog="probe_mask_grounding.py", description=__doc__.split("\n\n")[0])
    (args,) = parse_dataclasses(parser, [ProbeArguments], argv)
    from ..files import refuse_existing_output, write_text_atomically
    from ..model_folder import ModelFolderError
    from ..progress import command_progress

    try:
        if args.output is not None:
            refuse_existing_output(args.output, args.overwrite)
        with command_progress(args.verbose):
            result = probe(args)
    except (FileExistsError, ModelFolderError, ValueError) as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    print(format_probe(result))
    if args.output is not None:
        write_text_atomically(args.output, json.dumps(result, indent=2) + "\n")
    return exit_status.OK


def probe(args: ProbeArguments) -> dict:
    """Loads `args.model` (one clear error for a broken folder) and probes it on the held-out scenes."""
    from ..model_folder import check_loading_info, load_pretrained, load_processor
    from ..modeling_magnet import MagNetForReferringSegmentation
    from ..training.ablation import heldout_split
    from ..training.grounding_probe import mask_grounding_scene_dependence

    model, info = load_pretrained(MagNetForReferringSegmentation, args.model)
    check_loading_info(args.model, info)
    processor = load_processor(args.model)
    if model.mask_grounding is None:
        raise ValueError(f"{args.model} has no Mask Grounding head (use_mask_grounding=False); nothing to probe.")
    rows = heldout_split(args.model, args.heldout_seed, args.heldout_images)
    rows = rows.select(range(min(args.max_sentences, len(rows))))
    return mask_grounding_scene_dependence(model, processor, rows, batch_size=args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
