# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`magnet-hf demo`: the offline demo on synthetic scenes (`magnet_hf.demo.synthetic_demo`)."""

from __future__ import annotations

import dataclasses

from ..demo.segmentation import DEMO_SCENE_SEED
from ..demo.synthetic_demo import DEMO_NUM_EXPRESSIONS, DEMO_NUM_SCENES
from .arguments import option

HELP = (
    "offline demo: segment synthetic scenes with the embedded model, print each expression's IoU and kind, write a "
    "contact sheet"
)
DESCRIPTION = (
    "Draw synthetic scenes of coloured shapes, segment expressions of every kind (attribute, relation, ordinal, "
    "superlative) with the embedded magnet-tiny (or --model), print each mask's IoU against the object the expression "
    "names, and write the scenes, masks, overlays and one contact sheet (captioned overlays with the named object "
    "outlined). Needs no network. Re-running it in the same --output replaces its own earlier files and leaves every "
    "other file alone."
)


@dataclasses.dataclass
class DemoArguments:
    output: str = option("magnet_demo", "folder for the PNGs (default: ./magnet_demo)")
    model: str | None = option(None, "saved MagNet folder instead of the embedded demo model")
    seed: int = option(
        DEMO_SCENE_SEED,
        f"synthetic scene seed (default {DEMO_SCENE_SEED}: scenes the embedded model, trained on seed 0, never saw)",
        minimum=0,
    )
    scene: int = option(0, "first scene index to try (default 0)", minimum=0)
    scenes: int = option(DEMO_NUM_SCENES, f"scenes to show (default {DEMO_NUM_SCENES})", minimum=1)
    num_expressions: int = option(
        DEMO_NUM_EXPRESSIONS,
        f"expressions in all, spread over the scenes, every kind among them (default {DEMO_NUM_EXPRESSIONS})",
        minimum=1,
    )
    device: str | None = option(None, "cpu, cuda... (default: a GPU if there is one)")
    overwrite: bool = option(False, "also replace files of the same names the demo did not write")
    verbose: bool = option(False, "show transformers' progress bars and warnings")


def run(args: DemoArguments) -> int:
    from ..demo.segmentation import DEMO_MODEL_NOTE
    from ..demo.synthetic_demo import format_demo_table, run_demo

    print(f"Model: {DEMO_MODEL_NOTE if args.model is None else args.model}")
    result = run_demo(
        args.output, model=args.model, seed=args.seed, scene_index=args.scene, num_scenes=args.scenes,
        num_expressions=args.num_expressions, overwrite=args.overwrite, device=args.device, verbose=args.verbose,
    )  # fmt: skip
    print("Scenes: " + ", ".join(str(path) for path in result.scene_files))
    print(format_demo_table(result.rows))
    print(f"Masks and overlays written to {result.contact_sheet.parent}")
    print(f"Open the contact sheet: {result.contact_sheet}")
    return 0
