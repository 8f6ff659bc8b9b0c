# Copyright 2026 The magnet_hf authors. Licensed under the Apache License, Version 2.0.
"""`scripts/ablate.py`: every flag of `train.py` plus `--seeds`, `--variants`, `--heldout-seed`, `--heldout-images`,
`--bootstrap` and `--records`; `--output-dir` holds one folder per run and the report `ablation.md`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import exit_status
from ..files import write_text_atomically
from ..training.ablation import FULL, ablation_variants, format_report, run_ablation, summarise, validation_curve
from ..training.arguments import TrainingArguments, TrainingError
from .arguments import add_dataclass_arguments, option, parse_dataclasses
from .train import build_parser as build_training_parser


@dataclasses.dataclass
class AblationArguments:
    """What `ablate.py` adds to the training flags."""

    seeds: list[int] = option(lambda: [0, 1, 2], minimum=0)
    variants: list[str] | None = option(
        None, "variants to run (default: all; full is always included: the differences are against it)"
    )
    heldout_seed: int = option(1, "synthetic seed of the held-out scenes", minimum=0)
    heldout_images: int = option(300, "held-out scenes (about 6 expressions each)", minimum=1)
    bootstrap: int = option(2000, "bootstrap resamples of the confidence intervals", minimum=1)
    records: str | None = option(
        None, "folder of finished runs' records (<variant>-seed<k>.json): read instead of training, written after each run"
    )


def _selected_variants(chosen: list[str] | None) -> dict:
    variants = ablation_variants()
    unknown = sorted(set(chosen or []) - set(variants))
    if unknown:
        raise TrainingError(f"unknown --variants {unknown}; choose from {sorted(variants)}.")
    return {name: overrides for name, overrides in variants.items() if chosen is None or name == FULL or name in chosen}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ablation; returns the exit status (0 done, 2 bad input)."""
    parser = build_training_parser(
        "ablate.py", "Train one setting once per variant and seed; score held-out scenes; print the report."
    )
    add_dataclass_arguments(parser, AblationArguments)
    try:
        base, ablation = parse_dataclasses(parser, [TrainingArguments, AblationArguments], argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    try:
        if base.resume is not None or base.no_mask_grounding or base.no_alignment_loss:
            raise TrainingError("ablate.py chooses --resume and the loss switches itself; leave them out.")
        if len(set(ablation.seeds)) != len(ablation.seeds):
            raise TrainingError("--seeds must be distinct.")
        base.validate()
        selected = _selected_variants(ablation.variants)
        records = None if ablation.records is None else Path(ablation.records)
        if records is not None and records.exists() and not records.is_dir():
            raise TrainingError(f"--records {records} exists and is not a folder.")
        results = run_ablation(base, ablation.seeds, selected, ablation.heldout_seed, ablation.heldout_images, records)
    except TrainingError as error:
        exit_status.error(error)
        return exit_status.BAD_INPUT
    report = format_report(summarise(results, ablation.bootstrap), validation_curve(results[FULL]))
    Path(base.output_dir).mkdir(parents=True, exist_ok=True)  # absent when every run came from --records
    output = write_text_atomically(Path(base.output_dir) / "ablation.md", report + "\n")
    print(report)
    print(f"\nreport written to {output}")
    return exit_status.OK


if __name__ == "__main__":
    sys.exit(main())
